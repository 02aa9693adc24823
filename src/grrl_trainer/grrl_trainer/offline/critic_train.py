"""``grrl-critic``: train the offline task-progress critic (TD3+BC, paper section 3.1), filter a
dataset with it, and plot what it learned.

    grrl-critic train  --data DIR --out RUN [--kind distributional|regression|time] [--steps N]
    grrl-critic filter --data DIR --critic RUN/critic --out RUN/filter.npz [--delta 0.05] [--plot 6]
    grrl-critic evaluate --data DIR --critic RUN/critic --out RUN/flaws.json [--truth step]
    grrl-critic select --run RUN --data HELDOUT [--patience 2]
    grrl-critic compare --data DIR --episode E --critic NAME=PATH ... --out fig7.png

A training run directory holds ``critic.{safetensors,json}`` when done (a GR-RL model whose
backbone and twin critics are trained; ``extra.role = "critic"``), periodic checkpoints,
``trainer_state.pt`` (read back with ``torch.load(weights_only=True)``), ``critic.csv`` and
TensorBoard logs. Re-running ``train`` resumes; a finished run returns at once.
"""
from __future__ import annotations

import argparse
import dataclasses
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
from grrl_critic.flaw_metrics import FlawEvalConfig
from grrl_critic.td3bc import CriticTrainer, DivergedError, TD3BCConfig
from grrl_policy.checkpoint import CheckpointError
from grrl_tools.config_cli import add_arguments, from_args
from grrl_trainer.data.batches import model_stats
from grrl_trainer.data.dataset import FLAW, DatasetError, EpisodeDataset
from grrl_trainer.data.windows import TransitionWindows, WindowConfig
from grrl_trainer.offline.run_utils import (Cadence, RunLog, _atomic_torch_save, _graceful_sigint,
                                            check_resumable, checkpoint_intact,
                                            dataset_fingerprint, load_trainer_state, step_loader,
                                            torch_threads)

LOG = logging.getLogger("grrl-critic")
STATE_FILE = "trainer_state.pt"
STATE_FORMAT = 1
CRITIC_NAME = "critic"
CSV_FIELDS = ("step", "critic_loss", "actor_loss", "q_mean", "grad_norm", "samples_per_s")
FIG3_EPISODES = 6
"""episodes in the Fig. 3 plot of a filter (successful and failed, most retries first)"""


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
    """samples per step"""
    hindsight: bool = True
    """add the hindsight failed trajectories cut at retry keyframes (section 3.1)"""
    mirror_prob: float = 0.0
    """probability of mirroring a sample (mirror augmentation of the critic's samples)"""
    checkpoint_every: int = 2000
    """steps between checkpoints (and trainer states)"""
    log_every: int = 100
    """steps between TensorBoard / critic.csv rows"""
    seed: int = 0
    """seeds the model's initialisation, the batch order and the mirror draws"""
    workers: int = 1
    """DataLoader worker processes (0 = load in the training process)"""
    threads: int = 0
    """torch CPU threads (0: the cores left after the loader workers)"""
    device: str = "cpu"
    """torch device: 'cpu', 'cuda', 'cuda:1', ..."""

    #: fields that may differ when a run is resumed (they do not change what is trained)
    RUNTIME = ("checkpoint_every", "log_every", "workers", "threads", "device")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_config(self):
        from grrl_policy.model import configure
        return configure(self.preset, self.model)


def critic_windows(dataset: EpisodeDataset, cfg: CriticRunConfig, model_cfg) -> TransitionWindows:
    state = model_cfg.observes_state
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
    """Train (or resume, or return a finished) critic run; returns ``run_dir/critic`` (with
    ``stop_after``: the checkpoint of that step, as :func:`grrl_trainer.offline.bc.train_bc`)."""
    with torch_threads(cfg.threads, cfg.workers):
        return _train_critic(data_dir, run_dir, cfg, progress, stop_after)


