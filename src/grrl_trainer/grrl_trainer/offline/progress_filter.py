"""Evaluate a trained critic's progress rho over every step of a dataset and filter it
(paper section 3.1): the glue between the dataset and :mod:`grrl_critic.filtering`."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from grrl_critic.filtering import FilterConfig, FilterResult, keep_mask, summarize
from grrl_critic.flaw_metrics import FlawEvalConfig, FlawEvaluation, evaluate_flaws
import grrl_critic.progress
from grrl_critic.td3bc import critic_progress
from grrl_policy.model import GRRLModel
from grrl_trainer.data.batches import collate
from grrl_trainer.data.dataset import EpisodeDataset
from grrl_trainer.data.windows import TransitionWindows, WindowConfig

log = logging.getLogger(__name__)


def observation_of(model: GRRLModel) -> str:
    return model.cfg.observation_key


def load_critic(path: str | Path) -> tuple[GRRLModel, str, str, str]:
    """A critic checkpoint written by ``grrl-critic train``: (model, kind, reduce, position)."""
    model, kind, reduce, position, _ = grrl_critic.progress.load_critic(path)
    return model, kind, reduce, position


def dataset_progress(model: GRRLModel, kind: str, reduce: str, dataset: EpisodeDataset,
                     batch_size: int = 512, progress: bool = True,
                     position: str = "first") -> tuple[dict[int, np.ndarray], float]:
    """rho_t for every step of every recorded episode: {episode: (T,)}, and transitions/s."""
    obs_mode = observation_of(model)
    win = TransitionWindows(dataset, WindowConfig(horizon=model.cfg.horizon, hindsight=False,
                                                  images=obs_mode == "images",
                                                  state=obs_mode == "state",
                                                  task_space=model.cfg.action_space == "task"))
    out: dict[int, list[np.ndarray]] = {s.episode: [] for s in win.segments}
    n = len(win)
    start = time.perf_counter()
    bar = tqdm(total=n, desc="progress", unit="tr", disable=not progress)
    for lo in range(0, n, batch_size):
        samples = [win[i] for i in range(lo, min(lo + batch_size, n))]
        b = collate(samples, obs_mode, model.cfg.action_space)
        rho = critic_progress(model, b["obs"], b["proprio"], b["actions"], kind, reduce, position).numpy()
        if not np.isfinite(rho).all():
            raise ValueError("the critic produced non-finite progress: it diverged; retrain it")
        for s, r in zip(samples, rho):
            out[int(s["episode"])].append(np.float32(r))
        bar.update(len(samples))
    bar.close()
    rate = n / max(time.perf_counter() - start, 1e-9)
    return {e: np.array(v, np.float32) for e, v in out.items()}, rate


def run_filter(critic: str | Path, data_dir: str | Path, out: str | Path, cfg: FilterConfig,
               batch_size: int = 512, progress: bool = True) -> tuple[Path, dict]:
    """Compute progress, apply the delta-drop rule, write ``out`` (.npz + .json summary)."""
    model, kind, reduce, position = load_critic(critic)
    if cfg.horizon != model.cfg.horizon:
        log.info("filter window k=%d (the critic's chunk is %d)", cfg.horizon, model.cfg.horizon)
    dataset = EpisodeDataset(data_dir)
    rho, rate = dataset_progress(model, kind, reduce, dataset, batch_size, progress, position)
    eps = sorted(rho)
    keep = {e: keep_mask(rho[e], cfg) for e in eps}
    result = FilterResult(
        episode=np.concatenate([np.full(len(rho[e]), e) for e in eps]),
        timestep=np.concatenate([np.arange(len(rho[e])) for e in eps]),
        keep=np.concatenate([keep[e] for e in eps]),
        progress=np.concatenate([rho[e] for e in eps]), config=cfg)
    metas = dataset.episodes
    stages = {e: dataset.load(e, "task/stage") for e in eps} if _has(dataset, "task/stage") else {}
    summary = summarize(result, {e: [int(m) for m in metas[e]["retry_keyframes"]] for e in eps},
                        stages, {e: bool(metas[e]["success"]) for e in eps}, cfg.horizon)
    summary.update({"critic": str(critic), "kind": kind, "data": str(data_dir),
                    "transitions_per_second": rate})
    path = result.save(out, summary)
    return path, summary


def evaluate_critic(critic: str | Path, data_dir: str | Path, out: str | Path,
                    cfg: FlawEvalConfig, batch_size: int = 512, progress: bool = True
                    ) -> tuple[Path, FlawEvaluation]:
    """Measure a critic's progress against the dataset's ground-truth flaw labels: ``out``
    (.json) and a plot beside it (.png). Episodes without labels (schema 1, converted
    recordings) are left out and counted; a dataset with none is refused."""
    from bytemini_driver.demonstrator import FLAW_TYPES
    from grrl_trainer.data.dataset import FLAW
    from grrl_trainer.offline.progress_plots import plot_flaw_evaluation
    model, kind, reduce, position = load_critic(critic)
    dataset = EpisodeDataset(data_dir)
    labelled = [e for e, m in enumerate(dataset.episodes) if m.get("flaw_labels")]
    if not labelled:
        raise ValueError(f"{data_dir} has no per-step flaw labels (collect it again with this "
                         f"version: dataset schema 2)")
    rho, rate = dataset_progress(model, kind, reduce, dataset, batch_size, progress, position)
    rho = {e: rho[e] for e in labelled}
    flaw = {e: dataset.load(e, FLAW) for e in labelled}
    success = {e: bool(dataset.episodes[e]["success"]) for e in labelled}
    ev = evaluate_flaws(rho, flaw, success, FLAW_TYPES, cfg)
    doc = {"critic": str(critic), "kind": kind, "progress_reduce": reduce,
           "progress_position": position, "data": str(data_dir), "episodes": len(labelled),
           "episodes_without_labels": len(dataset.episodes) - len(labelled),
           "transitions_per_second": rate, **ev.as_dict()}
    out = Path(out).with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    plot_flaw_evaluation(ev, out.with_suffix(".png"), f"{kind} critic {critic} on {data_dir}")
    return out, ev


def _has(dataset: EpisodeDataset, name: str) -> bool:
    try:
        dataset.load(0, name, slice(0, 1))
        return True
    except (KeyError, ValueError):
        return False
