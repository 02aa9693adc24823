"""Online steering RL (paper section 3.3): one learner loop, :class:`OnlineTrainer`, fed either by
in-process simulated episodes (``grrl-online``, ``grrl-reproduce``: :func:`run_online`) or by
episode records from the ROS graph (the trainer node, :mod:`grrl_trainer.online.trainer_node`).

    grrl-online --policy runs/offline/bc_filtered_mirror/policy --out runs/online [--episodes 150]

1. warm-up: ``warmup_episodes`` rollouts of the offline policy (epsilon ~ N(0, sigma^2 I),
   sigma = ``unsteered_noise``) go to the off-policy buffer, and the critics (Q_phi and the
   distilled Q_phi') train on them alone for ``warmup_updates`` updates (no teleoperated data
   is mixed in);
2. rounds: the current checkpoint runs ``episodes_per_round`` episodes with its noise predictor
   steering (plus ``explore_std`` Gaussian exploration), they enter the on-policy buffer (the two
   most recent versions; older ones are handed to the off-policy buffer), ``updates_per_round``
   updates on 1:1 batches follow, and a new checkpoint version is written.

Every episode's success and its moving average over ``window`` episodes (Fig. 5, right) go to
``online.csv``, TensorBoard and ``online.png``. Learner and progress are saved after the warm-up
and every round, the progress after every episode; a killed run restarts where it was (episode
ids are deterministic, so an episode already in the buffer is never counted twice).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grrl_critic.steering import SteeringConfig, SteeringLearner
from grrl_policy.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from grrl_policy.controller import ControllerConfig
from grrl_tools.config_cli import add_arguments, from_args
from grrl_trainer.evaluation.evaluate import EvalConfig, online_episode, rollouts
from grrl_trainer.online.replay import DUPLICATE, OFF, ON, QuarantineError, ReplayBuffers
from grrl_trainer.offline.run_utils import _atomic_torch_save

LOG = logging.getLogger("grrl-online")


@dataclass
class OnlineConfig:
    """The online stage's learner and schedule (grrl-online, grrl-reproduce, the trainer node)."""

    episodes_per_round: int = 12
    """N: new on-policy episodes between update rounds"""
    updates_per_round: int = 50
    """M: learner updates per round"""
    batch_size: int = 128
    """transitions per update (half from each buffer)"""
    warmup_episodes: int = 48
    """rollouts of the offline policy that warm up the off-policy buffer and the critics before
    the first steered episode (0: none; the paper used 673)"""
    warmup_updates: int = 300
    """critic-only updates once the warm-up episodes are in"""
    window: int = 24
    """moving-average window of the success curve (Fig. 5)"""
    seed: int = 0
    """torch seed of the learner and the replay sampling"""
    device: str = "cpu"
    """torch device of the learner (rollouts run on the CPU); may change on resume"""
    steering: SteeringConfig = field(default_factory=SteeringConfig)
    """the learner: losses, learning rates, the noise penalty, gamma"""

    def __post_init__(self) -> None:
        if self.episodes_per_round < 1 or self.updates_per_round < 0 or self.batch_size < 1:
            raise ValueError(f"episodes_per_round >= 1, updates_per_round >= 0 and batch_size "
                             f">= 1 are needed, got {self.episodes_per_round}, "
                             f"{self.updates_per_round}, {self.batch_size}")
        if self.warmup_episodes < 0 or self.warmup_updates < 0 or self.window < 1:
            raise ValueError(f"warmup_episodes, warmup_updates >= 0 and window >= 1 are needed, "
                             f"got {self.warmup_episodes}, {self.warmup_updates}, {self.window}")

    @property
    def gamma(self) -> float:
        return self.steering.gamma


