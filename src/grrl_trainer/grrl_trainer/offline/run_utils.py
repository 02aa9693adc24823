"""Pieces every resumable training run shares (BC, the offline critic): a batch order that is
a function of (seed, step) only and the loader that draws it, per-epoch sample keys for the
loader workers, a dataset fingerprint, the checks before resuming (same configuration, same
data), atomic saves of trainer states, the log/checkpoint cadence, a Ctrl-C that saves before
stopping, and the loss log (CSV + TensorBoard) cut back to the step a run resumes from."""
from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import logging
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from grrl_trainer.data.batches import collate
from grrl_trainer.data.dataset import EpisodeDataset
from grrl_trainer.data.windows import TransitionWindows

LOG = logging.getLogger(__name__)


class StepBatches:
    """Batch sampler: step s takes positions s*B .. s*B+B-1 of the stream of per-epoch random
    permutations of the N samples. Keys are (sample index, epoch) (the epoch drives the mirror
    draws). A function of (seed, step) only: a resumed run sees the same batches."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int):
        if n < 1:
            raise ValueError("no samples to draw batches from")
        self.n, self.batch_size, self.seed, self.start, self.stop = n, batch_size, seed, start, stop
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            perm = self._perms[epoch] = np.random.default_rng([self.seed, epoch, 7]).permutation(self.n)
        return perm

    def batch(self, step: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        pos = step * self.batch_size
        while len(out) < self.batch_size:
            epoch, offset = divmod(pos, self.n)
            take = min(self.batch_size - len(out), self.n - offset)
            out.extend((int(i), epoch) for i in self._perm(epoch)[offset:offset + take])
            pos += take
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


class EpochSamples(torch.utils.data.Dataset):
    """TransitionWindows keyed by (index, epoch), so that loader workers draw each epoch's
    mirror augmentation without being told about epochs."""

    def __init__(self, windows: TransitionWindows):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, epoch = key
        self.windows.set_epoch(epoch)
        return self.windows[index]


class ArrayBatches:
    """The batches of steps ``start`` .. ``stop - 1`` of a state model straight from in-memory
    :class:`~grrl_trainer.data.arrays.EpisodeArrays` (no loader processes, no per-sample reads):
    the same :class:`StepBatches` order over ``rows`` (the sample rows), each (sample, epoch)
    mirrored with probability ``mirror_prob`` (a function of (seed, epoch, sample)). Yields the
    BC part of :func:`~grrl_trainer.data.batches.collate`'s layout: obs (instruction, state),
    proprio (B, P), actions (B, k, D), mask (B, k)."""

    def __init__(self, arrays, rows: np.ndarray, horizon: int, batch_size: int, seed: int,
                 start: int, stop: int, space: str, mirror_prob: float = 0.0):
        self.arrays, self.rows, self.horizon = arrays, np.asarray(rows, np.int64), horizon
        self.sampler = StepBatches(len(self.rows), batch_size, seed, start, stop)
        self.seed, self.mirror_prob, self.space = seed, mirror_prob, space
        self._draws: dict[int, np.ndarray] = {}

    def _mirrored(self, picks: np.ndarray, epochs: np.ndarray) -> np.ndarray:
        flip = np.zeros(len(picks), bool)
        for epoch in np.unique(epochs).tolist():
            draws = self._draws.get(epoch)
            if draws is None:                 # one epoch's draws, kept while batches use them
                if len(self._draws) >= 2:
                    self._draws.pop(min(self._draws))
                draws = self._draws[epoch] = np.random.default_rng(
                    [self.seed, epoch, 13]).random(len(self.rows))
            here = epochs == epoch
            flip[here] = draws[picks[here]] < self.mirror_prob
        return flip

    def batch(self, step: int) -> dict[str, Any]:
        from grrl_policy.keys import INSTRUCTION, STATE
        from grrl_policy.sim_state_spec import mirror_state
        from grrl_policy.task_space import mirror_task
        from grrl_trainer.data.mirror import mirror_instruction, mirror_joints

        picks, epochs = np.array(self.sampler.batch(step), np.int64).T
        rows, a = self.rows[picks], self.arrays
        actions, mask = a.chunks(rows, self.horizon)
        state, proprio = a.state[rows], a.proprio[rows]
        text = [a.instructions[e] for e in a.local(rows)]
        if self.mirror_prob > 0:
            flip = self._mirrored(picks, epochs)
            mirror = mirror_task if self.space == "task" else mirror_joints
            state, proprio = state.copy(), proprio.copy()
            state[flip], proprio[flip] = mirror_state(state[flip]), mirror(proprio[flip])
            actions[flip] = mirror(actions[flip])
            text = [mirror_instruction(t) if f else t for t, f in zip(text, flip)]
        return {"obs": {INSTRUCTION: text, STATE: torch.from_numpy(state)},
                "proprio": torch.from_numpy(proprio), "actions": torch.from_numpy(actions),
                "mask": torch.from_numpy(mask)}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for step in range(self.sampler.start, self.sampler.stop):
            yield self.batch(step)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the trainer's to handle


def step_loader(windows: TransitionWindows, batch_size: int, seed: int, start: int, stop: int,
                workers: int, model_cfg, device: torch.device) -> torch.utils.data.DataLoader:
    """The batches of steps ``start`` .. ``stop - 1`` (:class:`StepBatches`), collated for the
    model's observation and action space, loaded by ``workers`` processes (0: in this one)."""
    return torch.utils.data.DataLoader(
        EpochSamples(windows), batch_sampler=StepBatches(len(windows), batch_size, seed, start, stop),
        collate_fn=functools.partial(collate, observation=model_cfg.observation_key,
                                     space=model_cfg.action_space),
        num_workers=workers, persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None, pin_memory=device.type == "cuda")


