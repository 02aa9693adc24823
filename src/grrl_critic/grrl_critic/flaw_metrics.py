"""How well task progress finds the demonstrator's mistakes, measured against its ground truth.

GR-RL's filter (section 3.1) assumes that the progress rho_t of a learned critic drops where a
demonstrator errs. Our simulated demonstrator labels every step with the flaw it acts out
(``task/flaw``), so the assumption can be measured instead of eyeballed:

* **score AUROC** — each sample t gets the filter's score, the largest drop within
  rho_{t:t+k} (:func:`grrl_critic.filtering.window_drop`); the ROC-AUC of that score against
  the flaw labels compares critics without choosing a delta. Per flaw type the positives are
  that type's samples and the negatives the unflawed ones.
* **the delta rule** — for each delta, the fraction removed, the precision of the removals
  and the recall of the flawed samples (overall and per type), and the best precision at a
  given recall over every threshold of the score.
* **calibration** — rho against the empirical discounted success from that step (gamma^(T-1-t)
  in a successful episode, 0 in a failed one: the return of eq. (1)), in bins of rho.

A sample is flawed (``truth``) if its own step is (``'step'``), if any of the steps t..t+k
whose progress the rule reads is (``'chunk'``: BC on sample t imitates the chunk a_{t:t+k};
the one step more is the rule's window, since rho_m = Q(s_m, a_m) already falls for a bad
a_{m-1} that led to s_m), or if the fall into a flaw lies in that window (``'onset'``: the
steps m-1 and m around a flaw's first step m, the action that starts the mistake). A drop rule can only
ever fire where progress falls, i.e. at a flaw's onset; a flaw's later steps (the rest of a
4 s miss, a whole pause) have flat or rising progress. Reporting the three truths separates
"the critic does not see the mistake" from "the rule cannot mark its whole duration".
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .filtering import window_drop

TRUTHS = ("step", "chunk", "onset")
DEFAULT_DELTAS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)


@dataclass
class FlawEvalConfig:
    """How removals are scored against the flaw labels."""

    horizon: int = 16
    """k: the filter's window rho_{t:t+k} (and a chunk's length for truth='chunk')"""
    drop: str = "peak_to_trough"
    """the filter's drop measure (grrl_critic.filtering.FilterConfig.drop)"""
    drop_gamma: float = 0.99
    """the clean rate of the 'shortfall' drops (the critic's gamma)"""
    rho_floor: float = 1e-3
    """rho is floored here before the log of the 'log_' drops"""
    truth: str = "step"
    """a sample is flawed if its 'step' is, if any step of its 'chunk' a_{t:t+k} is, or if its
    chunk holds a flaw's first step ('onset')"""
    deltas: tuple[float, ...] = DEFAULT_DELTAS
    """the deltas at which the filter's precision and recall are reported"""
    recall_target: float = 0.6
    """report the best precision among thresholds whose recall is at least this"""
    gamma: float = 0.99
    """discount of the empirical return in the calibration"""
    calibration_bins: int = 10
    """bins of rho in the calibration"""

    def __post_init__(self) -> None:
        if self.truth not in TRUTHS:
            raise ValueError(f"truth must be one of {TRUTHS}, got {self.truth!r}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")


def auroc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC-AUC of ``score`` for the boolean ``positive`` (ties count one half); None if a class
    is empty. Rank form: P(score of a random positive > score of a random negative)."""
    from scipy.stats import rankdata
    score, positive = np.asarray(score, np.float64), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(score: np.ndarray, positive: np.ndarray, points: int = 101
              ) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) at ``points`` thresholds over the score's
    quantiles, for plots."""
    score, positive = np.asarray(score, np.float64), np.asarray(positive, bool)
    thr = np.unique(np.quantile(score, np.linspace(0, 1, points)))
    tpr = np.array([(score[positive] > t).mean() for t in thr] + [1.0])
    fpr = np.array([(score[~positive] > t).mean() for t in thr] + [1.0])
    return fpr[::-1], tpr[::-1]


