"""The robot driver interface and its backend registry.

A backend is what the driver node talks to: the MuJoCo simulator here, a ros2_control robot
through the topic bridge, or an integrator's own hardware. Backends are registered as entry
points in the group ``bytemini_driver.backends`` and chosen by the node's ``backend``
parameter, so a new robot plugs in without touching this package:

    entry_points={'bytemini_driver.backends': ['myrobot = my_pkg.driver:MyRobotDriver']}

Joint vectors always follow :func:`bytemini_driver.description.actuated_joint_names`.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import numpy as np

from bytemini_driver.trajectory import DriverLimits

BACKEND_GROUP = "bytemini_driver.backends"


class DriverFault(RuntimeError):
    """The backend cannot go on (e.g. a physics blow-up); the node holds and reports it."""


@dataclass
class SceneInfo:
    """What a reset produced."""

    instruction: str
    parameters: dict[str, str] = field(default_factory=dict)


class RobotDriver(abc.ABC):
    """A dual-arm robot with three cameras, commanded by joint position targets."""

    #: True if :meth:`advance` moves time (a simulator): the node then owns the clock.
    simulated: bool = False

    def configure(self, params: dict[str, Any], node: Any = None) -> None:
        """Acquire the robot (open connections, build the simulator). ``node`` is the ROS
        node for backends that speak ROS themselves (the topic bridge)."""

    def cleanup(self) -> None:
        """Release everything acquired in :meth:`configure`."""

    @abc.abstractmethod
    def joint_limits(self) -> DriverLimits:
        """Limits of the actuated joints."""

    @abc.abstractmethod
    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions, velocities) of the actuated joints."""

    @abc.abstractmethod
    def tcp_poses(self) -> dict[str, np.ndarray]:
        """side -> 4x4 tcp pose in base_link."""

    @abc.abstractmethod
    def command(self, q: np.ndarray) -> None:
        """Position targets for all actuated joints (already validated)."""

    @abc.abstractmethod
    def images(self) -> dict[str, np.ndarray]:
        """camera name -> RGB image (H, W, 3) uint8 (empty if the cameras are off)."""

    def camera_intrinsics(self) -> dict[str, tuple[float, float, float, float]]:
        """camera -> (fx, fy, cx, cy) in pixels, where known."""
        return {}

    def advance(self, dt: float) -> None:
        """Simulators: advance physics by ``dt`` seconds. Hardware: nothing."""

    def time(self) -> float:
        """Simulation time (s) for simulators."""
        return 0.0

    def reset(self, seed: int, mirrored: bool, options: dict[str, str]) -> SceneInfo:
        """Reset the scene (simulators) or move home (hardware)."""
        raise NotImplementedError(f"{type(self).__name__} cannot reset a scene")

    def task_state(self) -> dict[str, Any] | None:
        """Ground-truth task state (simulators only)."""
        return None


def available_backends() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=BACKEND_GROUP)}


def load_backend(name: str) -> RobotDriver:
    """Instantiate the backend registered under ``name``, or given as ``module:Class`` (for
    integrators trying a driver before packaging it)."""
    eps = available_backends()
    if ":" in name:
        import importlib

        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load driver backend '{name}': {exc}") from exc
    elif name in eps:
        cls = eps[name].load()
    else:
        raise ValueError(f"unknown driver backend '{name}'; registered: {sorted(eps)}")
    driver = cls()
    if not isinstance(driver, RobotDriver):
        raise TypeError(f"backend '{name}' ({cls}) is not a RobotDriver")
    return driver
