#!/usr/bin/env python3
"""Load test of the simulated graph: the same seeds, once on an idle machine and once with
every core busy, must give the same episodes.

Runs ``launch/sim.launch.xml`` (driver in lock-step, episode node, the scripted expert,
run_episodes) for seeds 0 .. N-1, twice: without load and with ``--hogs`` busy-looping processes
(started and stopped here). A probe node records the episode events (stamped with simulated
time). Passes (exit 0) when every episode succeeds in both runs and every stage is reached at
the same simulated time, within one control period. Writes a JSON with the stage times.

    . ./env.sh && python scripts/load_test.py --seeds 10 --out runs/load_test.json
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "sim.launch.xml"
CONTROL_PERIOD = 0.02
STAGES = ("picked", "threaded", "handed_over", "placed")


def _hog(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def run_episodes(seeds: int, rtf: float, controller: str, timeout: float, first_seed: int = 0,
                 launch_args: tuple[str, ...] = ()) -> tuple[dict, str, int]:
    """{seed: {"success", "stages": {name: sim time}, "end": sim time, "message", "wall"}}, the
    launch's output, its exit. ``launch_args``: more ``name:=value`` arguments."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from grrl_interfaces.msg import EpisodeEvent

    rclpy.init()
    node = rclpy.create_node("grrl_load_test_probe")
    episodes: dict[int, dict] = {}
    lock = threading.Lock()

    def on_event(msg: EpisodeEvent) -> None:
        t = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        with lock:
            ep = episodes.setdefault(int(msg.seed), {"success": False, "stages": {},
                                                     "wall_start": time.monotonic()})
            if msg.event == EpisodeEvent.EVENT_STAGE and msg.stage_name in STAGES:
                ep["stages"][msg.stage_name] = round(t, 4)
            elif msg.event != EpisodeEvent.EVENT_STARTED:
                ep["success"] = bool(msg.success)
                ep["end"] = round(t, 4)
                ep["message"] = msg.message
                ep["wall"] = round(time.monotonic() - ep["wall_start"], 2)

    node.create_subscription(EpisodeEvent, "grrl/episode", on_event, QoSProfile(
        depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL,
        reliability=ReliabilityPolicy.RELIABLE))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinning = threading.Thread(target=executor.spin, daemon=True)
    spinning.start()
    cmd = ["grrl-launch", str(LAUNCH), f"episodes:={seeds}", f"seed:={first_seed}",
           f"controller:={controller}", "publish_images:=false", "record:=false",
           f"real_time_factor:={rtf}", "time_limit:=60", *launch_args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        out, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out, code = f"timed out after {timeout:.0f} s: {exc}", 124
    time.sleep(0.5)        # the last event's delivery to the probe (a margin, not an outcome)
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown()
    with lock:
        for ep in episodes.values():
            ep.pop("wall_start", None)
        return dict(episodes), out, code


def _condition(seeds: int, rtf: float, controller: str, hogs: int, timeout: float):
    stop = mp.Event()
    procs = [mp.Process(target=_hog, args=(stop,), daemon=True) for _ in range(hogs)]
    for p in procs:
        p.start()
    t0 = time.monotonic()
    try:
        # a fresh process per run: one rclpy context each, the hogs outside it
        with mp.get_context("spawn").Pool(1) as pool:
            episodes, out, code = pool.apply(run_episodes, (seeds, rtf, controller, timeout))
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=5)
    return episodes, out, code, time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10, help="episodes, seeds 0 .. N-1")
    ap.add_argument("--hogs", type=int, default=os.cpu_count() or 2,
                    help="busy-looping processes during the loaded run")
    ap.add_argument("--real-time-factor", type=float, default=3.0,
                    help="the most simulated seconds per wall second")
    ap.add_argument("--controller", default="expert", choices=("expert", "demonstrator"))
    ap.add_argument("--timeout", type=float, default=1800.0, help="wall seconds per run")
    ap.add_argument("--out", type=Path, default=None, help="JSON with the stage times")
    args = ap.parse_args(argv)

    runs, outputs = {}, {}
    for name, hogs in (("idle", 0), ("loaded", args.hogs)):
        episodes, out, code, wall = _condition(args.seeds, args.real_time_factor,
                                               args.controller, hogs, args.timeout)
        runs[name] = {"hogs": hogs, "exit": code, "wall_s": round(wall, 1), "episodes": episodes}
        outputs[name] = out
        solved = sum(ep["success"] for ep in episodes.values())
        print(f"{name:>6} ({hogs} hogs): {solved}/{args.seeds} solved, {wall:.0f} s wall, "
              f"exit {code}", flush=True)
        if code != 0:
            print(out[-3000:], file=sys.stderr)

    ok = all(r["exit"] == 0 for r in runs.values())
    worst = 0.0
    print(f"{'seed':>4}  " + "  ".join(f"{s:>19}" for s in STAGES))
    for seed in range(args.seeds):
        a = runs["idle"]["episodes"].get(seed, {"success": False, "stages": {}})
        b = runs["loaded"]["episodes"].get(seed, {"success": False, "stages": {}})
        ok &= a["success"] and b["success"] and a["stages"].keys() == b["stages"].keys()
        cells = []
        for s in STAGES:
            ta, tb = a["stages"].get(s), b["stages"].get(s)
            if ta is not None and tb is not None:
                worst = max(worst, abs(ta - tb))
            cells.append(f"{ta if ta is not None else '-':>8} / {tb if tb is not None else '-':>8}")
        print(f"{seed:>4}  " + "  ".join(cells))
    ok &= worst <= CONTROL_PERIOD + 1e-9
    summary = {"seeds": args.seeds, "controller": args.controller,
               "real_time_factor": args.real_time_factor, "cpu_count": os.cpu_count(),
               "largest_stage_time_difference_s": round(worst, 4), "passed": bool(ok),
               "runs": runs}
    print(f"stage times idle / loaded (simulated s); largest difference {worst:.4f} s "
          f"(allowed {CONTROL_PERIOD} s): {'PASS' if ok else 'FAIL'}")
    if not ok:
        # what the graph said about its clock: lock-step waits, resets, warnings
        for name, out in outputs.items():
            lines = [ln for ln in out.splitlines() if any(
                w in ln for w in ("lock-step", "WARN", "ERROR", "scene reset", "controller"))]
            print(f"--- {name}: the launch's clock-related lines", file=sys.stderr)
            print("\n".join(lines[-40:]), file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
