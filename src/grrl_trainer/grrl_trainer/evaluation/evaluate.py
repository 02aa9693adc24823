"""``grrl-eval``: a policy checkpoint's success rate in the simulator, with the per-stage funnel.

Runs N episodes on held-out seeds (demonstrations use 0..9999) in parallel worker processes,
each executing the policy exactly as the ROS graph does, minus DDS: every 0.1 s of sim time an
observation may be taken (camera images at the model's size, or the simulator state for
``tiny-state`` models); when a re-plan is due (after ``execute_steps`` chunk steps, the policy
node's rule) the chunk is planned by the jerk-limited :class:`ChunkExecutor` and handed to the
driver's :class:`TrajectoryFollower` (validated as the driver validates a JointTrajectory),
which the 50 Hz control loop samples into joint targets. Inference takes no sim time here
(the ROS graph's latency is not modelled), so plans start exactly where the previous one's
executed part ends. Stages and success come from the simulator's own tracker, as for the
scripted expert (:mod:`bytemini_driver.rollout`).

Reports the success rate with a 95% Wilson interval and the fraction of episodes reaching each
stage (the paper's Fig. 6) as JSON and a PNG; optionally head-camera GIFs of the first episodes.

    grrl-eval ckpt/policy --episodes 100 --workers 2 --out eval/policy
    grrl-eval fresh --preset tiny-state --episodes 4 --time-limit 5 --out /tmp/smoke

Episodes are deterministic: the policy's sampling noise is seeded from the episode seed and
each episode gets a fresh executor and follower, so results do not depend on the worker count.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bytemini_driver import description as desc
from bytemini_driver.mujoco_backend import MujocoDriver
from bytemini_driver.rollout import map_episodes, stage_funnel, wilson_interval
from bytemini_driver.scene import SceneConfig
from bytemini_driver.sim import PhysicsError, ShoeLacingSim, SimConfig
from bytemini_driver.sim_state import state_vector
from bytemini_driver.task import STAGES
from bytemini_driver.trajectory import DriverLimits
from bytemini_driver.trajectory import TrajectoryError, TrajectoryFollower, Waypoint, validate
from grrl_policy.checkpoint import CheckpointError, read_meta, verify_files
from grrl_policy.controller import ControllerConfig, HoldError, Observation, PolicyController
from grrl_policy.keys import CAMERAS, IMAGES, STATE
from grrl_policy.model import ModelConfig
from grrl_policy.model import preset as model_preset
from grrl_policy.policy_runtime import Policy
from grrl_policy.task_space import check_executable
from grrl_tools.config_cli import add_arguments, from_args
from grrl_trainer.episodes.episode import sparse_reward

LOG = logging.getLogger(__name__)

CLI_FLATTEN = ("controller",)
"""the controller's fields are grrl-eval's own flags (--execute-steps, --steer, ...)"""

HELD_OUT_SEEDS = 10_000
"""demonstrations are collected on seeds below this; evaluation seeds start here"""


@dataclass
class EvalConfig:
    """What is evaluated, and how the policy is executed (stored in the report)."""

    episodes: int = 100
    """number of episodes (seeds first_seed, first_seed + 1, ...)"""
    first_seed: int = HELD_OUT_SEEDS
    """first scene seed; held out: demonstrations use seeds 0..9999"""
    mirrored: bool = False
    """evaluate on the mirrored scenes"""
    workers: int = 2
    """worker processes (1: in this process)"""
    time_limit: float = 60.0
    """simulated seconds before an episode counts as a failure"""
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    """how chunks become commands: the policy node's settings (receding horizon, limits, noise)"""
    control_rate: float = 50.0
    """Hz of the driver's control loop (trajectory sampling and physics)"""
    model_seed: int = 0
    """initialisation seed of a fresh model (no checkpoint)"""
    record_decisions: bool = False
    """keep every decision's observation, chunk and noise (online RL; see online_episode)"""
    video_episodes: int = 0
    """save head-camera GIFs of this many episodes (the first seeds)"""
    video_size: int = 224
    """GIF frame size for state-observation models (image models: their image size)"""
    threads: int = 1
    """torch CPU threads per worker"""
    device: str = "cpu"
    """torch device of the policy"""
    out_dir: str = "eval"
    """directory of the report (eval.json), the plot (eval.png) and the videos"""


