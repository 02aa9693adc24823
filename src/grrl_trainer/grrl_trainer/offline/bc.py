"""Behaviour cloning of the GR-RL flow policy (paper section 3.2), ``grrl-train-bc``.

The backbone and the action DiT (``GRRLModel.policy_parameters``) are trained with the
flow-matching loss on action chunks of the recorded episodes, in three variants:

* ``all``: every recorded step of every episode (successful or failed, as recorded: the
  demonstrations are what a BC baseline imitates; ``--successful-only`` restricts to the
  successful episodes). Hindsight failed trajectories are never BC samples: they are prefixes
  of recorded episodes and would only duplicate their steps.
* ``filtered``: only the steps the critic-based data filter kept (``--filter F.npz``).
* ``filtered_mirror``: the same plus on-the-fly mirror augmentation (probability 0.5).

    grrl-train-bc --data data/demos --out runs/bc_all --steps 20000
    grrl-train-bc --data data/demos --out runs/bc_filt --variant filtered --filter filter.npz

A run directory holds ``tb/`` (TensorBoard), ``loss.csv`` (step, loss, lr, ...),
``checkpoints/step_XXXXXXX.{safetensors,json}`` every ``checkpoint_every`` steps,
``trainer_state.pt`` (weights, optimizer, schedule, RNG and EMA states; read back with
``torch.load(weights_only=True)``) and, when done, the final policy ``policy.{safetensors,json}``.
Running the same command again resumes from the last trainer state (the configuration must be
the same); on a finished run it returns at once. Batches are a function of (seed, step) only,
so a resumed run trains on exactly the batches an uninterrupted one would have.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import logging
import math
import os
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grrl_tools.config_cli import add_arguments, from_args
from grrl_trainer.data.batches import apply_stats, model_stats
from grrl_trainer import keys
from grrl_trainer.data.dataset import DatasetError, EpisodeDataset
from grrl_trainer.data.idle import idle_steps
from grrl_trainer.data.windows import TransitionWindows, WindowConfig, episode_task_arrays
from grrl_trainer.offline import run_utils
from grrl_trainer.data.arrays import EpisodeArrays
from grrl_trainer.offline.run_utils import (ArrayBatches, Cadence, RunLog, _atomic_torch_save,
                                            _graceful_sigint, check_resumable, checkpoint_intact,
                                            dataset_fingerprint, step_loader, torch_threads)

LOG = logging.getLogger("grrl-train-bc")

VARIANTS = ("all", "filtered", "filtered_mirror")
STATE_FILE = "trainer_state.pt"
STATE_FORMAT = 1
POLICY_NAME = "policy"
POLICY_VERSION = 1
CSV_FIELDS = ("step", "loss", "lr", "grad_norm", "samples_per_s")


@dataclass
class BCConfig:
    """Everything that defines a BC run (saved with it; a resumed run must match)."""

    preset: str = "tiny-state"
    """model preset of grrl_policy.model.preset: 'tiny-state', 'tiny' (images), 'qwen2.5-vl-3b'"""
    model: dict[str, Any] = field(default_factory=dict)
    """overrides of the preset's ModelConfig fields (nested dicts for tiny/expert/qwen)"""
    variant: str = "all"
    """'all', 'filtered' or 'filtered_mirror' (see the module docstring)"""
    filter: str = ""
    """the data filter's .npz (episode, timestep, keep); required by the filtered variants only"""
    successful_only: bool = False
    """train on successful episodes only (otherwise on every recorded episode)"""
    drop_idle_steps: int = 0
    """leave out the samples at which the demonstrator holds still for the next N recorded
    steps (grrl_trainer.data.idle: its hesitations, which a clone that sees only the present
    learns as places to stay at); 0 = every sample"""
    idle_tolerance: float = 0.002
    """how close to the current pose the next commands must stay to count as holding still
    (m in task space, rad in joint space)"""
    steps: int = 20000
    """optimizer steps in total (the cosine schedule spans them)"""
    batch_size: int = 256
    """samples per step"""
    lr: float = 3e-4
    """peak AdamW learning rate"""
    weight_decay: float = 0.01
    """AdamW weight decay"""
    warmup_steps: int = 500
    """linear warm-up steps before the cosine decay to 0"""
    grad_clip: float = 1.0
    """maximal gradient norm (0 = no clipping)"""
    ema: float = 0.0
    """EMA decay of the policy weights (0 = off; on: checkpoints hold the EMA weights; the
    decay ramps up as min(ema, (1 + step) / (10 + step)))"""
    mirror_prob: float | None = None
    """probability of mirroring a sample; None = 0.5 for filtered_mirror, else 0"""
    horizon: int = 16
    """k, actions per chunk: the model is built with it (a model override must agree)"""
    checkpoint_every: int = 1000
    """steps between checkpoints (and trainer states)"""
    log_every: int = 20
    """steps between TensorBoard / loss.csv rows"""
    seed: int = 0
    """seeds the model's initialisation, the batch order, the mirror draws and the flow noise"""
    data_path: str = "auto"
    """'arrays': batches gathered from the dataset held in memory (vectorised, no loader
    processes; state models only); 'windows': per-sample reads by loader workers; 'auto':
    arrays for state models, windows for image models"""
    workers: int = 1
    """DataLoader worker processes of the 'windows' path (0 = load in the training process)"""
    device: str = "cpu"
    """torch device: 'cpu', 'cuda', 'cuda:1', ..."""
    threads: int = 0
    """torch CPU threads of the training process; 0 = auto: torch's default less one per loader
    worker, at least 1 (threads spinning against busy cores slow training down 4-10x)"""

    #: fields that may differ when a run is resumed (they do not change what is trained)
    RUNTIME = ("checkpoint_every", "log_every", "workers", "device", "threads")

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.data_path not in ("auto", "arrays", "windows"):
            raise ValueError(f"data_path must be 'auto', 'arrays' or 'windows', got {self.data_path!r}")
        if self.variant.startswith("filtered") and not self.filter:
            raise ValueError(f"variant {self.variant!r} needs a filter file (--filter F.npz)")
        if self.variant == "all" and self.filter:
            raise ValueError("a filter file is only used by the 'filtered' and 'filtered_mirror' "
                             "variants")
        checks = [("steps", self.steps >= 1), ("batch_size", self.batch_size >= 1),
                  ("lr", self.lr > 0), ("weight_decay", self.weight_decay >= 0),
                  ("warmup_steps", self.warmup_steps >= 0), ("grad_clip", self.grad_clip >= 0),
                  ("ema", 0.0 <= self.ema < 1.0), ("horizon", self.horizon >= 1),
                  ("checkpoint_every", self.checkpoint_every >= 1),
                  ("log_every", self.log_every >= 1), ("workers", self.workers >= 0),
                  ("threads", self.threads >= 0),
                  ("mirror_prob", self.mirror_prob is None or 0.0 <= self.mirror_prob <= 1.0)]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise ValueError(f"invalid BC settings: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")

    @property
    def effective_mirror_prob(self) -> float:
        if self.mirror_prob is not None:
            return float(self.mirror_prob)
        return 0.5 if self.variant == "filtered_mirror" else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def batches_from_memory(self, model_cfg) -> bool:
        """Whether this run takes the 'arrays' data path for a model of ``model_cfg``."""
        return self.data_path == "arrays" or (self.data_path == "auto" and model_cfg.observes_state)

    def model_config(self):
        """The GR-RL ModelConfig: the preset, the ``model`` overrides and the horizon."""
        from grrl_policy.model import ModelConfig, configure

        d = configure(self.preset, self.model).to_dict()
        if d["horizon"] != self.horizon and "horizon" in self.model:
            raise ValueError(f"the model override's horizon {d['horizon']} differs from the BC "
                             f"horizon {self.horizon}")
        d["horizon"] = self.horizon
        return ModelConfig.from_dict(d)


