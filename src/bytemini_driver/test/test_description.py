"""ByteMini-v2 URDF: parses with a standard parser, is exactly mirror-symmetric, is current."""
from __future__ import annotations

import numpy as np
import pytest
import yourdfpy

from bytemini_driver import description as d

M4 = np.diag([1.0, -1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def urdf() -> yourdfpy.URDF:
    return yourdfpy.URDF.load(str(d.default_urdf_path()))


def test_committed_urdf_is_the_generated_one():
    assert d.default_urdf_path().read_text() == d.build_urdf(), \
        "urdf/bytemini_v2.urdf is stale: regenerate it with grrl-urdf urdf/bytemini_v2.urdf"


def test_structure(urdf: yourdfpy.URDF):
    names = set(urdf.actuated_joint_names)
    for side in d.SIDES:
        assert set(d.arm_joint_names(side)) <= names
        assert d.gripper_joint_name(side) in names
        assert d.tcp_frame(side) in urdf.link_map
    for cam in d.CAMERAS:
        assert d.camera_optical_frame(cam) in urdf.link_map
    assert len(d.actuated_joint_names()) == 16
    for name in urdf.actuated_joint_names:
        lim = urdf.joint_map[name].limit
        assert lim.lower < lim.upper and lim.velocity > 0 and lim.effort > 0
    base = urdf.link_map["base_link"].collisions[0].geometry.box.size
    assert sorted(np.round(base[:2], 3)) == [0.45, 0.65]  # the paper's footprint


def test_spherical_wrist_axes_intersect(urdf: yourdfpy.URDF):
    for side in d.SIDES:
        for j in ("wrist_pitch", "wrist_roll"):
            origin = urdf.joint_map[f"{side}_{j}_joint"].origin
            assert np.allclose(origin[:3, 3], 0.0)


def _random_q(urdf: yourdfpy.URDF, rng: np.random.Generator) -> dict[str, float]:
    return {n: rng.uniform(urdf.joint_map[n].limit.lower, urdf.joint_map[n].limit.upper)
            for n in urdf.actuated_joint_names}


def test_fk_of_mirrored_q_is_mirrored_fk(urdf: yourdfpy.URDF):
    rng = np.random.default_rng(0)
    frames = [d.tcp_frame("left"), "left_elbow_link", "left_wrist_camera_link"]
    for _ in range(20):
        q = _random_q(urdf, rng)
        urdf.update_cfg(q)
        fk = {f: urdf.get_transform(f) for f in frames}
        urdf.update_cfg({d._mirror_name(n): v for n, v in q.items()})
        for f in frames:
            mirrored = urdf.get_transform(d._mirror_name(f))
            np.testing.assert_allclose(mirrored, M4 @ fk[f] @ M4, atol=1e-9)


def test_mirrored_wrist_camera_sees_a_horizontally_flipped_image(urdf: yourdfpy.URDF):
    rng = np.random.default_rng(1)
    q = _random_q(urdf, rng)
    urdf.update_cfg(q)
    left = urdf.get_transform(d.camera_optical_frame("left_wrist"))
    urdf.update_cfg({d._mirror_name(n): v for n, v in q.items()})
    right = urdf.get_transform(d.camera_optical_frame("right_wrist"))
    # same optical centre mirrored; x axis (image u) reversed, y (v) and z (view) mirrored
    np.testing.assert_allclose(right[:3, 3], (M4 @ left)[:3, 3], atol=1e-9)
    np.testing.assert_allclose(right[:3, :3], d.M @ left[:3, :3] @ np.diag([-1, 1, 1]),
                               atol=1e-9)
    assert np.isclose(np.linalg.det(right[:3, :3]), 1.0)
