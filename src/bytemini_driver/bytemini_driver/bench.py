"""``grrl-bench sim``: real-time factor of the simulated driver loop, measured side by side
with and without the three cameras, and the cost of each part.

The loop is the driver node's (command -> physics for one control period -> cameras every
control_rate/camera_rate ticks) with the scripted expert acting, without DDS.
"""
from __future__ import annotations

import argparse
import time


from bytemini_driver import description as desc
from bytemini_driver.expert import ScriptedExpert
from bytemini_driver.scene import SceneConfig
from bytemini_driver.sim import ShoeLacingSim, SimConfig


def run(seconds: float, control_rate: float, camera_rate: float, cameras: bool, size: int,
        seed: int) -> dict[str, float]:
    sim = ShoeLacingSim(SimConfig(scene=SceneConfig(image_width=size, image_height=size)))
    expert = ScriptedExpert()
    p = sim.reset(seed)
    center, direction = sim.eyelet_world(p.eyelet_side, p.eyelet_index, p.end_side)
    dt = 1.0 / control_rate
    expert.reset(p.end_side, center, direction, sim.joint_positions(),
                 sim.config.scene.lace_vertices, dt)
    every = max(1, round(control_rate / camera_rate))
    n_sub = int(round(dt / sim.model.opt.timestep))
    t_physics = t_render = t_expert = 0.0
    frames = 0
    ticks = int(seconds * control_rate)
    if cameras:
        sim.render("head")  # create the GL context outside the timing
    start = time.perf_counter()
    for k in range(ticks):
        t0 = time.perf_counter()
        q = expert.act(sim.lace_points(), sim.joint_positions())
        t1 = time.perf_counter()
        sim.set_joint_targets(q)
        sim.step(n_sub)
        sim.update_task()
        t2 = time.perf_counter()
        if cameras and k % every == 0:
            for cam in desc.CAMERAS:
                sim.render(cam)
            frames += 1
        t3 = time.perf_counter()
        t_expert += t1 - t0
        t_physics += t2 - t1
        t_render += t3 - t2
    wall = time.perf_counter() - start
    sim.close()
    return {"rtf": seconds / wall, "wall": wall, "physics_ms_per_tick": 1e3 * t_physics / ticks,
            "expert_ms_per_tick": 1e3 * t_expert / ticks,
            "render_ms_per_frame_3cams": 1e3 * t_render / max(frames, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grrl-bench sim", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="simulated seconds per run")
    parser.add_argument("--control-rate", type=float, default=50.0)
    parser.add_argument("--camera-rate", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=224, help="image width and height")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = {}
    for cameras in (True, False):
        rows[cameras] = run(args.seconds, args.control_rate, args.camera_rate, cameras,
                            args.size, args.seed)
    with_c, without = rows[True], rows[False]
    print(f"simulated driver loop, {args.seconds:.0f} s of sim time, control "
          f"{args.control_rate:.0f} Hz, 3 cameras {args.size}x{args.size} at "
          f"{args.camera_rate:.0f} Hz, expert acting")
    print(f"{'':28s}{'with cameras':>14s}{'without':>12s}")
    for key in ("rtf", "physics_ms_per_tick", "expert_ms_per_tick",
                "render_ms_per_frame_3cams"):
        print(f"{key:28s}{with_c[key]:14.3f}{without[key]:12.3f}")
    print(f"cameras cost {with_c['wall'] / without['wall']:.2f}x the wall time of the loop "
          f"without them; real-time factor with cameras {with_c['rtf']:.2f}x "
          f"(target >= 1.0x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