def _train_critic(data_dir: str | os.PathLike, run_dir: str | os.PathLike, cfg: CriticRunConfig,
                  progress: bool, stop_after: int | None) -> Path:
    from grrl_policy.checkpoint import save_checkpoint

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
        state = load_trainer_state(state_path, STATE_FORMAT, "critic", device)
        check_resumable(state, run_dir, cfg.to_dict(), CriticRunConfig.RUNTIME, fingerprint,
                        data_dir, "critic")
    start = int(state["step"]) if state is not None else 0
    cadence = Cadence(cfg.steps, stop_after, cfg.log_every, cfg.checkpoint_every)
    stop = cadence.stop
    if start >= cfg.steps and checkpoint_intact(final):
        LOG.info("%s: already finished (%d steps)", run_dir, start)
        return final

    torch.manual_seed(cfg.seed)
    trainer = CriticTrainer(model_cfg, cfg.td3bc, device=cfg.device)
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        torch.set_rng_state(state["rng"].cpu())
    else:
        trainer.set_normalization(model_stats(dataset, model_cfg))
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
    from tqdm import tqdm
    log = RunLog(run_dir, "critic.csv", CSV_FIELDS, start, "critic")
    loader = step_loader(windows, cfg.batch_size, cfg.seed, start, stop, cfg.workers, model_cfg,
                         device)
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
                if cadence.log_due(step):
                    rate = len(acc["critic_loss"]) * cfg.batch_size / max(1e-9, time.perf_counter() - t0)
                    log.log(step, {**{k: float(np.mean(v)) for k, v in acc.items()},
                                   "samples_per_s": rate})
                    acc, t0 = {}, time.perf_counter()
                interrupted = stop_flag.is_set()
                if cadence.checkpoint_due(step, interrupted):
                    save(step, run_dir / "checkpoints" / f"step_{step:07d}")
                    log.flush()
                cadence.check_interrupt(step, interrupted, state_path)
            if step >= cfg.steps:
                save(step, final)
    finally:
        bar.close()
        log.close()
    return final if step >= cfg.steps else run_dir / "checkpoints" / f"step_{step:07d}"


# ---------------------------------------------------------------------- CLI
#: the TD3+BC hyper-parameters are flags of their own (``--kind``, ``--lr``, ...), not ``--td3bc-*``
TRAIN_FLATTEN = ("td3bc",)


def _train(args: argparse.Namespace) -> int:
    cfg = from_args(args, CriticRunConfig(), flatten=TRAIN_FLATTEN)
    start = time.time()
    path = train_critic(args.data, args.out, cfg, progress=not args.quiet)
    print(f"critic ({cfg.td3bc.kind}) trained: {path} ({time.time() - start:.0f} s)")
    return 0


def _filter(args: argparse.Namespace) -> int:
    from grrl_trainer.offline.progress_filter import run_filter
    model, gamma = _critic_defaults(args.critic)
    # k and gamma default to the critic's chunk length and discount; flags given win
    cfg = from_args(args, FilterConfig(horizon=model.cfg.horizon, gamma=gamma))
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


def _critic_defaults(path: str):
    """The critic's model and its discount (what a filter's window and clean rate default to)."""
    from grrl_critic.progress import load_critic
    model, _, _, _, meta = load_critic(path)
    return model, float(meta.extra.get("gamma", TD3BCConfig.gamma))