class TrainingDiverged(FloatingPointError):
    """A non-finite loss or gradient: training stopped, the last good checkpoint is kept."""


# -- the data filter -------------------------------------------------------------------------

def load_keep(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """Read a data-filter file: an ``.npz`` with ``episode`` (N,) int, ``timestep`` (N,) int and
    ``keep`` (N,) bool, one row per dataset step. Returns episode index -> keep (n_steps,) bool,
    ordered by timestep. Raises ValueError on a missing, corrupt or inconsistent file and on a
    filter that keeps nothing."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"filter file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("episode", "timestep", "keep") if k not in npz.files]
            if missing:
                raise ValueError(f"filter file {path} lacks the arrays {missing} "
                                 f"(it has {sorted(npz.files)})")
            episode, timestep, keep = (np.asarray(npz[k]) for k in ("episode", "timestep", "keep"))
    except ValueError as exc:
        if str(exc).startswith(f"filter file {path}"):
            raise
        raise ValueError(f"filter file {path} is not a readable .npz ({exc})") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(f"filter file {path} is not a readable .npz ({exc})") from None
    n = len(keep) if keep.ndim == 1 else -1
    if n < 0 or episode.shape != (n,) or timestep.shape != (n,):
        raise ValueError(f"filter file {path}: episode, timestep and keep must be 1-D arrays of "
                         f"one length, got shapes {episode.shape}, {timestep.shape}, {keep.shape}")
    if episode.dtype.kind not in "iu" or timestep.dtype.kind not in "iu":
        raise ValueError(f"filter file {path}: episode and timestep must be integers, got "
                         f"{episode.dtype} and {timestep.dtype}")
    if keep.dtype != np.bool_:
        raise ValueError(f"filter file {path}: keep must be bool, got {keep.dtype}")
    if n == 0:
        raise ValueError(f"filter file {path} has no rows")
    if episode.min() < 0 or timestep.min() < 0:
        raise ValueError(f"filter file {path} has negative episode or timestep values")
    if not keep.any():
        raise ValueError(f"the filter kept 0 of {n} samples: lower delta or check the critic "
                         f"({path})")
    order = np.lexsort((timestep, episode))
    episode, timestep, keep = episode[order], timestep[order], keep[order]
    out: dict[int, np.ndarray] = {}
    bounds = np.flatnonzero(np.diff(episode)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, n]):
        ep = int(episode[lo])
        if not np.array_equal(timestep[lo:hi], np.arange(hi - lo)):
            raise ValueError(f"filter file {path}: the timesteps of episode {ep} are not "
                             f"0..{hi - lo - 1} (one row per step expected)")
        out[ep] = keep[lo:hi].copy()
    return out


def check_keep(keep: dict[int, np.ndarray], dataset: EpisodeDataset, where: str = "filter") -> None:
    """The filter must cover exactly the dataset's episodes with their lengths."""
    n = len(dataset.episodes)
    extra = sorted(e for e in keep if not 0 <= e < n)
    missing = [e for e in range(n) if e not in keep]
    wrong = [(e, len(keep[e]), int(dataset.episodes[e]["n_steps"])) for e in range(n)
             if e in keep and len(keep[e]) != int(dataset.episodes[e]["n_steps"])]
    if extra or missing or wrong:
        detail = "; ".join(filter(None, [
            f"episodes {extra[:5]} are not in the dataset ({n} episodes)" if extra else "",
            f"episodes {missing[:5]}{'…' if len(missing) > 5 else ''} are missing" if missing else "",
            "episode {} has {} rows for {} steps".format(*wrong[0]) if wrong else ""]))
        raise ValueError(f"the {where} does not match the dataset {dataset.root}: {detail} "
                         f"(was it computed on another dataset?)")


# -- batches ---------------------------------------------------------------------------------

def observation_mode(model_cfg) -> str:
    return model_cfg.observation_key


def bc_keep(dataset: EpisodeDataset, cfg: BCConfig, keep: dict[int, np.ndarray] | None
            ) -> dict[int, np.ndarray] | None:
    """The filter ``keep`` restricted to successful episodes if ``cfg.successful_only``, and
    without the demonstrator's pauses if ``cfg.drop_idle_steps``."""
    if cfg.successful_only:
        ok = {e: np.ones(int(m["n_steps"]), bool) for e, m in enumerate(dataset.episodes)
              if m["success"]}
        keep = ok if keep is None else {e: keep[e] & ok[e] for e in ok if e in keep}
    if cfg.drop_idle_steps > 0:
        space = cfg.model_config().action_space
        episodes = range(len(dataset.episodes)) if keep is None else list(keep)
        moving, dropped = {}, 0
        for e in episodes:
            if space == "task":
                proprio, actions = episode_task_arrays(dataset, e)
            else:
                proprio, actions = dataset.load(e, keys.STATE_JOINTS), dataset.load(e, keys.ACTION_JOINTS)
            idle = idle_steps(proprio, actions, cfg.drop_idle_steps, cfg.idle_tolerance, space)
            before = np.ones(len(idle), bool) if keep is None else keep[e]
            moving[e] = before & ~idle
            dropped += int((before & idle).sum())
        LOG.info("left out %d samples at which the demonstrator holds still for %d steps",
                 dropped, cfg.drop_idle_steps)
        keep = moving
    return keep


def bc_windows(dataset: EpisodeDataset, cfg: BCConfig, observation: str,
               keep: dict[int, np.ndarray] | None, task_space: bool = False) -> TransitionWindows:
    """The BC samples: recorded trajectories (no hindsight ones), filtered by ``keep``."""
    keep = bc_keep(dataset, cfg, keep)
    wcfg = WindowConfig(horizon=cfg.horizon, images=observation == "images",
                        state=observation == "state", hindsight=False,
                        mirror_prob=cfg.effective_mirror_prob, seed=cfg.seed,
                        task_space=task_space)
    return TransitionWindows(dataset, wcfg, keep=keep)


def _to(batch: dict[str, Any], device: torch.device) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    nb = device.type == "cuda"
    obs = {k: (v.to(device, non_blocking=nb) if torch.is_tensor(v) else v)
           for k, v in batch["obs"].items()}
    return (obs, batch["proprio"].to(device, non_blocking=nb),
            batch["actions"].to(device, non_blocking=nb), batch["mask"].to(device, non_blocking=nb))


def array_batches(dataset: EpisodeDataset, cfg: BCConfig, model_cfg, keep: dict[int, np.ndarray] | None,
                  start: int, stop: int) -> ArrayBatches:
    """The 'arrays' data path: the BC samples (as :func:`bc_windows`) held in memory."""
    if not model_cfg.observes_state:
        raise ValueError("data_path 'arrays' needs a state model (image models read 'windows')")
    keep = bc_keep(dataset, cfg, keep)
    episodes = [e for e in range(len(dataset.episodes))
                if keep is None or keep.get(e, np.zeros(0)).any()]
    arrays = EpisodeArrays.load(dataset, model_cfg.action_space, episodes)
    rows = np.concatenate([s + (np.arange(n) if keep is None else np.flatnonzero(keep[e]))
                           for e, s, n in zip(episodes, arrays.start, arrays.length)])
    return ArrayBatches(arrays, rows, model_cfg.horizon, cfg.batch_size, cfg.seed, start, stop,
                        model_cfg.action_space, cfg.effective_mirror_prob)


# -- run directory ---------------------------------------------------------------------------

def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}"