@contextlib.contextmanager
def torch_threads(threads: int, workers: int) -> Iterator[int]:
    """Run a training process on ``threads`` torch CPU threads; 0 = torch's default less one per
    loader worker, at least 1 (threads spinning against busy cores slow training down 4-10x).
    The previous setting is restored on exit."""
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads or max(1, min(before, cores - workers)))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def dataset_fingerprint(dataset: EpisodeDataset) -> dict[str, Any]:
    ids = "\n".join(f"{m['episode_id']}:{m['n_steps']}" for m in dataset.episodes)
    return {"episodes": len(dataset.episodes),
            "steps": int(sum(int(m["n_steps"]) for m in dataset.episodes)),
            "sha256": hashlib.sha256(ids.encode()).hexdigest()}


# -- resuming ---------------------------------------------------------------------------------

def load_trainer_state(path: Path, fmt: int, what: str,
                       device: torch.device | str = "cpu") -> dict[str, Any]:
    """The trainer state of a ``what`` run (format ``fmt``), read without unpickling arbitrary
    objects; ValueError on an unreadable or foreign file."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:   # noqa: BLE001 - torch raises many kinds for a bad file
        raise ValueError(f"trainer state {path} is unreadable ({type(exc).__name__}: {exc}); "
                         f"delete it to start the run again from scratch") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise ValueError(f"trainer state {path} is not a format-{fmt} {what} trainer state")
    return state


def config_diff(old: dict[str, Any], new: dict[str, Any], runtime: Iterable[str] = ()) -> list[str]:
    """``"key: old -> new"`` for every top-level key of two configuration dicts that differs,
    leaving out the ``runtime`` keys (settings a resumed run may change: where and how fast it
    runs, not what it computes)."""
    keys = (set(old) | set(new)) - set(runtime)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(keys) if old.get(k) != new.get(k)]


def check_resumable(state: dict[str, Any], run_dir: Path, config: dict[str, Any],
                    runtime: Iterable[str], fingerprint: dict[str, Any], data_dir: Path,
                    what: str) -> None:
    """A run is resumed only with its own configuration (``runtime`` keys aside) and dataset
    (``state`` holds both as JSON); ValueError naming what differs otherwise."""
    diff = config_diff(json.loads(state["config"]), json.loads(json.dumps(config)), runtime)
    if diff:
        raise ValueError(f"{run_dir} holds a {what} run with another configuration ("
                         f"{'; '.join(diff)}): re-run with its options to resume, or choose "
                         f"another --out")
    if json.loads(state["data"]) != fingerprint:
        raise ValueError(f"{run_dir} was trained on another dataset than {data_dir} "
                         f"({json.loads(state['data'])} vs {fingerprint})")


def checkpoint_intact(path: Path) -> bool:
    """A finished run's checkpoint is there and its weights hash to what its JSON records."""
    from grrl_policy.checkpoint import CheckpointError, verify_files
    try:
        verify_files(path)
    except (CheckpointError, OSError, ValueError):
        return False
    return True