def _evaluate(args: argparse.Namespace) -> int:
    from grrl_trainer.offline.progress_filter import evaluate_critic
    model, gamma = _critic_defaults(args.critic)
    cfg = from_args(args, FlawEvalConfig(horizon=model.cfg.horizon, drop_gamma=gamma))
    path, ev = evaluate_critic(args.critic, args.data, args.out, cfg, progress=not args.quiet)
    print(f"critic vs ground-truth flaws: {ev.samples} samples, {100 * ev.flawed_fraction:.1f}% "
          f"flawed (truth per {cfg.truth}, k {cfg.horizon})")
    print("  AUROC of the drop score: " + ", ".join(
        f"{n} {v:.3f}" if v is not None else f"{n} -" for n, v in ev.auroc.items()))
    p = ev.precision_at_recall
    print(f"  best precision at recall >= {cfg.recall_target}: "
          + (f"{p['all']:.3f} (drop > {p['threshold']:.4f})" if p["all"] is not None else "-"))
    print("  delta  removed  precision  recall")
    for r in ev.by_delta:
        prec = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        print(f"  {r['delta']:5.3f}  {100 * r['removed_fraction']:6.1f}%  {prec:>9}  {r['recall']:.3f}")
    c = ev.calibration
    print(f"  calibration: ECE {c['ece']:.3f}; rho at the start / end of successful episodes "
          f"{c['rho_first_successful']} / {c['rho_last_successful']}")
    print(f"  wrote {path} and {path.with_suffix('.png')}")
    return 0


SELECT_DEFAULTS = {"truth": "chunk", "drop": "log_shortfall"}
"""how `select` scores a checkpoint unless told otherwise (docs/results/critic: the rule that
ranks the flaws best, and the truth that matches what a BC sample imitates)"""


def _select(args: argparse.Namespace) -> int:
    from grrl_trainer.offline.progress_filter import select_checkpoint
    first = sorted((Path(args.run) / "checkpoints").glob("step_*.json"))
    if not first:
        raise ValueError(f"{args.run}: no checkpoints")
    model, gamma = _critic_defaults(first[0].with_suffix(""))
    cfg = from_args(args, FlawEvalConfig(horizon=model.cfg.horizon, drop_gamma=gamma,
                                         **SELECT_DEFAULTS))
    path, rows = select_checkpoint(args.run, args.data, cfg, args.patience,
                                   progress=not args.quiet)
    for r in rows:
        a = r["auroc"]
        print(f"  step {r['step']:6d}: AUROC {a['all']:.3f} (miss {a.get('miss') or 0:.3f}, "
              f"drop {a.get('drop') or 0:.3f}), precision at recall >= {cfg.recall_target}: "
              f"{r['precision_at_recall'] or 0:.3f}, ECE {r['ece']:.3f}")
    print(f"selected {path} (step {json.loads((Path(args.run) / 'selection.json').read_text())['selected']['step']}); "
          f"wrote {Path(args.run) / 'selection.json'} and selection.png")
    return 0


