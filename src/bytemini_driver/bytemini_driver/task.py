"""Shoe-lacing task logic: instructions, the paper's stages (Fig. 6), success, jams, reward.

Pure geometry on numpy arrays, so the same tracker serves the simulator, tests and offline
relabelling. Stages, in order:

1. ``picked``      - the instructed lace end is held by a gripper and off the table;
2. ``threaded``    - that end passed through the instructed eyelet from outside (net signed
                     crossing of the lace polyline through the eyelet disk, tip beyond it);
3. ``handed_over`` - threaded, and now held only by the other gripper;
4. ``placed``      - threaded, pulled tight (enough lace through the eyelet), released and
                     resting on a surface: the task is complete (sparse reward 1, eq. 1).

A jam (over-stretched lace or deep penetration) ends the episode as a failure.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STAGES = ("none", "picked", "threaded", "handed_over", "placed")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")


def instruction_text(end_side: str, eyelet_side: str, eyelet_index: int) -> str:
    """E.g. "thread the left lace end through the second eyelet on the right"."""
    return (f"thread the {end_side} lace end through the {ORDINALS[eyelet_index]} eyelet "
            f"on the {eyelet_side}")


def all_instructions() -> list[str]:
    """Every instruction the task gives (24: end side x eyelet side x eyelet), mirror images
    included; e.g. what ``python -m grrl_policy.text_encoder OUT.safetensors --from
    bytemini_driver.task:all_instructions`` precomputes text features for."""
    return [instruction_text(e, s, i) for e in ("left", "right") for s in ("left", "right")
            for i in range(len(ORDINALS))]


@dataclass
class TaskConfig:
    """Thresholds of the stage detector (metres unless noted)."""

    lift_height: float = 0.015
    """tip height above the table that counts as picked up"""
    beyond_eyelet: float = 0.008
    """how far past the eyelet plane the tip must be to count as threaded"""
    disk_margin: float = 0.003
    """slack added to the eyelet inner radius when testing a crossing"""
    pulled_through: float = 0.10
    """lace length beyond the eyelet needed for 'pulled tight'"""
    rest_height: float = 0.03
    """tip height (above table or shoe) under which a released end is 'put down'"""
    jam_stretch: float = 1.5
    """segment length / rest length above which the lace is torn (a jam)"""
    jam_penetration: float = 0.006
    """contact penetration depth counted as a jam"""


@dataclass
class TaskState:
    """What the tracker reports after each update."""

    stage: int = 0
    reached: list[int] = field(default_factory=list)
    threaded: bool = False
    success: bool = False
    jammed: bool = False
    jam_reason: str = ""
    pulled_length: float = 0.0


def eyelet_crossings(points: np.ndarray, center: np.ndarray, axis: np.ndarray, radius: float
                     ) -> list[tuple[int, float, int]]:
    """Signed crossings of a polyline through a disk.

    points: (V, 3) lace vertices; center, axis: the disk (axis unit normal); radius: disk
    radius. Returns (segment index i, fraction t along segment i->i+1, sign) where sign is +1
    when the polyline crosses in the direction of ``axis``.
    """
    d = (points - center) @ axis                              # (V,) signed distances
    out = []
    # half-open test: a vertex exactly on the plane counts as being on its positive side
    neg = d < 0
    for i in np.nonzero(neg[:-1] != neg[1:])[0]:
        t = d[i] / (d[i] - d[i + 1])
        p = points[i] + t * (points[i + 1] - points[i])
        if np.linalg.norm(p - center - ((p - center) @ axis) * axis) <= radius:
            out.append((int(i), float(t), 1 if d[i + 1] > d[i] else -1))
    return out


def threaded_from_end(points: np.ndarray, end: int, center: np.ndarray, axis: np.ndarray,
                      radius: float) -> tuple[bool, float]:
    """Is the lace end ``end`` (0 or V-1) threaded through the disk in the axis direction?

    Walks from the lace middle towards the end: the net signed crossing must be +1. Returns
    (threaded, lace length from the last crossing to the end).
    """
    mid = len(points) // 2
    path = points[mid:] if end != 0 else points[:mid + 1][::-1]
    crossings = eyelet_crossings(path, center, axis, radius)
    net = sum(s for _, _, s in crossings)
    if net != 1:
        return False, 0.0
    i, t, _ = crossings[-1]
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    beyond = (1 - t) * seg[i] + seg[i + 1:].sum()
    return True, float(beyond)


class StageTracker:
    """Tracks the stages of one episode from per-step geometric observations."""

    def __init__(self, end_index: int, eyelet_center: np.ndarray, eyelet_axis: np.ndarray,
                 eyelet_radius: float, table_height: float, rest_length: float,
                 config: TaskConfig | None = None):
        self.end = end_index
        self.center, self.axis = eyelet_center, eyelet_axis / np.linalg.norm(eyelet_axis)
        self.config = config or TaskConfig()
        self.radius = eyelet_radius + self.config.disk_margin
        self.table = table_height
        self.rest = rest_length
        self.state = TaskState()
        self.picker: str | None = None

    def _reach(self, stage: int) -> None:
        if stage > self.state.stage:
            self.state.reached += list(range(self.state.stage + 1, stage + 1))
            self.state.stage = stage

    def update(self, points: np.ndarray, holders: set[str], max_penetration: float,
               support_height: float | None = None) -> TaskState:
        """points: (V, 3) lace; holders: grippers holding the instructed end's aglet;
        max_penetration: deepest lace contact (m); support_height: height of whatever is
        under the tip (table by default)."""
        s, c = self.state, self.config
        if s.success or s.jammed:
            return s
        if not np.all(np.isfinite(points)):
            s.jammed, s.jam_reason = True, "non-finite lace state"
            return s
        seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
        if seg.max() > c.jam_stretch * self.rest:
            s.jammed, s.jam_reason = True, f"lace over-stretched ({seg.max() / self.rest:.2f}x)"
            return s
        if max_penetration > c.jam_penetration:
            s.jammed, s.jam_reason = True, f"penetration {1000 * max_penetration:.1f} mm"
            return s
        tip = points[self.end]
        if holders and tip[2] > self.table + c.lift_height:
            if self.picker is None:
                self.picker = next(iter(holders))
            self._reach(1)
        threaded, beyond = threaded_from_end(points, self.end, self.center, self.axis,
                                             self.radius)
        tip_past = (tip - self.center) @ self.axis > c.beyond_eyelet
        s.threaded = threaded and tip_past
        s.pulled_length = beyond if threaded else 0.0
        if s.stage >= 1 and s.threaded:
            self._reach(2)
        if s.stage >= 2 and s.threaded and holders and self.picker not in holders:
            self._reach(3)
        ground = self.table if support_height is None else support_height
        if (s.stage >= 3 and s.threaded and not holders and beyond >= c.pulled_through
                and tip[2] < ground + c.rest_height):
            self._reach(4)
            s.success = True
        return s
