"""``grrl-bench bc``: behaviour-cloning throughput (samples/s) of the state model, side by side
in one run: the per-sample loader ('windows', one loader worker) against batches gathered in
memory ('arrays'), for the reproduction's model, a narrower one and the narrower one with a
pooled instruction token. Both data paths train on the same samples in the same order; only
the time differs."""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

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
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
