"""The MuJoCo shoe-lacing scene: ByteMini-v2 (from the URDF) + table + shoe + deformable lace.

The model is compiled once per :class:`SceneConfig`; everything a seed randomises (shoe pose
and colour, lace layout, the instructed end and eyelet) is applied to ``MjData`` at reset, so a
reset costs no recompilation and renderers stay valid. A mirrored scene is the exact mirror
image (y -> -y) of the scene of the same seed (paper section 3.2).

Grasps are constraint-based, as is common for deformable objects in simulation: every
(gripper, lace vertex) pair has an inactive ``connect`` equality; closing a gripper near the
lace activates the ones of the vertices between its fingers (see :mod:`bytemini_driver.sim`).
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace

import mujoco
import numpy as np

from bytemini_driver import description as desc

TABLE_HEIGHT = 0.75
TABLE_X = (0.25, 0.95)
TABLE_THICKNESS = 0.04
TABLE_Y = (-0.55, 0.55)


@dataclass
class SceneConfig:
    """Fixed structure of the scene; changing it means a new compiled model."""

    timestep: float = 0.002
    """physics step (s); the flex lace is stable at 2 ms"""
    lace_vertices: int = 41
    """points of the 1-D flexcomp lace"""
    lace_length: float = 0.80
    """rest length of the whole lace (m)"""
    lace_radius: float = 0.002
    """lace radius (m)"""
    lace_mass: float = 0.008
    """lace mass (kg)"""
    eyelets_per_side: int = 2
    """eyelets in each row"""
    eyelet_inner_radius: float = 0.0045
    """inner radius of an eyelet ring (m), ~4-5 mm as the issue asks"""
    eyelet_tube_radius: float = 0.0012
    """radius of the ring's tube (m)"""
    eyelet_row_offset: float = 0.035
    """|y| of the eyelet rows in the shoe frame (m)"""
    eyelet_spacing: float = 0.07
    """distance between eyelets along a row (m)"""
    eyelet_height: float = 0.085
    """eyelet centre above the table (m)"""
    image_width: int = 224
    image_height: int = 224
    head_fovy: float = 70.0
    wrist_fovy: float = 85.0
    arm_kp: tuple[float, ...] = (600, 600, 300, 300, 80, 80, 80)
    """position-servo gains of the seven arm joints"""
    arm_damping: tuple[float, ...] = (40, 40, 20, 20, 4, 4, 4)
    gripper_kp: float = 300.0


@dataclass
class SceneParams:
    """Everything a seed randomises. ``mirrored`` scenes are built by :func:`mirror_params`."""

    seed: int
    shoe_xy: tuple[float, float]
    shoe_yaw: float
    shoe_rgba: tuple[float, float, float, float]
    end_side: str                 # which lace end the instruction names: "left" | "right"
    eyelet_side: str              # which eyelet row
    eyelet_index: int             # 0 = the eyelet nearest the robot
    lace_points: np.ndarray = field(repr=False)  # (V, 3) initial vertex positions, world
    mirrored: bool = False

    def as_dict(self) -> dict[str, str]:
        return {"seed": str(self.seed), "mirrored": str(self.mirrored).lower(),
                "shoe_x": f"{self.shoe_xy[0]:.4f}", "shoe_y": f"{self.shoe_xy[1]:.4f}",
                "shoe_yaw": f"{self.shoe_yaw:.4f}",
                "shoe_rgba": " ".join(f"{c:.3f}" for c in self.shoe_rgba),
                "end_side": self.end_side, "eyelet_side": self.eyelet_side,
                "eyelet_index": str(self.eyelet_index)}


def other_side(side: str) -> str:
    return "right" if side == "left" else "left"


def side_sign(side: str) -> float:
    return 1.0 if side == "left" else -1.0


def shoe_frame(xy: tuple[float, float], yaw: float) -> np.ndarray:
    """4x4 pose of the shoe frame (origin on the table top under the shoe centre)."""
    T = np.eye(4)
    c, s = math.cos(yaw), math.sin(yaw)
    T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    T[:3, 3] = [xy[0], xy[1], TABLE_HEIGHT]
    return T