@dataclass
class EpisodeResult:
    """One evaluated episode."""

    seed: int
    """scene seed"""
    mirrored: bool
    """mirrored scene"""
    instruction: str
    """the episode's instruction"""
    success: bool
    """the task was completed (stage 'placed')"""
    stages: list[str]
    """stages reached, in funnel order"""
    steps: int
    """50 Hz control steps executed"""
    chunks: int
    """policy inferences (planned chunks)"""
    sim_time: float
    """simulated seconds"""
    reason: str
    """'success', 'timeout', 'jammed: ...', 'physics fault: ...', 'policy error: ...',
    'optimizer error: ...' or 'command rejected: ...'"""
    final_joints: list[float] = field(default_factory=list)
    """joint positions at the end (a determinism fingerprint)"""
    wall_time: float = 0.0
    """wall seconds the episode took"""
    inference_time: float = 0.0
    """wall seconds spent in the policy"""
    frames: list[np.ndarray] | None = field(default=None, repr=False)
    """head-camera frames every step period (video episodes only; not in the report)"""
    decisions: dict[str, list] | None = field(default=None, repr=False)
    """per policy decision: observation, proprio, chunk, noise, steered, time; plus the final
    observation (``record_decisions`` only; not in the report; see :func:`online_episode`)"""

    @property
    def stage(self) -> int:
        """Index in ``STAGES`` of the highest stage reached (0: none)."""
        return max((STAGES.index(s) for s in self.stages), default=0)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("frames", "decisions")}
        d["stages"] = list(self.stages)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EpisodeResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ----------------------------------------------------------------------------- one episode

def check_model_config(cfg: ModelConfig) -> None:
    """The evaluation executes 16 joint targets (from a joint-space model, or by IK from a
    task-space one), like the policy node; raises ValueError for another model."""
    check_executable(cfg.action_space, cfg.action_dim, cfg.proprio_dim, "evaluation")


def make_sim(model_cfg: ModelConfig, cfg: EvalConfig) -> ShoeLacingSim:
    """A simulator whose cameras render at the model's image size (state models: the video
    size)."""
    size = cfg.video_size if model_cfg.observes_state else model_cfg.image_size
    return ShoeLacingSim(SimConfig(scene=SceneConfig(image_width=size, image_height=size)))


def driver_limits(sim: ShoeLacingSim) -> DriverLimits:
    """The limits the MuJoCo driver validates joint trajectories against."""
    drv = MujocoDriver()
    drv.sim = sim
    return drv.joint_limits()


def run_episode(policy: Policy | PolicyController, seed: int, cfg: EvalConfig, video: bool = False,
                sim: ShoeLacingSim | None = None) -> EpisodeResult:
    """Run a policy on the scene of ``seed`` until success, a failure or the time limit.

    ``policy``: a :class:`PolicyController` (reused across episodes: its IK is built once) or a
    bare :class:`Policy` (a controller with ``cfg.controller`` is made for it). Never raises for
    what an episode can do wrong: a physics blow-up, a policy or optimizer failure or a rejected
    command ends the episode as a failure with the reason. ``sim`` is reused if given (it must
    render at the model's image size, see :func:`make_sim`)."""
    controller = policy if isinstance(policy, PolicyController) else \
        PolicyController(policy, cfg.controller, "evaluation")
    if sim is not None:
        return _run_episode(controller, seed, cfg, video, sim)
    sim = make_sim(controller.policy.config, cfg)
    try:
        return _run_episode(controller, seed, cfg, video, sim)
    finally:
        sim.close()


