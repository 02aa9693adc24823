"""``grrl-eval imitation``: how closely a policy's chunks follow held-out demonstrations, step by
step, in minutes and without the simulator — the fast signal behind every BC recipe change.

For every decision point t of the held-out episodes (every ``stride`` steps, the receding
horizon's re-plan points) the policy predicts a chunk from the recorded observation; it is
compared with the recorded actions a_{t:t+k}, beside the hold-still baseline (a_{t+i} = the
current pose, what a policy that learned nothing would do). Per chunk step i (1-based):

- ``position_mm``: tcp position error of the *active* arm (the one the demonstration moves
  most over the chunk), median and p90;
- ``rotation_deg``: its tcp rotation error; ``gripper_mm``: the largest gripper-opening error;
- ``idle_arm_mm``: for arms the demonstration keeps still over the chunk (< ``idle_mm``), the
  largest distance of the policy's tcp from the demonstration's over the chunk;
- ``replan_mm``: re-plan disagreement, the active arm's distance between the chunk planned at t
  and the one planned at t + stride over their overlapping steps (what the executor splices).

Task-space state models only (the reproduction's policy). Noise: ``zero`` (ε = 0, the flow's
central prediction) or ``sample`` (ε ~ N(0, I), seeded per episode).

    grrl-eval imitation checkpoints/grrl_sim_state --data data/clean_val --out eval/imitation
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grrl_policy.checkpoint import CheckpointError, load_checkpoint
from grrl_policy.keys import INSTRUCTION, STATE
from grrl_policy.model import GRRLModel
from grrl_policy.task_space import ARM_DIM, GRIP, TASK_DIM, rot6d_to_matrix
from grrl_tools.config_cli import add_arguments, from_args
from grrl_trainer.data.arrays import EpisodeArrays
from grrl_trainer.data.dataset import DatasetError, EpisodeDataset

LOG = logging.getLogger(__name__)
REPORT_STEPS = (1, 4, 8, 16)
"""chunk steps (1-based) printed in the summary table"""


@dataclass
class ImitationConfig:
    """Which demonstrations the policy is compared with, and how."""

    data: str = ""
    """dataset of held-out demonstrations (never the training episodes)"""
    episodes: int = 20
    """number of episodes compared (the first ones of the dataset)"""
    successful_only: bool = True
    """compare with successful demonstrations only"""
    stride: int = 8
    """steps between decision points (the receding horizon's m)"""
    noise: str = "zero"
    """'zero' (ε = 0) or 'sample' (ε ~ N(0, I), seeded by episode)"""
    idle_mm: float = 5.0
    """an arm the demonstration moves less than this over a chunk is idle"""
    batch_size: int = 256
    """decisions per forward pass"""
    seed: int = 0
    """noise seed (with noise='sample', and of the authority directions)"""
    authority_scales: tuple[float, ...] = (0.1, 0.3, 1.0)
    """per-value rms of ε at which the reach of noise steering is measured: how far (tcp, mm)
    the chunk from ε of that size moves from the ε = 0 chunk, for random directions and for one
    constant shift of every value (what sizes eq. (3)'s β and the exploration); () = off"""
    out_dir: str = "eval/imitation"
    """directory of imitation.json and imitation.png"""

    def __post_init__(self) -> None:
        if self.noise not in ("zero", "sample"):
            raise ValueError(f"noise must be 'zero' or 'sample', got {self.noise!r}")
        if any(not 0.0 < a < float("inf") for a in self.authority_scales):
            raise ValueError(f"authority_scales must be finite and > 0, got {self.authority_scales}")
        if self.stride < 1 or self.episodes < 1 or self.batch_size < 1:
            raise ValueError(f"stride, episodes and batch_size must be >= 1, got {self.stride}, "
                             f"{self.episodes}, {self.batch_size}")


def arm_view(v: np.ndarray) -> np.ndarray:
    """(..., 20) → (..., 2, 10): per arm position (3), rotation columns (6), gripper (1)."""
    return v.reshape(*v.shape[:-1], 2, ARM_DIM)


def rotation_error_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle (deg) between the rotations of 6-D representations a, b (..., 6)."""
    Ra, Rb = rot6d_to_matrix(a), rot6d_to_matrix(b)
    cos = (np.einsum("...ij,...ij->...", Ra, Rb) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


@torch.no_grad()
def predict(model: GRRLModel, arrays: EpisodeArrays, rows: np.ndarray, noise: str | np.ndarray,
            seed: int, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """The policy's chunks (B, k, D) in physical units at dataset rows (B,); ``noise``: 'zero',
    'sample' or the initial noise itself (B, k, D)."""
    from tqdm import tqdm

    cfg = model.cfg
    out = []
    local = arrays.local(rows)
    for i in tqdm(range(0, len(rows), batch_size), desc="chunks", unit="batch",
                  disable=not progress):
        r, e = rows[i:i + batch_size], local[i:i + batch_size]
        obs = {INSTRUCTION: [arrays.instructions[j] for j in e],
               STATE: torch.from_numpy(arrays.state[r])}
        proprio = torch.from_numpy(arrays.proprio[r])
        if isinstance(noise, np.ndarray):
            eps = torch.from_numpy(noise[i:i + batch_size]).float()
        elif noise == "zero":
            eps = torch.zeros(len(r), cfg.horizon, cfg.action_dim)
        else:
            eps = torch.from_numpy(np.stack([
                np.random.default_rng([seed, arrays.seeds[j], int(arrays.timestep[row])])
                .standard_normal((cfg.horizon, cfg.action_dim)) for j, row in zip(e, r)])).float()
        prefix = model.encode(obs)
        out.append(model.decode_actions(model.sample_normalized(prefix, proprio, eps), proprio)
                   .numpy())
    return np.concatenate(out)


def _stats(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, float)
    return {"median": float(np.median(x)), "p90": float(np.percentile(x, 90)),
            "mean": float(np.mean(x))} if x.size else {"median": float("nan"),
                                                        "p90": float("nan"), "mean": float("nan")}


def chunk_errors(pred: np.ndarray, demo: np.ndarray, mask: np.ndarray, proprio: np.ndarray,
                 idle_mm: float) -> dict[str, Any]:
    """Per-step errors of chunks ``pred`` (B, k, 20) against ``demo`` (B, k, 20) (``mask``: real
    steps), with ``proprio`` (B, 20) the pose at the decision."""
    P, A = arm_view(pred), arm_view(demo)
    start = arm_view(proprio)[:, None]
    moved = np.linalg.norm(A[..., :3] - start[..., :3], axis=-1)          # (B, k, 2)
    moved = np.where(mask[..., None], moved, 0.0).max(1)                   # (B, 2)
    active = moved.argmax(1)                                               # (B,)
    b = np.arange(len(pred))
    pos = 1000 * np.linalg.norm(P[b, :, active, :3] - A[b, :, active, :3], axis=-1)   # (B, k)
    rot = rotation_error_deg(P[b, :, active, 3:9], A[b, :, active, 3:9])
    grip = 1000 * np.abs(P[..., GRIP] - A[..., GRIP]).max(-1)             # (B, k)
    idle = 1000 * moved < idle_mm                                          # (B, 2)
    dist = 1000 * np.linalg.norm(P[..., :3] - A[..., :3], axis=-1)         # (B, k, 2)
    dist = np.where(mask[..., None], dist, 0.0).max(1)                     # (B, 2)
    k = pred.shape[1]
    steps = {}
    for i in range(k):
        m = mask[:, i]
        steps[i + 1] = {"position_mm": _stats(pos[m, i]), "rotation_deg": _stats(rot[m, i]),
                        "gripper_mm": _stats(grip[m, i])}
    return {"steps": steps, "idle_arm_mm": _stats(dist[idle]),
            "idle_arm_max_mm": float(dist[idle].max()) if idle.any() else float("nan"),
            "active": active}


def replan_disagreement(pred: np.ndarray, rows: np.ndarray, arrays: EpisodeArrays, stride: int,
                        active: np.ndarray) -> dict[str, float]:
    """Active-arm distance (mm) between the chunk at t and the one at t + stride over their
    overlap, for consecutive decisions of the same episode."""
    k = pred.shape[1]
    if stride >= k:
        return _stats(np.zeros(0))
    same = (arrays.episode[rows[1:]] == arrays.episode[rows[:-1]]) & (rows[1:] - rows[:-1] == stride)
    i = np.flatnonzero(same)
    a = arm_view(pred[i, stride:])                    # (n, k - stride, 2, 10)
    b = arm_view(pred[i + 1, :k - stride])
    arm = active[i]
    n = np.arange(len(i))
    d = 1000 * np.linalg.norm(a[n, :, arm, :3] - b[n, :, arm, :3], axis=-1)
    return _stats(d.ravel())


def evaluate_imitation(model: GRRLModel, arrays: EpisodeArrays, cfg: ImitationConfig,
                       progress: bool = False) -> dict[str, Any]:
    """Policy and hold-still errors at every ``stride``-th step of the loaded episodes."""
    mcfg = model.cfg
    if mcfg.action_space != "task" or mcfg.action_dim != TASK_DIM or not mcfg.observes_state:
        raise ValueError("the imitation metric compares task-space state models "
                         f"(got action_space={mcfg.action_space}, observes_state="
                         f"{mcfg.observes_state})")
    rows = np.concatenate([s + np.arange(0, n, cfg.stride)
                           for s, n in zip(arrays.start, arrays.length)])
    demo, mask = arrays.chunks(rows, mcfg.horizon)
    proprio = arrays.proprio[rows]
    pred = predict(model.eval(), arrays, rows, cfg.noise, cfg.seed, cfg.batch_size, progress)
    hold = np.repeat(proprio[:, None], mcfg.horizon, 1)
    policy = chunk_errors(pred, demo, mask, proprio, cfg.idle_mm)
    still = chunk_errors(hold, demo, mask, proprio, cfg.idle_mm)
    report = {"policy": {k: v for k, v in policy.items() if k != "active"},
              "hold_still": {k: v for k, v in still.items() if k != "active"},
              "replan_mm": replan_disagreement(pred, rows, arrays, cfg.stride, policy["active"]),
              "decisions": int(len(rows)), "episodes": len(arrays.episodes)}
    if cfg.authority_scales:
        base = pred if cfg.noise == "zero" else predict(model, arrays, rows, "zero", cfg.seed,
                                                        cfg.batch_size)
        report["noise_authority_mm"] = noise_authority(model, arrays, rows, base,
                                                       cfg.authority_scales, cfg.seed, cfg.batch_size)
    steps = policy["steps"]
    report["below_hold_still_every_step"] = all(
        steps[i]["position_mm"]["median"] < still["steps"][i]["position_mm"]["median"]
        for i in steps)
    return report


def noise_authority(model: GRRLModel, arrays: EpisodeArrays, rows: np.ndarray, base: np.ndarray,
                    scales: tuple[float, ...], seed: int, batch_size: int = 256) -> dict[str, Any]:
    """How far the chunk moves when its initial noise moves away from ε = 0: per ε scale (rms
    per value) the largest tcp displacement over the two arms (mm) from ``base`` (the ε = 0
    chunks (B, k, D)) at each chunk step, for a random direction per decision ("random") and for
    the same constant added to every value ("constant", the shape the collapsed predictor took)."""
    cfg = model.cfg
    shape = (len(rows), cfg.horizon, cfg.action_dim)
    rng = np.random.default_rng([seed, 7])
    out: dict[str, Any] = {}
    for scale in scales:
        row = {}
        for kind, eps in (("random", scale * rng.standard_normal(shape)),
                          ("constant", np.full(shape, scale))):
            pred = predict(model, arrays, rows, eps.astype(np.float32), seed, batch_size)
            moved = 1000 * np.linalg.norm(arm_view(pred - base)[..., :3], axis=-1).max(-1)  # (B, k)
            row[kind] = {i + 1: _stats(moved[:, i]) for i in range(cfg.horizon)}
        out[f"{scale:g}"] = row
    return out


def summary_table(report: dict[str, Any]) -> str:
    """Median (p90) active-arm error at a few chunk steps, policy vs hold-still."""
    lines = ["chunk step      " + "".join(f"{s:>16d}" for s in REPORT_STEPS)]
    for who in ("policy", "hold_still"):
        steps = report[who]["steps"]
        for name, unit in (("position_mm", "mm"), ("rotation_deg", "deg"), ("gripper_mm", "grip mm")):
            cells = "".join(f"{steps[s][name]['median']:>8.1f} ({steps[s][name]['p90']:5.1f})"
                            for s in REPORT_STEPS if s in steps)
            lines.append(f"{who[:6]:6s} {unit:8s} {cells}")
    p, r = report["policy"], report["replan_mm"]
    lines.append(f"idle arm: median {p['idle_arm_mm']['median']:.1f} mm, p90 "
                 f"{p['idle_arm_mm']['p90']:.1f}, max {p['idle_arm_max_mm']:.1f} (hold-still "
                 f"{report['hold_still']['idle_arm_mm']['median']:.1f}); re-plan disagreement: "
                 f"median {r['median']:.1f} mm, p90 {r['p90']:.1f}")
    for scale, row in report.get("noise_authority_mm", {}).items():
        cells = "; ".join(f"{kind} " + " / ".join(f"{row[kind][s]['median']:.1f}" for s in (1, 8, 16)
                                                 if s in row[kind]) for kind in row)
        lines.append(f"chunk moved by eps of rms {scale} (mm, median at steps 1 / 8 / 16): {cells}")
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: Path, title: str = "") -> None:
    """Median and p90 of the active arm's position error per chunk step, policy vs hold-still."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for who, color in (("policy", "tab:blue"), ("hold_still", "tab:gray")):
        steps = report[who]["steps"]
        s = np.array(sorted(steps))
        med = np.array([steps[i]["position_mm"]["median"] for i in s])
        p90 = np.array([steps[i]["position_mm"]["p90"] for i in s])
        ax.plot(s, med, "-o", color=color, ms=3, label=f"{who.replace('_', '-')} median")
        ax.plot(s, p90, "--", color=color, alpha=0.6, label=f"{who.replace('_', '-')} p90")
    ax.axhline(5.0, color="tab:red", lw=0.8, alpha=0.6, label="task tolerance ~5 mm")
    ax.set(xlabel="chunk step", ylabel="active-arm tcp error (mm)", yscale="log", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_held_out(cfg: ImitationConfig) -> EpisodeArrays:
    dataset = EpisodeDataset(cfg.data)
    chosen = [i for i, m in enumerate(dataset.episodes)
              if m["success"] or not cfg.successful_only][:cfg.episodes]
    if not chosen:
        raise DatasetError(f"{cfg.data}: no {'successful ' if cfg.successful_only else ''}episodes")
    return EpisodeArrays.load(dataset, "task", chosen)


def run(checkpoint: str, cfg: ImitationConfig, progress: bool = False) -> dict[str, Any]:
    """Evaluate ``checkpoint``; writes imitation.json and imitation.png into ``cfg.out_dir``."""
    model, meta = load_checkpoint(checkpoint)
    arrays = load_held_out(cfg)
    report = evaluate_imitation(model, arrays, cfg, progress)
    report.update(checkpoint=str(checkpoint), sha256=meta.sha256, config=asdict(cfg))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "imitation.json").write_text(json.dumps(report, indent=1, default=float))
    plot_report(report, out / "imitation.png", Path(checkpoint).name)
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="grrl-eval imitation", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="policy checkpoint")
    add_arguments(parser, ImitationConfig())
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        cfg = from_args(args, ImitationConfig())
        if not cfg.data:
            raise ValueError("--data (held-out demonstrations) is required")
        report = run(args.checkpoint, cfg, progress=not args.quiet)
    except (CheckpointError, DatasetError, OSError, ValueError) as e:
        print(f"grrl-eval imitation: error: {e}", file=sys.stderr)
        return 2
    print(summary_table(report))
    print(f"report: {Path(cfg.out_dir) / 'imitation.json'}  plot: {Path(cfg.out_dir) / 'imitation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
