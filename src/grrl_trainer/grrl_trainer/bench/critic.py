"""``grrl-bench critic``: progress evaluation (filtering) throughput in transitions/s and TD3+BC
update throughput, for the state and the image model, side by side in one run (fresh models:
the speed does not depend on the weights)."""
from __future__ import annotations

import argparse
import time

import torch

from grrl_critic.td3bc import CriticTrainer, TD3BCConfig, critic_progress
from grrl_policy.model import preset
from grrl_trainer.keys import CAMERAS


def fake_batch(cfg, B: int) -> dict:
    state = cfg.observes_state
    k, D = cfg.horizon, cfg.action_dim

    def obs():
        o = {"instruction": ["thread the left lace end through the second eyelet on the right"] * B}
        if state:
            o["state"] = torch.randn(B, cfg.tiny.state_dim)
        else:
            s = cfg.tiny.image_size
            o["images"] = torch.randint(0, 256, (B, len(CAMERAS), s, s, 3), dtype=torch.uint8)
        return o
    return {"obs": obs(), "next_obs": obs(), "proprio": torch.randn(B, 16), "next_proprio": torch.randn(B, 16),
            "actions": torch.randn(B, k, D), "mask": torch.ones(B, k, dtype=torch.bool),
            "reward": torch.zeros(B), "done": torch.zeros(B, dtype=torch.bool),
            "offset": torch.randint(1, k + 1, (B,)), "timestep": torch.zeros(B, dtype=torch.long),
            "length": torch.full((B,), 100), "success": torch.ones(B, dtype=torch.bool),
            "hindsight": torch.zeros(B, dtype=torch.bool)}


def rate(fn, items: int, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return items * repeats / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grrl-bench critic", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"grrl-bench critic: {args.threads} torch thread(s)")
    for name, batch in (("tiny-state", 512), ("tiny", 64)):
        cfg = preset(name)
        trainer = CriticTrainer(cfg, TD3BCConfig())
        b = fake_batch(cfg, batch)
        filt = rate(lambda: critic_progress(trainer.model, b["obs"], b["proprio"], b["actions"]),
                    batch, args.repeats)
        upd = rate(lambda: trainer.update(b), batch, max(1, args.repeats // 2))
        print(f"  {name:<11} filtering {filt:9.0f} transitions/s (batch {batch}) | TD3+BC "
              f"training {upd:7.0f} samples/s ({upd / batch:.2f} updates/s) | ratio {filt / upd:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(None))