def sim_observation(sim: ShoeLacingSim, model_cfg: ModelConfig, instruction: str,
                    eyelet: tuple, shoe_yaw: float) -> Observation:
    """What the robot observes now: the joints, and the simulator state (state models) or the
    camera images at the model's size (image models) — what the driver publishes."""
    q = sim.joint_positions()
    if model_cfg.observes_state:
        return Observation(q, float(sim.data.time), instruction,
                           state=state_vector(sim.lace_points(), *eyelet, shoe_yaw))
    return Observation(q, float(sim.data.time), instruction,
                       images={c: sim.render(c) for c in CAMERAS})


def _run_episode(controller: PolicyController, seed: int, cfg: EvalConfig, video: bool,
                 sim: ShoeLacingSim) -> EpisodeResult:
    t_start = time.perf_counter()
    mcfg = controller.policy.config
    names = desc.actuated_joint_names()
    frames: list[np.ndarray] | None = [] if video else None
    rec: dict[str, list] | None = {k: [] for k in ("obs", "proprio", "actions", "noise", "steered", "t")} \
        if cfg.record_decisions else None
    try:
        params = sim.reset(seed, mirrored=cfg.mirrored)
    except PhysicsError as e:
        return EpisodeResult(int(seed), bool(cfg.mirrored), "", False, [], 0, 0, 0.0,
                             f"physics fault: {e}", [], time.perf_counter() - t_start, 0.0, frames)
    instruction = sim.instruction
    eyelet = sim.eyelet_world(params.eyelet_side, params.eyelet_index, params.end_side)
    lim = driver_limits(sim)
    follower = TrajectoryFollower(len(names), lim.lower, lim.upper)
    target = sim.joint_positions()
    controller.start_episode(seed, target)
    follower.hold(target)
    control_dt = 1.0 / cfg.control_rate
    n_sub = max(1, int(round(control_dt / sim.model.opt.timestep)))
    obs_every = max(1, int(round(controller.cfg.step_period / control_dt)))
    steps = chunks = 0
    infer_s = 0.0
    reason = ""
    state = sim.update_task()
    t_end = float(sim.data.time)
    try:
        while not (state.success or state.jammed) and sim.data.time < cfg.time_limit - 1e-9:
            t = float(sim.data.time)
            if frames is not None and steps % obs_every == 0:
                frames.append(sim.render("head"))
            # the node checks every joint state (each control tick) for a due re-plan
            if controller.due(t):
                # ---- what the policy node does on a due joint state (zero latency)
                t0 = time.perf_counter()
                try:
                    obs = sim_observation(sim, mcfg, instruction, eyelet, params.shoe_yaw)
                    inference, command = controller.act(obs)
                except HoldError as e:
                    reason = f"{e.kind} error: {e}"
                    break
                finally:
                    infer_s += time.perf_counter() - t0
                chunks += 1
                if rec is not None:
                    m = inference.model_obs
                    rec["obs"].append(m[STATE][0].numpy() if STATE in m else m[IMAGES][0].numpy())
                    rec["proprio"].append(inference.proprio)
                    rec["actions"].append(inference.chunk.actions)
                    rec["noise"].append(inference.chunk.noise)
                    rec["steered"].append(inference.chunk.steered)
                    rec["t"].append(t)
                points = [Waypoint(float(dt), p, v, a) for dt, p, v, a in zip(
                    command.times, command.positions, command.velocities, command.accelerations)]
                # ---- what the driver does on a JointTrajectory command
                try:
                    traj = validate(names, points, lim, start=target)
                except TrajectoryError as e:
                    reason = f"command rejected: {e}"
                    break
                follower.start(traj, t, target)
            # ---- the driver's control tick: the set-point of [t, t + dt] is the plan at its end
            target = follower.sample(t + control_dt, target)
            sim.set_joint_targets(target)
            sim.step(n_sub)
            steps += 1
            t_end = float(sim.data.time)
            state = sim.update_task()
    except PhysicsError as e:           # MuJoCo has reset its state: keep the last good one
        reason = f"physics fault: {e}"
    if not reason:
        reason = "success" if state.success else (
            f"jammed: {state.jam_reason}" if state.jammed else "timeout")
    success = bool(state.success) and reason == "success"
    if rec is not None and rec["t"] and not reason.startswith("physics fault"):
        final = controller.observation_input(
            sim_observation(sim, mcfg, instruction, eyelet, params.shoe_yaw))
        rec["final_obs"] = [final[0]]
        rec["final_proprio"] = [final[1]]
        rec["t_end"] = [t_end]
    elif rec is not None:
        rec = None                # nothing usable to learn from (no decision, or a blow-up)
    stages = [STAGES[s] for s in state.reached]
    final_q = [] if reason.startswith("physics fault") else sim.joint_positions().tolist()
    return EpisodeResult(int(seed), bool(cfg.mirrored), instruction, success, stages, steps,
                         chunks, t_end, reason, final_q,
                         time.perf_counter() - t_start, infer_s, frames, rec)


