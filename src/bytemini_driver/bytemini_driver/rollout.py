"""Run the scripted expert on the ROS-free simulator, and ``grrl-expert-eval``: its success
rate and per-stage funnel over seeded scenes, in parallel worker processes."""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TypeVar

from bytemini_driver.expert import ScriptedExpert
from bytemini_driver.sim import PhysicsError, ShoeLacingSim
from bytemini_driver.task import STAGES


@dataclass
class RolloutResult:
    seed: int
    mirrored: bool
    instruction: str
    success: bool
    stage: int
    failure: str
    sim_time: float


def run_expert_episode(sim: ShoeLacingSim, expert: ScriptedExpert, seed: int,
                       mirrored: bool = False, time_limit: float = 40.0,
                       control_dt: float = 0.02) -> RolloutResult:
    """One episode of the expert acting through joint targets, as a policy would."""
    p = sim.reset(seed, mirrored=mirrored)
    center, direction = sim.eyelet_world(p.eyelet_side, p.eyelet_index, p.end_side)
    expert.reset(p.end_side, center, direction, sim.joint_positions(),
                 sim.config.scene.lace_vertices, control_dt)
    n_sub = int(round(control_dt / sim.model.opt.timestep))
    state = sim.update_task()
    failure = ""
    try:
        while sim.data.time < time_limit:
            sim.set_joint_targets(expert.act(sim.lace_points(), sim.joint_positions()))
            sim.step(n_sub)
            state = sim.update_task()
            if state.success or state.jammed:
                break
    except PhysicsError as exc:
        failure = f"physics fault: {exc}"
    if not failure and not state.success:
        failure = state.jam_reason or f"time limit at stage '{STAGES[state.stage]}'"
    return RolloutResult(seed, mirrored, sim.instruction, state.success, state.stage, failure,
                         float(sim.data.time))


_WORKER: tuple[ShoeLacingSim, ScriptedExpert] | None = None


def _work(job: tuple[int, bool, float]) -> RolloutResult:
    global _WORKER
    if _WORKER is None:
        _WORKER = (ShoeLacingSim(), ScriptedExpert())
    return run_expert_episode(*_WORKER, *job)


J = TypeVar("J")
R = TypeVar("R")


def map_episodes(work: Callable[[J], R], jobs: Sequence[J], workers: int,
                 desc: str = "episodes", progress: bool = True) -> list[R]:
    """``[work(job) for job in jobs]`` in order, with a tqdm bar: in this process for
    ``workers <= 1``, else in a pool of ``workers`` spawned processes (``work`` must be a
    module-level function; each process keeps its own simulator between jobs)."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=desc, disable=not progress)
    results: list[R] = []
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                results.append(work(job))
                bar.update()
        else:
            with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
                for r in pool.imap(work, jobs):
                    results.append(r)
                    bar.update()
                pool.close()          # let the workers exit cleanly (the context terminates)
                pool.join()
    finally:
        bar.close()
    return results


def stage_funnel(stages: Sequence[int]) -> dict[str, int]:
    """Episodes reaching each stage (``STAGES[1:]`` in order, the paper's Fig. 6), from each
    episode's highest stage."""
    return {STAGES[s]: sum(int(st) >= s for st in stages) for s in range(1, len(STAGES))}


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grrl-expert-eval",
                                     description="Success rate of the scripted expert on "
                                                 "seeded shoe-lacing scenes.")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--workers", type=int, default=max(1, mp.cpu_count()))
    parser.add_argument("--mirrored", action="store_true", help="run the mirrored scenes")
    parser.add_argument("--time-limit", type=float, default=40.0, help="simulated seconds")
    parser.add_argument("--json", help="write the per-episode results here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    jobs = [(args.seed + i, args.mirrored, args.time_limit) for i in range(args.episodes)]
    results = map_episodes(_work, jobs, args.workers, desc="expert episodes",
                           progress=not args.quiet)
    n, k = len(results), sum(r.success for r in results)
    lo, hi = wilson_interval(k, n)
    print(f"scripted expert: {k}/{n} successes = {100 * k / n:.1f}% "
          f"(95% CI {100 * lo:.1f}-{100 * hi:.1f}%)")
    for name, reached in stage_funnel([r.stage for r in results]).items():
        print(f"  reached {name:12s} {reached:4d}/{n}")
    for r in results:
        if not r.success:
            print(f"  seed {r.seed}: {r.failure} | {r.instruction}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
