"""Evaluate a trained critic's progress rho over every step of a dataset and filter it
(paper section 3.1): the glue between the dataset and :mod:`grrl_critic.filtering`."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from grrl_critic.filtering import FilterConfig, FilterResult, keep_masks, summarize
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
    stages = {e: dataset.load(e, "task/stage") for e in eps} if _has(dataset, "task/stage") else {}
    keep = keep_masks(rho, cfg, stages)
    result = FilterResult(
        episode=np.concatenate([np.full(len(rho[e]), e) for e in eps]),
        timestep=np.concatenate([np.arange(len(rho[e])) for e in eps]),
        keep=np.concatenate([keep[e] for e in eps]),
        progress=np.concatenate([rho[e] for e in eps]), config=cfg)
    metas = dataset.episodes
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
    from grrl_trainer.offline.progress_plots import plot_flaw_evaluation
    dataset = EpisodeDataset(data_dir)
    ev, labelled, rate, (kind, reduce, position) = _flaw_evaluation(critic, dataset, cfg,
                                                                     batch_size, progress)
    doc = {"critic": str(critic), "kind": kind, "progress_reduce": reduce,
           "progress_position": position, "data": str(data_dir), "episodes": len(labelled),
           "episodes_without_labels": len(dataset.episodes) - len(labelled),
           "transitions_per_second": rate, **ev.as_dict()}
    out = Path(out).with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    plot_flaw_evaluation(ev, out.with_suffix(".png"), f"{kind} critic {critic} on {data_dir}")
    return out, ev


def _flaw_evaluation(critic: str | Path, dataset: EpisodeDataset, cfg: FlawEvalConfig,
                     batch_size: int, progress: bool
                     ) -> tuple[FlawEvaluation, list[int], float, tuple[str, str, str]]:
    from bytemini_driver.demonstrator import FLAW_TYPES
    from grrl_trainer.data.dataset import FLAW
    model, kind, reduce, position = load_critic(critic)
    labelled = [e for e, m in enumerate(dataset.episodes) if m.get("flaw_labels")]
    if not labelled:
        raise ValueError(f"{dataset.root} has no per-step flaw labels (collect it again with "
                         f"this version: dataset schema 2)")
    rho, rate = dataset_progress(model, kind, reduce, dataset, batch_size, progress, position)
    ev = evaluate_flaws({e: rho[e] for e in labelled},
                        {e: dataset.load(e, FLAW) for e in labelled},
                        {e: bool(dataset.episodes[e]["success"]) for e in labelled}, FLAW_TYPES, cfg,
                        {e: dataset.load(e, "task/stage") for e in labelled})
    return ev, labelled, rate, (kind, reduce, position)


def select_checkpoint(run: str | Path, data_dir: str | Path, cfg: FlawEvalConfig,
                      patience: int = 2, progress: bool = True) -> tuple[Path, list[dict]]:
    """The stopping rule of the offline critic: evaluate a run's checkpoints in step order on
    held-out episodes with flaw labels, stop once the ROC-AUC over all flaws has not improved
    for ``patience`` checkpoints, and copy the best to ``run/critic_selected`` (with
    ``selection.json`` and ``selection.png`` beside it). Returns its path and the rows."""
    import shutil
    from grrl_policy.checkpoint import paths
    from grrl_trainer.offline.progress_plots import plot_selection
    run = Path(run)
    checkpoints = sorted((run / "checkpoints").glob("step_*.json"))
    if not checkpoints:
        raise ValueError(f"{run}: no checkpoints (grrl-critic train writes them to "
                         f"{run / 'checkpoints'})")
    dataset = EpisodeDataset(data_dir)
    rows, best, since = [], None, 0
    for ck in checkpoints:
        ck = ck.with_suffix("")
        ev, labelled, _, _ = _flaw_evaluation(ck, dataset, cfg, 512, progress)
        row = {"checkpoint": str(ck), "step": int(ck.name.split("_")[-1]), "auroc": ev.auroc,
               "precision_at_recall": ev.precision_at_recall["all"],
               "ece": ev.calibration["ece"]}
        rows.append(row)
        log.info("%s: held-out AUROC %.3f (miss %s, drop %s)", ck.name, ev.auroc["all"],
                 ev.auroc.get("miss"), ev.auroc.get("drop"))
        if best is None or ev.auroc["all"] > best["auroc"]["all"]:
            best, since = row, 0
        else:
            since += 1
            if since >= patience:
                break
    out = run / "critic_selected"
    for src, dst in zip(paths(best["checkpoint"]), paths(out)):   # weights, then the JSON
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
    doc = {"data": str(data_dir), "episodes": len(labelled), "patience": patience,
           "selected": best, "rows": rows, "config": ev.as_dict()["config"]}
    (run / "selection.json").write_text(json.dumps(doc, indent=1))
    plot_selection(rows, best["step"], run / "selection.png", f"{run}: held-out flaw AUROC")
    return out, rows


def _has(dataset: EpisodeDataset, name: str) -> bool:
    try:
        dataset.load(0, name, slice(0, 1))
        return True
    except (KeyError, ValueError):
        return False
