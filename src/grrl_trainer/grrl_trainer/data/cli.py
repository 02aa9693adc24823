"""``grrl-data``: collect demonstrations, inspect a dataset, convert recorded episodes, merge
datasets.

    grrl-data collect --out data/demos --episodes 300 --workers 2
    grrl-data inspect --data data/demos --plot data/demos/inspect.png
    grrl-data convert .ros/episodes/ep-* --out data/ros_demos
    grrl-data merge data/clean data/dart --out data/clean_dart
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grrl_tools.config_cli import add_arguments, from_args
from grrl_trainer.data.collect import CollectConfig, collect
from grrl_trainer.data.dataset import DatasetError, EpisodeDataset

LOG = logging.getLogger("grrl-data")
#: the demonstrator's flaw rates are flags of their own (``--miss-prob``, ...)
COLLECT_FLATTEN = ("demo",)
#: the fields of CollectConfig that ``convert`` uses (the rest describe the simulated collection)
CONVERT_FIELDS = ("fps", "control_rate")
CONVERT_SKIP = tuple(f.name for f in dataclasses.fields(CollectConfig) if f.name not in CONVERT_FIELDS)


@dataclass
class CollectRun:
    """Which episodes a collection adds, and with how many processes (not stored with the
    dataset: re-running with more episodes grows it)."""

    episodes: int = 300
    """episodes to collect: seeds seed .. seed + episodes - 1 (those stored already are skipped)"""
    seed: int = 0
    """first seed (episode i has seed + i)"""
    workers: int = 2
    """simulator worker processes"""


def cmd_collect(args: argparse.Namespace) -> int:
    cfg = from_args(args, CollectConfig(), flatten=COLLECT_FLATTEN)
    run = from_args(args, CollectRun())
    seeds = list(range(run.seed, run.seed + run.episodes))
    results = collect(Path(args.out), cfg, seeds, run.workers, progress=not args.quiet)
    ok = sum(bool(r[1]) for r in results)
    invalid = sum(r[1] is None for r in results)
    print(f"collected {len(results) - invalid} new episodes into {args.out} "
          f"({ok} successful, {invalid} invalid and not stored); the dataset now has "
          f"{len(list((Path(args.out) / 'episodes').glob('ep_*.h5')))} episodes")
    return 0


def summarize(ds: EpisodeDataset) -> dict:
    eps = ds.episodes
    n = len(eps)
    lengths = np.array([e["n_steps"] for e in eps])
    keyframes = [len(e["retry_keyframes"]) for e in eps]
    flaws = Counter()
    for e in eps:
        f = e["flaws"]
        flaws["misses"] += f.get("misses", 0)
        flaws["drops"] += f.get("drops", 0)
        flaws["pauses"] += f.get("pauses", 0)
        flaws["creeping approaches"] += int(bool(f.get("creep")))
        flaws["gave up"] += int(bool(f.get("gave_up")))
    sides = Counter(e["scene"].get("end_side", "?") for e in eps)
    return {"episodes": n, "successes": sum(bool(e["success"]) for e in eps),
            "steps": int(lengths.sum()), "length_mean": float(lengths.mean()),
            "length_min": int(lengths.min()), "length_max": int(lengths.max()),
            "retry_keyframes": int(sum(keyframes)),
            "episodes_with_retries": int(sum(k > 0 for k in keyframes)),
            "flaws": dict(flaws), "end_side": dict(sides), "unreadable": len(ds.errors),
            "fps": float(eps[0]["fps"]), "cameras": eps[0]["cameras"]}


def plot(ds: EpisodeDataset, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = ds.episodes
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ok = [e["n_steps"] / e["fps"] for e in eps if e["success"]]
    bad = [e["n_steps"] / e["fps"] for e in eps if not e["success"]]
    ax[0].hist([ok, bad], bins=20, stacked=True, label=["success", "failure"],
               color=["tab:green", "tab:red"])
    ax[0].set(xlabel="episode length (s)", ylabel="episodes", title="Episode lengths")
    ax[0].legend()
    s = summarize(ds)
    names = list(s["flaws"])
    ax[1].bar(names, [s["flaws"][k] for k in names], color="tab:orange")
    ax[1].set(title="Demonstrator flaws (counts)")
    ax[1].tick_params(axis="x", rotation=30)
    # where in the episodes the retries begin
    rel = [k / e["n_steps"] for e in eps for k in e["retry_keyframes"]]
    ax[2].hist(rel, bins=20, range=(0, 1), color="tab:blue")
    ax[2].set(xlabel="retry keyframe / episode length", ylabel="keyframes",
              title=f"Retry keyframes ({len(rel)})")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def cmd_inspect(args: argparse.Namespace) -> int:
    try:
        ds = EpisodeDataset(args.data)
    except DatasetError as exc:
        LOG.error("%s", exc)
        return 2
    s = summarize(ds)
    n = s["episodes"]
    print(f"dataset {args.data}: {n} episodes, {s['steps']} steps at {s['fps']:.0f} Hz, "
          f"cameras: {', '.join(s['cameras']) or 'none'}")
    print(f"  success: {s['successes']}/{n} ({100 * s['successes'] / n:.1f}%)")
    print(f"  length: mean {s['length_mean'] / s['fps']:.1f} s "
          f"(min {s['length_min'] / s['fps']:.1f}, max {s['length_max'] / s['fps']:.1f})")
    print(f"  retry keyframes: {s['retry_keyframes']} in {s['episodes_with_retries']} episodes "
          f"(hindsight failed trajectories)")
    print("  flaws: " + ", ".join(f"{k} {v}" for k, v in s["flaws"].items()))
    print("  instructed end: " + ", ".join(f"{k} {v}" for k, v in s["end_side"].items()))
    if ds.errors:
        print(f"  UNREADABLE episodes skipped: {len(ds.errors)}")
        for e in ds.errors:
            print(f"    {e}")
    if args.plot:
        plot(ds, Path(args.plot))
        print(f"  plot: {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(s, indent=1))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from grrl_trainer.data.convert import convert_record

    cfg = from_args(args, CollectConfig(), skip=CONVERT_SKIP)
    out = Path(args.out)
    done = 0
    for rec_dir in args.records:
        try:
            path = convert_record(Path(rec_dir), out, fps=cfg.fps, control_rate=cfg.control_rate)
        except DatasetError as exc:
            LOG.error("%s", exc)
            continue
        if not args.quiet:
            print(f"{rec_dir} -> {path}")
        done += 1
    print(f"converted {done}/{len(args.records)} records into {out}")
    return 0 if done == len(args.records) else 1


def cmd_merge(args: argparse.Namespace) -> int:
    from grrl_trainer.data.merge import merge_datasets

    try:
        n = merge_datasets(Path(args.out), [Path(s) for s in args.sources], copy=args.copy,
                           first=args.first)
    except DatasetError as exc:
        print(f"grrl-data merge: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {n} episodes from {len(args.sources)} datasets")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="grrl-data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="collect demonstrations with the flawed demonstrator")
    c.add_argument("--out", required=True, help="dataset directory (resumed if it exists)")
    add_arguments(c, CollectRun())
    add_arguments(c, CollectConfig(), flatten=COLLECT_FLATTEN)
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_collect)
    i = sub.add_parser("inspect", help="counts, success rate, flaw and keyframe statistics")
    i.add_argument("--data", help="dataset directory")
    i.add_argument("dataset", nargs="?", help="the dataset directory, positional (as --data)")
    i.add_argument("--plot", help="write a PNG with the statistics")
    i.add_argument("--json", help="write the statistics as JSON")
    i.set_defaults(func=cmd_inspect)
    v = sub.add_parser("convert", help="convert episode records (MCAP) into a dataset")
    v.add_argument("records", nargs="+", help="rosbag2 episode directories")
    v.add_argument("--out", required=True, help="dataset directory")
    add_arguments(v, CollectConfig(), skip=CONVERT_SKIP)
    v.add_argument("--quiet", action="store_true", help="no line per converted record")
    v.set_defaults(func=cmd_convert)
    m = sub.add_parser("merge", help="one dataset out of several (links to their episodes)")
    m.add_argument("sources", nargs="+", help="dataset directories (disjoint seeds)")
    m.add_argument("--out", required=True, help="the new dataset directory")
    m.add_argument("--copy", action="store_true", help="copy the episode files instead of "
                   "linking them")
    m.add_argument("--first", type=int, default=None, help="keep the first N episodes in seed "
                   "order (one source allowed: a subset, e.g. for a learning curve)")
    m.set_defaults(func=cmd_merge)
    args = parser.parse_args(argv)
    if args.cmd == "inspect":
        given = {d for d in (args.data, args.dataset) if d}
        if len(given) != 1:
            i.error("give the dataset directory once: --data DIR (or DIR)")
        args.data = given.pop()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