@dataclass
class RolloutConfig:
    """Where the online episodes come from when they run in this process (grrl-online)."""

    episodes: int = 144
    """online episodes in total"""
    explore_std: float = 0.3
    """exploration noise around the predicted epsilon during online episodes"""
    explore_hold: int = 1
    """decisions each exploration draw is kept for (ControllerConfig.explore_hold)"""
    steer: bool = True
    """act with the noise predictor; False is the control run: the same episodes, buffers and
    updates (critics and predictor still learn), the policy acting with ε ~ N(0, σ²I),
    σ = ``unsteered_noise``"""
    unsteered_noise: float = 0.3
    """σ of the initial noise ε ~ N(0, σ²I) of episodes acted without the predictor (the
    warm-up rollouts of the offline policy, the ``steer=False`` control): 0.3 = ``explore_std``,
    the steered episodes' exploration around ε = 0, where an offline checkpoint's zeroed
    predictor starts (the flow's central chunk, where the offline policy does best), so the
    critics learn where the actor will act (warm-up 40/48 successful; the online policy 91/100
    held out); 1 = the flow's training noise (warm-up 25/48; online 68/100: docs/results/ladder)"""
    first_seed: int = 20_000
    """training scenes: 20000.. (demonstrations use 0..9999, evaluations 10000..)"""
    warmup_first_seed: int = 30_000
    """scenes of the warm-up rollouts"""
    workers: int = 2
    """simulator worker processes"""
    time_limit: float = 60.0
    """simulated seconds per episode"""

    def __post_init__(self) -> None:
        for name in ("explore_std", "unsteered_noise"):
            v = getattr(self, name)
            if not 0.0 <= v < float("inf"):
                raise ValueError(f"{name} must be finite and >= 0, got {v}")
        if self.episodes < 0 or self.workers < 1 or self.explore_hold < 1 or not self.time_limit > 0:
            raise ValueError(f"episodes >= 0, workers >= 1, explore_hold >= 1 and time_limit > 0 "
                             f"are needed, got {self.episodes}, {self.workers}, "
                             f"{self.explore_hold}, {self.time_limit}")


def _episodes(policy: str, seeds: list[int], rollout: RolloutConfig, seed: int, steer: bool,
              out: Path, progress: bool) -> list:
    ecfg = EvalConfig(episodes=len(seeds), workers=rollout.workers, time_limit=rollout.time_limit,
                      controller=ControllerConfig(
                          steer=steer, explore_std=rollout.explore_std if steer else 0.0,
                          explore_hold=rollout.explore_hold, noise_scale=rollout.unsteered_noise,
                          noise_seed=seed),
                      record_decisions=True, out_dir=str(out))
    return rollouts(policy, seeds, ecfg, progress=progress)


def checkpoint_path(run_dir: Path, version: int) -> Path:
    """run_dir/checkpoints/vNNNN (NAME of NAME.safetensors + NAME.json)."""
    return Path(run_dir) / "checkpoints" / f"v{version:04d}"


def write_checkpoint(learner: SteeringLearner, run_dir: Path, version: int,
                     extra: dict[str, Any]) -> tuple[Path, Any]:
    """The learner's policy as checkpoint ``version``: (path, CheckpointMeta). It is marked
    ``steerable``: its noise predictor went through the learner, so a policy node started with
    ``steer`` uses it (an offline checkpoint is acted with epsilon ~ N(0, I): the warm-up)."""
    path = checkpoint_path(run_dir, version)
    meta = save_checkpoint(learner.policy_model(), path, version,
                           {"role": "policy", "steerable": True, **extra})
    return path, meta


def update_round(learner: SteeringLearner, buffers: ReplayBuffers, updates: int, batch_size: int,
                 warm_up: bool = False, stop: Any = None) -> dict[str, float]:
    """``updates`` learner steps (critic-only ones with ``warm_up``) on 1:1 batches; the mean of
    every metric. ``stop``: a threading.Event checked between steps (InterruptedError if set)."""
    metrics: dict[str, list[float]] = {}
    step = learner.warm_up_critic if warm_up else learner.update
    for _ in range(updates):
        if stop is not None and stop.is_set():
            raise InterruptedError("stopped during an update round")
        for k, v in step(buffers.sample(batch_size)).items():
            metrics.setdefault(k, []).append(float(v))
    return {k: float(np.mean(v)) for k, v in metrics.items()}


