"""``grrl-bench policy``: chunk latency with and without prefix reuse (side by side, one run),
per-component times, and the trajectory optimizer's solve time.

The tiny config runs on this CPU (targets: p50 <= 30 ms per chunk for k=16, 10 flow steps,
three 128x128 images; optimizer <= 2 ms per chunk). ``--config qwen2.5-vl-3b`` runs the large
model on a GPU when one is present: with ``--qwen-path`` from local weights, otherwise with a
randomly initialised model of the real size (same latency, no download).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Callable

import numpy as np
import torch

from .model import GRRLModel, QwenConfig, preset
from .policy_runtime import CAMERAS
from .robot import RobotDescription, default_robot
from .trajectory_optimizer import JerkLimitedOptimizer

HOME_POSTURE = {"elbow_joint": -2.094, "wrist_pitch_joint": 2.094, "gripper_finger_joint": 0.04}
"""``{side}_<joint>`` values of ByteMini-v2's home posture (the simulator's: both tcps ahead at
table height, fingers down), the other joints at 0; the IK decode is timed from there because
its cost depends on the posture (on which limits are near)"""


def timed(fn: Callable[[], object], iters: int, sync: Callable[[], None]) -> np.ndarray:
    """Seconds per call, after two warm-up calls."""
    fn()
    fn()
    sync()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return np.array(out)


def stats(name: str, s: np.ndarray) -> dict:
    return {"name": name, "p50_ms": 1e3 * float(np.median(s)), "p99_ms": 1e3 * float(np.quantile(s, 0.99))}


def working_posture(robot: RobotDescription) -> np.ndarray:
    """(n,) joint vector to time the IK decode from: :data:`HOME_POSTURE` where the robot has
    those joints, 0 elsewhere, within the joint ranges."""
    q = np.zeros(len(robot.actuated_joint_names))
    for i, name in enumerate(robot.actuated_joint_names):
        for side in robot.sides:
            q[i] = HOME_POSTURE.get(name.removeprefix(f"{side}_"), q[i])
    return np.clip(q, robot.lower, robot.upper)


def build(config: str, qwen_path: str, device: torch.device) -> GRRLModel:
    if config == "qwen2.5-vl-3b":
        if qwen_path:
            cfg = preset(config, qwen=QwenConfig(path=qwen_path))
        else:
            from transformers import Qwen2_5_VLConfig
            # the published 3B dimensions, random weights (latency only)
            text = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                        num_attention_heads=16, num_key_value_heads=2, vocab_size=151936,
                        max_position_embeddings=128000, tie_word_embeddings=True,
                        rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24],
                                         "rope_theta": 1e6})
            vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                          out_hidden_size=2048, fullatt_block_indexes=[7, 15, 23, 31],
                          window_size=112, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
            rc = Qwen2_5_VLConfig(text_config=text, vision_config=vision).to_dict()
            cfg = preset(config, qwen=QwenConfig(random_config=rc))
    else:
        cfg = preset(config)
    model = GRRLModel(cfg).eval().to(device)
    if cfg.backbone == "qwen" and device.type == "cuda":
        model = model.to(torch.bfloat16)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grrl-bench policy", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", choices=["tiny", "tiny-state", "tiny-state-task",
                                                             "tiny-task", "qwen2.5-vl-3b"])
    parser.add_argument("--qwen-path", default="", help="local Qwen2.5-VL-3B-Instruct directory")
    parser.add_argument("--iters", type=int, default=50, help="timed calls per measurement")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = build(args.config, args.qwen_path, device)
    cfg = model.cfg
    k, D = cfg.horizon, cfg.action_dim
    obs: dict = {"instruction": ["lace the left end of the shoelace through the right eyelet"]}
    if cfg.backbone == "tiny" and cfg.tiny.observation == "state":
        obs["state"] = torch.zeros(1, cfg.tiny.state_dim, device=device)
    else:
        size = cfg.tiny.image_size if cfg.backbone == "tiny" else cfg.qwen.image_size
        obs["images"] = torch.randint(0, 256, (1, len(CAMERAS), size, size, 3), dtype=torch.uint8,
                                      device=device)
    proprio = torch.zeros(1, cfg.proprio_dim, device=device)
    noise = torch.randn(1, k, D, device=device)
    rows = []
    with torch.no_grad():
        cached = timed(lambda: model.act(obs, proprio, noise=noise, reuse_prefix=True), args.iters, sync)
        uncached = timed(lambda: model.act(obs, proprio, noise=noise, reuse_prefix=False),
                         max(5, args.iters // 5), sync)
        prefix = model.encode(obs)
        p_n = model.normalizer.norm("proprio", proprio)
        tau = torch.zeros(1, device=device)
        rows += [stats("chunk, prefix reused", cached), stats("chunk, prefix recomputed per step", uncached),
                 stats("  backbone encode", timed(lambda: model.encode(obs), args.iters, sync)),
                 stats("  one DiT flow step", timed(lambda: model.velocity(prefix, p_n, noise, tau), args.iters, sync)),
                 stats(f"  {cfg.flow_steps} flow steps", timed(lambda: model.sample_normalized(prefix, proprio, noise),
                                                              args.iters, sync)),
                 stats("  noise predictor", timed(lambda: model.predict_noise(prefix, proprio), args.iters, sync)),
                 stats("  twin critics", timed(lambda: model.critic_logits(prefix, proprio, noise), args.iters, sync))]
    lim = np.full(D, 3.0)
    opt = JerkLimitedOptimizer(k, 0.1, -lim, lim, np.full(D, 2.0), np.full(D, 8.0), np.full(D, 60.0))
    rng = np.random.default_rng(0)
    chunks = [np.cumsum(rng.normal(0, 0.05, (k, D)), axis=0) for _ in range(args.iters)]
    it = iter(chunks * 3)
    rows.append(stats("optimizer solve (k=%d, D=%d)" % (k, D),
                      timed(lambda: opt.solve(next(it), np.zeros(D), np.zeros(D), np.zeros(D)), args.iters,
                            lambda: None)))
    if cfg.action_space == "task":
        # a task-space chunk becomes joint targets by differential IK before the joint QP
        # (the default robot, from its home posture)
        from .task_space import TaskSpaceDecoder
        dec = TaskSpaceDecoder(0.1)
        home_q = working_posture(dec.robot)
        home = dec.proprio(home_q)
        paths = [home + np.cumsum(rng.normal(0, 0.004, (k, D)), axis=0) for _ in range(args.iters)]
        it_task = iter(paths * 3)
        rows.append(stats(f"IK decode of a task-space chunk (k={k}, 3 iterations/step)",
                          timed(lambda: dec.joints(next(it_task), home_q), args.iters, lambda: None)))
    if cfg.action_space == "task" or D == 16:
        # the node's full post-processing: receding-horizon splice + QP with ByteMini-v2 limits
        from .chunk_executor import ChunkExecutor, ExecutorConfig, JointLimits
        lo, hi, vel = default_robot().joint_limits()
        v = 0.8 * vel
        ex = ChunkExecutor(JointLimits(lo, hi, v, 4 * v, 40 * v), ExecutorConfig(dt=0.1, execute_steps=8))
        base = 0.5 * (lo + hi)
        clock = iter(range(10 ** 9))

        def replan() -> None:
            t = 0.8 * next(clock)
            chunk = np.clip(base + np.cumsum(rng.normal(0, 0.05, (k, 16)), axis=0), lo, hi)
            ex.plan(chunk, t, ex.state_at(t, measured=base))
        rows.append(stats("chunk executor plan (splice + QP, robot limits)", timed(replan, args.iters, lambda: None)))
    ratio = float(np.median(uncached) / np.median(cached))
    print(f"grrl-bench policy: config {cfg.name}, device {device}, threads {args.threads}, "
          f"k={k}, action_dim={D}, flow steps {cfg.flow_steps}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
    for r in rows:
        print(f"  {r['name']:<50} p50 {r['p50_ms']:8.2f} ms   p99 {r['p99_ms']:8.2f} ms")
    print(f"  prefix reuse speed-up (recomputed / reused, p50): {ratio:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": dataclasses.asdict(cfg), "device": str(device), "rows": rows,
                       "prefix_reuse_speedup": ratio}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