def online_episode(result: EpisodeResult, policy_version: int, gamma: float, step_period: float,
                   horizon: int, observation: str, robot: str = "sim", episode_id: str = ""):
    """The :class:`grrl_trainer.online.replay.OnlineEpisode` of a recorded evaluation episode (one
    row per policy decision), with eq. (1)'s reward: gamma^(T-t) on the last decision of a
    successful episode, T - t counted in chunk steps from that decision to the end."""
    from grrl_trainer.online.replay import OnlineEpisode
    d = result.decisions
    if not d:
        raise ValueError(f"episode {result.seed} has no recorded decisions")
    times = np.array(d["t"] + d["t_end"])
    steps = np.rint(np.diff(times) / step_period).astype(int)
    n = len(d["t"])
    reward = np.zeros(n, np.float32)
    # the last decision's chunk reaches the end (at least one chunk step before it)
    reward[-1] = sparse_reward(bool(result.success), max(1, int(steps[-1])), True, gamma)
    done = np.zeros(n, bool)
    done[-1] = True
    return OnlineEpisode(
        episode_id=episode_id or f"{robot}-v{policy_version}-s{result.seed}{'m' if result.mirrored else ''}",
        robot=robot, policy_version=int(policy_version), instruction=result.instruction,
        success=bool(result.success),
        observations={"proprio": np.stack(d["proprio"] + d["final_proprio"]).astype(np.float32),
                      observation: np.stack(d["obs"] + d["final_obs"])},
        actions=np.stack(d["actions"]).astype(np.float32), noise=np.stack(d["noise"]).astype(np.float32),
        steered=np.array(d["steered"], bool), reward=reward, done=done,
        offset=np.clip(steps, 1, horizon).astype(np.int64))


# ----------------------------------------------------------------------------- summaries

def summarize(results: list[EpisodeResult]) -> dict[str, Any]:
    """Success rate, its 95% Wilson interval, the stage funnel (fraction of episodes reaching
    each stage, with intervals), mean episode time and failure reasons."""
    n = len(results)
    k = sum(bool(r.success) for r in results)
    lo, hi = wilson_interval(k, n)
    counts = stage_funnel([r.stage for r in results])
    reasons = Counter(r.reason.split(":")[0] for r in results)
    sim_s = sum(r.sim_time for r in results)
    wall_s = sum(r.wall_time for r in results)
    return {
        "episodes": n, "successes": k, "success_rate": k / n if n else 0.0,
        "success_ci95": [lo, hi],
        "funnel": {s: (c / n if n else 0.0) for s, c in counts.items()},
        "funnel_counts": counts,
        "funnel_ci95": {s: list(wilson_interval(c, n)) for s, c in counts.items()},
        "mean_episode_time": sim_s / n if n else 0.0,
        "mean_success_time": (sum(r.sim_time for r in results if r.success) / k) if k else None,
        "failure_reasons": {r: c for r, c in reasons.most_common() if r != "success"},
        "sim_seconds_per_wall_second": sim_s / wall_s if wall_s > 0 else None,
        "mean_inference_time": (sum(r.inference_time for r in results)
                                / max(1, sum(r.chunks for r in results))),
    }


