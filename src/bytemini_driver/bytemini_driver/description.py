"""ByteMini-v2 robot description, generated in code so the two arms are exact mirror images.

The committed ``urdf/bytemini_v2.urdf`` is the output of :func:`build_urdf` (a test keeps them
equal; regenerate with ``grrl-urdf``). Frames follow REP 103: base_link at the floor under the
centre of the footprint, x forward, y left, z up. The sagittal plane is y = 0.

Mirror convention (what the augmentation relies on): the right arm is built from the left by
M = diag(1, -1, 1) applied to every joint origin (T -> M T M) and every joint axis a -> -M a.
Rotating about -M a by q is the mirror image of rotating about a by q, so the same joint
*value* on the mirrored side gives the mirrored pose: FK(mirror(q)) = M FK(q) M where
mirror(q) only swaps ``left_*`` and ``right_*`` values. Optical frames are the one exception
to T -> M T M: a mirrored camera must stay right-handed with its image flipped horizontally
(paper section 3.2), so its x axis is negated: R_right = M R_left diag(-1, 1, 1).
"""
from __future__ import annotations

import argparse
import math
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROBOT_NAME = "bytemini_v2"
SIDES = ("left", "right")
ARM_JOINTS = ("shoulder_pitch", "shoulder_roll", "shoulder_yaw", "elbow",
              "wrist_yaw", "wrist_pitch", "wrist_roll")
CAMERAS = ("head", "left_wrist", "right_wrist")
M = np.diag([1.0, -1.0, 1.0])


def arm_joint_names(side: str) -> list[str]:
    return [f"{side}_{j}_joint" for j in ARM_JOINTS]


def gripper_joint_name(side: str) -> str:
    return f"{side}_gripper_finger_joint"


def actuated_joint_names() -> list[str]:
    """Commanded joints, in the order used everywhere (left arm, left gripper, right ...)."""
    names: list[str] = []
    for side in SIDES:
        names += arm_joint_names(side) + [gripper_joint_name(side)]
    return names


