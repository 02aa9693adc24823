"""Demonstration collection: the flawed demonstrator on the ROS-free simulator (fast path,
parallel worker processes) or episodes recorded through the ROS graph (``convert``), into
the episode dataset. Resumable: episodes are named by seed and written atomically, so a
killed collection restarts where it stopped without duplicates or half-written files."""
from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mujoco
import numpy as np

from bytemini_driver import description as desc
from bytemini_driver.demonstrator import DemoConfig, FlawedDemonstrator
from bytemini_driver.scene import SceneConfig
from bytemini_driver.sim import PhysicsError, ShoeLacingSim, SimConfig
from grrl_trainer.data.dataset import (SCHEMA_VERSION, DatasetError, EpisodeRecord, episode_path,
                                  read_meta, write_episode)

LOG = logging.getLogger(__name__)
GRIPPERS = [desc.actuated_joint_names().index(desc.gripper_joint_name(s)) for s in desc.SIDES]


@dataclass
class CollectConfig:
    """How demonstrations are collected (stored in the dataset's info.json)."""

    fps: float = 10.0
    """dataset steps per second (the 50 Hz control is decimated)"""
    control_rate: float = 50.0
    """Hz of the control loop (the demonstrator's commands and the physics)"""
    images: bool = True
    """record the three cameras (--no-images: state only, much faster)"""
    image_size: int = 128
    """camera image width and height (pixels)"""
    left_bias: float = 0.8
    """probability that the instructed lace end is the left one: a one-sided dataset, so
    that mirroring has something to add"""
    time_limit: float = 60.0
    """simulated seconds before an episode is cut (a failure)"""
    clean: bool = False
    """the clean scripted expert instead of the flawed demonstrator"""
    demo: DemoConfig = field(default_factory=DemoConfig)
    """the demonstrator's flaws and their rates"""
    execution_noise_std: float = 0.0
    """std (rad) of a smooth random offset added to the arm joint targets the robot executes
    but not to the recorded actions (DART: the demonstrations visit the states an imprecise
    policy reaches, labelled with how the demonstrator acts there); 0 = off"""
    execution_noise_tau: float = 0.3
    """correlation time (s) of that offset (an Ornstein-Uhlenbeck process)"""

    def __post_init__(self) -> None:
        if self.execution_noise_std < 0 or self.execution_noise_tau <= 0:
            raise ValueError(f"execution_noise_std >= 0 and execution_noise_tau > 0 are needed, "
                             f"got {self.execution_noise_std}, {self.execution_noise_tau}")


def quat_wxyz(R: np.ndarray) -> np.ndarray:
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(R).flatten())
    return q


def pose7(T: np.ndarray) -> np.ndarray:
    return np.r_[T[:3, 3], quat_wxyz(T[:3, :3])]


class InvalidEpisode(RuntimeError):
    """The simulation blew up; the episode is not stored."""