def eyelet_local(config: SceneConfig, side: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre and ring normal (+y of the shoe) of an eyelet in the shoe frame."""
    n = config.eyelets_per_side
    x = (index - (n - 1) / 2) * config.eyelet_spacing
    y = side_sign(side) * config.eyelet_row_offset
    return np.array([x, y, config.eyelet_height]), np.array([0.0, 1.0, 0.0])


def threading_direction_local(end_side: str) -> np.ndarray:
    """Direction a lace end is pushed through an eyelet, shoe frame: away from the side the
    end lies on (the left end goes left-to-right, through the outside of a left eyelet or the
    inside of a right one), as a lacer works from the end's side."""
    return np.array([0.0, -side_sign(end_side), 0.0])


def lace_anchor_local() -> np.ndarray:
    """Where the lace's middle is held by the shoe (in front of the toe), shoe frame."""
    return np.array([0.135, 0.0, 0.03])


def _resample(polyline: np.ndarray, n: int) -> np.ndarray:
    """``n`` points equally spaced along ``polyline`` (by arc length)."""
    seg = np.linalg.norm(np.diff(polyline, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    targets = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(targets, s, polyline[:, k]) for k in range(3)], axis=1)


def _lace_half(rng: np.random.Generator, sign: float, length: float, radius: float) -> np.ndarray:
    """A polyline of ~``length`` from the anchor down to the table and towards the robot."""
    a = lace_anchor_local()
    p1 = np.array([0.16, sign * 0.07, radius])
    end = np.array([-0.13 + rng.uniform(-0.02, 0.02), sign * (0.15 + rng.uniform(-0.015, 0.02)),
                    radius])
    # fit the length by bending the middle outwards
    for bulge in np.linspace(0.0, 0.2, 200):
        mid = (p1 + end) / 2 + np.array([0.0, sign * bulge, 0.0])
        poly = np.array([a, p1, mid, end])
        if np.linalg.norm(np.diff(poly, axis=0), axis=1).sum() >= length:
            break
    return poly


def check_task_choices(config: SceneConfig, end_side: str | None = None,
                       eyelet_side: str | None = None, eyelet_index: int | None = None) -> None:
    """Raise ValueError naming the value and the allowed ones for a task choice the scene lacks."""
    for name, value in (("end_side", end_side), ("eyelet_side", eyelet_side)):
        if value is not None and value not in desc.SIDES:
            raise ValueError(f"{name} must be one of {list(desc.SIDES)}, got {value!r}")
    if eyelet_index is not None and (isinstance(eyelet_index, bool)
                                     or not isinstance(eyelet_index, (int, np.integer))
                                     or not 0 <= eyelet_index < config.eyelets_per_side):
        raise ValueError(f"eyelet_index must be an integer in 0..{config.eyelets_per_side - 1} "
                         f"(this shoe has {config.eyelets_per_side} eyelets per side), "
                         f"got {eyelet_index!r}")


def sample_scene(seed: int, config: SceneConfig | None = None, mirrored: bool = False,
                 end_side: str | None = None, eyelet_side: str | None = None,
                 eyelet_index: int | None = None) -> SceneParams:
    """The scene of ``seed`` (task choices may be fixed by the caller)."""
    config = config or SceneConfig()
    check_task_choices(config, end_side, eyelet_side, eyelet_index)
    rng = np.random.default_rng(seed)
    xy = (0.52 + rng.uniform(-0.025, 0.025), rng.uniform(-0.025, 0.025))
    yaw = rng.uniform(-0.15, 0.15)
    rgba = tuple(float(c) for c in rng.uniform(0.15, 0.9, 3)) + (1.0,)
    # the choices are always drawn, so that fixing one leaves the rest of the seed's scene as is
    drawn_end = str(rng.choice(["left", "right"]))
    drawn_eyelet_side = str(rng.choice(["left", "right"]))
    drawn_index = int(rng.integers(config.eyelets_per_side))
    end_side = end_side or drawn_end
    eyelet_side = eyelet_side or drawn_eyelet_side
    eyelet_index = drawn_index if eyelet_index is None else int(eyelet_index)
    half = config.lace_length / 2
    left = _lace_half(rng, 1.0, half, config.lace_radius)
    right = _lace_half(rng, -1.0, half, config.lace_radius)
    # vertex 0 is the left end (aglet), the last vertex the right end
    poly = np.concatenate([left[::-1], right[1:]])
    local = _resample(poly, config.lace_vertices)
    T = shoe_frame(xy, yaw)
    world = local @ T[:3, :3].T + T[:3, 3]
    params = SceneParams(seed, xy, yaw, rgba, end_side, eyelet_side, eyelet_index, world)
    return mirror_params(params) if mirrored else params


def mirror_params(p: SceneParams) -> SceneParams:
    """The mirror image of a scene about the robot's sagittal plane (y -> -y)."""
    pts = p.lace_points * np.array([1.0, -1.0, 1.0])
    # the left end is always vertex 0: after mirroring, the old right end is on the left
    return replace(p, shoe_xy=(p.shoe_xy[0], -p.shoe_xy[1]), shoe_yaw=-p.shoe_yaw,
                   end_side=other_side(p.end_side), eyelet_side=other_side(p.eyelet_side),
                   lace_points=pts[::-1].copy(), mirrored=not p.mirrored)


# ----------------------------------------------------------------------------- building

def _shoe_xml(config: SceneConfig) -> str:
    """The shoe as a mocap body: sole, upper, and posts carrying capsule-ring eyelets."""
    parts = ['<body name="shoe" mocap="true" pos="0.52 0 0.75">',
             '<geom name="shoe_sole" type="box" size="0.13 0.05 0.01" pos="0 0 0.01" '
             'rgba="0.2 0.2 0.2 1" group="1"/>',
             '<geom name="shoe_upper" type="box" size="0.11 0.028 0.025" pos="0 0 0.045" '
             'rgba="0.5 0.3 0.3 1" material="shoe_mat"/>',
             '<geom name="shoe_toe" type="cylinder" size="0.05 0.03" pos="0.085 0 0.03" '
             'rgba="0.5 0.3 0.3 1" material="shoe_mat"/>']
    r, tube, k = config.eyelet_inner_radius + config.eyelet_tube_radius, \
        config.eyelet_tube_radius, 12
    for side in ("left", "right"):
        for i in range(config.eyelets_per_side):
            c, axis = eyelet_local(config, side, i)
            name = f"eyelet_{side}_{i}"
            post_top = c[2] - r - tube
            parts.append(f'<geom name="{name}_post" type="capsule" size="0.003" '
                         f'fromto="{c[0]} {c[1]} 0.06 {c[0]} {c[1]} {post_top:.4f}" '
                         f'rgba="0.75 0.75 0.8 1" friction="0.15 0.005 0.0001" priority="1"/>')
            # ring in the x-z plane (axis along y), built from k capsules
            for j in range(k):
                a0, a1 = 2 * math.pi * j / k, 2 * math.pi * (j + 1) / k
                p0 = c + r * np.array([math.cos(a0), 0, math.sin(a0)])
                p1 = c + r * np.array([math.cos(a1), 0, math.sin(a1)])
                parts.append(f'<geom name="{name}_ring{j}" type="capsule" size="{tube}" '
                             f'fromto="{" ".join(f"{v:.5f}" for v in np.r_[p0, p1])}" '
                             f'rgba="0.8 0.8 0.85 1" friction="0.15 0.005 0.0001" priority="1"/>')
            parts.append(f'<site name="{name}" pos="{c[0]} {c[1]} {c[2]}" size="0.002" '
                         f'zaxis="{axis[0]} {axis[1]} {axis[2]}" rgba="0 1 0 0.3"/>')
    a = lace_anchor_local()
    parts.append(f'<site name="lace_anchor" pos="{a[0]} {a[1]} {a[2]}" size="0.004"/>')
    parts.append("</body>")
    return "\n".join(parts)


def _scene_xml(config: SceneConfig) -> str:
    v = config.lace_vertices
    spacing = config.lace_length / (v - 1)
    tx, ty = (TABLE_X[0] + TABLE_X[1]) / 2, (TABLE_Y[0] + TABLE_Y[1]) / 2
    hx, hy = (TABLE_X[1] - TABLE_X[0]) / 2, (TABLE_Y[1] - TABLE_Y[0]) / 2
    leg_h = (TABLE_HEIGHT - TABLE_THICKNESS) / 2
    # legs only at the far side: the top overhangs the robot's base, as at a real bench
    legs = "".join(
        f'<geom type="box" size="0.025 0.025 {leg_h}" pos="{hx - 0.03} {sy * (hy - 0.03)} '
        f'{-TABLE_THICKNESS / 2 - leg_h}" rgba="0.5 0.42 0.33 1"/>' for sy in (-1, 1))
    return f"""
<mujoco model="bytemini_shoe_lacing">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{config.timestep}" integrator="implicitfast" cone="elliptic"
          noslip_iterations="0"/>
  <visual>
    <global offwidth="{config.image_width}" offheight="{config.image_height}"/>
    <quality shadowsize="0" offsamples="0"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.5 0.5 0.5" specular="0 0 0"/>
  </visual>
  <asset>
    <material name="shoe_mat" rgba="0.5 0.3 0.3 1"/>
    <texture name="grid" type="2d" builtin="checker" width="64" height="64"
             rgb1="0.35 0.35 0.38" rgb2="0.3 0.3 0.33"/>
    <material name="floor_mat" texture="grid" texrepeat="8 8"/>
  </asset>
  <worldbody>
    <light name="top" pos="0.7 0 2.5" dir="0 0 -1" castshadow="false" diffuse="0.5 0.5 0.5"/>
    <geom name="floor" type="plane" size="4 4 0.1" material="floor_mat"/>
    <body name="table" pos="{tx} {ty} {TABLE_HEIGHT - TABLE_THICKNESS / 2}">
      <geom name="table_top" type="box" size="{hx} {hy} {TABLE_THICKNESS / 2}"
            rgba="0.72 0.62 0.5 1" friction="0.9 0.01 0.001"/>
      {legs}
    </body>
    {_shoe_xml(config)}
    <flexcomp name="lace" type="grid" dim="1" count="{v} 1 1" spacing="{spacing} 1 1"
              radius="{config.lace_radius}" pos="0.52 0 {TABLE_HEIGHT + 0.3}"
              rgba="0.95 0.95 0.95 1" mass="{config.lace_mass}">
      <edge equality="true" damping="0.002"/>
      <contact selfcollide="none" condim="3" friction="0.6 0.005 0.0001" solref="0.004 1"
               solimp="0.95 0.99 0.0005"/>
    </flexcomp>
  </worldbody>
</mujoco>"""


def _merge_robot(scene_xml: str, robot_xml: str) -> str:
    """Put the robot's bodies and equalities (URDF mimic joints) into the scene's MJCF.

    Merging the XML keeps every robot name as in the URDF (``MjSpec.attach`` would need a
    name prefix)."""
    scene, robot = ET.fromstring(scene_xml), ET.fromstring(robot_xml)
    for section in ("worldbody", "equality", "contact"):
        src = robot.find(section)
        if src is None:
            continue
        dst = scene.find(section)
        if dst is None:
            dst = ET.SubElement(scene, section)
        dst.extend(list(src))
    return ET.tostring(scene, encoding="unicode")


@dataclass
class SceneIndex:
    """Ids and addresses into the compiled model, looked up once."""

    arm_qpos: dict[str, np.ndarray]
    arm_qvel: dict[str, np.ndarray]
    arm_ctrl: dict[str, np.ndarray]
    gripper_qpos: dict[str, int]
    gripper_ctrl: dict[str, int]
    tcp_body: dict[str, int]
    tcp_site: dict[str, int]
    camera: dict[str, int]
    lace_bodies: np.ndarray              # (V,) body ids of the lace vertices
    lace_qpos: np.ndarray                # (V, 3) qpos addresses of their slide joints
    grasp_eq: dict[str, np.ndarray]      # side -> (V,) equality ids (inactive connects)
    anchor_eq: int
    shoe_mocap: int
    shoe_geoms: np.ndarray
    eyelet_site: dict[tuple[str, int], int]
    lace_flex: int
    robot_geoms: np.ndarray
    joint_names: list[str] = field(default_factory=list)


def build_model(config: SceneConfig | None = None) -> tuple[mujoco.MjModel, SceneIndex]:
    """Compile the scene with ByteMini-v2 attached; returns the model and its index."""
    config = config or SceneConfig()
    robot = mujoco.MjSpec.from_file(str(desc.default_urdf_path()))
    for body in robot.bodies:
        body.gravcomp = 1.0  # the arms' controllers compensate gravity
    for side in desc.SIDES:
        for i, name in enumerate(desc.arm_joint_names(side)):
            j = robot.joint(name)
            j.armature = 0.02
            j.damping = [config.arm_damping[i], 0.0, 0.0]  # MuJoCo 4: (linear, ...) damping
        robot.body(desc.tcp_frame(side)).add_site(name=f"{side}_tcp_site", size=[0.004] * 3,
                                                  rgba=[1, 0, 0, 0.5])
    for cam in desc.CAMERAS:
        optical = robot.body(desc.camera_optical_frame(cam))
        # MuJoCo cameras look along -z with y up; an optical frame looks along +z, y down.
        optical.add_camera(name=cam, fovy=config.head_fovy if cam == "head" else config.wrist_fovy,
                           quat=[0.0, 1.0, 0.0, 0.0])
    robot_bodies = {b.name for b in robot.bodies}
    spec = mujoco.MjSpec.from_string(_merge_robot(_scene_xml(config), robot.to_xml()))
    # Contact groups: the robot (contype 2) touches the table and shoe (conaffinity 3) but
    # neither itself nor the lace (contype 1, conaffinity 1): the lace is held by grasp
    # constraints, and finger-lace contacts would only fight them.
    for geom in spec.geoms:
        if geom.parent.name in robot_bodies:
            geom.contype, geom.conaffinity = 2, 0
        else:
            geom.conaffinity = 3
    for side in desc.SIDES:
        for i, name in enumerate(desc.arm_joint_names(side)):
            lo, hi, _vel, effort = desc.ARM_LIMITS[desc.ARM_JOINTS[i]]
            act = spec.add_actuator(name=f"{name}_servo", target=name,
                                    trntype=mujoco.mjtTrn.mjTRN_JOINT)
            act.set_to_position(kp=config.arm_kp[i])
            act.ctrlrange = [lo, hi]
            act.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
            act.forcerange = [-effort, effort]
            act.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
        g = desc.gripper_joint_name(side)
        lo, hi, _vel, effort = desc.GRIPPER_LIMITS
        act = spec.add_actuator(name=f"{g}_servo", target=g, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        act.set_to_position(kp=config.gripper_kp)
        act.ctrlrange = [lo, hi]
        act.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
        act.forcerange = [-effort, effort]
        act.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
    v = config.lace_vertices
    for side in desc.SIDES:
        for i in range(v):
            spec.add_equality(type=mujoco.mjtEq.mjEQ_CONNECT, name=f"grasp_{side}_{i}",
                              name1=desc.tcp_frame(side), name2=f"lace_{i}",
                              objtype=mujoco.mjtObj.mjOBJ_BODY, active=False,
                              solref=[0.01, 1.0])
    spec.add_equality(type=mujoco.mjtEq.mjEQ_CONNECT, name="lace_anchor", name1="shoe",
                      name2=f"lace_{v // 2}", objtype=mujoco.mjtObj.mjOBJ_BODY,
                      data=list(lace_anchor_local()) + [0.0] * (mujoco.mjNEQDATA - 3), solref=[0.005, 1.0])
    model = spec.compile()
    return model, _index(model, config)


def _index(model: mujoco.MjModel, config: SceneConfig) -> SceneIndex:
    def jid(name: str) -> int:
        return mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)

    def aid(name: str) -> int:
        return mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, name)

    def bid(name: str) -> int:
        i = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)
        if i < 0:
            raise KeyError(f"body {name} not in the scene model")
        return i

    arm_qpos, arm_qvel, arm_ctrl, g_qpos, g_ctrl, tcp_b, tcp_s, grasp = {}, {}, {}, {}, {}, {}, {}, {}
    v = config.lace_vertices
    for side in desc.SIDES:
        names = desc.arm_joint_names(side)
        arm_qpos[side] = np.array([model.jnt_qposadr[jid(n)] for n in names])
        arm_qvel[side] = np.array([model.jnt_dofadr[jid(n)] for n in names])
        arm_ctrl[side] = np.array([aid(f"{n}_servo") for n in names])
        g = desc.gripper_joint_name(side)
        g_qpos[side] = int(model.jnt_qposadr[jid(g)])
        g_ctrl[side] = aid(f"{g}_servo")
        tcp_b[side] = bid(desc.tcp_frame(side))
        tcp_s[side] = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, f"{side}_tcp_site")
        grasp[side] = np.array([mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_EQUALITY,
                                                  f"grasp_{side}_{i}") for i in range(v)])
    lace_bodies = np.array([bid(f"lace_{i}") for i in range(v)])
    lace_qpos = np.array([[model.jnt_qposadr[model.body_jntadr[b] + k] for k in range(3)]
                          for b in lace_bodies])
    shoe = bid("shoe")
    robot_bodies = {b for b in range(model.nbody)
                    if model.body_rootid[b] == bid("base_link") or b == bid("base_link")}
    return SceneIndex(
        arm_qpos=arm_qpos, arm_qvel=arm_qvel, arm_ctrl=arm_ctrl, gripper_qpos=g_qpos,
        gripper_ctrl=g_ctrl, tcp_body=tcp_b, tcp_site=tcp_s,
        camera={c: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, c) for c in desc.CAMERAS},
        lace_bodies=lace_bodies, lace_qpos=lace_qpos, grasp_eq=grasp,
        anchor_eq=mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_EQUALITY, "lace_anchor"),
        shoe_mocap=int(model.body_mocapid[shoe]),
        shoe_geoms=np.array([g for g in range(model.ngeom) if model.geom_bodyid[g] == shoe]),
        eyelet_site={(s, i): mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, f"eyelet_{s}_{i}")
                     for s in desc.SIDES for i in range(config.eyelets_per_side)},
        lace_flex=mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_FLEX, "lace"),
        robot_geoms=np.array([g for g in range(model.ngeom) if model.geom_bodyid[g] in robot_bodies]),
        joint_names=desc.actuated_joint_names(),
    )