def critic_separation(learner: SteeringLearner, buffers: ReplayBuffers, episode_ids: list[str],
                      batch_size: int = 256) -> dict[str, Any]:
    """How well Q_φ and Q_φ' tell the given episodes' successes from their failures: ROC-AUC of
    each critic's value over the transitions (label: the episode succeeded) and over the
    episodes (score: the mean value of its decisions); None while one class is empty."""
    from grrl_critic.flaw_metrics import auroc

    rows = [(i, t) for i in episode_ids for t in range(len(buffers.episode(i)))]
    q, qn, ok, ep_of = [], [], [], []
    for start in range(0, len(rows), batch_size):
        b = buffers.batch(rows[start:start + batch_size])
        values = learner.transition_values(b)
        q.append(values[0].cpu().numpy())
        qn.append(values[1].cpu().numpy())
        ok.append(b["success"].numpy())
        ep_of += b["episode_id"]
    if not rows:
        return {"episodes": 0, "transitions": 0}
    q, qn, ok = np.concatenate(q), np.concatenate(qn), np.concatenate(ok)
    ep_index = {e: n for n, e in enumerate(dict.fromkeys(ep_of))}
    idx = np.array([ep_index[e] for e in ep_of])
    count = np.bincount(idx)
    per_ep = {name: np.bincount(idx, weights=v) / count for name, v in (("q", q), ("q_noise", qn))}
    ep_ok = np.zeros(len(count), bool)
    ep_ok[idx] = ok

    def rounded(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    return {"episodes": len(count), "successes": int(ep_ok.sum()), "transitions": len(rows),
            "auroc_q_transitions": rounded(auroc(q, ok)),
            "auroc_q_noise_transitions": rounded(auroc(qn, ok)),
            "auroc_q_episodes": rounded(auroc(per_ep["q"], ep_ok)),
            "auroc_q_noise_episodes": rounded(auroc(per_ep["q_noise"], ep_ok)),
            "q_mean_success": rounded(float(q[ok].mean())) if ok.any() else None,
            "q_mean_failure": rounded(float(q[~ok].mean())) if (~ok).any() else None}


def moving_average(log: list[dict], window: int) -> float:
    succ = [e["success"] for e in log]
    return float(np.mean(succ[-window:])) if succ else 0.0


def run_online(policy: str | Path, run_dir: str | Path, cfg: OnlineConfig,
               rollout: RolloutConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Online RL of ``policy`` with in-process simulated episodes through :class:`OnlineTrainer`
    (the trainer node's core): the warm-up rollouts, then rounds of steered episodes, until
    ``rollout.episodes`` online episodes; resumable. Returns the final checkpoint, its version,
    the episode log and the warm-up success rate."""
    rollout = rollout or RolloutConfig()
    t0 = time.time()
    trainer = OnlineTrainer(policy, run_dir, cfg, strict=True)
    step_period = ControllerConfig().step_period

    def add(results, version: int, warm: bool) -> None:
        for r in results:
            if not r.decisions:
                LOG.warning("episode seed %d: no usable decisions (%s); not stored", r.seed, r.reason)
                continue
            ep = online_episode(r, version, cfg.gamma, step_period, trainer.model_cfg.horizon,
                                trainer.obs_key, episode_id=episode_id(warm, version, r.seed))
            try:
                trainer.add(ep, {"seed": r.seed, "reason": r.reason})
            except QuarantineError as exc:
                LOG.error("episode %s quarantined: %s", ep.episode_id, exc)

    try:
        if not trainer.st["warmup_done"]:
            seeds = [rollout.warmup_first_seed + i for i in range(cfg.warmup_episodes)]
            todo = [s for s in seeds if not trainer.seen(episode_id(True, trainer.base_version, s))]
            if todo:
                add(_episodes(trainer.policy, todo, rollout, cfg.seed, False, trainer.run_dir,
                              progress), trainer.base_version, warm=True)
            done = trainer.run_due(force=True)
            LOG.info("warm-up: %d episodes of the offline policy (success %.1f%%), %d critic "
                     "updates", len(trainer.st["warmup"]), 100 * trainer.warmup_success(),
                     cfg.warmup_updates if done else 0)
        while len(trainer.st["log"]) < rollout.episodes:
            n = min(cfg.episodes_per_round - len(trainer.st["pending"]),
                    rollout.episodes - len(trainer.st["log"]))
            seeds = [rollout.first_seed + len(trainer.st["log"]) + i for i in range(n)]
            before = len(trainer.st["log"])
            if n > 0:          # (n = 0: a resumed run whose round was complete but not trained)
                add(_episodes(trainer.st["checkpoint"], seeds, rollout, cfg.seed, rollout.steer,
                              trainer.run_dir, progress), trainer.version, warm=False)
                if len(trainer.st["log"]) == before:
                    raise RuntimeError(f"no usable episode in a round of {n} (seeds {seeds}): "
                                       "the policy fails before its first decision")
            trainer.run_due(force=True)
            recent = trainer.st["log"][before:]
            LOG.info("version %d: %d online episodes, success %d/%d this round, moving avg (%d) "
                     "%.1f%%", trainer.version, len(trainer.st["log"]),
                     sum(e["success"] for e in recent), len(recent), cfg.window,
                     100 * trainer.success_rate())
    finally:
        trainer.close()
    return {"final_checkpoint": trainer.st["checkpoint"], "version": trainer.version,
            "episodes": len(trainer.st["log"]), "log": trainer.st["log"],
            "wall_s": time.time() - t0, "warmup_success": trainer.warmup_success()}


def episode_id(warm: bool, version: int, seed: int) -> str:
    """The id of an in-process episode: the same on a rerun, so a resumed run skips it."""
    return f"{'warm' if warm else 'online'}-v{version}-s{seed}"


def _averages(log: list[dict], window: int) -> tuple[np.ndarray, np.ndarray]:
    succ = np.array([e["success"] for e in log], float)
    avg = np.array([succ[max(0, i + 1 - window):i + 1].mean() for i in range(len(succ))])
    return succ, avg


def write_csv(log: list[dict], run_dir: Path, window: int) -> Path:
    """online.csv: episode, version, seed, success, moving average, reason (and the episode id
    and robot when the log entries have them), written atomically."""
    _, avg = _averages(log, window)
    extra = [k for k in ("episode_id", "robot") if log and all(k in e for e in log)]
    out = Path(run_dir) / "online.csv"
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["episode", "version", "seed", "success", f"moving_avg_{window}", "reason", *extra])
        for e, a in zip(log, avg):
            w.writerow([e["episode"], e["version"], e["seed"], int(e["success"]), f"{a:.4f}",
                        e["reason"], *(e[k] for k in extra)])
    os.replace(tmp, out)
    return out


def write_curve(log: list[dict], run_dir: Path, window: int) -> Path:
    """online.csv (episode, version, seed, success, moving average) and online.png (Fig. 5 right)."""
    write_csv(log, run_dir, window)
    succ, avg = _averages(log, window)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(np.arange(1, len(succ) + 1), 100 * succ, ".", alpha=0.3, label="episode success")
    ax.plot(np.arange(1, len(succ) + 1), 100 * avg, lw=2, label=f"moving average ({window})")
    ax.set_xlabel("online episode")
    ax.set_ylabel("success (%)")
    ax.set_ylim(-5, 105)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = run_dir / "online.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


LEARNER_CURVES = ("q_mean", "noise_q_mean", "noise_q_gap", "actor_trusted_frac", "critic_loss",
                  "noise_critic_loss", "eps_abs_mean", "eps_dim_mean_abs", "eps_dim_std",
                  "eps_out_frac", "eps_saturated_frac", "penalty_frac")
"""the round metrics kept in the run state and drawn in learner.png"""


def write_learner_curves(rounds: list[dict], run_dir: Path) -> Path:
    """learner.png: per update round (x: online episodes so far), the critics' values, the
    losses, and where the steered ε sits against N(0, I) (mean |ε_i| 0.80, per-dimension std
    1, share beyond ±2.5 1.2% under N(0, I): the dotted lines)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = [r["episodes"] for r in rounds]
    panels = [("critic values", ("q_mean", "noise_q_mean", "noise_q_gap", "actor_trusted_frac"),
               (0.0,)),
              ("losses", ("critic_loss", "noise_critic_loss"), ()),
              ("steered ε vs N(0, I)", ("eps_abs_mean", "eps_dim_std", "eps_dim_mean_abs",
                                        "eps_out_frac", "eps_saturated_frac"), (0.80, 1.0, 0.012))]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    for ax, (title, keys, refs) in zip(axes, panels):
        for k in keys:
            pts = [(xi, r[k]) for xi, r in zip(x, rounds) if k in r]
            if pts:
                ax.plot(*zip(*pts), ".-", label=k)
        for ref in refs:
            ax.axhline(ref, color="grey", ls=":", lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("online episodes")
        ax.legend(fontsize=6)
    fig.tight_layout()
    out = Path(run_dir) / "learner.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


class OnlineTrainer:
    """The online stage fed episode by episode (ROS-free; the trainer node's core).

    ``add(ep)`` stores an :class:`~grrl_trainer.online.replay.OnlineEpisode` (warm-up episodes, those
    of the offline checkpoint's version while ``warmup_episodes`` > 0, into the off-policy
    buffer; the others through the version hand-over) and logs its success; ``due()`` says
    whether the warm-up or an update round is due (``episodes_per_round`` new on-policy
    episodes since the last round), ``run_due()`` runs it and writes checkpoint version v + 1
    (``run_dir/checkpoints/vNNNN``). Learner and progress are saved atomically after the
    warm-up and every round (``online_state.pt``, read with ``torch.load(weights_only=True)``),
    the progress alone after every episode (``online_progress.json``); the buffers persist
    themselves. A restart resumes: episodes already stored are duplicates (not counted
    twice), and stored episodes the saved progress does not know (a kill between the two
    writes) are taken into the log as if they had just arrived.
    """

    STATE = "online_state.pt"
    PROGRESS = "online_progress.json"

    def __init__(self, policy: str | Path, run_dir: str | Path, cfg: OnlineConfig,
                 strict: bool = False):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        model, meta = load_checkpoint(policy)
        self.policy = str(Path(policy).resolve())
        self.base_version = meta.version
        self.model_cfg = model.cfg
        self.obs_key = model.cfg.observation_key
        self.learner = SteeringLearner(model, cfg.steering, cfg.device)
        if not meta.extra.get("steerable"):    # an offline policy: its predictor never trained
            self.learner.start_noise_predictor()
        self.stop = threading.Event()
        self.buffers = ReplayBuffers(self.run_dir / "replay", seed=cfg.seed, gamma=cfg.gamma)
        self.state_path = self.run_dir / self.STATE
        self.st: dict[str, Any] = {
            "policy": self.policy, "base_version": self.base_version,
            "version": self.base_version, "checkpoint": self.policy, "sha256": meta.sha256,
            "warmup_done": cfg.warmup_episodes == 0, "warmup": [], "log": [], "pending": [],
            "rounds": 0, "rejected": {}}
        self.progress_path = self.run_dir / self.PROGRESS
        self.resumed = False
        st = None
        if self.state_path.exists():
            saved = torch.load(self.state_path, weights_only=True)
            st = json.loads(saved["progress"])
            self._check_policy(st)
            if saved.get("config") != self._config_json():
                if strict:
                    raise ValueError(f"{self.run_dir} holds an online run with another "
                                     f"configuration: {saved.get('config')}")
                LOG.warning("%s was started with another configuration: %s (now %s)",
                            self.run_dir, saved.get("config"), self._config_json())
            self.learner.load_state_dict(saved["learner"])
        if self.progress_path.exists():
            try:
                newer = json.loads(self.progress_path.read_text())
            except ValueError as exc:
                LOG.warning("%s is unreadable (%s); using the progress saved with the learner",
                            self.progress_path, exc)
                newer = None
            # the episodes since the learner was saved (same version: no round since)
            key = lambda d: (d.get("version"), d.get("rounds"), d.get("warmup_done"))  # noqa: E731
            if newer is not None and (st is None or key(newer) == key(st)):
                self._check_policy(newer)
                st = newer
        if st is not None:
            self.st = st
            self.resumed = True
        self._reconcile()
        self._writer = None

    # -- state -------------------------------------------------------------------------------
    def _config_json(self) -> str:
        """What a resumed run should agree on (the device is where it runs, not what it learns)."""
        return json.dumps({k: v for k, v in dataclasses.asdict(self.cfg).items() if k != "device"},
                          sort_keys=True)

    def _check_policy(self, st: dict[str, Any]) -> None:
        if st.get("policy") != self.policy:
            raise ValueError(f"{self.run_dir} holds an online run of {st.get('policy')}, not "
                             f"{self.policy}")

    def save(self, learner: bool = False) -> None:
        """The progress (every episode: a small JSON), with ``learner`` also the learner and the
        progress together (after the warm-up and every round)."""
        progress = json.dumps(self.st)
        if learner:
            _atomic_torch_save({"config": self._config_json(),
                                "learner": self.learner.state_dict(), "progress": progress},
                               self.state_path)
        tmp = self.progress_path.with_name(self.progress_path.name + ".tmp")
        tmp.write_text(progress)
        os.replace(tmp, self.progress_path)

    def _known(self) -> set[str]:
        return {e["episode_id"] for e in self.st["warmup"] + self.st["log"]}

    def _reconcile(self) -> None:
        """Stored episodes the progress does not know: logged as if they had just arrived."""
        known = self._known()
        missing = [i for i in self.buffers.ids() if i not in known]
        for episode_id in missing:
            ep = self.buffers.episode(episode_id)
            warm = self._is_warm_up(ep) and self.buffers.buffer_of(episode_id) == OFF
            self._log(ep, {"seed": -1, "reason": "recovered from the replay buffer"}, warm,
                      self.buffers.buffer_of(episode_id))
            LOG.warning("episode %s was stored but not logged (killed in between): logged now",
                        episode_id)
        if missing:
            self.save()

    # -- episodes ------------------------------------------------------------------------------
    def _is_warm_up(self, ep) -> bool:
        return self.cfg.warmup_episodes > 0 and int(ep.policy_version) <= self.base_version

    def seen(self, episode_id: str) -> str | None:
        """"stored" / "rejected: <reason>" for an episode this run already has, else None."""
        if episode_id in self.buffers or episode_id in self._known():
            return "stored"
        reason = self.st["rejected"].get(episode_id)
        return None if reason is None else f"rejected: {reason}"

    def reject(self, episode_id: str, reason: str, quarantine: bool = False) -> None:
        """Remember an episode that could not be used (its record), so it is not read again;
        with ``quarantine`` the reason also goes to the buffers' quarantine directory."""
        self.st["rejected"][episode_id] = reason
        if quarantine:
            name = re.sub(r"[^A-Za-z0-9._-]", "_", episode_id)[:100] or "unknown"
            (self.buffers.quarantine_dir / f"{name}.{time.time_ns()}.reason.txt").write_text(
                f"{episode_id!r}: {reason}\n")
        self.save()

    def add(self, ep, info: dict[str, Any] | None = None) -> str:
        """Store an episode: "warm-up", "on", "off" or "duplicate"; raises QuarantineError (the
        episode is quarantined by the buffers, never trained on)."""
        warm = self._is_warm_up(ep)
        try:
            where = self.buffers.warm_up(ep) if warm else self.buffers.add(ep)
        except QuarantineError as exc:
            self.st["rejected"][ep.episode_id] = f"quarantined: {exc}"
            self.save()
            raise
        if where == DUPLICATE:
            return where
        entry = self._log(ep, info or {}, warm, where)
        self.save()
        if not warm:
            w = self.writer()
            w.add_scalar("online/success", float(entry["success"]), entry["episode"])
            w.add_scalar("online/success_moving_avg", self.success_rate(), entry["episode"])
            write_csv(self.st["log"], self.run_dir, self.cfg.window)
        return "warm-up" if warm else where

    def _log(self, ep, info: dict[str, Any], warm: bool, where: str) -> dict[str, Any]:
        book = self.st["warmup"] if warm else self.st["log"]
        entry = {"episode": len(book) + 1, "episode_id": ep.episode_id, "robot": ep.robot,
                 "version": int(ep.policy_version), "seed": int(info.get("seed", -1)),
                 "success": bool(ep.success), "reason": str(info.get("reason", "")),
                 "decisions": len(ep), "time": time.time()}
        book.append(entry)
        if not warm and where == ON:
            self.st["pending"].append(ep.episode_id)
        return entry

    def warmup_success(self) -> float:
        """Success rate of the warm-up episodes (0 before any)."""
        warm = self.st["warmup"]
        return float(np.mean([e["success"] for e in warm])) if warm else 0.0

    def success_rate(self) -> float:
        """Moving average of the online episodes' success over ``window``."""
        return moving_average(self.st["log"], self.cfg.window)

    # -- rounds ----------------------------------------------------------------------------------
    def due(self) -> str | None:
        """"warm-up" or "round" when one is due, else None."""
        if not self.st["warmup_done"]:
            return "warm-up" if len(self.st["warmup"]) >= self.cfg.warmup_episodes else None
        return "round" if len(self.st["pending"]) >= self.cfg.episodes_per_round else None

    def run_due(self, force: bool = False) -> dict[str, Any] | None:
        """Run what is due; returns {"kind", "version", "path", "sha256", "metrics",
        "episodes", "wall_s"} of the new checkpoint, or None. ``force``: the warm-up or a round
        with fewer episodes than scheduled (the last round of a run, lost episodes), if any."""
        kind = self.due()
        if kind is None and force:
            if not self.st["warmup_done"]:
                kind = "warm-up" if self.st["warmup"] else None
            elif self.st["pending"]:
                kind = "round"
        if kind is None:
            return None
        t0 = time.time()
        if kind == "warm-up":
            metrics = update_round(self.learner, self.buffers, self.cfg.warmup_updates,
                                   self.cfg.batch_size, warm_up=True, stop=self.stop)
            used: list[str] = []
            # did the warm-up teach the critics anything? (reported before any steering)
            sep = critic_separation(self.learner, self.buffers,
                                    [e["episode_id"] for e in self.st["warmup"]
                                     if e["episode_id"] in self.buffers])
            self.st["warmup_critics"] = sep
            (self.run_dir / "warmup_critics.json").write_text(json.dumps(sep, indent=1))
            LOG.info("warm-up critics on their %d episodes (%d successful): AUROC of Q %s / Q' %s "
                     "per transition, %s / %s per episode", sep["episodes"], sep.get("successes", 0),
                     sep.get("auroc_q_transitions"), sep.get("auroc_q_noise_transitions"),
                     sep.get("auroc_q_episodes"), sep.get("auroc_q_noise_episodes"))
            metrics.update({f"warmup_{k}": v for k, v in sep.items()
                            if k.startswith("auroc") and v is not None})
        else:
            metrics = update_round(self.learner, self.buffers, self.cfg.updates_per_round,
                                   self.cfg.batch_size, stop=self.stop)
            used = list(self.st["pending"])
        version = self.st["version"] + 1
        path, meta = write_checkpoint(self.learner, self.run_dir, version, {
            "base": self.policy, "online_episodes": len(self.st["log"]), "round": kind})
        self.st.update(version=version, checkpoint=str(path), sha256=meta.sha256)
        if kind == "warm-up":
            self.st["warmup_done"] = True
        else:
            self.st["pending"] = [i for i in self.st["pending"] if i not in set(used)]
            self.st["rounds"] += 1
        self.st.setdefault("learner_log", []).append(
            {"kind": kind, "version": version, "episodes": len(self.st["log"]),
             **{k: round(v, 5) for k, v in metrics.items() if k in LEARNER_CURVES}})
        self.save(learner=True)
        w = self.writer()
        for k, v in metrics.items():
            w.add_scalar(f"online/{k}", v, len(self.st["log"]))
        w.flush()
        if self.st["log"]:
            write_curve(self.st["log"], self.run_dir, self.cfg.window)
        write_learner_curves(self.st["learner_log"], self.run_dir)
        return {"kind": kind, "version": version, "path": str(path), "sha256": meta.sha256,
                "metrics": metrics, "episodes": len(used), "wall_s": time.time() - t0}

    @property
    def version(self) -> int:
        return int(self.st["version"])

    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(str(self.run_dir / "tb"))
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.st["log"]:
            write_curve(self.st["log"], self.run_dir, self.cfg.window)
        self.buffers.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grrl-online", description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="offline policy checkpoint")
    parser.add_argument("--out", required=True, help="run directory (resumed when it exists)")
    add_arguments(parser, OnlineConfig())
    add_arguments(parser, RolloutConfig())
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        cfg, rollout = from_args(args, OnlineConfig()), from_args(args, RolloutConfig())
        res = run_online(args.policy, args.out, cfg, rollout, progress=not args.quiet)
    except (ValueError, CheckpointError, FileNotFoundError) as exc:
        print(f"grrl-online: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("grrl-online: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    succ = [e["success"] for e in res["log"]]
    print(f"online: {res['episodes']} episodes, final version {res['version']} "
          f"({res['final_checkpoint']}); success {100 * np.mean(succ) if succ else 0:.1f}% overall, "
          f"{100 * np.mean(succ[-cfg.window:]) if succ else 0:.1f}% over the last {cfg.window}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