def load_trainer_state(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The BC trainer state, read without unpickling arbitrary objects."""
    return run_utils.load_trainer_state(path, STATE_FORMAT, "BC", device)


# -- training --------------------------------------------------------------------------------

def train_bc(data_dir: str | os.PathLike, run_dir: str | os.PathLike, cfg: BCConfig,
             progress: bool = True, stop_after: int | None = None) -> Path:
    """Train (or resume, or return a finished) BC run; returns the final checkpoint's path
    (``run_dir/policy``). ``stop_after``: stop once this many steps are done in total, saving
    a checkpoint and the trainer state as an interruption would (time-sliced runs, tests); the
    path returned is then that checkpoint's.

    Everything that can be wrong with the inputs (dataset, filter, config, an existing run of
    another configuration) raises ValueError / DatasetError before anything is written."""
    # batches from memory need no loader processes: every core trains
    loaders = 0 if cfg.batches_from_memory(cfg.model_config()) else cfg.workers
    with torch_threads(cfg.threads, loaders):
        return _train_bc(data_dir, run_dir, cfg, progress, stop_after)


def _train_bc(data_dir: str | os.PathLike, run_dir: str | os.PathLike, cfg: BCConfig,
              progress: bool, stop_after: int | None) -> Path:
    from grrl_policy.checkpoint import check_state, file_sha256, save_checkpoint
    from grrl_policy.model import GRRLModel

    run_dir = Path(run_dir)
    data_dir = Path(data_dir).resolve()
    if cfg.filter:
        cfg = dataclasses.replace(cfg, filter=str(Path(cfg.filter).resolve()))
    model_cfg = cfg.model_config()
    observation = observation_mode(model_cfg)
    dataset = EpisodeDataset(data_dir)
    if dataset.errors:
        LOG.warning("%d unreadable episodes skipped", len(dataset.errors))
    keep = None
    if cfg.filter:
        keep = load_keep(cfg.filter)
        check_keep(keep, dataset)
    windows = bc_windows(dataset, cfg, observation, keep, model_cfg.action_space == "task")
    total_recorded = int(sum(int(m["n_steps"]) for m in dataset.episodes))
    if len(windows) == 0:
        raise ValueError(f"no BC samples in {data_dir} (successful_only={cfg.successful_only}, "
                         f"filter={cfg.filter or 'none'}): nothing to train on")
    fingerprint = dataset_fingerprint(dataset)
    filter_sha = file_sha256(cfg.filter) if cfg.filter else ""
    device = torch.device(cfg.device)

    state_path = run_dir / STATE_FILE
    final = run_dir / POLICY_NAME
    state = None
    if state_path.exists():
        state = load_trainer_state(state_path, device)
        check_resumable(state, run_dir, cfg.to_dict(), BCConfig.RUNTIME, fingerprint, data_dir, "BC")
        if state["filter_sha256"] != filter_sha:
            raise ValueError(f"the filter file {cfg.filter} changed since {run_dir} was started")

    cadence = Cadence(cfg.steps, stop_after, cfg.log_every, cfg.checkpoint_every)
    stop = cadence.stop
    start = int(state["step"]) if state is not None else 0
    if start >= cfg.steps:
        if checkpoint_intact(final):
            LOG.info("%s: already finished (%d steps)", run_dir, start)
            return final
    elif start >= stop:
        LOG.info("%s: already at step %d", run_dir, start)
        return Path(state["last_checkpoint"]) if state["last_checkpoint"] else final
    extra_base = {"variant": cfg.variant, "data": str(data_dir), "filter": cfg.filter,
                  "config": cfg.to_dict(), "samples": len(windows)}

    torch.manual_seed(cfg.seed)
    model = GRRLModel(model_cfg).to(device)
    model.train()
    names = {id(p): n for n, p in model.named_parameters()}
    params = model.policy_parameters()
    param_names = [names[id(p)] for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, functools.partial(lr_factor, steps=cfg.steps, warmup=cfg.warmup_steps))
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    ema: dict[str, torch.Tensor] = {}
    if state is not None:
        check_state(model, state["model"], str(state_path))
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        ema = {k: v.to(device) for k, v in state["ema"].items()}
        torch.set_rng_state(state["rng"]["torch"].cpu())
        gen.set_state(state["rng"]["generator"].cpu())
        if device.type == "cuda" and len(state["rng"].get("cuda", [])):
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), device)
    else:
        apply_stats(model, model_stats(dataset, model_cfg))
        if cfg.ema:
            ema = {n: p.detach().clone() for n, p in zip(param_names, params)}
    elapsed = float(state["elapsed"]) if state is not None else 0.0
    last_loss = float(state["last_loss"]) if state is not None else float("nan")
    last_ckpt = state.get("last_checkpoint", "") if state is not None else ""

    def save_policy(path: Path, step: int, extra: dict[str, Any]) -> None:
        """Write a checkpoint (the EMA weights if EMA is on)."""
        named = dict(model.named_parameters())
        backup = {}
        with torch.no_grad():
            for n, t in ema.items():
                backup[n] = named[n].detach().clone()
                named[n].copy_(t)
        try:
            save_checkpoint(model, path, POLICY_VERSION,
                            {**extra_base, "step": step, "loss": last_loss, **extra})
        finally:
            with torch.no_grad():
                for n, t in backup.items():
                    named[n].copy_(t)

    def save_state(step: int) -> None:
        rng = {"torch": torch.get_rng_state(), "generator": gen.get_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        _atomic_torch_save({
            "format": STATE_FORMAT, "step": step, "config": json.dumps(cfg.to_dict()),
            "data": json.dumps(fingerprint), "filter_sha256": filter_sha,
            "last_loss": last_loss, "elapsed": elapsed, "last_checkpoint": last_ckpt,
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "ema": ema, "rng": rng}, state_path)

    if start >= cfg.steps:                  # the final checkpoint was not usable (see above)
        LOG.warning("the run is finished but its final checkpoint is missing or corrupt: "
                    "writing it again from the trainer state")
        save_policy(final, start, {"final": True, "wall_s": elapsed})
        return final

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    log = RunLog(run_dir, "loss.csv", CSV_FIELDS, start, "train")
    if not start:
        log.writer.add_text("config", "```\n" + json.dumps(cfg.to_dict(), indent=1) + "\n```", 0)
        log.writer.add_text("model", "```\n" + json.dumps(model_cfg.to_dict(), indent=1) + "\n```", 0)

    arrays_path = cfg.batches_from_memory(model_cfg)
    if arrays_path:
        loader = array_batches(dataset, cfg, model_cfg, keep, start, stop)
    else:
        loader = step_loader(windows, cfg.batch_size, cfg.seed, start, stop, cfg.workers,
                             model_cfg, device)
    LOG.info("BC %s on %s: %d samples (%.1f%% of %d recorded steps), mirror %.2f, %s model "
             "(%.2fM policy parameters) on %s (%d threads, %s); %s at step %d of %d",
             cfg.variant, data_dir, len(windows), 100.0 * len(windows) / max(1, total_recorded),
             total_recorded, cfg.effective_mirror_prob, model_cfg.name,
             sum(p.numel() for p in params) / 1e6, device, torch.get_num_threads(),
             "batches from memory" if arrays_path else f"{cfg.workers} loader workers",
             "resuming" if start else "starting", start, cfg.steps)

    from tqdm import tqdm
    bar = tqdm(total=cfg.steps, initial=start, desc=f"BC {cfg.variant}", disable=not progress,
               dynamic_ncols=True)
    step = start
    acc_loss, acc_gn, acc_n, acc_wait = 0.0, 0.0, 0, 0.0
    interval_start = time.perf_counter()
    session_start = time.perf_counter()
    elapsed0 = elapsed
    clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    try:
        with _graceful_sigint() as stop_flag:
            it = iter(loader)
            while step < stop:
                t_wait = time.perf_counter()
                batch = next(it)
                acc_wait += time.perf_counter() - t_wait
                obs, proprio, actions, mask = _to(batch, device)
                loss = model.bc_loss(obs, proprio, actions, mask, generator=gen)
                value = float(loss.detach())
                where = f"the last good checkpoint is {last_ckpt or 'none (none was written yet)'}"
                if not math.isfinite(value):
                    raise TrainingDiverged(
                        f"non-finite BC loss ({value}) at step {step + 1}: training stopped, "
                        f"{where}; lower --lr or check the data")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gn = float(torch.nn.utils.clip_grad_norm_(params, clip))
                if not math.isfinite(gn):
                    raise TrainingDiverged(
                        f"non-finite gradient norm at step {step + 1} (loss {value:.4g}): "
                        f"training stopped, {where}; lower --lr or check the data")
                lr = opt.param_groups[0]["lr"]
                opt.step()
                sched.step()
                if ema:
                    decay = min(cfg.ema, (1.0 + step) / (10.0 + step))
                    with torch.no_grad():
                        torch._foreach_lerp_(list(ema.values()),
                                             [p.detach() for p in params], 1.0 - decay)
                step += 1
                acc_loss, acc_gn, acc_n = acc_loss + value, acc_gn + gn, acc_n + 1
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
                if cadence.log_due(step):
                    now = time.perf_counter()
                    span = max(1e-9, now - interval_start)
                    last_loss = acc_loss / acc_n
                    log.log(step, {"loss": last_loss, "lr": lr, "grad_norm": acc_gn / acc_n,
                                   "samples_per_s": acc_n * cfg.batch_size / span,
                                   "data_wait_fraction": acc_wait / span})
                    acc_loss, acc_gn, acc_n, acc_wait = 0.0, 0.0, 0, 0.0
                    interval_start = now
                interrupted = stop_flag.is_set()
                if cadence.checkpoint_due(step, interrupted):
                    t_save = time.perf_counter()
                    if acc_n:                       # the loss of the partial log interval
                        last_loss = acc_loss / acc_n
                    elapsed = elapsed0 + t_save - session_start
                    path = checkpoint_path(run_dir, step)
                    save_policy(path, step, {})
                    last_ckpt = str(path)
                    save_state(step)
                    log.flush()
                    interval_start += time.perf_counter() - t_save   # not in samples/s
                cadence.check_interrupt(step, interrupted, state_path)
            if acc_n:
                last_loss = acc_loss / acc_n
            elapsed = elapsed0 + time.perf_counter() - session_start
            if step >= cfg.steps:
                save_policy(final, step, {"final": True, "wall_s": elapsed})
                save_state(step)
                return final
            return Path(last_ckpt)
    finally:
        bar.close()
        log.close()


# -- looking at a run ------------------------------------------------------------------------

def read_loss_csv(run_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    path = Path(run_dir) / "loss.csv"
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: no BC run logged there yet") from None
    if not rows:
        raise ValueError(f"{path} has no rows yet")
    return {k: np.array([float(r[k]) if r.get(k) not in (None, "") else np.nan for r in rows])
            for k in CSV_FIELDS}


def plot_loss(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Loss (log scale) and learning rate over the steps, from ``run_dir/loss.csv``; writes
    ``run_dir/loss.png`` (or ``out``) and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = read_loss_csv(run_dir)
    out = Path(out) if out else Path(run_dir) / "loss.png"
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(d["step"], d["loss"], color="tab:blue", label="flow-matching loss")
    if np.all(d["loss"] > 0):
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="BC loss", title=f"BC: {Path(run_dir).name}")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(d["step"], d["lr"], color="tab:orange", alpha=0.7, label="learning rate")
    ax2.set_ylabel("learning rate")
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# -- command line ----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(
        prog="grrl-train-bc", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Behaviour cloning of the GR-RL flow policy (paper section 3.2) on all,\n"
                    "filtered, or filtered + mirror-augmented data. Re-running the same command\n"
                    "resumes the run; a finished run returns at once.",
        epilog="examples:\n  grrl-train-bc --data data/demos --out runs/bc_all\n"
               "  grrl-train-bc --data data/demos --out runs/bc_filt --variant filtered "
               "--filter filter.npz\n  tensorboard --logdir runs   # or look at RUN/loss.png")
    p.add_argument("--data", required=True, help="dataset directory (grrl-data collect)")
    p.add_argument("--out", required=True, help="run directory (resumed if it holds a run)")
    add_arguments(p, BCConfig())
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        cfg = from_args(args, BCConfig())
        path = train_bc(args.data, args.out, cfg, progress=not args.quiet)
    except (ValueError, DatasetError, TrainingDiverged) as exc:
        LOG.error("%s", exc)
        return 2
    except KeyboardInterrupt as exc:
        LOG.error("%s", exc or "interrupted; re-run the same command to resume")
        return 130
    from grrl_policy.checkpoint import read_meta
    extra = read_meta(path).extra
    try:
        plot = plot_loss(args.out)
    except (ValueError, OSError) as exc:
        plot = None
        LOG.warning("no loss plot: %s", exc)
    print(f"BC {extra.get('variant')}: {extra.get('step')} steps, final loss "
          f"{extra.get('loss', float('nan')):.4f}, {extra.get('wall_s', float('nan')):.0f} s; "
          f"checkpoint {path}" + (f"; loss plot {plot}" if plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
