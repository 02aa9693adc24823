"""``grrl-bench bc``: behaviour-cloning throughput (samples/s) of the state model, side by side
in one run: the per-sample loader ('windows', one loader worker) against batches gathered in
memory ('arrays'), for the reproduction's model, a narrower one and the narrower one with a
pooled instruction token. Both data paths train on the same samples in the same order; only
the time differs. For each model it also counts the floating-point operations of one BC sample
(forward and backward, torch's FLOP counter) and measures what this machine's matrix multiply
reaches with the same threads: their ratio is the most samples/s the model could train at."""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from grrl_trainer.data.collect import CollectConfig, collect
from grrl_trainer.offline.bc import BCConfig, read_loss_csv, train_bc

NARROW = {"tiny": {"width": 64, "heads": 4, "head_dim": 16},
          "expert": {"width": 64, "heads": 4, "mlp_ratio": 4.0}}
"""the narrower model of the comparison (width 64 instead of 128)"""
POOLED = {"tiny": {**NARROW["tiny"], "text_pool": True}, "expert": NARROW["expert"]}
"""the narrower model with the instruction pooled into one token (a 5-token prefix)"""
MODELS = {"width128": {}, "width64": NARROW, "width64-pooled": POOLED}


def bc_rate(data: Path, run: Path, data_path: str, model: dict, steps: int, batch_size: int,
            threads: int) -> float:
    """Mean samples/s of ``steps`` BC steps after the first logged interval (warm-up)."""
    cfg = BCConfig(preset="tiny-state-task", model=model, horizon=model.get("horizon", 16),
                   data_path=data_path, steps=steps,
                   batch_size=batch_size, log_every=max(1, steps // 5), checkpoint_every=steps,
                   workers=1 if data_path == "windows" else 0, threads=threads)
    train_bc(data, run, cfg, progress=False)
    rates = [float(r) for r in read_loss_csv(run)["samples_per_s"]]
    return sum(rates[1:]) / max(1, len(rates) - 1)


def bc_flops_per_sample(model: dict, batch_size: int = 64) -> float:
    """Floating-point operations of one BC sample (flow-matching loss, forward + backward) of
    the recipe's state model with ``model`` overrides."""
    from torch.utils.flop_counter import FlopCounterMode

    from grrl_policy.model import GRRLModel, configure

    cfg = configure("tiny-state-task", {**RECIPE, **model})
    net = GRRLModel(cfg).train()
    obs = {"instruction": ["thread the left lace end through the second eyelet on the right"]
           * batch_size, "state": torch.randn(batch_size, cfg.tiny.state_dim)}
    proprio = torch.randn(batch_size, cfg.action_dim)
    actions = torch.randn(batch_size, cfg.horizon, cfg.action_dim)
    with torch.no_grad():
        net.encode(obs)     # the frozen text encoder's features are cached after their first use
    with FlopCounterMode(display=False) as counter:
        net.bc_loss(obs, proprio, actions).backward()
    return counter.get_total_flops() / batch_size


def matmul_flops_per_s(threads: int, n: int = 512, seconds: float = 1.0) -> float:
    """What float32 matrix multiplication reaches here (n x n, ``threads`` torch threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            reps += 1
        return 2.0 * n ** 3 * reps / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)


RECIPE = {"action_mode": "delta", "action_norm": "per_step", "state_norm": True}
"""the imitation recipe's model settings (they do not change the cost; stated for clarity)"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grrl-bench bc", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="", help="a state dataset (default: collect --episodes)")
    parser.add_argument("--episodes", type=int, default=4, help="episodes collected if no --data")
    parser.add_argument("--steps", type=int, default=60, help="BC steps per measurement")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: auto)")
    parser.add_argument("--json", default="", help="also write the numbers here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "data"
        if not args.data:
            collect(data, CollectConfig(images=False, clean=True), list(range(args.episodes)),
                    workers=1, progress=False)
        out = {}
        for name, model in MODELS.items():
            for path in ("windows", "arrays"):
                out[f"{name}/{path}"] = bc_rate(data, Path(tmp) / f"{name}-{path}", path, model,
                                                args.steps, args.batch_size, args.threads)
    for name in MODELS:
        w, a = out[f"{name}/windows"], out[f"{name}/arrays"]
        print(f"BC tiny-state-task {name}, batch {args.batch_size}: {w:.0f} samples/s with the "
              f"loader, {a:.0f} from memory (x{a / w:.2f})")
    for name in list(MODELS)[1:]:
        print(f"{name}, from memory: x{out[f'{name}/arrays'] / out['width128/windows']:.2f} of "
              "today's loop (width128 with the loader)")
    threads = args.threads or torch.get_num_threads()
    ceiling = matmul_flops_per_s(threads)
    out["matmul_gflop_per_s"] = ceiling / 1e9
    print(f"float32 matmul (512 x 512) with {threads} thread(s): {ceiling / 1e9:.1f} GFLOP/s")
    for name, model in MODELS.items():
        flops = bc_flops_per_sample(model)
        out[f"{name}/mflop_per_sample"] = flops / 1e6
        rate = out[f"{name}/arrays"]
        print(f"{name}: {flops / 1e6:.1f} MFLOP per sample (forward + backward); at "
              f"{rate:.0f} samples/s that is {rate * flops / 1e9:.1f} GFLOP/s; at the matmul "
              f"rate it could train at most {ceiling / flops:.0f} samples/s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