def _atomic_torch_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: the state of the last completed step was saved; re-run to resume."""


class Cadence:
    """When a run of ``total`` steps, going up to ``stop`` now, logs and saves: a log row every
    ``log_every`` steps and at ``stop``; a checkpoint and trainer state every
    ``checkpoint_every`` steps, at an early ``stop`` and when interrupted (the run's final
    checkpoint, written after the loop, stands for the last one)."""

    def __init__(self, total: int, stop_after: int | None, log_every: int, checkpoint_every: int):
        self.total, self.log_every, self.checkpoint_every = total, log_every, checkpoint_every
        self.stop = total if stop_after is None else max(0, min(total, int(stop_after)))

    def log_due(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.stop

    def checkpoint_due(self, step: int, interrupted: bool) -> bool:
        return step % self.checkpoint_every == 0 or step == self.stop < self.total or interrupted

    def check_interrupt(self, step: int, interrupted: bool, state_path: Path) -> None:
        """After the step's checkpoint: stop a Ctrl-C'ed run unless it is done anyway."""
        if interrupted and step < self.stop:
            raise TrainingInterrupted(f"interrupted at step {step}: state saved in {state_path}; "
                                      f"re-run the same command to resume")


@contextlib.contextmanager
def _graceful_sigint() -> Iterator[threading.Event]:
    """First Ctrl-C: finish the step, save, stop. Second: abort at once."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        LOG.warning("interrupt: saving the state after this step (Ctrl-C again to abort)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


# -- the loss log ----------------------------------------------------------------------------

RATE = "samples_per_s"
"""the CSV column written with one decimal (the others: 6 significant digits)"""


def truncate_csv(path: Path, fields: tuple[str, ...], last_step: int) -> None:
    """Keep the rows up to ``last_step`` (rows logged after the state a run resumes from)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit()
                and int(r["step"]) <= last_step]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in fields} for r in rows)


class RunLog:
    """The loss log of a resumable run: ``run_dir/<csv_name>`` with the ``fields`` columns and
    TensorBoard events in ``run_dir/tb`` (scalars ``<prefix>/<name>``). A run resumed at step
    ``start`` first drops what was logged after it (a kill between two saved states), so the
    log reads as one uninterrupted run."""

    def __init__(self, run_dir: Path, csv_name: str, fields: tuple[str, ...], start: int,
                 prefix: str):
        from torch.utils.tensorboard import SummaryWriter

        path = Path(run_dir) / csv_name
        truncate_csv(path, fields, start)
        self.fields, self.prefix = fields, prefix
        self.writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=start + 1 if start else None)
        new = not path.exists() or path.stat().st_size == 0
        self._file = open(path, "a", newline="")
        self._csv = csv.DictWriter(self._file, fields)
        if new:
            self._csv.writeheader()

    def log(self, step: int, values: dict[str, float]) -> None:
        """One row: the values that are CSV columns into the CSV (missing ones empty), every
        value into TensorBoard."""
        row = {k: f"{values[k]:.1f}" if k == RATE else f"{values[k]:.6g}"
               for k in self.fields if k in values}
        self._csv.writerow({**row, "step": step})
        self._file.flush()
        for k, v in values.items():
            self.writer.add_scalar(f"{self.prefix}/{k}", v, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        self._file.close()
