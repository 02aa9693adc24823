"""``grrl-bench online``: online RL throughput — learner updates/s (eqs. 3 and 4 plus the TD3
critic, batch from the 1:1 buffers) and simulated episodes/hour with 1 and with 2 robots (worker
processes running the steered policy), side by side in one run, on a fresh ``tiny-state`` model.
Through ROS the robots are namespaced graphs instead of processes (README: 179 and 357
episodes/hour measured at real time with 20 s episodes)."""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from grrl_critic.steering import SteeringConfig, SteeringLearner
from grrl_policy.checkpoint import save_checkpoint
from grrl_policy.controller import ControllerConfig
from grrl_policy.model import GRRLModel, preset
from grrl_trainer.evaluation.evaluate import EvalConfig, online_episode, rollouts
from grrl_trainer.online.replay import ReplayBuffers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grrl-bench online", description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=6, help="episodes per robot count")
    parser.add_argument("--time-limit", type=float, default=10.0, help="simulated seconds per episode")
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = GRRLModel(preset("tiny-state"))
        save_checkpoint(model, tmp / "policy", version=1)
        rates = {}
        buffers = ReplayBuffers(tmp / "replay", fsync=False)
        for robots in (1, 2):
            # the worker processes' start-up (torch, text encoder, simulator) is paid once per
            # session by a trainer: measure it on two 0.1 s episodes and leave it out
            quick = EvalConfig(episodes=2, workers=robots, time_limit=0.1, out_dir=str(tmp))
            t0 = time.perf_counter()
            rollouts(str(tmp / "policy"), [1, 2], quick, progress=False)
            startup = time.perf_counter() - t0
            cfg = EvalConfig(episodes=args.episodes, workers=robots, time_limit=args.time_limit,
                             controller=ControllerConfig(steer=True, explore_std=0.3),
                             record_decisions=True, out_dir=str(tmp))
            seeds = [20_000 + 100 * robots + i for i in range(args.episodes)]
            start = time.perf_counter()
            results = rollouts(str(tmp / "policy"), seeds, cfg, progress=False)
            wall = max(1e-6, time.perf_counter() - start - (startup if robots > 1 else 0.0))
            sim = sum(r.sim_time for r in results)
            rates[robots] = (len(results) / wall * 3600, sim / wall)
            for r in results:
                if r.decisions:
                    buffers.add(online_episode(r, 1, 0.99, 0.1, model.cfg.horizon, "state",
                                               episode_id=f"b{robots}-s{r.seed}"))
        learner = SteeringLearner(model, SteeringConfig())
        learner.update(buffers.sample(args.batch_size))
        start = time.perf_counter()
        for _ in range(args.updates):
            learner.update(buffers.sample(args.batch_size))
        ups = args.updates / (time.perf_counter() - start)
        buffers.close()
    print(f"grrl-bench online: tiny-state, {args.time_limit:.0f} s episodes (sim time), 1 torch thread")
    for robots, (eph, rtf) in rates.items():
        print(f"  {robots} simulated robot(s): {eph:7.0f} episodes/hour  ({rtf:.1f} simulated s per wall s)")
    print(f"  2 vs 1 robots: {rates[2][0] / rates[1][0]:.2f}x episodes/hour")
    print(f"  learner: {ups:.2f} updates/s at batch {args.batch_size} (a round of 50 updates: "
          f"{50 / ups:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
