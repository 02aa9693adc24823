"""Pieces every resumable training run shares (BC, the offline critic): a batch order that is
a function of (seed, step) only, per-epoch sample keys for the loader workers, a dataset
fingerprint, atomic saves of trainer states, and a Ctrl-C that saves before stopping."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from grrl_trainer.dataset import EpisodeDataset
from grrl_trainer.windows import TransitionWindows

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


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the trainer's to handle


def dataset_fingerprint(dataset: EpisodeDataset) -> dict[str, Any]:
    ids = "\n".join(f"{m['episode_id']}:{m['n_steps']}" for m in dataset.episodes)
    return {"episodes": len(dataset.episodes),
            "steps": int(sum(int(m["n_steps"]) for m in dataset.episodes)),
            "sha256": hashlib.sha256(ids.encode()).hexdigest()}


def _file_sha256(path: str) -> str:
    if not path:
        return ""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
