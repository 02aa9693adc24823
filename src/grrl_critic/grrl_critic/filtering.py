"""Data filtering with the learned task progress (paper section 3.1, eq. 2).

rho_t = mean(Q(s_t, a_{t:t+k})) for every step of every recorded trajectory. A sample t is
suboptimal if the progress drops by more than delta within rho_{t:t+k}; suboptimal samples are
removed from the behaviour-cloning data. "Drops by more than delta" is, by ``drop``:

* ``peak_to_trough`` (default): max over t <= i < j <= t+k of rho_i - rho_j — any fall within
  the window, also one spread over several small steps;
* ``consecutive``: max over t <= i < t+k of rho_i - rho_{i+1} — a single-step fall only;
* ``shortfall``: max over t <= i < j <= t+k of rho_i gamma^-(j-i) - rho_j — how far rho_j falls
  short of where it would be had the demonstrator progressed at the clean rate from i. Under the
  reward of eq. (1) the value of a successful trajectory grows by 1/gamma per step, so a step
  that wastes time (a pause, a creeping approach, the detour of a retry) leaves rho flat, which
  is a shortfall of (1/gamma - 1) rho per step that the plain drop cannot see;
* ``log_drop`` and ``log_shortfall``: the same two on log rho (rho floored at ``rho_floor``):
  relative falls, delta in log units (0.1 ~ a 10% fall). Along a successful demonstration rho
  grows from gamma^T (~0.15 here) to 1, so an absolute delta is ~7x stricter at the end than at
  the start; a relative one treats a mistake the same wherever it happens. ``log_shortfall`` is
  the peak-to-trough fall of log rho_t + t log gamma, which is constant along a clean success.

The paper does not say which; all are config (``log_shortfall`` ranks the flaws best here).

The paper's rule removes every sample whose window drops, wherever it is. Where mistakes are the
majority of a phase (our demonstrator's reach-and-pick: half its chunks hold a pause or a creeping
approach) that removes most of the phase, and the clone no longer learns where to go at all
(docs/results/critic: filtered BC picks in 16 of 100 scenes against 67). Two optional guards keep
coverage, both off by default: ``keep_stages`` never removes the samples of the named task stages
(needs per-step stage labels, as the simulator records them and an operator can annotate), and
``max_removed_fraction`` caps the removals within each band of progress rho itself (label-free:
the samples with the smallest drops are kept back first).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


DROPS = ("peak_to_trough", "consecutive", "shortfall", "log_drop", "log_shortfall")


@dataclass
class FilterConfig:
    """The suboptimality rule."""

    delta: float = 0.1
    """a drop larger than this within rho_{t:t+k} marks sample t suboptimal (0.1 with
    'log_shortfall': precision 0.76, recall 0.74 against the flaw labels, docs/results/critic)"""
    horizon: int = 16
    """k: the window rho_{t:t+k} (the chunk length)"""
    drop: str = "log_shortfall"
    """how a drop is measured: 'peak_to_trough' (the paper's: the deepest fall below an earlier
    value in the window), 'consecutive' (the largest fall from one step to the next),
    'shortfall' (the deepest fall below the clean-rate growth rho_i / gamma^(j-i)), or
    'log_drop' / 'log_shortfall' (the first and the third on log rho: relative falls;
    log_shortfall ranks the flaws best, AUROC 0.87 vs the paper's rule 0.77)"""
    gamma: float = 0.99
    """the critic's discount per step (the clean rate of the 'shortfall' drops)"""
    rho_floor: float = 1e-3
    """rho is floored here before the log of the 'log_' drops"""
    keep_stages: tuple[int, ...] = ()
    """task stages (the dataset's task/stage) whose samples are never removed, e.g. (0,): keep the
    reach-and-pick phase, where half the demonstrations' chunks are flawed (held out: BC filtered
    27/100 with it, 3/100 without; empty: none, the paper's rule)"""
    max_removed_fraction: float = 1.0
    """at most this fraction of the samples within each progress band is removed; the smallest
    drops are kept back first (1.0: no cap, the paper's rule)"""
    progress_bands: int = 10
    """the number of equal-width bands of rho in [0, 1] that max_removed_fraction applies to"""

    def __post_init__(self) -> None:
        try:
            self.keep_stages = tuple(int(s) for s in self.keep_stages)
        except (TypeError, ValueError):
            raise ValueError(f"keep_stages must be task stage numbers, got {self.keep_stages!r}") from None
        if not 0 <= self.max_removed_fraction <= 1:
            raise ValueError(f"max_removed_fraction must be in [0, 1], got {self.max_removed_fraction}")
        if self.progress_bands < 1:
            raise ValueError(f"progress_bands must be >= 1, got {self.progress_bands}")
        if self.drop not in DROPS:
            raise ValueError(f"drop must be one of {DROPS}, got {self.drop!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.delta < 0 or self.horizon < 1:
            raise ValueError("delta must be >= 0 and horizon >= 1")


def window_drop(rho: np.ndarray, horizon: int, drop: str = "peak_to_trough",
                gamma: float = 0.99, rho_floor: float = 1e-3) -> np.ndarray:
    """(T,) progress → (T,) the largest drop within rho_{t:t+k} (window clipped at the end)."""
    rho = np.asarray(rho, dtype=np.float64)
    if rho.ndim != 1:
        raise ValueError(f"rho must be 1-D, got shape {rho.shape}")
    if not np.isfinite(rho).all():
        raise ValueError("progress contains non-finite values (a diverged critic?)")
    if drop == "log_drop":
        return window_drop(np.log(np.maximum(rho, rho_floor)), horizon)
    if drop == "log_shortfall":
        u = np.log(np.maximum(rho, rho_floor)) + np.arange(len(rho)) * np.log(gamma)
        return window_drop(u, horizon)
    T = len(rho)
    out = np.zeros(T)
    for t in range(T):
        w = rho[t:min(t + horizon + 1, T)]
        if len(w) < 2:
            continue
        if drop == "consecutive":
            out[t] = max(0.0, float(np.max(w[:-1] - w[1:])))
        elif drop == "shortfall":
            # rho_i gamma^-(j-i) - rho_j = gamma^-j (a_i - a_j) with a_i = rho_i gamma^i
            g = gamma ** np.arange(len(w))
            a = w * g
            out[t] = max(0.0, float(np.max((np.maximum.accumulate(a)[:-1] - a[1:]) / g[1:])))
        else:
            # the running maximum before each point minus the point: the deepest fall
            out[t] = max(0.0, float(np.max(np.maximum.accumulate(w)[:-1] - w[1:])))
    return out


def keep_mask(rho: np.ndarray, cfg: FilterConfig) -> np.ndarray:
    """(T,) bool: True for the samples that are kept (no drop > delta in their window).
    One episode, the rule alone: the guards, which look across episodes, are in keep_masks."""
    return window_drop(rho, cfg.horizon, cfg.drop, cfg.gamma, cfg.rho_floor) <= cfg.delta


def keep_masks(rho: dict[int, np.ndarray], cfg: FilterConfig,
               stages: dict[int, np.ndarray] | None = None) -> dict[int, np.ndarray]:
    """The keep mask of every episode of a dataset, {episode: (T,) bool}: the delta rule, then
    the guards of ``cfg`` (keep_stages needs ``stages``, {episode: (T,) int task stage})."""
    eps = sorted(rho)
    if not eps:
        return {}
    drops = {e: window_drop(rho[e], cfg.horizon, cfg.drop, cfg.gamma, cfg.rho_floor) for e in eps}
    keep = {e: drops[e] <= cfg.delta for e in eps}
    if cfg.keep_stages:
        missing = [e for e in eps if stages is None or e not in stages]
        if missing:
            raise ValueError(f"keep_stages={cfg.keep_stages} needs the task stage of every step; "
                             f"{len(missing)} episode(s) have none (e.g. {missing[0]})")
        for e in eps:
            if len(stages[e]) != len(rho[e]):
                raise ValueError(f"episode {e}: {len(stages[e])} stage labels for {len(rho[e])} steps")
            keep[e] |= np.isin(stages[e], cfg.keep_stages)
        share = np.concatenate([np.isin(stages[e], cfg.keep_stages) for e in eps]).mean()
        # a dataset whose stages were never recorded (all 0, say) would switch the filter off
        (log.warning if share > 0.5 else log.info)(
            "keep_stages %s: %.1f%% of the samples are never removed", cfg.keep_stages, 100 * share)
    if cfg.max_removed_fraction < 1:
        flat_keep = np.concatenate([keep[e] for e in eps])
        flat_drop = np.concatenate([drops[e] for e in eps])
        band = np.clip((np.concatenate([rho[e] for e in eps]) * cfg.progress_bands).astype(int),
                       0, cfg.progress_bands - 1)
        for b in range(cfg.progress_bands):
            idx = np.flatnonzero(band == b)
            allowed = int(np.floor(cfg.max_removed_fraction * len(idx)))
            removed = idx[~flat_keep[idx]]
            if len(removed) > allowed:
                # keep back the removed samples whose drops are smallest (stable: ties by order)
                back = removed[np.argsort(flat_drop[removed], kind="stable")[:len(removed) - allowed]]
                flat_keep[back] = True
        bounds = np.cumsum([0] + [len(rho[e]) for e in eps])
        keep = {e: flat_keep[bounds[i]:bounds[i + 1]] for i, e in enumerate(eps)}
    return keep


@dataclass
class FilterResult:
    """What a filter run produced, per dataset step."""

    episode: np.ndarray
    timestep: np.ndarray
    keep: np.ndarray
    progress: np.ndarray
    config: FilterConfig

    def save(self, path: str | Path, summary: dict | None = None) -> Path:
        """``path`` (.npz: episode, timestep, keep, progress) and a ``.json`` summary beside it.
        Refuses an empty result: BC on nothing is never what was meant."""
        if not self.keep.any():
            raise ValueError(f"the filter kept 0 of {len(self.keep)} samples (delta="
                             f"{self.config.delta}): raise delta or check the critic")
        path = Path(path).with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, episode=self.episode, timestep=self.timestep, keep=self.keep,
                 progress=self.progress.astype(np.float32))
        tmp.replace(path)
        doc = {"config": asdict(self.config), **(summary or {})}
        path.with_suffix(".json").write_text(json.dumps(doc, indent=1))
        return path


def summarize(result: FilterResult, keyframes: dict[int, list[int]], stages: dict[int, np.ndarray],
              success: dict[int, bool], horizon: int) -> dict:
    """How much was kept, and where: overall, in successful vs failed episodes, near retry
    keyframes (within k steps before one — where retries begin) vs elsewhere, per task stage."""
    keep, ep, t = result.keep, result.episode, result.timestep
    near = np.zeros(len(keep), bool)
    for e, frames in keyframes.items():
        for m in frames:
            near |= (ep == e) & (t >= m - horizon) & (t <= m)
    stage = np.array([stages[e][i] if e in stages else -1 for e, i in zip(ep, t)])
    ok = np.array([success.get(int(e), False) for e in ep])

    def frac(sel: np.ndarray) -> float | None:
        return float(keep[sel].mean()) if sel.any() else None
    return {
        "samples": int(len(keep)), "kept": int(keep.sum()), "kept_fraction": float(keep.mean()),
        "kept_fraction_successful_episodes": frac(ok), "kept_fraction_failed_episodes": frac(~ok),
        "kept_fraction_near_retry_keyframes": frac(near), "kept_fraction_elsewhere": frac(~near),
        "kept_fraction_by_stage": {int(s): frac(stage == s) for s in np.unique(stage)},
        "removed_by_stage": {int(s): int((~keep & (stage == s)).sum()) for s in np.unique(stage)},
        "episodes_fully_kept": int(sum(keep[ep == e].all() for e in np.unique(ep))),
        "episodes": int(len(np.unique(ep))),
    }


def precision_recall(removed: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Of the removed samples, the fraction truly suboptimal (precision); of the truly
    suboptimal, the fraction removed (recall)."""
    removed, truth = np.asarray(removed, bool), np.asarray(truth, bool)
    tp = float((removed & truth).sum())
    return tp / max(removed.sum(), 1), tp / max(truth.sum(), 1)
