"""``grrl-critic``: train the offline task-progress critic (TD3+BC, paper section 3.1), filter a
dataset with it, and plot what it learned.

    grrl-critic train  --data DIR --out RUN [--kind distributional|regression|time] [--steps N]
    grrl-critic filter --data DIR --critic RUN/critic --out RUN/filter.npz [--delta 0.05] [--plot 6]
    grrl-critic compare --data DIR --episode E --critic NAME=PATH ... --out fig7.png

A training run directory holds ``critic.{safetensors,json}`` when done (a GR-RL model whose
backbone and twin critics are trained; ``extra.role = "critic"``), periodic checkpoints,
``trainer_state.pt`` (read back with ``torch.load(weights_only=True)``), ``critic.csv`` and
TensorBoard logs. Re-running ``train`` resumes; a finished run returns at once.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grrl_critic.filtering import FilterConfig
from grrl_critic.td3bc import CriticTrainer, DivergedError, TD3BCConfig
from grrl_policy.checkpoint import CheckpointError
from grrl_trainer.batches import collate, normalization_stats
from grrl_trainer.dataset import DatasetError, EpisodeDataset
from grrl_trainer.run_utils import (EpochSamples, StepBatches, _atomic_torch_save,
                                    _graceful_sigint, _worker_init, dataset_fingerprint)
from grrl_trainer.windows import TransitionWindows, WindowConfig

LOG = logging.getLogger("grrl-critic")
STATE_FILE = "trainer_state.pt"
STATE_FORMAT = 1
CRITIC_NAME = "critic"
CSV_FIELDS = ("step", "critic_loss", "actor_loss", "q_mean", "grad_norm", "samples_per_s")
RUNTIME = ("checkpoint_every", "log_every", "workers", "threads", "device")


@dataclass
class CriticRunConfig:
    """One offline critic training run."""

    preset: str = "tiny-state"
    """model preset of the critic's backbone (grrl_policy.model.preset)"""
    model: dict[str, Any] = field(default_factory=dict)
    """top-level ModelConfig overrides, e.g. {"horizon": 8}"""
    td3bc: TD3BCConfig = field(default_factory=TD3BCConfig)
    """the algorithm's hyper-parameters"""
    steps: int = 20000
    """gradient steps"""
    batch_size: int = 256
    hindsight: bool = True
    """add the hindsight failed trajectories cut at retry keyframes (section 3.1)"""
    mirror_prob: float = 0.0
    """mirror augmentation of the critic's samples"""
    checkpoint_every: int = 2000
    log_every: int = 100
    seed: int = 0
    workers: int = 1
    """loader worker processes"""
    threads: int = 0
    """torch threads (0: the cores left after the loader workers)"""
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_config(self):
        from grrl_policy.model import configure
        return configure(self.preset, self.model)


def critic_windows(dataset: EpisodeDataset, cfg: CriticRunConfig, model_cfg) -> TransitionWindows:
    state = model_cfg.backbone == "tiny" and model_cfg.tiny.observation == "state"
    wcfg = WindowConfig(horizon=model_cfg.horizon, images=not state, state=state,
                        hindsight=cfg.hindsight, mirror_prob=cfg.mirror_prob, seed=cfg.seed,
                        gamma=cfg.td3bc.gamma, next_offset="random",
                        next_actions=cfg.td3bc.target_actions == "dataset",
                        task_space=model_cfg.action_space == "task")
    return TransitionWindows(dataset, wcfg)


def check_dataset_for_td(dataset: EpisodeDataset, cfg: CriticRunConfig) -> None:
    """TD on successes alone cannot learn progress: every value would converge to success."""
    if cfg.td3bc.kind == "time":
        if not any(m["success"] for m in dataset.episodes):
            raise ValueError("the t/T regressor needs successful episodes; the dataset has none")
        return
    failures = sum(not m["success"] for m in dataset.episodes)
    keyframes = sum(len(m["retry_keyframes"]) for m in dataset.episodes) if cfg.hindsight else 0
    if failures == 0 and keyframes == 0:
        raise ValueError("the dataset has no failed episodes and no retry keyframes: the critic "
                         "would see only successes and could not learn task progress (annotate "
                         "retries, or add failed demonstrations)")
    if not any(m["success"] for m in dataset.episodes):
        raise ValueError("the dataset has no successful episode: there is no reward to learn from")