def summary_line(report: dict[str, Any]) -> str:
    """E.g. ``success 37/100 = 37.0% (95% CI 28.2-46.8%) | picked 90% threaded 60% ...``."""
    lo, hi = report["success_ci95"]
    funnel = " ".join(f"{s} {100 * f:.0f}%" for s, f in report["funnel"].items())
    return (f"success {report['successes']}/{report['episodes']} = "
            f"{100 * report['success_rate']:.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f}%) | "
            f"{funnel}")


def plot_report(report: dict[str, Any], path: Path) -> None:
    """The funnel as bars with 95% Wilson intervals; the success bar is highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["funnel"])
    frac = np.array([report["funnel"][s] for s in names])
    ci = np.array([report["funnel_ci95"][s] for s in names])
    err = np.stack([frac - ci[:, 0], ci[:, 1] - frac]).clip(min=0)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colors = ["tab:blue"] * (len(names) - 1) + ["tab:green"]
    ax.bar(names, 100 * frac, yerr=100 * err, capsize=6, color=colors)
    for i, s in enumerate(names):                   # counts above the interval
        ax.text(i, 100 * ci[i, 1] + 2, f"{report['funnel_counts'][s]}/{report['episodes']}",
                ha="center", va="bottom")
    lo, hi = report["success_ci95"]
    ckpt = report.get("checkpoint") or f"fresh {report.get('model', '')}"
    ax.set(ylim=(0, 110), ylabel="episodes reaching the stage (%)",
           title=f"{Path(str(ckpt)).name}: success {100 * report['success_rate']:.1f}% "
                 f"(95% CI {100 * lo:.1f}-{100 * hi:.1f}%)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_gif(frames: list[np.ndarray], path: Path, period: float = 0.1) -> None:
    """Frames (H, W, 3) uint8 as an animated GIF, one every ``period`` seconds."""
    from PIL import Image

    if not frames:
        raise ValueError("no frames")
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:],
                   duration=max(20, int(round(1000 * period))), loop=0, optimize=False)


# ----------------------------------------------------------------------------- workers

@dataclass(frozen=True)
class _Spec:
    checkpoint: str | None
    sha256: str | None
    preset: str
    model_seed: int
    device: str
    threads: int
    video_size: int


class _Worker:
    """A loaded policy's controller and a simulator rendering at its image size."""

    def __init__(self, spec: _Spec, cfg: EvalConfig):
        self.spec = spec
        if spec.checkpoint:
            policy = Policy.load(spec.checkpoint, spec.sha256, device=spec.device)
        else:
            policy = Policy.fresh(spec.preset, spec.model_seed, spec.device)
        self.controller = PolicyController(policy, cfg.controller, "evaluation")
        self.sim = make_sim(policy.config, cfg)


_WORKER: _Worker | None = None


def _work(job: tuple[_Spec, EvalConfig, int, bool, str]) -> EpisodeResult:
    global _WORKER
    spec, cfg, seed, video, out_dir = job
    if _WORKER is None or _WORKER.spec != spec:
        torch.set_num_threads(max(1, spec.threads))
        if _WORKER is not None:
            _WORKER.sim.close()
        _WORKER = _Worker(spec, cfg)
    if _WORKER.controller.cfg != cfg.controller:        # e.g. warm-up, then steered rounds
        _WORKER.controller = PolicyController(_WORKER.controller.policy, cfg.controller, "evaluation")
    result = run_episode(_WORKER.controller, seed, cfg, video=video, sim=_WORKER.sim)
    if video and result.frames:
        save_gif(result.frames, Path(out_dir) / video_name(seed, cfg.mirrored),
                 cfg.controller.step_period)
        result.frames = None          # written here: not shipped back to the parent
    return result


