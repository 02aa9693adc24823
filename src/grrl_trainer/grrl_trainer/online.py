"""``grrl-online``: online steering RL of an offline-trained policy in the simulator, in-process
(paper section 3.3) — the fast path of the trainer; the ROS trainer node runs the same learner
on episodes from the graph.

    grrl-online --policy runs/offline/bc_filtered_mirror/policy --out runs/online [--episodes 150]

1. warm-up: ``warmup_episodes`` rollouts of the offline policy (epsilon ~ N(0, I)) go to the
   off-policy buffer, and the critics (Q_phi and the distilled Q_phi') train on them alone
   for ``warmup_updates`` updates (no teleoperated data is mixed in);
2. rounds: the current checkpoint runs ``episodes_per_round`` episodes with its noise predictor
   steering (plus ``explore_std`` Gaussian exploration), they enter the on-policy buffer (the two
   most recent versions; older ones are handed to the off-policy buffer), ``updates_per_round``
   updates on 1:1 batches follow, and a new checkpoint version is written.

Every episode's success and its moving average over ``window`` episodes (Fig. 5, right) go to
``online.csv``, TensorBoard and ``online.png``. The learner, the round and the buffers are saved
after every round; a killed run restarts from the last round (episode ids are deterministic, so
an episode already in the buffer is never counted twice).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grrl_critic.steering import SteeringConfig, SteeringLearner
from grrl_policy.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from grrl_trainer.evaluate import EvalConfig, online_episode, rollouts
from grrl_trainer.replay import QuarantineError, ReplayBuffers
from grrl_trainer.run_utils import _atomic_torch_save

LOG = logging.getLogger("grrl-online")
STATE_FILE = "online_state.pt"


@dataclass
class OnlineConfig:
    """Schedule and sizes of the online stage (defaults: the paper's cadence)."""

    episodes: int = 144
    """online episodes in total"""
    episodes_per_round: int = 12
    """N: new episodes between update rounds"""
    updates_per_round: int = 50
    """M: learner updates per round"""
    warmup_episodes: int = 48
    """rollouts of the offline policy for the critic warm-up (the paper used 673)"""
    warmup_updates: int = 300
    batch_size: int = 128
    explore_std: float = 0.3
    """exploration noise around the predicted epsilon during online episodes"""
    first_seed: int = 20_000
    """training scenes: 20000.. (demonstrations use 0..9999, evaluations 10000..)"""
    warmup_first_seed: int = 30_000
    workers: int = 2
    time_limit: float = 60.0
    window: int = 24
    """moving-average window of the success curve (Fig. 5)"""
    gamma: float = 0.99
    steering: SteeringConfig = field(default_factory=SteeringConfig)
    seed: int = 0


def _episodes(policy: str, seeds: list[int], cfg: OnlineConfig, steer: bool, out: Path,
              progress: bool) -> list:
    ecfg = EvalConfig(episodes=len(seeds), workers=cfg.workers, time_limit=cfg.time_limit,
                      steer=steer, explore_std=cfg.explore_std if steer else 0.0,
                      record_decisions=True, out_dir=str(out), noise_seed=cfg.seed)
    return rollouts(policy, seeds, ecfg, progress=progress)


def run_online(policy: str | Path, run_dir: str | Path, cfg: OnlineConfig,
               progress: bool = True) -> dict[str, Any]:
    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model, meta = load_checkpoint(policy)
    base_version = meta.version
    obs_key = "state" if model.cfg.backbone == "tiny" and model.cfg.tiny.observation == "state" else "images"
    learner = SteeringLearner(model, dataclasses.replace(cfg.steering, gamma=cfg.gamma))
    buffers = ReplayBuffers(run_dir / "replay")
    state_path = run_dir / STATE_FILE
    st: dict[str, Any] = {"version": base_version, "episodes_done": 0, "warmup_done": False,
                          "checkpoint": str(policy), "log": []}
    if state_path.exists():
        saved = torch.load(state_path, weights_only=True)
        if saved["config"] != json.dumps(dataclasses.asdict(cfg)):
            raise ValueError(f"{run_dir} holds an online run with another configuration")
        learner.load_state_dict(saved["learner"])
        st = json.loads(saved["progress"])
        LOG.info("resuming at version %d after %d online episodes", st["version"], st["episodes_done"])

    def save_state() -> None:
        _atomic_torch_save({"config": json.dumps(dataclasses.asdict(cfg)), "learner": learner.state_dict(),
                            "progress": json.dumps(st)}, state_path)

    def add(results, version: int, warm: bool) -> list[bool]:
        outcomes = []
        for r in results:
            if not r.decisions:
                LOG.warning("episode seed %d: no usable decisions (%s); not stored", r.seed, r.reason)
                continue
            ep = online_episode(r, version, cfg.gamma, 0.1, model.cfg.horizon, obs_key,
                                episode_id=f"{'warm' if warm else 'online'}-v{version}-s{r.seed}")
            try:
                where = buffers.warm_up(ep) if warm else buffers.add(ep)
            except QuarantineError as exc:
                LOG.error("episode %s quarantined: %s", ep.episode_id, exc)
                continue
            if where != "duplicate":
                outcomes.append(bool(r.success))
        return outcomes

    t0 = time.time()
    if not st["warmup_done"]:
        seeds = [cfg.warmup_first_seed + i for i in range(cfg.warmup_episodes)]
        res = _episodes(str(policy), seeds, cfg, False, run_dir, progress)
        add(res, base_version, warm=True)
        st["warmup_success"] = float(np.mean([r.success for r in res])) if res else 0.0
        for _ in range(cfg.warmup_updates):
            learner.warm_up_critic(buffers.sample(cfg.batch_size))
        st["warmup_done"] = True
        # the first online round runs the warmed-up heads (the predictor is still untrained)
        st["version"] += 1
        path = run_dir / "checkpoints" / f"v{st['version']:04d}"
        save_checkpoint(learner.policy_model(), path, st["version"], {"role": "policy", "base": str(policy),
                                                                      "online_episodes": 0})
        st["checkpoint"] = str(path)
        save_state()
        LOG.info("warm-up: %d episodes of the offline policy (success %.1f%%), %d critic updates",
                 len(res), 100 * st["warmup_success"], cfg.warmup_updates)
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(str(run_dir / "tb"))
    while st["episodes_done"] < cfg.episodes:
        n = min(cfg.episodes_per_round, cfg.episodes - st["episodes_done"])
        seeds = [cfg.first_seed + st["episodes_done"] + i for i in range(n)]
        res = _episodes(st["checkpoint"], seeds, cfg, True, run_dir, progress)
        add(res, st["version"], warm=False)
        for r in res:
            st["log"].append({"episode": len(st["log"]) + 1, "version": st["version"], "seed": r.seed,
                              "success": bool(r.success), "reason": r.reason})
        metrics: dict[str, list[float]] = {}
        for _ in range(cfg.updates_per_round):
            for k, v in learner.update(buffers.sample(cfg.batch_size)).items():
                metrics.setdefault(k, []).append(float(v))
        st["version"] += 1
        path = run_dir / "checkpoints" / f"v{st['version']:04d}"
        save_checkpoint(learner.policy_model(), path, st["version"],
                        {"role": "policy", "online_episodes": st["episodes_done"] + n,
                         "base": str(policy)})
        st["checkpoint"] = str(path)
        st["episodes_done"] += n
        save_state()
        succ = [e["success"] for e in st["log"]]
        avg = float(np.mean(succ[-cfg.window:]))
        for k, v in metrics.items():
            writer.add_scalar(f"online/{k}", float(np.mean(v)), st["episodes_done"])
        writer.add_scalar("online/success_moving_avg", avg, st["episodes_done"])
        LOG.info("version %d: %d online episodes, success %d/%d this round, moving avg (%d) %.1f%%",
                 st["version"], st["episodes_done"], sum(r.success for r in res), len(res), cfg.window, 100 * avg)
    writer.close()
    write_curve(st["log"], run_dir, cfg.window)
    buffers.close()
    return {"final_checkpoint": st["checkpoint"], "version": st["version"],
            "episodes": st["episodes_done"], "log": st["log"], "wall_s": time.time() - t0,
            "warmup_success": st.get("warmup_success")}


def write_curve(log: list[dict], run_dir: Path, window: int) -> Path:
    """online.csv (episode, version, seed, success, moving average) and online.png (Fig. 5 right)."""
    succ = np.array([e["success"] for e in log], float)
    avg = np.array([succ[max(0, i + 1 - window):i + 1].mean() for i in range(len(succ))])
    with open(run_dir / "online.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["episode", "version", "seed", "success", f"moving_avg_{window}", "reason"])
        for e, a in zip(log, avg):
            w.writerow([e["episode"], e["version"], e["seed"], int(e["success"]), f"{a:.4f}", e["reason"]])
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grrl-online", description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="offline policy checkpoint")
    parser.add_argument("--out", required=True)
    d = OnlineConfig()
    for name, value in d.__dict__.items():
        if not isinstance(value, SteeringConfig):
            parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    cfg = dataclasses.replace(d, **{k: getattr(args, k) for k in d.__dict__ if k != "steering"})
    try:
        res = run_online(args.policy, args.out, cfg, progress=not args.quiet)
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
