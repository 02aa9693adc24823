#!/usr/bin/env python3
"""One command path, checked episode by episode: a checkpoint acting through the ROS graph
(``launch/sim.launch.xml``: driver in lock-step, episode node, policy node) and through
``grrl-eval`` (the same controller in-process) must give the same episodes.

For seeds first_seed .. first_seed + N - 1 it runs ``grrl-eval`` and the launch with the same
controller settings (``--steer``, ``--explore-std``, ``--noise-scale``), then compares per
seed: success, the stages reached and the simulated time each episode ended. Passes (exit 0)
when every seed agrees (end times within one control period). Writes a JSON with both sides.

    . ./env.sh && python scripts/graph_parity.py CHECKPOINT --seeds 20 --steer --out runs/parity.json
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
from pathlib import Path

from load_test import CONTROL_PERIOD, STAGES, run_episodes


def _graph(checkpoint: Path, args) -> tuple[dict, str, int]:
    launch_args = (f"checkpoint:={checkpoint}", f"steer:={str(args.steer).lower()}",
                   f"noise_scale:={args.noise_scale}")
    if args.explore_std:
        raise SystemExit("the launch has no exploration argument: compare at --explore-std 0")
    with mp.get_context("spawn").Pool(1) as pool:        # one rclpy context, in a fresh process
        return pool.apply(run_episodes, (args.seeds, args.real_time_factor, "policy",
                                         args.timeout, args.first_seed, launch_args))


def _evaluation(checkpoint: Path, args, out: Path) -> dict:
    cmd = ["grrl-eval", str(checkpoint), "--episodes", str(args.seeds), "--first-seed",
           str(args.first_seed), "--time-limit", "60", "--noise-scale", str(args.noise_scale),
           "--steer" if args.steer else "--no-steer", "--workers", str(args.workers),
           "--out-dir", str(out), "--quiet"]
    subprocess.run(cmd, check=True)
    report = json.loads((out / "eval.json").read_text())
    return {int(r["seed"]): {"success": bool(r["success"]), "stages": list(r["stages"]),
                             "end": round(float(r["sim_time"]), 4), "reason": r["reason"]}
            for r in report["results"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("checkpoint", type=Path, help="policy checkpoint (NAME or NAME.safetensors)")
    ap.add_argument("--seeds", type=int, default=20, help="episodes")
    ap.add_argument("--first-seed", type=int, default=10_000, help="seed of the first episode")
    ap.add_argument("--steer", action=argparse.BooleanOptionalAction, default=False,
                    help="act with the checkpoint's noise predictor")
    ap.add_argument("--noise-scale", type=float, default=1.0,
                    help="σ of ε ~ N(0, σ²I) when not steering")
    ap.add_argument("--explore-std", type=float, default=0.0, help="must be 0 (see the launch)")
    ap.add_argument("--workers", type=int, default=2, help="grrl-eval's worker processes")
    ap.add_argument("--real-time-factor", type=float, default=10.0,
                    help="the launch's fastest pace (lock-step slows it to the policy's)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="wall seconds of the launch")
    ap.add_argument("--out", type=Path, default=None, help="JSON with both sides")
    args = ap.parse_args(argv)
    ckpt = args.checkpoint.resolve().with_suffix(".safetensors")
    if not ckpt.exists():
        raise SystemExit(f"no checkpoint at {ckpt}")
    graph, output, code = _graph(ckpt, args)
    if code != 0:
        print(output[-3000:], file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        evaluation = _evaluation(ckpt.with_suffix(""), args, Path(tmp))
    ok, worst, rows = code == 0, 0.0, []
    print(f"{'seed':>6}  {'graph':>32}  {'grrl-eval':>32}")
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        g, e = graph.get(seed), evaluation.get(seed)
        same = g is not None and e is not None and g["success"] == e["success"] and \
            [s for s in STAGES if s in g["stages"]] == [s for s in STAGES if s in e["stages"]]
        if same:
            worst = max(worst, abs(g["end"] - e["end"]))
            same = abs(g["end"] - e["end"]) <= CONTROL_PERIOD + 1e-9
        ok &= same

        def cell(x):
            return "missing" if x is None else \
                f"{'ok' if x['success'] else 'fail'} {len(x['stages'])} stages {x['end']:.2f} s"
        print(f"{seed:>6}  {cell(g):>32}  {cell(e):>32}  {'' if same else 'DIFFERENT'}")
        rows.append({"seed": seed, "graph": g, "evaluation": e, "same": bool(same)})
    summary = {"checkpoint": ckpt.name, "steer": args.steer, "noise_scale": args.noise_scale,
               "seeds": args.seeds, "first_seed": args.first_seed, "launch_exit": code,
               "largest_end_time_difference_s": round(worst, 4),
               "same": sum(r["same"] for r in rows), "passed": bool(ok), "episodes": rows}
    print(f"{summary['same']}/{args.seeds} episodes the same; largest end-time difference "
          f"{worst:.4f} s: {'PASS' if ok else 'FAIL'}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