def train_critic(data_dir: str | os.PathLike, run_dir: str | os.PathLike, cfg: CriticRunConfig,
                 progress: bool = True, stop_after: int | None = None) -> Path:
    """Train (or resume, or return a finished) critic run; returns ``run_dir/critic``."""
    from grrl_policy.checkpoint import save_checkpoint

    threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(cfg.threads or max(1, min(threads, cores - cfg.workers)))
    run_dir, data_dir = Path(run_dir), Path(data_dir).resolve()
    model_cfg = cfg.model_config()
    dataset = EpisodeDataset(data_dir)
    check_dataset_for_td(dataset, cfg)
    windows = critic_windows(dataset, cfg, model_cfg)
    fingerprint = dataset_fingerprint(dataset)
    final = run_dir / CRITIC_NAME
    state_path = run_dir / STATE_FILE
    device = torch.device(cfg.device)
    state = None
    if state_path.exists():
        try:
            state = torch.load(state_path, map_location=device, weights_only=True)
        except Exception as exc:   # noqa: BLE001 - torch raises many kinds for a bad file
            raise ValueError(f"trainer state {state_path} is unreadable ({exc}); delete it to "
                             f"start again") from None
        old = json.loads(state["config"])
        new = json.loads(json.dumps(cfg.to_dict()))
        diff = [k for k in set(old) | set(new) if k not in RUNTIME and old.get(k) != new.get(k)]
        if diff:
            raise ValueError(f"{run_dir} holds a critic run with another configuration "
                             f"({', '.join(sorted(diff))} differ): re-run with its options or "
                             f"choose another --out")
        if json.loads(state["data"]) != fingerprint:
            raise ValueError(f"{run_dir} was trained on another dataset than {data_dir}")
    start = int(state["step"]) if state is not None else 0
    stop = cfg.steps if stop_after is None else min(cfg.steps, int(stop_after))
    if start >= cfg.steps and final.with_suffix(".json").exists():
        LOG.info("%s: already finished (%d steps)", run_dir, start)
        return final

    torch.manual_seed(cfg.seed)
    trainer = CriticTrainer(model_cfg, cfg.td3bc, device=cfg.device)
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        torch.set_rng_state(state["rng"].cpu())
    else:
        trainer.set_normalization(normalization_stats(dataset, action_mode=model_cfg.action_mode,
                                                      horizon=model_cfg.horizon,
                                                      space=model_cfg.action_space))
    extra = {"role": "critic", "kind": cfg.td3bc.kind, "progress_reduce": cfg.td3bc.progress_reduce,
             "progress_position": cfg.td3bc.progress_position, "gamma": cfg.td3bc.gamma,
             "data": str(data_dir), "config": cfg.to_dict()}

    def save(step: int, path: Path) -> None:
        save_checkpoint(trainer.model, path, 1, {**extra, "step": step})
        _atomic_torch_save({"format": STATE_FORMAT, "step": step, "config": json.dumps(cfg.to_dict()),
                            "data": json.dumps(fingerprint), "trainer": trainer.state_dict(),
                            "rng": torch.get_rng_state()}, state_path)

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    if start >= cfg.steps:
        save(start, final)
        return final
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm
    writer = SummaryWriter(str(run_dir / "tb"), purge_step=start + 1 if start else None)
    csv_path = run_dir / "critic.csv"
    new_csv = not csv_path.exists()
    csv_file = open(csv_path, "a", newline="")
    out = csv.DictWriter(csv_file, CSV_FIELDS)
    if new_csv:
        out.writeheader()
    state_mode = model_cfg.backbone == "tiny" and model_cfg.tiny.observation == "state"
    loader = torch.utils.data.DataLoader(
        EpochSamples(windows), batch_sampler=StepBatches(len(windows), cfg.batch_size, cfg.seed, start, stop),
        collate_fn=functools.partial(collate, observation="state" if state_mode else "images",
                                     space=model_cfg.action_space),
        num_workers=cfg.workers, persistent_workers=cfg.workers > 0,
        worker_init_fn=_worker_init if cfg.workers > 0 else None)
    LOG.info("critic %s on %s: %d samples (%d trajectories incl. hindsight), %s; %s at step %d of %d",
             cfg.td3bc.kind, data_dir, len(windows), len(windows.segments), model_cfg.name,
             "resuming" if start else "starting", start, cfg.steps)
    bar = tqdm(total=cfg.steps, initial=start, desc=f"critic {cfg.td3bc.kind}", disable=not progress,
               dynamic_ncols=True)
    step, acc, t0 = start, {}, time.perf_counter()
    try:
        with _graceful_sigint() as stop_flag:
            for batch in loader:
                try:
                    m = trainer.update(batch)
                except DivergedError as exc:
                    raise DivergedError(f"{exc}: training stopped without writing a checkpoint "
                                        f"(last good: {run_dir / 'checkpoints'}); lower the "
                                        f"learning rate or check the data") from None
                step += 1
                for k, v in m.items():
                    acc.setdefault(k, []).append(v)
                bar.update(1)
                bar.set_postfix(loss=f"{m['critic_loss']:.4f}", refresh=False)
                if step % cfg.log_every == 0 or step == stop:
                    rate = len(acc["critic_loss"]) * cfg.batch_size / max(1e-9, time.perf_counter() - t0)
                    row = {k: f"{np.mean(acc[k]):.6g}" for k in CSV_FIELDS if k in acc}
                    row.update(step=step, samples_per_s=f"{rate:.1f}")
                    out.writerow(row)
                    csv_file.flush()
                    for k, v in acc.items():
                        writer.add_scalar(f"critic/{k}", float(np.mean(v)), step)
                    acc, t0 = {}, time.perf_counter()
                if step % cfg.checkpoint_every == 0 or step == stop or stop_flag.is_set():
                    save(step, run_dir / "checkpoints" / f"step_{step:07d}")
                if stop_flag.is_set():
                    raise KeyboardInterrupt
            if step >= cfg.steps:
                save(step, final)
    finally:
        bar.close()
        writer.close()
        csv_file.close()
        torch.set_num_threads(threads)
    return final if step >= cfg.steps else run_dir / "checkpoints" / f"step_{step:07d}"