def best_precision_at_recall(score: np.ndarray, positive: np.ndarray, recall: float
                             ) -> tuple[float | None, float | None]:
    """The highest precision of "remove if score > threshold" over all thresholds whose recall
    is >= ``recall``, and that threshold (None, None if no threshold reaches it)."""
    score, positive = np.asarray(score, np.float64), np.asarray(positive, bool)
    n_pos = positive.sum()
    if n_pos == 0:
        return None, None
    order = np.argsort(-score, kind="stable")
    s, p = score[order], positive[order]
    tp, n = np.cumsum(p), np.arange(1, len(s) + 1)
    # only cut between distinct scores: "score > threshold" cannot split a tie
    last = np.r_[s[1:] != s[:-1], True]
    prec, rec = tp[last] / n[last], tp[last] / n_pos
    ok = rec >= recall
    if not ok.any():
        return None, None
    i = int(np.argmax(np.where(ok, prec, -1.0)))
    cut = np.flatnonzero(last)[i]
    threshold = float(s[cut + 1]) if cut + 1 < len(s) else float(s[cut]) - 1e-9
    return float(prec[i]), threshold


def flawed_samples(flaw: np.ndarray, horizon: int, truth: str) -> np.ndarray:
    """(T,) flaw codes per step → (T,) the code that makes sample t flawed (0: clean). With
    truth='chunk' the code of the first flawed step among t..t+k; with 'onset' that of the
    earliest flaw whose first step m has m-k <= t <= m-1."""
    flaw = np.asarray(flaw)
    if truth == "step":
        return flaw.copy()
    T = len(flaw)
    out = np.zeros_like(flaw)
    if truth == "onset":
        # a flaw that begins at step m shows as the fall rho_{m-1} -> rho_m: the windows that
        # hold both, t in m-k .. m-1
        onsets = np.flatnonzero((flaw > 0) & np.r_[True, flaw[1:] != flaw[:-1]])
        for m in onsets[::-1]:                     # the earliest onset wins
            out[max(m - horizon, 0):max(m, 1)] = flaw[m]
        return out
    for t in range(T):
        w = flaw[t:min(t + horizon + 1, T)]
        nz = np.flatnonzero(w)
        out[t] = w[nz[0]] if len(nz) else 0
    return out


@dataclass
class FlawEvaluation:
    """Everything :func:`evaluate_flaws` measured (``as_dict`` is the JSON)."""

    config: FlawEvalConfig
    samples: int
    flawed_fraction: float
    samples_by_type: dict[str, int]
    auroc: dict[str, float | None]
    precision_at_recall: dict[str, float | None]
    by_delta: list[dict]
    calibration: dict
    by_stage: dict = field(default_factory=dict)
    """per task stage (when stages were given): samples, flawed fraction and the delta rows
    (removed fraction, precision, recall): where in the task the filter removes, and how well"""
    curves: dict = field(default_factory=dict, repr=False)
    """ROC curves per type, for the plot (not in the JSON)"""

    def as_dict(self) -> dict:
        from dataclasses import asdict
        d = {k: v for k, v in self.__dict__.items() if k != "curves"}
        d["config"] = asdict(self.config)
        return d


