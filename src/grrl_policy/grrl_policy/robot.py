"""The robot as the policy sees it, read from its URDF: which joints it commands, in which
order, within which limits, and where each arm's tool centre point (tcp) is.

This is what lets the policy package run on another robot without our simulator package: an
integrator passes the ``robot_description`` string their robot publishes (or a URDF file) and,
where their names differ from ByteMini-v2's, a :class:`RobotConfig`. Nothing here imports ROS
or MuJoCo; :mod:`grrl_policy.kinematics` builds the IK from a :class:`RobotDescription`.

Joint vectors everywhere in the project are ordered per side, in ``RobotConfig.sides`` order:
that side's arm joints from the root outwards, then its gripper joint. For ByteMini-v2 that is
the 16-vector (left arm 7, left gripper, right arm 7, right gripper).
"""
from __future__ import annotations

import functools
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_ROBOT = "bytemini_v2"
"""the URDF (``urdf/<name>.urdf``) used when no robot description is given"""


@dataclass(frozen=True)
class RobotConfig:
    """What is robot-specific in reading a URDF. The defaults describe ByteMini-v2."""

    sides: tuple[str, ...] = ("left", "right")
    """the arms, in the order of joint vectors and task vectors; each name fills ``{side}``"""
    tcp_frame: str = "{side}_tcp"
    """link of each arm's tool centre point (the frame task-space actions command)"""
    gripper_joint: str = "{side}_gripper_finger_joint"
    """each arm's commanded gripper joint (the last entry of that arm in joint vectors)"""
    arm_root_link: str | None = None
    """link the arm chains are read from: an arm's joints are the movable (not fixed, not
    mimic) joints on the kinematic chain from this link to its tcp. None: the URDF's root"""
    extra_mimics: tuple[tuple[str, str, float, float], ...] = ()
    """(follower, leader, multiplier, offset) couplings to add to the URDF's ``<mimic>`` tags,
    for a URDF that models a coupled finger without one (follower = multiplier x leader +
    offset)"""

    def __post_init__(self) -> None:
        if not self.sides or len(set(self.sides)) != len(self.sides):
            raise ValueError(f"sides must be distinct names, got {self.sides!r}")
        for name in ("tcp_frame", "gripper_joint"):
            pattern = getattr(self, name)
            if "{side}" not in pattern:
                raise ValueError(f"{name} must contain '{{side}}', got {pattern!r}")

    def tcp(self, side: str) -> str:
        return self.tcp_frame.format(side=side)

    def gripper(self, side: str) -> str:
        return self.gripper_joint.format(side=side)


@dataclass(frozen=True)
class UrdfJoint:
    """One ``<joint>`` of a URDF (angles in rad, lengths in m)."""

    name: str
    kind: str
    """revolute | continuous | prismatic | fixed | floating | planar"""
    parent: str
    child: str
    lower: float = -math.inf
    upper: float = math.inf
    velocity: float = math.inf
    """rad/s or m/s; inf when the URDF states none"""
    mimic: tuple[str, float, float] | None = None
    """(leader joint, multiplier, offset) when this joint follows another"""


