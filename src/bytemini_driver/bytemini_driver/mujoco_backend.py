"""The MuJoCo backend of the driver: :class:`~bytemini_driver.sim.ShoeLacingSim` behind the
:class:`~bytemini_driver.driver.RobotDriver` interface."""
from __future__ import annotations

from typing import Any

import numpy as np

from bytemini_driver import description as desc
from bytemini_driver.driver import DriverFault, RobotDriver, SceneInfo
from bytemini_driver.scene import SceneConfig, check_task_choices
from bytemini_driver.sim import PhysicsError, ShoeLacingSim, SimConfig
from bytemini_driver.trajectory import DriverLimits


class MujocoDriver(RobotDriver):
    simulated = True

    def __init__(self) -> None:
        self.sim: ShoeLacingSim | None = None
        self.render = True
        self.scene_seq = 0

    def configure(self, params: dict[str, Any], node: Any = None) -> None:
        scene = SceneConfig(image_width=int(params.get("image_width", 224)),
                            image_height=int(params.get("image_height", 224)))
        self.sim = ShoeLacingSim(SimConfig(scene=scene))
        self.render = bool(params.get("publish_images", True))
        self.sim.reset(int(params.get("seed", 0)))

    def cleanup(self) -> None:
        if self.sim is not None:
            self.sim.close()
        self.sim = None

    def _sim(self) -> ShoeLacingSim:
        if self.sim is None:
            raise DriverFault("the MuJoCo backend is not configured")
        return self.sim

    def joint_limits(self) -> DriverLimits:
        lo, hi = self._sim().joint_limits
        vel = []
        for side in desc.SIDES:
            vel += [desc.ARM_LIMITS[j][2] for j in desc.ARM_JOINTS] + [desc.GRIPPER_LIMITS[2]]
        return DriverLimits(desc.actuated_joint_names(), lo, hi, np.array(vel))

    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        sim = self._sim()
        return sim.joint_positions(), sim.joint_velocities()

    def tcp_poses(self) -> dict[str, np.ndarray]:
        return {s: self._sim().tcp_pose(s) for s in desc.SIDES}

    def command(self, q: np.ndarray) -> None:
        self._sim().set_joint_targets(q)

    def images(self) -> dict[str, np.ndarray]:
        if not self.render:
            return {}
        return {c: self._sim().render(c) for c in desc.CAMERAS}

    def camera_intrinsics(self) -> dict[str, tuple[float, float, float, float]]:
        sim = self._sim()
        w, h = sim.config.scene.image_width, sim.config.scene.image_height
        out = {}
        for cam, cid in sim.index.camera.items():
            f = (h / 2) / np.tan(np.deg2rad(sim.model.cam_fovy[cid]) / 2)  # square pixels
            out[cam] = (float(f), float(f), w / 2, h / 2)
        return out

    def advance(self, dt: float) -> None:
        sim = self._sim()
        n = max(1, int(round(dt / sim.model.opt.timestep)))
        try:
            sim.step(n)
        except PhysicsError as exc:
            raise DriverFault(str(exc)) from exc
        sim.update_task()

    def time(self) -> float:
        return float(self._sim().data.time)

    def reset(self, seed: int, mirrored: bool, options: dict[str, str]) -> SceneInfo:
        unknown = set(options) - {"end_side", "eyelet_side", "eyelet_index"}
        if unknown:
            raise ValueError(f"unknown scene option(s) {sorted(unknown)}; known: end_side, "
                             f"eyelet_side, eyelet_index")
        task: dict[str, Any] = {k: options[k] for k in ("end_side", "eyelet_side")
                                if options.get(k)}
        if options.get("eyelet_index"):
            try:
                task["eyelet_index"] = int(options["eyelet_index"])
            except ValueError:
                raise ValueError(f"option eyelet_index must be an integer, "
                                 f"got {options['eyelet_index']!r}") from None
        sim = self._sim()
        check_task_choices(sim.config.scene, **task)
        try:
            params = sim.reset(seed, mirrored=mirrored, **task)
        except PhysicsError as exc:
            raise DriverFault(str(exc)) from exc
        self.scene_seq += 1
        # scene_seq lets the episode node tell its scene's states from a later reset's
        return SceneInfo(sim.instruction, {**params.as_dict(), "scene_seq": str(self.scene_seq)})

    def task_state(self) -> dict[str, Any] | None:
        sim = self._sim()
        if sim.params is None or sim.tracker is None:
            return None
        st = sim.tracker.state
        p = sim.params
        center, direction = sim.eyelet_world(p.eyelet_side, p.eyelet_index, p.end_side)
        return {"scene_seq": self.scene_seq, "seed": p.seed, "mirrored": p.mirrored,
                "instruction": sim.instruction, "end_side": p.end_side,
                "eyelet_side": p.eyelet_side, "eyelet_index": p.eyelet_index,
                "eyelet_center": center, "threading_direction": direction,
                "shoe_yaw": float(p.shoe_yaw),
                "stage": st.stage, "threaded": st.threaded, "success": st.success,
                "failed": st.jammed, "failure_reason": st.jam_reason,
                "pulled_length": st.pulled_length, "lace": sim.lace_points()}