def evaluate_flaws(rho: dict[int, np.ndarray], flaw: dict[int, np.ndarray],
                   success: dict[int, bool], flaw_types: tuple[str, ...],
                   cfg: FlawEvalConfig | None = None,
                   stages: dict[int, np.ndarray] | None = None) -> FlawEvaluation:
    """rho, flaw: {episode: (T,)} progress and flaw codes (0 = none, names in ``flaw_types``);
    success: {episode: bool}; stages: {episode: (T,)} task stage per step (optional)."""
    cfg = cfg or FlawEvalConfig()
    eps = sorted(rho)
    missing = [e for e in eps if e not in flaw]
    if missing:
        raise ValueError(f"episodes {missing[:5]} have no flaw labels")
    for e in eps:
        if len(rho[e]) != len(flaw[e]):
            raise ValueError(f"episode {e}: {len(rho[e])} progress values, {len(flaw[e])} labels")
    score = np.concatenate([window_drop(rho[e], cfg.horizon, cfg.drop, cfg.drop_gamma,
                                        cfg.rho_floor) for e in eps])
    code = np.concatenate([flawed_samples(flaw[e], cfg.horizon, cfg.truth) for e in eps])
    flawed = code > 0
    types = {name: i for i, name in enumerate(flaw_types) if i > 0}
    present = {n: i for n, i in types.items() if (code == i).any()}

    def per_type(fn):
        out = {"all": fn(score, flawed)}
        for name, i in present.items():
            sel = (code == i) | ~flawed
            out[name] = fn(score[sel], code[sel] == i)
        return out

    roc = per_type(auroc)
    prec_at = per_type(lambda s, p: best_precision_at_recall(s, p, cfg.recall_target)[0])
    _, thr = best_precision_at_recall(score, flawed, cfg.recall_target)
    prec_at["threshold"] = thr
    rows = []
    for delta in cfg.deltas:
        removed = score > delta
        rows.append({**_delta_row(removed, flawed, delta),
                     "recall_by_type": {n: float(removed[code == i].mean())
                                        for n, i in present.items()},
                     "removed_clean_fraction": float(removed[~flawed].mean()) if (~flawed).any()
                     else None})
    by_stage = {}
    if stages is not None:
        stage = np.concatenate([np.asarray(stages[e]) for e in eps])
        if len(stage) != len(score):
            raise ValueError(f"{len(stage)} stage labels for {len(score)} samples")
        for s in np.unique(stage):
            sel = stage == s
            by_stage[str(int(s))] = {
                "samples": int(sel.sum()), "flawed_fraction": float(flawed[sel].mean()),
                "by_delta": [_delta_row(score[sel] > d, flawed[sel], d) for d in cfg.deltas]}
    return FlawEvaluation(
        config=cfg, samples=len(score), flawed_fraction=float(flawed.mean()),
        samples_by_type={n: int((code == i).sum()) for n, i in present.items()},
        auroc=roc, precision_at_recall=prec_at, by_delta=rows,
        calibration=calibration(rho, success, cfg.gamma, cfg.calibration_bins), by_stage=by_stage,
        curves={"all": roc_curve(score, flawed),
                **{n: roc_curve(score[(code == i) | ~flawed], code[(code == i) | ~flawed] == i)
                   for n, i in present.items()}})


def _delta_row(removed: np.ndarray, flawed: np.ndarray, delta: float) -> dict:
    """Removed fraction, precision of the removals and recall of the flawed samples."""
    tp = int((removed & flawed).sum())
    return {"delta": float(delta), "removed_fraction": float(removed.mean()),
            "precision": tp / int(removed.sum()) if removed.any() else None,
            "recall": tp / max(int(flawed.sum()), 1)}


def calibration(rho: dict[int, np.ndarray], success: dict[int, bool], gamma: float,
                bins: int) -> dict:
    """Predicted progress vs the empirical discounted success from each step, in ``bins``
    equal-width bins of rho over [0, 1]; ``ece`` is the count-weighted mean |gap|. Also the mean
    rho at the first and the last step of successful and of failed episodes."""
    pred, ret = [], []
    for e, r in rho.items():
        T = len(r)
        pred.append(r)
        ret.append(gamma ** (T - 1 - np.arange(T)) if success[e] else np.zeros(T))
    pred, ret = np.concatenate(pred).astype(np.float64), np.concatenate(ret)
    idx = np.clip((pred * bins).astype(int), 0, bins - 1)
    rows = []
    for b in range(bins):
        sel = idx == b
        if sel.any():
            rows.append({"bin": [b / bins, (b + 1) / bins], "count": int(sel.sum()),
                         "predicted": float(pred[sel].mean()), "empirical": float(ret[sel].mean())})
    ece = sum(r["count"] * abs(r["predicted"] - r["empirical"]) for r in rows) / max(len(pred), 1)

    def ends(ok: bool, i: int) -> float | None:
        v = [float(r[i]) for e, r in rho.items() if success[e] == ok and len(r)]
        return float(np.mean(v)) if v else None
    return {"bins": rows, "ece": float(ece),
            "rho_first_successful": ends(True, 0), "rho_last_successful": ends(True, -1),
            "rho_first_failed": ends(False, 0), "rho_last_failed": ends(False, -1)}