class Collector:
    """One simulator and demonstrator; collects episodes one after another."""

    def __init__(self, config: CollectConfig):
        self.config = config
        size = config.image_size
        self.sim = ShoeLacingSim(SimConfig(scene=SceneConfig(image_width=size, image_height=size)))
        demo = config.demo if not config.clean else DemoConfig(
            pauses_per_episode=0, creep_prob=0, miss_prob=0, second_miss_prob=0, drop_prob=0,
            jitter_std=0, fail_prob=0)
        self.demo = FlawedDemonstrator(demo)

    def episode(self, seed: int) -> EpisodeRecord:
        cfg, sim, demo = self.config, self.sim, self.demo
        rng = np.random.default_rng([seed, 7])
        end_side = "left" if rng.random() < cfg.left_bias else "right"
        p = sim.reset(seed, end_side=end_side)
        center, direction = sim.eyelet_world(p.eyelet_side, p.eyelet_index, p.end_side)
        dt = 1.0 / cfg.control_rate
        demo.reset(p.end_side, center, direction, sim.joint_positions(),
                   sim.config.scene.lace_vertices, dt, seed=seed,
                   inner_radius=sim.config.scene.eyelet_inner_radius)
        dec = max(1, int(round(cfg.control_rate / cfg.fps)))
        n_sub = int(round(dt / sim.model.opt.timestep))
        obs: dict[str, list] = {k: [] for k in ("t", "q", "tcp", "lace", "stage")}
        images: dict[str, list] = {c: [] for c in desc.CAMERAS} if cfg.images else {}
        targets: list[np.ndarray] = []
        state = sim.update_task()
        k = 0
        noise_rng = np.random.default_rng([seed, 11])
        offset = np.zeros(len(sim.joint_positions()))
        decay = dt / cfg.execution_noise_tau
        try:
            while sim.data.time < cfg.time_limit:
                if k % dec == 0:
                    q = sim.joint_positions()
                    obs["t"].append(sim.data.time)
                    obs["q"].append(q)
                    obs["tcp"].append(np.stack([pose7(sim.tcp_pose(s)) for s in desc.SIDES]))
                    obs["lace"].append(sim.lace_points())
                    obs["stage"].append(state.stage)
                    for cam in images:
                        images[cam].append(sim.render(cam))
                target = demo.act(sim.lace_points(), sim.joint_positions())
                if cfg.execution_noise_std > 0:
                    offset += -decay * offset + cfg.execution_noise_std * math.sqrt(2 * decay) \
                        * noise_rng.normal(size=offset.shape)
                    offset[GRIPPERS] = 0.0
                sim.set_joint_targets(target + offset)
                sim.step(n_sub)
                state = sim.update_task()
                if (k + 1) % dec == 0 or state.success or state.jammed or demo.done:
                    targets.append(target)
                k += 1
                if state.success or state.jammed or demo.done:
                    break
        except PhysicsError as exc:
            # an invalid episode: nothing to learn from, and not a failure of the operator
            raise InvalidEpisode(f"seed {seed}: {exc}") from exc
        n = len(obs["t"])
        if n == 0 or not targets:
            raise InvalidEpisode(f"seed {seed}: no steps recorded")
        targets = (targets + [targets[-1]] * n)[:n]
        action_joints = np.array(targets)
        action_tcp = np.array([[pose7(demo.ik.fk(a, s)) for s in desc.SIDES]
                               for a in action_joints])
        joints = np.array(obs["q"])
        keyframes = sorted({min(step // dec, n - 1) for step in demo.flaws.retry_keyframes})
        # dataset step i acts through control steps i*dec .. i*dec+dec-1: it carries the flaw
        # of any of them (the largest code if two meet in one step)
        per_act = demo.step_flaws()
        per_act = np.pad(per_act, (0, max(0, n * dec - len(per_act))))[:n * dec]
        flaw = per_act.reshape(n, dec).max(axis=1)
        flaws = demo.flaws.as_dict()
        flaws["failure"] = "" if state.success else (state.jam_reason or (
            "gave up" if demo.flaws.gave_up else "time limit"))
        return EpisodeRecord(
            episode_id=f"ep_{seed:06d}", seed=seed, instruction=sim.instruction,
            success=bool(state.success), fps=cfg.fps, timestamp=np.array(obs["t"]),
            joints=joints, tcp=np.array(obs["tcp"]), gripper=joints[:, GRIPPERS],
            action_joints=action_joints, action_tcp=action_tcp,
            action_gripper=action_joints[:, GRIPPERS], stage=np.array(obs["stage"]),
            retry_keyframes=keyframes, scene=p.as_dict(), flaws=flaws, flaw=flaw,
            images={c: np.array(v) for c, v in images.items()}, lace=np.array(obs["lace"]))


_COLLECTOR: Collector | None = None


def _work(job: tuple[CollectConfig, int, str]) -> tuple[int, bool, dict]:
    global _COLLECTOR
    config, seed, root = job
    if _COLLECTOR is None:
        _COLLECTOR = Collector(config)
    try:
        rec = _COLLECTOR.episode(seed)
    except InvalidEpisode as exc:
        LOG.warning("skipped invalid episode: %s", exc)
        return seed, None, {"invalid": str(exc)}
    write_episode(episode_path(Path(root), seed), rec)
    return seed, rec.success, rec.flaws


def write_info(root: Path, config: CollectConfig) -> None:
    info_path = root / "info.json"
    info = {"schema_version": SCHEMA_VERSION, "fps": config.fps, "images": config.images,
            "image_size": config.image_size, "cameras": list(desc.CAMERAS),
            "joint_names": desc.actuated_joint_names(),
            "collection": json.loads(json.dumps(asdict(config)))}  # as it reads back
    if info_path.exists():
        old = json.loads(info_path.read_text())
        if old.get("schema_version") != SCHEMA_VERSION:
            raise DatasetError(f"{root} holds episodes of schema version "
                               f"{old.get('schema_version')}; this code collects version "
                               f"{SCHEMA_VERSION}: use a new directory")
        # a field the dataset's info lacks was added later: the dataset had its default
        defaults = json.loads(json.dumps(asdict(CollectConfig())))
        if {**defaults, **old.get("collection", {})} != info["collection"]:
            raise DatasetError(f"{root} was collected with other settings; use a new "
                               f"directory (have {old.get('collection')})")
    root.mkdir(parents=True, exist_ok=True)
    info_path.write_text(json.dumps(info, indent=1))


def pending_seeds(root: Path, seeds: list[int]) -> list[int]:
    """Seeds without a readable episode yet (a corrupt file is collected again)."""
    todo = []
    for seed in seeds:
        path = episode_path(root, seed)
        if path.exists():
            try:
                read_meta(path)
                continue
            except DatasetError as exc:
                LOG.warning("recollecting: %s", exc)
        todo.append(seed)
    return todo


def collect(root: Path, config: CollectConfig, seeds: list[int], workers: int,
            progress: bool = True) -> list[tuple[int, bool, dict]]:
    from tqdm import tqdm

    root = Path(root)
    write_info(root, config)
    for stale in (root / "episodes").glob("*.tmp*") if (root / "episodes").exists() else []:
        stale.unlink()                       # left by a killed writer
    todo = pending_seeds(root, seeds)
    if len(todo) < len(seeds):
        LOG.info("resuming: %d of %d episodes already collected", len(seeds) - len(todo),
                 len(seeds))
    jobs = [(config, s, str(root)) for s in todo]
    results = []
    bar = tqdm(total=len(jobs), desc="collecting", disable=not progress)
    if workers <= 1:
        for job in jobs:
            results.append(_work(job))
            bar.update()
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            for r in pool.imap_unordered(_work, jobs):
                results.append(r)
                bar.update()
    bar.close()
    return results