@dataclass(frozen=True, eq=False)
class RobotDescription:
    """A robot read from its URDF by :func:`load_robot`.

    Limits are (n,) arrays in :attr:`actuated_joint_names` order, read-only."""

    urdf: str
    """the URDF text (what a MuJoCo model is compiled from)"""
    path: Path | None
    """the file it was read from; None for a ``robot_description`` string"""
    config: RobotConfig
    name: str
    """the URDF's robot name"""
    root_link: str
    joints: dict[str, UrdfJoint]
    """every joint of the URDF by name"""
    arm_joints: dict[str, tuple[str, ...]]
    """side -> its arm joints, root outwards"""
    actuated_joint_names: tuple[str, ...]
    """the commanded joints, in the order of every joint vector"""
    lower: np.ndarray = field(repr=False)
    upper: np.ndarray = field(repr=False)
    velocity: np.ndarray = field(repr=False)
    mimics: dict[str, tuple[str, float, float]] = field(repr=False)
    """follower joint -> (leader, multiplier, offset), from ``<mimic>`` and ``extra_mimics``"""

    @property
    def sides(self) -> tuple[str, ...]:
        return self.config.sides

    def tcp_frame(self, side: str) -> str:
        return self.config.tcp(side)

    def gripper_joint(self, side: str) -> str:
        return self.config.gripper(side)

    def gripper_indices(self) -> list[int]:
        """Index of each side's gripper in joint vectors, in :attr:`sides` order."""
        return [self.actuated_joint_names.index(self.gripper_joint(s)) for s in self.sides]

    def joint_limits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lower, upper, velocity) of the actuated joints, (n,) each, as the URDF states
        them (fresh arrays)."""
        return self.lower.copy(), self.upper.copy(), self.velocity.copy()


# ----------------------------------------------------------------------------- reading

def _parse_joint(el: ET.Element) -> UrdfJoint:
    name, kind = el.get("name"), el.get("type")
    parent, child = el.find("parent"), el.find("child")
    if not name or not kind or parent is None or child is None:
        raise ValueError(f"URDF joint {name!r} lacks a name, type, parent or child")
    lo, hi, vel = -math.inf, math.inf, math.inf
    limit = el.find("limit")
    if limit is not None:
        vel = float(limit.get("velocity", math.inf))
        if kind in ("revolute", "prismatic"):   # a continuous joint's range is unbounded
            lo, hi = float(limit.get("lower", 0.0)), float(limit.get("upper", 0.0))
    mimic = el.find("mimic")
    follows = None
    if mimic is not None:
        follows = (mimic.get("joint"), float(mimic.get("multiplier", 1.0)),
                   float(mimic.get("offset", 0.0)))
    return UrdfJoint(name, kind, parent.get("link"), child.get("link"), lo, hi, vel, follows)


def _urdf_text(urdf: str | os.PathLike) -> tuple[str, Path | None]:
    """A ``robot_description`` string (XML) or a file path → (text, path or None)."""
    if isinstance(urdf, str) and urdf.lstrip().startswith("<"):
        return urdf, None
    path = Path(urdf)
    if not path.is_file():
        raise FileNotFoundError(f"no URDF file at {path} (pass the XML text itself as a "
                                "robot_description string)")
    return path.read_text(), path


def load_robot(urdf: str | os.PathLike | None = None,
               config: RobotConfig | None = None) -> RobotDescription:
    """Read a robot from a URDF: an XML string (a ROS ``robot_description``), a file path,
    or None for the default robot (:func:`default_urdf_path`).

    Raises ValueError naming what the URDF lacks (a tcp link, a gripper joint, a chain)."""
    if urdf is None:
        urdf = default_urdf_path()
    config = config or RobotConfig()
    text, path = _urdf_text(urdf)
    root = ET.fromstring(text)
    if root.tag != "robot":
        raise ValueError(f"not a URDF: the root element is <{root.tag}>, not <robot>")
    joints = {j.name: j for j in map(_parse_joint, root.findall("joint"))}
    links = [l.get("name") for l in root.findall("link")]
    by_child = {j.child: j for j in joints.values()}
    roots = [l for l in links if l not in by_child]
    if len(roots) != 1:
        raise ValueError(f"a URDF is a tree with one root link; this one has {roots}")
    mimics = {j.name: j.mimic for j in joints.values() if j.mimic is not None}
    for follower, leader, mult, offset in config.extra_mimics:
        mimics[follower] = (leader, float(mult), float(offset))
    arm_root = config.arm_root_link or roots[0]

    arms: dict[str, tuple[str, ...]] = {}
    names: list[str] = []
    for side in config.sides:
        tcp, gripper = config.tcp(side), config.gripper(side)
        if tcp not in links:
            raise ValueError(f"the URDF has no tcp link {tcp!r} for side {side!r}")
        if gripper not in joints or joints[gripper].kind == "fixed":
            raise ValueError(f"the URDF has no movable gripper joint {gripper!r} for side {side!r}")
        chain, link = [], tcp            # walk from the tcp up to the arm root
        while link != arm_root:
            if link not in by_child:
                raise ValueError(f"{tcp!r} is not below the arm root link {arm_root!r}")
            chain.append(by_child[link])
            link = by_child[link].parent
        arm = tuple(j.name for j in reversed(chain) if j.kind != "fixed" and j.name not in mimics)
        if not arm:
            raise ValueError(f"no movable joint between {arm_root!r} and {tcp!r}")
        arms[side] = arm
        names += [*arm, gripper]
    if len(set(names)) != len(names):
        raise ValueError(f"the arms share joints: {names}")
    lo, hi, vel = (np.array(c, dtype=float) for c in
                   zip(*[(joints[n].lower, joints[n].upper, joints[n].velocity) for n in names]))
    for a in (lo, hi, vel):
        a.setflags(write=False)
    return RobotDescription(urdf=text, path=path, config=config, name=root.get("name", ""),
                            root_link=roots[0], joints=joints, arm_joints=arms,
                            actuated_joint_names=tuple(names), lower=lo, upper=hi, velocity=vel,
                            mimics=mimics)


def default_urdf_path() -> Path:
    """The default robot's URDF: installed with this package (``share/grrl_policy/urdf``),
    else the repository's ``urdf/`` (a source checkout)."""
    filename = f"{DEFAULT_ROBOT}.urdf"
    try:
        from ament_index_python.packages import get_package_share_directory

        path = Path(get_package_share_directory("grrl_policy")) / "urdf" / filename
        if path.is_file():
            return path
    except (ImportError, LookupError, ValueError):
        pass
    # src/grrl_policy/grrl_policy/robot.py -> the repository root
    return Path(__file__).resolve().parents[3] / "urdf" / filename


@functools.lru_cache(maxsize=1)
def default_robot() -> RobotDescription:
    """The default robot (ByteMini-v2), read once."""
    return load_robot(default_urdf_path(), RobotConfig())


def resolve(robot: RobotDescription | None) -> RobotDescription:
    """``robot``, or the default robot when None (the default of every ``robot=`` argument)."""
    return default_robot() if robot is None else robot