def plot_filtered(data_dir: str | Path, filter_path: str | Path, n: int, out: str | Path) -> Path:
    """Fig. 3 for ``n`` episodes: the successful and the failed ones with the most retries."""
    from grrl_trainer.offline.progress_plots import ProgressCurve, plot_progress
    f = np.load(filter_path)
    dataset = EpisodeDataset(data_dir)
    metas = dataset.episodes
    # the episodes with the most retries, successful and failed ones alike
    by_retries = sorted(range(len(metas)), key=lambda e: (-len(metas[e]["retry_keyframes"]), e))
    ok = [e for e in by_retries if metas[e]["success"]]
    failed = [e for e in by_retries if not metas[e]["success"]]
    order = ok[:(n + 1) // 2] + failed[:n // 2]
    order += [e for e in by_retries if e not in order][:n - len(order)]
    curves = []
    for e in order:
        sel = f["episode"] == e
        m = metas[e]
        curves.append(ProgressCurve(f["progress"][sel], f["keep"][sel], [int(x) for x in m["retry_keyframes"]],
                                    f"episode {e} (seed {m.get('seed', '?')}, {'success' if m['success'] else 'failure'}): "
                                    f"{m['instruction']}",
                                    dataset.load(e, FLAW) if m.get("flaw_labels") else None))
    return plot_progress(curves, out)


def _compare(args: argparse.Namespace) -> int:
    """Fig. 7: the progress of several critics on one trajectory."""
    from grrl_trainer.offline.progress_filter import dataset_progress, load_critic
    from grrl_trainer.offline.progress_plots import plot_critic_comparison
    dataset = EpisodeDataset(args.data)
    sub = _OneEpisode(dataset, args.episode)
    curves = {}
    for spec in args.critic:
        name, _, path = spec.partition("=")
        model, kind, reduce, position = load_critic(path)
        rho, _ = dataset_progress(model, kind, reduce, sub, progress=not args.quiet,
                                  position=position)
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
    parser = argparse.ArgumentParser(prog="grrl-critic", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the offline critic (TD3+BC)",
                       description="Train the offline task-progress critic (TD3+BC); re-running "
                                   "the same command resumes the run.")
    t.add_argument("--data", required=True, help="dataset directory (grrl-data collect)")
    t.add_argument("--out", required=True, help="run directory (resumed if it holds a run)")
    add_arguments(t, CriticRunConfig(), flatten=TRAIN_FLATTEN)
    f = sub.add_parser("filter", help="compute progress over a dataset and filter it",
                       description="Progress of every dataset step and the delta rule's keep "
                                   "mask. Without --horizon, k is the critic's chunk length.")
    f.add_argument("--data", required=True, help="dataset directory (grrl-data collect)")
    f.add_argument("--critic", required=True, help="critic checkpoint (RUN/critic)")
    f.add_argument("--out", required=True, help="filter file (.npz; a .json summary goes beside it)")
    add_arguments(f, FilterConfig(), given_only=True)
    f.add_argument("--plot", type=int, default=FIG3_EPISODES,
                   help=f"episodes in the Fig. 3 plot (0: none; default: {FIG3_EPISODES})")
    v = sub.add_parser("evaluate", help="measure a critic against the ground-truth flaw labels",
                       description="AUROC of the filter's drop score per flaw type, precision and "
                                   "recall of the delta rule over delta, and the calibration of "
                                   "rho, against the demonstrator's per-step flaw labels "
                                   "(dataset schema 2). Without --horizon, k is the critic's "
                                   "chunk length.")
    v.add_argument("--data", required=True, help="dataset directory with flaw labels")
    v.add_argument("--critic", required=True, help="critic checkpoint (RUN/critic)")
    v.add_argument("--out", required=True, help="result (.json; a .png plot goes beside it)")
    add_arguments(v, FlawEvalConfig(), given_only=True)
    sel = sub.add_parser("select", help="the stopping rule: pick a run's checkpoint by held-out "
                                        "flaw AUROC",
                         description="Evaluate a critic run's checkpoints in step order on held-out "
                                     "episodes with flaw labels (truth per chunk, log_shortfall "
                                     "drop unless given); stop once the AUROC over all flaws has "
                                     "not improved for --patience checkpoints; copy the best to "
                                     "RUN/critic_selected.")
    sel.add_argument("--run", required=True, help="critic run directory (grrl-critic train --out)")
    sel.add_argument("--data", required=True, help="held-out dataset with flaw labels")
    sel.add_argument("--patience", type=int, default=2,
                     help="checkpoints without improvement before stopping (default: 2)")
    add_arguments(sel, FlawEvalConfig(**SELECT_DEFAULTS), given_only=True)
    c = sub.add_parser("compare", help="Fig. 7: progress of several critics on one episode")
    c.add_argument("--data", required=True, help="dataset directory (grrl-data collect)")
    c.add_argument("--episode", type=int, required=True, help="dataset index of the episode")
    c.add_argument("--critic", action="append", required=True, help="NAME=PATH (repeat)")
    c.add_argument("--out", required=True, help="the figure (.png)")
    for p in (t, f, v, sel, c):
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        return {"train": _train, "filter": _filter, "evaluate": _evaluate, "select": _select,
                "compare": _compare}[args.cmd](args)
    except (ValueError, DatasetError, DivergedError, FileNotFoundError, CheckpointError) as exc:
        print(f"grrl-critic {args.cmd}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("grrl-critic: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