def video_name(seed: int, mirrored: bool) -> str:
    return f"episode_{seed}{'_mirrored' if mirrored else ''}.gif"


def verify_checkpoint(checkpoint: str) -> tuple[str, int]:
    """(sha256, policy version) of a checkpoint whose files exist and agree (JSON readable,
    weights hash as recorded); raises CheckpointError otherwise. Weights are not loaded."""
    meta, digest = verify_files(checkpoint)
    return digest, meta.version


def evaluate(checkpoint: str | None, cfg: EvalConfig, preset: str = "tiny",
             progress: bool = True) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (None: a freshly initialised model of ``preset``, for smoke
    tests) on ``cfg.episodes`` seeds; writes ``eval.json`` and ``eval.png`` (and GIFs) into
    ``cfg.out_dir`` and returns the report. Raises CheckpointError for an unusable
    checkpoint, ValueError for a model the evaluation cannot execute."""
    if cfg.episodes < 1 or cfg.time_limit <= 0:
        raise ValueError(f"episodes >= 1 and time_limit > 0 are needed, got {cfg.episodes}, "
                         f"{cfg.time_limit}")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if checkpoint:
        checkpoint = str(checkpoint)
        sha, version = verify_checkpoint(checkpoint)
        model_cfg = read_meta(checkpoint).config
    else:
        sha, version, model_cfg = "", 0, model_preset(preset)
    check_model_config(model_cfg)
    if cfg.first_seed < HELD_OUT_SEEDS:
        LOG.warning("seeds from %d overlap the demonstrations' (0..%d): not a held-out "
                    "evaluation", cfg.first_seed, HELD_OUT_SEEDS - 1)
    seeds = [cfg.first_seed + i for i in range(cfg.episodes)]
    LOG.info("evaluating %s on %d seeds from %d with %d worker(s)",
             checkpoint or f"a fresh {preset} model", len(seeds), cfg.first_seed, cfg.workers)
    t0 = time.perf_counter()
    results, jobs = _rollouts(checkpoint, sha, preset, seeds, cfg, out, progress)
    wall = time.perf_counter() - t0
    report: dict[str, Any] = {
        "checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
        "sha256": sha, "policy_version": version, "model": model_cfg.name,
        "preset": None if checkpoint else preset, "config": asdict(cfg),
        **summarize(results), "wall_time": wall,
        "files": {"json": str(out / "eval.json"), "plot": str(out / "eval.png"),
                  "videos": [str(out / video_name(j[2], cfg.mirrored)) for j in jobs if j[3]]},
        "results": [r.to_dict() for r in results],
    }
    plot_report(report, out / "eval.png")
    tmp = out / "eval.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, out / "eval.json")
    LOG.info("%s", summary_line(report))
    return report


REUSE_RUNTIME = ("out_dir", "workers", "threads", "device", "video_episodes", "video_size")
"""EvalConfig fields a reused report may differ in: where and how fast it ran, not what it
measured (episodes are per-seed deterministic at any worker count)"""
REPORT_LEGACY = {"controller": {"replan_slack": 0.005}}
"""controller settings added after reports were written, with the value that gives the episodes
those reports measured: evaluation looked for a due re-plan only every step period before
``replan_slack`` existed, which is the schedule 0.005 gives (the same end time on every seed
checked); a report without the field is read as having it"""


def reusable_report(checkpoint: str, cfg: EvalConfig) -> dict[str, Any] | None:
    """The report in ``cfg.out_dir`` if it measured the same weights (sha256 of the file, not
    its path: a run reached through a link or moved is the same policy) with the same settings
    (seeds, time limit, controller, ...; :data:`REUSE_RUNTIME` aside); None otherwise."""
    path = Path(cfg.out_dir) / "eval.json"
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
        sha, _ = verify_checkpoint(checkpoint)
    except (OSError, ValueError, CheckpointError):
        return None
    if not isinstance(report, dict) or report.get("sha256") != sha:
        return None
    old, new = report.get("config"), json.loads(json.dumps(asdict(cfg)))
    if isinstance(old, dict):
        old = {**old, **{k: {**legacy, **old[k]} for k, legacy in REPORT_LEGACY.items()
                         if isinstance(old.get(k), dict)}}
    if not isinstance(old, dict) or \
            any(old.get(k) != new.get(k) for k in set(old) | set(new) if k not in REUSE_RUNTIME):
        return None
    return report


def evaluate_or_reuse(checkpoint: str, cfg: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """:func:`evaluate`, unless ``cfg.out_dir`` already holds a report of the same policy with
    the same settings (:func:`reusable_report`): resumable pipelines read finished evaluations
    back, and never a report of other seeds or another time limit."""
    report = reusable_report(checkpoint, cfg)
    if report is not None:
        LOG.info("%s: reusing the evaluation of the same policy and settings", cfg.out_dir)
        return report
    return evaluate(checkpoint, cfg, progress=progress)


def _rollouts(checkpoint: str | None, sha: str | None, preset: str, seeds: list[int],
              cfg: EvalConfig, out: Path, progress: bool) -> tuple[list[EpisodeResult], list]:
    global _WORKER
    spec = _Spec(checkpoint or None, sha or None, preset, cfg.model_seed, cfg.device, cfg.threads,
                 cfg.video_size)
    jobs = [(spec, cfg, s, i < cfg.video_episodes, str(out)) for i, s in enumerate(seeds)]
    if cfg.workers <= 1:
        threads = torch.get_num_threads()
        try:
            results = map_episodes(_work, jobs, 1, desc="episodes", progress=progress)
        finally:
            torch.set_num_threads(threads)
            if _WORKER is not None:
                _WORKER.sim.close()
            _WORKER = None
    else:
        results = map_episodes(_work, jobs, cfg.workers, desc="episodes", progress=progress)
    return results, jobs


def rollouts(checkpoint: str, seeds: list[int], cfg: EvalConfig,
             progress: bool = True) -> list[EpisodeResult]:
    """Run a checkpoint on the given seeds in the evaluation's workers and return the episodes
    (with ``cfg.record_decisions``, the data online RL learns from); no report is written."""
    sha, _ = verify_checkpoint(str(checkpoint))
    check_model_config(read_meta(str(checkpoint)).config)
    return _rollouts(str(checkpoint), sha, "", list(seeds), cfg, Path(cfg.out_dir), progress)[0]


# ----------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["imitation"]:              # the offline imitation metric (no simulator)
        from grrl_trainer.evaluation.imitation import main as imitation_main
        return imitation_main(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        prog="grrl-eval", description="Success rate and stage funnel of a policy checkpoint in "
                                      "the simulator, on held-out seeds. 'grrl-eval imitation "
                                      "CHECKPOINT --data DIR': step-by-step error against "
                                      "held-out demonstrations instead.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="checkpoint (NAME, NAME.json or NAME.safetensors), or 'fresh' for "
                             "a freshly initialised --preset model (smoke test)")
    add_arguments(parser, EvalConfig(), flatten=CLI_FLATTEN)
    parser.add_argument("--preset", default="tiny", help="model preset of 'fresh'")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    cfg = from_args(args, EvalConfig(), flatten=CLI_FLATTEN)
    checkpoint = None if args.checkpoint == "fresh" else args.checkpoint
    try:
        report = evaluate(checkpoint, cfg, preset=args.preset, progress=not args.quiet)
    except (CheckpointError, OSError) as e:
        print(f"grrl-eval: error: cannot load checkpoint {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"grrl-eval: error: {e}", file=sys.stderr)
        return 2
    print(summary_line(report))
    print(f"report: {report['files']['json']}  plot: {report['files']['plot']}"
          + (f"  videos: {len(report['files']['videos'])}" if report["files"]["videos"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