def actuated_joint_limits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower, upper, velocity) of the actuated joints, (16,) each in
    :func:`actuated_joint_names` order, as the URDF states them (mirrored side included)."""
    by_name = {j.name: j for j in robot()[1]}
    rows = [(by_name[n].lower, by_name[n].upper, by_name[n].velocity) for n in actuated_joint_names()]
    lo, hi, vel = (np.array(c, dtype=float) for c in zip(*rows))
    return lo, hi, vel


def tcp_frame(side: str) -> str:
    return f"{side}_tcp"


def camera_optical_frame(camera: str) -> str:
    return f"{camera}_camera_optical_frame"


# ------------------------------------------------------------------------------- geometry

def rpy_to_matrix(rpy: tuple[float, float, float]) -> np.ndarray:
    """URDF convention: R = Rz(yaw) Ry(pitch) Rx(roll)."""
    r, p, y = rpy
    cr, sr, cp, sp, cy, sy = (math.cos(r), math.sin(r), math.cos(p), math.sin(p),
                              math.cos(y), math.sin(y))
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


def matrix_to_rpy(R: np.ndarray) -> tuple[float, float, float]:
    p = math.asin(max(-1.0, min(1.0, -R[2, 0])))
    if abs(math.cos(p)) > 1e-9:
        r = math.atan2(R[2, 1], R[2, 2])
        y = math.atan2(R[1, 0], R[0, 0])
    else:  # gimbal lock: put everything in yaw
        r = 0.0
        y = math.atan2(-R[0, 1], R[1, 1])
    return (r, p, y)


@dataclass
class Geom:
    kind: str                       # box | cylinder | sphere
    size: tuple[float, ...]         # box: full extents; cylinder: (radius, length); sphere: (r,)
    xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rpy: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rgba: tuple[float, float, float, float] = (0.7, 0.7, 0.72, 1.0)


@dataclass
class Link:
    name: str
    mass: float = 0.0
    geoms: list[Geom] = field(default_factory=list)
    com: tuple[float, float, float] = (0.0, 0.0, 0.0)
    inertia: tuple[float, float, float] | None = None  # principal moments; None = from geoms


@dataclass
class Joint:
    name: str
    kind: str                       # revolute | prismatic | fixed
    parent: str
    child: str
    xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rpy: tuple[float, float, float] = (0.0, 0.0, 0.0)
    axis: tuple[float, float, float] = (0.0, 0.0, 1.0)
    lower: float = 0.0
    upper: float = 0.0
    velocity: float = 0.0
    effort: float = 0.0


def _inertia_of(link: Link) -> tuple[float, float, float]:
    """Principal moments of the link's first geom as a solid of the link's mass."""
    if link.inertia is not None:
        return link.inertia
    m = max(link.mass, 1e-3)
    if not link.geoms:
        return (1e-4, 1e-4, 1e-4)
    g = link.geoms[0]
    if g.kind == "box":
        x, y, z = g.size
        return (m * (y * y + z * z) / 12, m * (x * x + z * z) / 12, m * (x * x + y * y) / 12)
    if g.kind == "cylinder":
        r, h = g.size
        side = m * (3 * r * r + h * h) / 12
        return (side, side, m * r * r / 2)
    r = g.size[0]
    return (2 * m * r * r / 5,) * 3


# --------------------------------------------------------------------------- the robot

#: Key dimensions (metres). The footprint matches the paper: 450 mm x 650 mm.
BASE_LENGTH, BASE_WIDTH, BASE_HEIGHT = 0.65, 0.45, 0.30
WHEEL_RADIUS = 0.08
SHOULDER_XYZ = (0.10, 0.20, 1.20)          # left shoulder centre in base_link
UPPER_ARM, FOREARM = 0.32, 0.30
WRIST_TO_TCP = 0.15                          # spherical-wrist centre to the fingertip centre

#: (lower, upper, velocity rad/s, effort Nm) per arm joint, for the left arm.
ARM_LIMITS = {
    "shoulder_pitch": (-3.05, 1.20, 2.0, 60.0),
    "shoulder_roll": (-1.40, 2.00, 2.0, 60.0),
    "shoulder_yaw": (-2.90, 2.90, 2.4, 35.0),
    "elbow": (-2.70, 0.00, 2.4, 35.0),       # 35 Nm elbow actuator (paper, ByteMini-v2)
    "wrist_yaw": (-2.90, 2.90, 3.0, 10.0),
    "wrist_pitch": (-2.10, 2.10, 3.0, 10.0),
    "wrist_roll": (-2.90, 2.90, 3.0, 10.0),
}
GRIPPER_LIMITS = (0.0, 0.04, 0.10, 40.0)   # per finger: opening (m), m/s, N


def _left_arm() -> tuple[list[Link], list[Joint]]:
    """The left arm from its shoulder mount to the tcp and the wrist camera."""
    s = "left"
    grey, dark = (0.75, 0.76, 0.78, 1.0), (0.25, 0.26, 0.3, 1.0)
    links = [
        Link(f"{s}_shoulder_mount", 0.8, [Geom("cylinder", (0.055, 0.10), rpy=(math.pi / 2, 0, 0),
                                                 rgba=dark)]),
        Link(f"{s}_shoulder_pitch_link", 1.0, [Geom("sphere", (0.055,), rgba=grey)]),
        Link(f"{s}_shoulder_roll_link", 1.2, [Geom("cylinder", (0.045, UPPER_ARM / 2),
                                                   (0, 0, -UPPER_ARM / 4), rgba=grey)],
             com=(0, 0, -UPPER_ARM / 4)),
        Link(f"{s}_upper_arm_link", 1.2, [Geom("cylinder", (0.042, UPPER_ARM / 2),
                                               (0, 0, -UPPER_ARM / 4), rgba=grey)],
             com=(0, 0, -UPPER_ARM / 4)),
        Link(f"{s}_elbow_link", 1.0, [Geom("cylinder", (0.038, FOREARM), (0, 0, -FOREARM / 2),
                                           rgba=grey)], com=(0, 0, -FOREARM / 2)),
        Link(f"{s}_wrist_yaw_link", 0.3, [Geom("sphere", (0.036,), rgba=dark)]),
        Link(f"{s}_wrist_pitch_link", 0.2, [Geom("sphere", (0.03,), rgba=dark)], inertia=(2e-4,) * 3),
        Link(f"{s}_wrist_roll_link", 0.4, [Geom("box", (0.05, 0.09, 0.05), (0, 0, -0.055),
                                                rgba=dark)], com=(0, 0, -0.055)),
        Link(f"{s}_gripper_finger_link", 0.05, [Geom("box", (0.02, 0.01, 0.06), (0, 0.005, -0.03),
                                                     rgba=grey)], com=(0, 0.005, -0.03)),
        Link(f"{s}_gripper_finger_mimic_link", 0.05,
             [Geom("box", (0.02, 0.01, 0.06), (0, -0.005, -0.03), rgba=grey)],
             com=(0, -0.005, -0.03)),
        Link(f"{s}_tcp"),
        Link(f"{s}_wrist_camera_link", 0.05, [Geom("box", (0.02, 0.03, 0.02), rgba=dark)]),
        Link(f"{s}_wrist_camera_optical_frame"),
    ]
    lim = ARM_LIMITS
    axes = {"shoulder_pitch": (0, 1, 0), "shoulder_roll": (1, 0, 0), "shoulder_yaw": (0, 0, 1),
            "elbow": (0, 1, 0), "wrist_yaw": (0, 0, 1), "wrist_pitch": (0, 1, 0),
            "wrist_roll": (0, 0, 1)}
    # Zero configuration: arm hanging straight down. The last three axes (yaw, pitch, roll:
    # z-y-z) meet at one point, the spherical wrist centre, FOREARM below the elbow; the roll
    # axis is the tool axis, so the gripper spins about its own axis.
    offsets = {"shoulder_pitch": (0, 0, 0), "shoulder_roll": (0, 0, 0),
               "shoulder_yaw": (0, 0, -UPPER_ARM / 2), "elbow": (0, 0, -UPPER_ARM / 2),
               "wrist_yaw": (0, 0, -FOREARM), "wrist_pitch": (0, 0, 0), "wrist_roll": (0, 0, 0)}
    chain = [f"{s}_shoulder_mount"] + [links[i + 1].name for i in range(7)]
    joints = [Joint(f"{s}_shoulder_mount_joint", "fixed", "torso_link", chain[0],
                    xyz=(SHOULDER_XYZ[0], SHOULDER_XYZ[1], SHOULDER_XYZ[2] - TORSO_Z))]
    for i, j in enumerate(ARM_JOINTS):
        lo, hi, vel, eff = lim[j]
        joints.append(Joint(f"{s}_{j}_joint", "revolute", chain[i], chain[i + 1],
                            xyz=offsets[j], axis=axes[j], lower=lo, upper=hi, velocity=vel,
                            effort=eff))
    lo, hi, vel, eff = GRIPPER_LIMITS
    wrist = chain[-1]
    joints += [
        Joint(f"{s}_gripper_finger_joint", "prismatic", wrist, f"{s}_gripper_finger_link",
              xyz=(0, 0, -0.09), axis=(0, 1, 0), lower=lo, upper=hi, velocity=vel, effort=eff),
        Joint(f"{s}_gripper_finger_mimic_joint", "prismatic", wrist,
              f"{s}_gripper_finger_mimic_link", xyz=(0, 0, -0.09), axis=(0, -1, 0), lower=lo,
              upper=hi, velocity=vel, effort=eff),
        Joint(f"{s}_tcp_joint", "fixed", wrist, f"{s}_tcp", xyz=(0, 0, -WRIST_TO_TCP)),
        # Wrist camera on the back of the hand, looking down the fingers.
        Joint(f"{s}_wrist_camera_joint", "fixed", wrist, f"{s}_wrist_camera_link",
              xyz=(-0.045, 0.0, -0.06)),
        # Optical frame: z along the fingers (-z of the wrist), x along +y of the wrist.
        Joint(f"{s}_wrist_camera_optical_joint", "fixed", f"{s}_wrist_camera_link",
              f"{s}_wrist_camera_optical_frame",
              rpy=matrix_to_rpy(np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
                                @ rpy_to_matrix((-0.25, 0.0, 0.0)))),  # tilted towards the tips
    ]
    return links, joints


def _mirror_name(name: str) -> str:
    if name.startswith("left_"):
        return "right_" + name[5:]
    if name.startswith("right_"):
        return "left_" + name[6:]
    return name


def _mirror_link(link: Link) -> Link:
    geoms = []
    for g in link.geoms:
        R = M @ rpy_to_matrix(g.rpy) @ M
        geoms.append(Geom(g.kind, g.size, tuple(M @ np.array(g.xyz)), matrix_to_rpy(R), g.rgba))
    return Link(_mirror_name(link.name), link.mass, geoms, tuple(M @ np.array(link.com)),
                link.inertia)


def _mirror_joint(j: Joint) -> Joint:
    R = M @ rpy_to_matrix(j.rpy) @ M
    if j.child.endswith("_optical_frame"):
        # keep the frame right-handed with a horizontally flipped image (see module doc)
        R = M @ rpy_to_matrix(j.rpy) @ np.diag([-1.0, 1.0, 1.0])
    # An angle about an axis is an axial vector (a -> -M a); a translation is polar (a -> M a).
    sign = 1.0 if j.kind == "prismatic" else -1.0
    axis = tuple(float(a) + 0.0 for a in sign * (M @ np.array(j.axis)))
    return Joint(_mirror_name(j.name), j.kind, _mirror_name(j.parent), _mirror_name(j.child),
                 tuple(float(v) + 0.0 for v in M @ np.array(j.xyz)), matrix_to_rpy(R), axis,
                 j.lower, j.upper, j.velocity, j.effort)


TORSO_Z = BASE_HEIGHT + 0.05   # torso frame height above the floor


def robot() -> tuple[list[Link], list[Joint]]:
    """All links and joints of ByteMini-v2."""
    body, dark = (0.92, 0.92, 0.94, 1.0), (0.2, 0.2, 0.22, 1.0)
    links = [
        Link("base_link", 60.0, [Geom("box", (BASE_LENGTH, BASE_WIDTH, BASE_HEIGHT - 0.05),
                                      (0, 0, 0.05 + (BASE_HEIGHT - 0.05) / 2), rgba=body)],
             com=(0, 0, 0.05 + (BASE_HEIGHT - 0.05) / 2)),
        Link("torso_link", 15.0, [Geom("box", (0.20, 0.28, 0.95), (-0.05, 0, 0.475), rgba=body)],
             com=(-0.05, 0, 0.475)),
        Link("head_link", 1.0, [Geom("box", (0.10, 0.16, 0.10), rgba=dark)]),
        Link("head_camera_optical_frame"),
    ]
    joints = [
        Joint("torso_joint", "fixed", "base_link", "torso_link", xyz=(0, 0, TORSO_Z)),
        Joint("head_joint", "fixed", "torso_link", "head_link", xyz=(0.02, 0, 1.02),
              rpy=(0.0, 0.95, 0.0)),
        # optical: z forward (x of head_link), x right (-y), y down (-z)
        Joint("head_camera_optical_joint", "fixed", "head_link", "head_camera_optical_frame",
              xyz=(0.05, 0, 0), rpy=matrix_to_rpy(np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0],
                                                            [0.0, -1.0, 0.0]]))),
    ]
    for i, (x, y) in enumerate([(0.22, 0.17), (0.22, -0.17), (-0.22, 0.17), (-0.22, -0.17)]):
        name = f"wheel_{i}_link"
        links.append(Link(name, 2.0, [Geom("cylinder", (WHEEL_RADIUS, 0.05),
                                           rpy=(math.pi / 2, 0, 0), rgba=dark)]))
        joints.append(Joint(f"wheel_{i}_joint", "fixed", "base_link", name,
                            xyz=(x, y, WHEEL_RADIUS)))
    arm_links, arm_joints = _left_arm()
    links += arm_links + [_mirror_link(l) for l in arm_links]
    joints += arm_joints + [_mirror_joint(j) for j in arm_joints]
    return links, joints


# ------------------------------------------------------------------------------- output

def _fmt(values) -> str:
    return " ".join(f"{float(v):.9g}" if abs(float(v)) > 1e-12 else "0" for v in values)


def build_urdf() -> str:
    """The URDF text of ByteMini-v2."""
    links, joints = robot()
    root = ET.Element("robot", name=ROBOT_NAME)
    root.append(ET.Comment(" Generated by bytemini_driver.description (grrl-urdf); do not edit. "))
    # MuJoCo's URDF importer: keep fixed links (tcp, cameras) as bodies.
    mj = ET.SubElement(root, "mujoco")
    ET.SubElement(mj, "compiler", fusestatic="false", balanceinertia="true")
    for link in links:
        el = ET.SubElement(root, "link", name=link.name)
        if link.mass > 0:
            inertial = ET.SubElement(el, "inertial")
            ET.SubElement(inertial, "origin", xyz=_fmt(link.com), rpy="0 0 0")
            ET.SubElement(inertial, "mass", value=_fmt([link.mass]))
            ixx, iyy, izz = _inertia_of(link)
            ET.SubElement(inertial, "inertia", ixx=_fmt([ixx]), ixy="0", ixz="0", iyy=_fmt([iyy]),
                          iyz="0", izz=_fmt([izz]))
        for tag in ("visual", "collision"):
            for g in link.geoms:
                ge = ET.SubElement(el, tag)
                ET.SubElement(ge, "origin", xyz=_fmt(g.xyz), rpy=_fmt(g.rpy))
                geo = ET.SubElement(ge, "geometry")
                if g.kind == "box":
                    ET.SubElement(geo, "box", size=_fmt(g.size))
                elif g.kind == "cylinder":
                    ET.SubElement(geo, "cylinder", radius=_fmt(g.size[:1]), length=_fmt(g.size[1:]))
                else:
                    ET.SubElement(geo, "sphere", radius=_fmt(g.size))
                if tag == "visual":
                    mat = ET.SubElement(ge, "material", name=f"{link.name}_color")
                    ET.SubElement(mat, "color", rgba=_fmt(g.rgba))
    for j in joints:
        el = ET.SubElement(root, "joint", name=j.name, type=j.kind)
        ET.SubElement(el, "parent", link=j.parent)
        ET.SubElement(el, "child", link=j.child)
        ET.SubElement(el, "origin", xyz=_fmt(j.xyz), rpy=_fmt(j.rpy))
        if j.kind != "fixed":
            ET.SubElement(el, "axis", xyz=_fmt(j.axis))
            ET.SubElement(el, "limit", lower=_fmt([j.lower]), upper=_fmt([j.upper]),
                          velocity=_fmt([j.velocity]), effort=_fmt([j.effort]))
        if j.name.endswith("_gripper_finger_mimic_joint"):
            ET.SubElement(el, "mimic", joint=j.name.replace("_mimic", ""), multiplier="1",
                          offset="0")
    ET.indent(root)
    return '<?xml version="1.0"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def default_urdf_path() -> Path:
    """The installed URDF (``share/bytemini_driver/urdf``), else the repository's ``urdf/``."""
    try:
        from ament_index_python.packages import get_package_share_directory

        path = Path(get_package_share_directory("bytemini_driver")) / "urdf" / f"{ROBOT_NAME}.urdf"
        if path.is_file():
            return path
    except (ImportError, LookupError, ValueError):
        pass
    return Path(__file__).resolve().parents[3] / "urdf" / f"{ROBOT_NAME}.urdf"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grrl-urdf",
                                     description="Write the ByteMini-v2 URDF generated from "
                                                 "bytemini_driver.description.")
    parser.add_argument("output", nargs="?", type=Path, help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    text = build_urdf()
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
