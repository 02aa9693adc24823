"""The ROS-free shoe-lacing simulator: reset by seed, joint/gripper commands, observations,
camera rendering, constraint grasps and the task state.

Used directly by the fast data-collection path and the tests, and wrapped by the MuJoCo
driver backend for the ROS graph.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import mujoco
import numpy as np

from bytemini_driver import description as desc
from bytemini_driver.scene import (TABLE_HEIGHT, SceneConfig, SceneParams, build_model,
                                   eyelet_local, sample_scene, shoe_frame,
                                   threading_direction_local)
from bytemini_driver.task import StageTracker, TaskConfig, TaskState, instruction_text

LOG = logging.getLogger(__name__)

#: Home posture: both tcps ~12 cm above the table, fingers down (solved once by IK).
HOME_TCP = {"left": (0.36, 0.20, 0.88), "right": (0.36, -0.20, 0.88)}


class PhysicsError(RuntimeError):
    """The simulation produced non-finite values; the episode is invalid."""


@dataclass
class SimConfig:
    """Simulator settings."""

    scene: SceneConfig = field(default_factory=SceneConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    settle_time: float = 0.3
    """seconds of physics after a reset so the lace comes to rest"""
    grasp_radius: float = 0.012
    """a lace vertex this close to the fingertip centre is caught when the gripper closes"""
    grasp_closed: float = 0.012
    """finger opening (m) under which a closing gripper takes hold"""
    release_open: float = 0.015
    """commanded opening above which a gripper lets go"""
    aglet_vertices: int = 3
    """vertices from each end that form the rigid aglet (held together)"""


class ShoeLacingSim:
    """One simulated robot + scene. Not thread-safe; one owner calls it."""

    def __init__(self, config: SimConfig | None = None):
        self.config = config or SimConfig()
        self.model, self.index = build_model(self.config.scene)
        self.data = mujoco.MjData(self.model)
        self.names = desc.actuated_joint_names()
        self._q_lo = np.array([self.model.actuator_ctrlrange[a, 0] for a in self._ctrl_ids()])
        self._q_hi = np.array([self.model.actuator_ctrlrange[a, 1] for a in self._ctrl_ids()])
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        self._default_lace = None
        self.params: SceneParams | None = None
        self.tracker: StageTracker | None = None
        self.held: dict[str, list[int]] = {s: [] for s in desc.SIDES}
        self._gripper_cmd = {s: desc.GRIPPER_LIMITS[1] for s in desc.SIDES}
        self.home_q = self._solve_home()

    # --------------------------------------------------------------------- bookkeeping
    def _ctrl_ids(self) -> list[int]:
        ids = []
        for side in desc.SIDES:
            ids += list(self.index.arm_ctrl[side]) + [self.index.gripper_ctrl[side]]
        return ids

    def _qpos_ids(self) -> list[int]:
        ids = []
        for side in desc.SIDES:
            ids += list(self.index.arm_qpos[side]) + [self.index.gripper_qpos[side]]
        return ids

    def _solve_home(self) -> np.ndarray:
        from bytemini_driver.ik import DualArmIK, pose_matrix, yaw_down

        ik = DualArmIK()
        q = np.zeros(len(self.names))
        for side in desc.SIDES:
            q[self.names.index(f"{side}_shoulder_pitch_joint")] = -0.5
            q[self.names.index(f"{side}_elbow_joint")] = -1.2
            q[self.names.index(f"{side}_wrist_pitch_joint")] = 1.6
            q[self.names.index(desc.gripper_joint_name(side))] = desc.GRIPPER_LIMITS[1]
        ik.set_posture(q)
        targets = {s: pose_matrix(np.array(HOME_TCP[s]), yaw_down(0.0)) for s in desc.SIDES}
        return ik.converge(q, targets, steps=400)

    @property
    def joint_limits(self) -> tuple[np.ndarray, np.ndarray]:
        return self._q_lo.copy(), self._q_hi.copy()

    # ------------------------------------------------------------------------- reset
    def reset(self, seed: int, mirrored: bool = False, **task: object) -> SceneParams:
        """Randomise the scene from ``seed`` (``task`` may fix end_side, eyelet_side,
        eyelet_index) and let it settle. Returns the scene parameters."""
        params = sample_scene(seed, self.config.scene, mirrored=mirrored, **task)  # type: ignore[arg-type]
        m, d, idx = self.model, self.data, self.index
        mujoco.mj_resetData(m, d)
        if self._default_lace is None:
            mujoco.mj_forward(m, d)
            self._default_lace = d.xpos[idx.lace_bodies].copy()
        for eq in np.concatenate(list(idx.grasp_eq.values())):
            d.eq_active[eq] = 0
        self.held = {s: [] for s in desc.SIDES}
        qids = self._qpos_ids()
        d.qpos[qids] = self.home_q
        d.ctrl[self._ctrl_ids()] = self.home_q
        for side in desc.SIDES:
            mimic = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT,
                                      f"{side}_gripper_finger_mimic_joint")
            d.qpos[m.jnt_qposadr[mimic]] = self.home_q[self.names.index(
                desc.gripper_joint_name(side))]
            self._gripper_cmd[side] = desc.GRIPPER_LIMITS[1]
        T = shoe_frame(params.shoe_xy, params.shoe_yaw)
        d.mocap_pos[idx.shoe_mocap] = T[:3, 3]
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, T[:3, :3].flatten())
        d.mocap_quat[idx.shoe_mocap] = quat
        for g in idx.shoe_geoms:
            if m.geom_matid[g] >= 0 or mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_GEOM, g) in (
                    "shoe_upper", "shoe_toe"):
                m.geom_rgba[g] = params.shoe_rgba
        d.qpos[idx.lace_qpos] = params.lace_points - self._default_lace
        # the compiler measured the anchor's offset at qpos0; the lace middle sits on it
        m.eq_data[idx.anchor_eq, 3:6] = 0.0
        mujoco.mj_forward(m, d)
        self.params = params
        center, axis = self.eyelet_world(params.eyelet_side, params.eyelet_index,
                                         params.end_side)
        self.tracker = StageTracker(
            0 if params.end_side == "left" else self.config.scene.lace_vertices - 1,
            center, axis, self.config.scene.eyelet_inner_radius, TABLE_HEIGHT,
            self.config.scene.lace_length / (self.config.scene.lace_vertices - 1),
            self.config.task)
        self.step(max(1, int(self.config.settle_time / m.opt.timestep)))
        d.time = 0.0
        return params

    @property
    def instruction(self) -> str:
        p = self.params
        if p is None:
            raise RuntimeError("reset() first")
        return instruction_text(p.end_side, p.eyelet_side, p.eyelet_index)

    def eyelet_world(self, side: str, index: int, end_side: str) -> tuple[np.ndarray, np.ndarray]:
        """Centre of an eyelet and the direction the ``end_side`` end is threaded through it,
        in the world (= base_link) frame."""
        assert self.params is not None
        T = shoe_frame(self.params.shoe_xy, self.params.shoe_yaw)
        c, _normal = eyelet_local(self.config.scene, side, index)
        return T[:3, :3] @ c + T[:3, 3], T[:3, :3] @ threading_direction_local(end_side)

    # ----------------------------------------------------------------------- control
    def set_joint_targets(self, q: np.ndarray) -> None:
        """Position targets for the 16 actuated joints (clipped to the joint range);
        gripper entries are opening targets and drive the grasp logic."""
        q = np.clip(np.asarray(q, dtype=float), self._q_lo, self._q_hi)
        self.data.ctrl[self._ctrl_ids()] = q
        for side in desc.SIDES:
            self._gripper_cmd[side] = float(q[self.names.index(desc.gripper_joint_name(side))])

    _BAD = (mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL,
            mujoco.mjtWarning.mjWARN_BADQACC)

    def step(self, n: int = 1) -> None:
        """Advance ``n`` physics steps; raises :class:`PhysicsError` on a blow-up.

        MuJoCo answers NaN/Inf by resetting mjData to the model's defaults and counting a
        warning; that silent reset is caught here too (it would teleport the lace)."""
        warn = self.data.warning
        before = [warn[w].number for w in self._BAD]
        for _ in range(n):
            mujoco.mj_step(self.model, self.data)
            self._update_grasps()
        after = [warn[w].number for w in self._BAD]
        if after != before or not (np.all(np.isfinite(self.data.qpos))
                                   and np.all(np.isfinite(self.data.qvel))):
            raise PhysicsError(f"non-finite physics state at t={self.data.time:.3f}s")

    def _update_grasps(self) -> None:
        m, d, idx, cfg = self.model, self.data, self.index, self.config
        lace = d.xpos[idx.lace_bodies]
        for side in desc.SIDES:
            opening = d.qpos[idx.gripper_qpos[side]]
            if self.held[side] and self._gripper_cmd[side] > cfg.release_open:
                for v in self.held[side]:
                    d.eq_active[idx.grasp_eq[side][v]] = 0
                self.held[side] = []
            elif not self.held[side] and self._gripper_cmd[side] < cfg.grasp_closed \
                    and opening < cfg.grasp_closed:
                tcp = d.xpos[idx.tcp_body[side]]
                dist = np.linalg.norm(lace - tcp, axis=1)
                v = int(np.argmin(dist))
                if dist[v] > cfg.grasp_radius:
                    continue
                other = desc.SIDES[1 - desc.SIDES.index(side)]
                if v in self.held[other]:
                    continue
                group = self._aglet_group(v)
                R, p = d.xmat[idx.tcp_body[side]].reshape(3, 3), d.xpos[idx.tcp_body[side]]
                for u in group:
                    eq = idx.grasp_eq[side][u]
                    m.eq_data[eq, 0:3] = R.T @ (lace[u] - p)   # anchor in the tcp frame
                    m.eq_data[eq, 3:6] = 0.0                   # the vertex itself
                    d.eq_active[eq] = 1
                self.held[side] = group

    def _aglet_group(self, v: int) -> list[int]:
        """Vertices held together when ``v`` is grasped: within the (rigid) aglet, ``v`` and
        the rest of the aglet towards the end, so the end keeps its direction in the hand."""
        n, k = self.config.scene.lace_vertices, self.config.aglet_vertices
        if v < k:
            return list(range(0, v + 1))
        if v >= n - k:
            return list(range(v, n))
        return [v]

    # -------------------------------------------------------------------- observation
    def joint_positions(self) -> np.ndarray:
        return self.data.qpos[self._qpos_ids()].copy()

    def joint_velocities(self) -> np.ndarray:
        ids = []
        for side in desc.SIDES:
            ids += list(self.index.arm_qvel[side]) + [
                self.model.jnt_dofadr[mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT,
                                                        desc.gripper_joint_name(side))]]
        return self.data.qvel[ids].copy()

    def tcp_pose(self, side: str) -> np.ndarray:
        """4x4 pose of the tcp in base_link (= world: the base does not move here)."""
        T = np.eye(4)
        b = self.index.tcp_body[side]
        T[:3, :3] = self.data.xmat[b].reshape(3, 3)
        T[:3, 3] = self.data.xpos[b]
        return T

    def lace_points(self) -> np.ndarray:
        return self.data.xpos[self.index.lace_bodies].copy()

    def end_holders(self, end: int) -> set[str]:
        return {s for s in desc.SIDES if end in self.held[s]}

    def max_lace_penetration(self) -> float:
        d, flex = self.data, self.index.lace_flex
        depth = 0.0
        for c in d.contact[:d.ncon]:
            if c.flex[0] == flex or c.flex[1] == flex:
                depth = max(depth, -c.dist)
        return depth

    def update_task(self) -> TaskState:
        assert self.tracker is not None, "reset() first"
        return self.tracker.update(self.lace_points(), self.end_holders(self.tracker.end),
                                   self.max_lace_penetration())

    # ----------------------------------------------------------------------- rendering
    def render(self, camera: str, width: int | None = None, height: int | None = None
               ) -> np.ndarray:
        """RGB image (H, W, 3) uint8 of ``camera`` (head, left_wrist, right_wrist)."""
        w = width or self.config.scene.image_width
        h = height or self.config.scene.image_height
        r = self._renderers.get((w, h))
        if r is None:
            r = mujoco.Renderer(self.model, height=h, width=w)
            self._renderers[(w, h)] = r
        r.update_scene(self.data, camera=self.index.camera[camera])
        return r.render().copy()

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()


def wrap_angle(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi
