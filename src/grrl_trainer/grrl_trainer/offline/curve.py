"""``grrl-curve``: learning curves of behaviour cloning — closed-loop success against the number
of demonstrations and against training steps, one command, resumable.

For each size N the first N episodes of ``--data`` in seed order become a dataset of links
(``grrl-data merge --first N``), BC trains on it with the given settings (``grrl-train-bc``'s
flags), and the policy is evaluated in the simulator (``grrl-eval``'s path, default execution).
The run of the largest size is also evaluated at its intermediate checkpoints
(``--step-points``): the curve against steps. Every stage is resumed or reused when the command
is run again; ``curve.json`` and ``curve.png`` are rewritten at the end.

Example (the issue's clean curve; hours on a 2-core CPU, one script on a GPU machine)::

    grrl-curve --data data/clean --out runs/curve_clean --sizes 50 150 300 \\
      --step-points 4000 8000 --steps 12000 --batch-size 128 --lr 5e-4 \\
      --preset tiny-state-task --model '{"action_mode": "delta", "action_norm": "per_step",
      "state_norm": true}' --eval-episodes 100 --eval-first-seed 9000
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grrl_tools.config_cli import add_arguments, from_args
from grrl_trainer.data.dataset import DatasetError
from grrl_trainer.data.merge import merge_datasets
from grrl_trainer.offline.bc import BCConfig, TrainingDiverged, checkpoint_path, train_bc

LOG = logging.getLogger(__name__)


@dataclass
class CurveConfig:
    """What the curves measure (BC's own settings come from :class:`BCConfig`)."""

    sizes: list[int] = field(default_factory=lambda: [50, 150, 300])
    """numbers of demonstrations (the first N episodes in seed order)"""
    step_points: list[int] = field(default_factory=list)
    """intermediate checkpoints of the largest size's run to evaluate (multiples of
    checkpoint_every), for the curve against steps; its final step is always a point"""
    eval_episodes: int = 20
    """evaluation episodes per point"""
    eval_first_seed: int = 9000
    """first evaluation seed (validation range by default; 10000+ is held out)"""
    eval_workers: int = 2
    """evaluation worker processes"""


def _subset(data: Path, out: Path, n: int) -> Path:
    """The first ``n`` episodes of ``data`` as a dataset of links (reused if already made)."""
    if (out / "info.json").exists():
        info = json.loads((out / "info.json").read_text())
        if info.get("first") != n:
            raise DatasetError(f"{out} holds another subset ({info.get('first')} episodes)")
        return out
    merge_datasets(out, [data], first=n)
    return out


def _point(report: dict[str, Any], **where: int) -> dict[str, Any]:
    return {**where, "success_rate": report["success_rate"], "successes": report["successes"],
            "episodes": report["episodes"], "success_ci95": report["success_ci95"],
            "funnel": report["funnel"]}


def run_curve(data: str | Path, out: str | Path, curve: CurveConfig, bc: BCConfig,
              progress: bool = True) -> dict[str, Any]:
    """Train and evaluate every point; returns (and writes) ``curve.json``."""
    from grrl_trainer.evaluation.evaluate import EvalConfig, evaluate_or_reuse

    data, out = Path(data).resolve(), Path(out)
    sizes = sorted(set(curve.sizes))
    if not sizes or sizes[0] < 1:
        raise ValueError(f"sizes must be positive numbers of demonstrations, got {curve.sizes}")
    bad = [s for s in curve.step_points if s < 1 or s >= bc.steps or s % bc.checkpoint_every]
    if bad:
        raise ValueError(f"step points {bad} are not intermediate checkpoints of a "
                         f"{bc.steps}-step run (every {bc.checkpoint_every} steps)")
    out.mkdir(parents=True, exist_ok=True)

    def evaluate(checkpoint: Path, name: str) -> dict[str, Any]:
        cfg = EvalConfig(episodes=curve.eval_episodes, first_seed=curve.eval_first_seed,
                         workers=curve.eval_workers, out_dir=str(out / name))
        return evaluate_or_reuse(str(checkpoint), cfg, progress=progress)

    result: dict[str, Any] = {"data": str(data), "curve": dataclasses.asdict(curve),
                              "bc": bc.to_dict(), "by_demonstrations": [], "by_steps": []}
    for n in sizes:
        subset = _subset(data, out / f"data_{n}", n)
        policy = train_bc(subset, out / f"bc_{n}", bc, progress=progress)
        report = evaluate(policy, f"eval_{n}")
        result["by_demonstrations"].append(_point(report, demonstrations=n, steps=bc.steps))
        LOG.info("%d demonstrations: success %d/%d", n, report["successes"], report["episodes"])
    largest = sizes[-1]
    for step in sorted(set(curve.step_points)):
        report = evaluate(checkpoint_path(out / f"bc_{largest}", step), f"eval_{largest}_{step}")
        result["by_steps"].append(_point(report, demonstrations=largest, steps=step))
    result["by_steps"].append(result["by_demonstrations"][-1])
    (out / "curve.json").write_text(json.dumps(result, indent=1))
    plot_curve(result, out / "curve.png")
    return result


def plot_curve(result: dict[str, Any], path: Path) -> Path:
    """Success (with its 95% interval) against demonstrations and against steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, x in ((axes[0], "by_demonstrations", "demonstrations"),
                       (axes[1], "by_steps", "steps")):
        pts = result[key]
        xs = [p[x] for p in pts]
        ys = [100 * p["success_rate"] for p in pts]
        lo = [100 * (p["success_rate"] - p["success_ci95"][0]) for p in pts]
        hi = [100 * (p["success_ci95"][1] - p["success_rate"]) for p in pts]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3)
        ax.set_xlabel(x)
        ax.set_ylabel("success (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[1].set_title(f"{result['by_steps'][-1]['demonstrations']} demonstrations")
    fig.suptitle(f"BC learning curves: {Path(result['data']).name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="grrl-curve", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--data", required=True, help="dataset directory (grrl-data collect)")
    parser.add_argument("--out", required=True, help="run directory (resumed if it exists)")
    add_arguments(parser, CurveConfig())
    add_arguments(parser, BCConfig())
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        result = run_curve(args.data, args.out, from_args(args, CurveConfig()),
                           from_args(args, BCConfig()), progress=not args.quiet)
    except (ValueError, DatasetError, TrainingDiverged) as exc:
        print(f"grrl-curve: error: {exc}", file=sys.stderr)
        return 2
    for p in result["by_demonstrations"]:
        print(f"{p['demonstrations']} demonstrations: {p['successes']}/{p['episodes']}")
    for p in result["by_steps"]:
        print(f"{p['steps']} steps ({p['demonstrations']} demonstrations): "
              f"{p['successes']}/{p['episodes']}")
    print(f"curves: {Path(args.out) / 'curve.json'}, {Path(args.out) / 'curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