# ---------------------------------------------------------------------- CLI
def _train(args: argparse.Namespace) -> int:
    td = TD3BCConfig(kind=args.kind, gamma=args.gamma, lr=args.lr, target_actions=args.target_actions,
                     progress_position=args.progress_position)
    cfg = CriticRunConfig(preset=args.preset, model=json.loads(args.model), td3bc=td, steps=args.steps,
                          batch_size=args.batch_size, mirror_prob=args.mirror_prob, seed=args.seed,
                          workers=args.workers, checkpoint_every=args.checkpoint_every)
    start = time.time()
    path = train_critic(args.data, args.out, cfg, progress=not args.quiet)
    print(f"critic ({args.kind}) trained: {path} ({time.time() - start:.0f} s)")
    return 0


def _filter(args: argparse.Namespace) -> int:
    from grrl_trainer.progress_filter import load_critic, run_filter
    model, _, _, _ = load_critic(args.critic)
    cfg = FilterConfig(delta=args.delta, horizon=args.horizon or model.cfg.horizon, drop=args.drop)
    path, summary = run_filter(args.critic, args.data, args.out, cfg, progress=not args.quiet)
    kept = summary["kept_fraction"]
    print(f"filter: kept {summary['kept']} of {summary['samples']} samples ({100 * kept:.1f}%), "
          f"delta {cfg.delta}, k {cfg.horizon}, {summary['transitions_per_second']:.0f} transitions/s")
    for name in ("successful_episodes", "failed_episodes", "near_retry_keyframes", "elsewhere"):
        v = summary[f"kept_fraction_{name}"]
        print(f"  kept {name.replace('_', ' ')}: {'-' if v is None else f'{100 * v:.1f}%'}")
    stages = ", ".join(f"{s}: {100 * v:.0f}%" for s, v in summary["kept_fraction_by_stage"].items()
                       if v is not None)
    print(f"  kept by stage: {stages}")
    print(f"  wrote {path} and {path.with_suffix('.json')}")
    if args.plot:
        print(f"  plot: {plot_filtered(args.data, path, args.plot, path.with_suffix('.png'))}")
    return 0


def plot_filtered(data_dir: str | Path, filter_path: str | Path, n: int, out: str | Path) -> Path:
    """Fig. 3 for ``n`` episodes, those with retry keyframes first."""
    from grrl_trainer.progress_plots import ProgressCurve, plot_progress
    f = np.load(filter_path)
    dataset = EpisodeDataset(data_dir)
    metas = dataset.episodes
    order = sorted(range(len(metas)), key=lambda e: (-len(metas[e]["retry_keyframes"]), e))[:n]
    curves = []
    for e in order:
        sel = f["episode"] == e
        m = metas[e]
        curves.append(ProgressCurve(f["progress"][sel], f["keep"][sel], [int(x) for x in m["retry_keyframes"]],
                                    f"episode {e} (seed {m.get('seed', '?')}, {'success' if m['success'] else 'failure'}): "
                                    f"{m['instruction']}"))
    return plot_progress(curves, out)


def _compare(args: argparse.Namespace) -> int:
    """Fig. 7: the progress of several critics on one trajectory."""
    from grrl_trainer.progress_filter import dataset_progress, load_critic
    from grrl_trainer.progress_plots import plot_critic_comparison
    dataset = EpisodeDataset(args.data)
    sub = _OneEpisode(dataset, args.episode)
    curves = {}
    for spec in args.critic:
        name, _, path = spec.partition("=")
        model, kind, reduce, position = load_critic(path)
        rho, _ = dataset_progress(model, kind, reduce, sub, progress=False, position=position)
        curves[name] = rho[0]
    T = len(next(iter(curves.values())))
    curves["t/T (time)"] = np.arange(1, T + 1) / T
    m = dataset.episodes[args.episode]
    out = plot_critic_comparison(curves, args.out, f"episode {args.episode}: {m['instruction']}",
                                 [int(x) for x in m["retry_keyframes"]])
    print(f"wrote {out}")
    return 0


class _OneEpisode:
    """A view of one episode of a dataset (what dataset_progress needs)."""

    def __init__(self, dataset: EpisodeDataset, episode: int):
        if not 0 <= episode < len(dataset.episodes):
            raise ValueError(f"episode {episode} is not in the dataset ({len(dataset.episodes)} episodes)")
        self._d, self._e = dataset, episode
        self.episodes = [dataset.episodes[episode]]

    def load(self, i: int, name: str, index: Any = slice(None)) -> np.ndarray:
        return self._d.load(self._e, name, index)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grrl-critic", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the offline critic (TD3+BC)")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--kind", default="distributional", choices=["distributional", "regression", "time"])
    t.add_argument("--preset", default="tiny-state")
    t.add_argument("--model", default="{}", help="JSON overrides of the model config")
    t.add_argument("--steps", type=int, default=20000)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--gamma", type=float, default=0.99)
    t.add_argument("--target-actions", default="actor", choices=["actor", "dataset"])
    t.add_argument("--progress-position", default="first", choices=["first", "last"])
    t.add_argument("--mirror-prob", type=float, default=0.0)
    t.add_argument("--checkpoint-every", type=int, default=2000)
    t.add_argument("--workers", type=int, default=1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quiet", action="store_true")
    f = sub.add_parser("filter", help="compute progress over a dataset and filter it")
    f.add_argument("--data", required=True)
    f.add_argument("--critic", required=True, help="critic checkpoint (RUN/critic)")
    f.add_argument("--out", required=True, help="filter file (.npz; a .json summary goes beside it)")
    f.add_argument("--delta", type=float, default=0.05)
    f.add_argument("--horizon", type=int, default=0, help="window k (default: the critic's chunk)")
    f.add_argument("--drop", default="peak_to_trough", choices=["peak_to_trough", "consecutive"])
    f.add_argument("--plot", type=int, default=6, help="episodes in the Fig. 3 plot (0: none)")
    f.add_argument("--quiet", action="store_true")
    c = sub.add_parser("compare", help="Fig. 7: progress of several critics on one episode")
    c.add_argument("--data", required=True)
    c.add_argument("--episode", type=int, required=True, help="dataset index of the episode")
    c.add_argument("--critic", action="append", required=True, help="NAME=PATH (repeat)")
    c.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        return {"train": _train, "filter": _filter, "compare": _compare}[args.cmd](args)
    except (ValueError, DatasetError, DivergedError, FileNotFoundError, CheckpointError) as exc:
        print(f"grrl-critic {args.cmd}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("grrl-critic: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
