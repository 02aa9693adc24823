"""Replay buffers of the online steering-RL stage (paper section 3.3), persistent and crash-safe.

The paper's rules:

* "we maintain an off-policy buffer and an on-policy buffer, and sample batches from them
  evenly" -- :meth:`ReplayBuffers.sample` takes half of every batch from each buffer (1:1).
* "Before training starts, we warm up the off-policy buffer with online rollouts of
  offline-trained checkpoints" -- :meth:`ReplayBuffers.warm_up`.
* "We intentionally choose not to mix teleoperated trajectories into the buffer" -- this
  module only takes :class:`OnlineEpisode` (rollouts of the deployed policy); nothing here
  reads the offline HDF5 dataset.
* "The on-policy buffer only stores trajectories generated from the two most recent
  checkpoints, and the stale data is pushed into the off-policy buffer" -- see below.

Our choices:

* **Hand-over.** The on-policy buffer holds the episodes added with :meth:`~ReplayBuffers.add`
  whose ``policy_version`` is among the ``on_policy_versions`` (2) highest versions seen by
  ``add``. When a newer version appears, episodes of versions that drop out of that set move
  to the off-policy buffer. An episode of an old version arriving late (its version is not
  among the most recent ones, even if never seen before) goes straight to the off-policy
  buffer; a late version that *is* among the most recent (e.g. v2 after v1 and v3) enters the
  set and pushes the oldest version out. Warm-up episodes always go to the off-policy buffer
  and do not count as versions seen. The buffer of every episode is therefore a function of
  (warm-up flag, version, versions seen), which is how it is re-derived on recovery.
* **Sampling.** Half the rows from each buffer; an odd batch's extra row comes from the
  on-policy buffer; if one buffer is empty, every row comes from the other (so sampling starts
  as soon as the warm-up has filled the off-policy buffer). Transitions are uniform within a
  buffer (an episode is drawn with probability proportional to its length).
* **Capacity** (transitions, both buffers together): the oldest off-policy episodes (in order
  of arrival) are evicted first; on-policy episodes only when the off-policy buffer is empty.
  The newest episode is never evicted, even if alone it exceeds the capacity.
* **Idempotence.** Every episode id ever accepted is remembered (also once evicted): adding it
  again is a no-op returning ``"duplicate"``, so a trainer restarting after ``kill -9`` can
  re-feed the same episodes.
* **Bad input.** :func:`validate` checks an episode before it is stored; a bad one is written
  with its reason to ``root/quarantine/`` and :class:`QuarantineError` is raised. It is never
  trained on. Beyond shapes and finiteness, rewards must follow eq. (1): non-zero only on the
  last row, positive there if and only if the episode succeeded. Every episode must also match
  the buffer's schema (observation keys, per-row shapes, chunk length and action width), fixed
  by the first episode stored.

On disk (one writer at a time, enforced with a lock file)::

    root/index.json                 versions seen, schema, id -> buffer/version/length/order,
                                    ids evicted (written atomically after every change)
    root/episodes/<episode_id>.npz  one accepted episode (temp file + os.replace, written
                                    before ``add`` returns and before the index names it)
    root/quarantine/<id>.<n>.npz    rejected episodes, with <id>.<n>.reason.txt

Loading an existing root: temp files are removed; an episode file without an index entry (the
writer was killed between the two writes) is recovered, its buffer re-derived from its
version; an index entry without a file is dropped with a warning; an unreadable or invalid
episode file is moved to the quarantine with the reason.
"""
from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LOG = logging.getLogger(__name__)

ON, OFF, DUPLICATE = "on", "off", "duplicate"
OBSERVATION_KEYS = ("proprio", "state", "images")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
FORMAT_VERSION = 1
_TMP = ".tmp"
_TMP_NAME = re.compile(r"\.(npz|json)\.tmp\d+$")  # what _atomic_write leaves if killed


class QuarantineError(ValueError):
    """An episode that must not be trained on; the message is the reason."""


@dataclass
class OnlineEpisode:
    """One episode of the deployed policy, one row per policy decision (N decisions).

    ``observations``: "proprio" (N+1, P) float32 and "state" (N+1, S) float32 and/or "images"
    (N+1, 3, H, W, 3) uint8; row N is the observation after the last decision.
    ``actions`` (N, k, D) float32 is the chunk the policy produced, ``noise`` (N, k, D) its
    initial noise, ``steered`` (N,) whether the steering actor chose the noise, ``reward`` (N,)
    eq. (1) (gamma^(T-t) on the last decision of a successful episode, else 0), ``done`` (N,)
    True only on the last row, ``offset`` (N,) chunk steps executed before the next decision.
    """

    episode_id: str
    robot: str
    policy_version: int
    instruction: str
    success: bool
    observations: dict[str, np.ndarray]
    actions: np.ndarray
    noise: np.ndarray
    steered: np.ndarray
    reward: np.ndarray
    done: np.ndarray
    offset: np.ndarray

    def __len__(self) -> int:
        return len(self.actions)


# ---------------------------------------------------------------------------------------------
# validation


def _check_id(episode_id: Any) -> None:
    if not isinstance(episode_id, str) or not ID_PATTERN.match(episode_id):
        raise QuarantineError(
            f"episode id {episode_id!r} is not a safe file name (letters, digits, '.', '_', "
            f"'-', starting with a letter or digit, at most 128 characters)")


def _finite(name: str, a: np.ndarray) -> None:
    if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))
        raise QuarantineError(f"{name} has {len(bad)} non-finite value(s), first at index "
                              f"{tuple(int(i) for i in bad[0])}")


def _numeric(name: str, value: Any, kinds: str) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype.kind not in kinds:
        raise QuarantineError(f"{name} has dtype {a.dtype}, expected kind {kinds!r}")
    return a


def validate(ep: OnlineEpisode) -> None:
    """Raise :class:`QuarantineError` with a precise reason if ``ep`` must not be trained on."""
    _check_id(ep.episode_id)
    for name in ("robot", "instruction"):
        if not isinstance(getattr(ep, name), str):
            raise QuarantineError(f"{name} must be a string, got {type(getattr(ep, name))}")
    if isinstance(ep.policy_version, (bool, np.bool_)) or \
            not isinstance(ep.policy_version, (int, np.integer)) or ep.policy_version < 0:
        raise QuarantineError(f"policy_version must be a non-negative int, got "
                              f"{ep.policy_version!r}")
    if not isinstance(ep.success, (bool, np.bool_)):
        raise QuarantineError(f"success must be a bool, got {ep.success!r}")
    if not isinstance(ep.observations, dict):
        raise QuarantineError("observations must be a dict")
    unknown = sorted(set(ep.observations) - set(OBSERVATION_KEYS))
    if unknown:
        raise QuarantineError(f"unexpected observation keys {unknown} (expected "
                              f"{list(OBSERVATION_KEYS)})")
    if "proprio" not in ep.observations:
        raise QuarantineError("observations lack 'proprio'")
    if "state" not in ep.observations and "images" not in ep.observations:
        raise QuarantineError("observations have neither 'state' nor 'images'")
    # dtypes and ranks first, then the lengths of everything together
    actions = _numeric("actions", ep.actions, "fiu")
    if actions.ndim != 3:
        raise QuarantineError(f"actions must be (N, k, D), got shape {actions.shape}")
    noise = _numeric("noise", ep.noise, "fiu")
    if noise.shape[1:] != actions.shape[1:]:
        raise QuarantineError(f"noise has shape {noise.shape}, actions {actions.shape}")
    rows = {name: _numeric(name, getattr(ep, name), kinds) for name, kinds in
            (("steered", "biu"), ("reward", "fiu"), ("done", "biu"), ("offset", "iu"))}
    for name, a in rows.items():
        if a.ndim != 1:
            raise QuarantineError(f"{name} must be (N,), got shape {a.shape}")
    obs: dict[str, np.ndarray] = {}
    for key, value in ep.observations.items():
        a = _numeric(f"observations[{key!r}]", value, "u" if key == "images" else "fiu")
        if key == "images" and a.dtype != np.uint8:
            raise QuarantineError(f"observations['images'] has dtype {a.dtype}, expected uint8")
        if a.ndim != {"proprio": 2, "state": 2, "images": 5}[key] or \
                (key == "images" and (a.shape[1], a.shape[4]) != (3, 3)):
            want = "(N+1, 3, H, W, 3)" if key == "images" else f"(N+1, {key[0].upper()})"
            raise QuarantineError(f"observations[{key!r}] has shape {a.shape}, expected {want}")
        obs[key] = a
    n = len(actions)
    lengths = {"actions": n, "noise": len(noise), **{k: len(a) for k, a in rows.items()}}
    lengths.update({f"observations[{k!r}]": len(a) - 1 for k, a in obs.items()})
    if len(set(lengths.values())) > 1:
        # the length most arrays agree on is taken as N (the odd ones out are named)
        values = list(lengths.values())
        n = max(values, key=lambda v: (values.count(v), v == len(actions)))
        listing = ", ".join(f"{name} {length + 1 if name.startswith('obs') else length}"
                            for name, length in lengths.items())
        first = next(name for name, length in lengths.items() if length != n)
        raise QuarantineError(
            f"inconsistent lengths (missing or extra transitions): {first} has "
            f"{lengths[first] + 1 if first.startswith('obs') else lengths[first]} rows, "
            f"expected {n + 1 if first.startswith('obs') else n} for N = {n} decisions "
            f"(observations need N+1 rows); all rows: {listing}")
    if n == 0:
        raise QuarantineError("episode has no decisions (N == 0)")
    k = actions.shape[1]
    if k == 0 or actions.shape[2] == 0:
        raise QuarantineError(f"actions have an empty chunk or width: shape {actions.shape}")
    for key, a in obs.items():
        _finite(f"observations[{key!r}]", a)
    _finite("actions", actions)
    _finite("noise", noise)
    reward = rows["reward"]
    _finite("reward", reward)
    if np.any((reward < 0) | (reward > 1)):
        i = int(np.argmax((reward < 0) | (reward > 1)))
        raise QuarantineError(f"reward {float(reward[i])} at row {i} is outside [0, 1]")
    if n > 1 and np.any(reward[:-1] != 0):
        i = int(np.argmax(reward[:-1] != 0))
        raise QuarantineError(f"non-zero reward at row {i} of {n}: eq. (1) rewards only the "
                              f"last decision")
    if bool(ep.success) != bool(reward[-1] > 0):
        raise QuarantineError(f"success={bool(ep.success)} but the last reward is "
                              f"{float(reward[-1])} (eq. (1): positive iff successful)")
    done = rows["done"]
    if done.dtype.kind != "b" and np.any((done != 0) & (done != 1)):
        raise QuarantineError("done must be boolean (or 0/1)")
    expect = np.zeros(n, bool)
    expect[-1] = True
    if not np.array_equal(done.astype(bool), expect):
        where = [int(i) for i in np.flatnonzero(done.astype(bool))]
        raise QuarantineError(f"done must be True exactly on the last row {n - 1}, it is True "
                              f"on rows {where}")
    offset = rows["offset"]
    if np.any((offset < 1) | (offset > k)):
        i = int(np.argmax((offset < 1) | (offset > k)))
        raise QuarantineError(f"offset {int(offset[i])} at row {i} is outside 1..k = 1..{k}")
    steered = rows["steered"]
    if steered.dtype.kind != "b" and np.any((steered != 0) & (steered != 1)):
        raise QuarantineError("steered must be boolean (or 0/1)")


def _normalised(ep: OnlineEpisode) -> OnlineEpisode:
    """A copy with the stored dtypes (after :func:`validate`)."""
    obs = {key: np.ascontiguousarray(v, np.uint8 if key == "images" else np.float32)
           for key, v in ep.observations.items()}
    return OnlineEpisode(
        episode_id=ep.episode_id, robot=ep.robot, policy_version=int(ep.policy_version),
        instruction=ep.instruction, success=bool(ep.success), observations=obs,
        actions=np.ascontiguousarray(ep.actions, np.float32),
        noise=np.ascontiguousarray(ep.noise, np.float32),
        steered=np.asarray(ep.steered).astype(bool), reward=np.asarray(ep.reward, np.float32),
        done=np.asarray(ep.done).astype(bool), offset=np.asarray(ep.offset).astype(np.int64))


def _schema(ep: OnlineEpisode) -> dict[str, Any]:
    return {"observations": {k: list(v.shape[1:]) for k, v in sorted(ep.observations.items())},
            "chunk": int(ep.actions.shape[1]), "action_dim": int(ep.actions.shape[2])}


# ---------------------------------------------------------------------------------------------
# files


def _atomic_write(path: Path, write, fsync: bool) -> None:
    """``write(fileobj)`` into a temporary file next to ``path``, then rename over ``path``."""
    tmp = path.with_name(f"{path.name}{_TMP}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _as_array(value: Any) -> np.ndarray | None:
    """``value`` as an array that needs no pickling, or None."""
    try:
        a = np.asarray(value)
    except (ValueError, TypeError):
        return None
    return None if value is None or a.dtype == object else a


def _episode_arrays(ep: OnlineEpisode, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    arrays = {"meta": np.asarray(json.dumps(meta))}
    arrays.update({f"obs_{k}": np.asarray(v) for k, v in ep.observations.items()})
    for name in ("actions", "noise", "steered", "reward", "done", "offset"):
        arrays[name] = np.asarray(getattr(ep, name))
    return arrays


def _episode_meta(ep: OnlineEpisode, **extra: Any) -> dict[str, Any]:
    return {"format": FORMAT_VERSION, "episode_id": ep.episode_id, "robot": ep.robot,
            "policy_version": int(ep.policy_version), "instruction": ep.instruction,
            "success": bool(ep.success), **extra}


def _read_episode(path: Path) -> tuple[OnlineEpisode, dict[str, Any]]:
    """Load an episode file; raises :class:`QuarantineError` if unreadable or invalid."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {name: z[name] for name in z.files}
        meta = json.loads(str(data.pop("meta")))
        if meta.get("format") != FORMAT_VERSION:
            raise QuarantineError(f"episode file format {meta.get('format')!r} is not "
                                  f"{FORMAT_VERSION}")
        ep = OnlineEpisode(
            episode_id=meta["episode_id"], robot=meta["robot"],
            policy_version=meta["policy_version"], instruction=meta["instruction"],
            success=meta["success"],
            observations={k[4:]: v for k, v in data.items() if k.startswith("obs_")},
            actions=data["actions"], noise=data["noise"], steered=data["steered"],
            reward=data["reward"], done=data["done"], offset=data["offset"])
    except QuarantineError:
        raise
    except Exception as exc:  # noqa: BLE001 -- zip, npy, JSON and key errors alike
        raise QuarantineError(f"unreadable or corrupt episode file {path.name} "
                              f"({type(exc).__name__}: {exc})") from exc
    if ep.episode_id != path.stem:
        raise QuarantineError(f"file {path.name} holds episode {ep.episode_id!r}")
    validate(ep)
    return _normalised(ep), meta


# ---------------------------------------------------------------------------------------------
# buffers


def discounted_returns(reward: np.ndarray, offset: np.ndarray, done: np.ndarray,
                       gamma: float) -> np.ndarray:
    """Monte-Carlo returns (N,) float32 of an episode's decisions: G_t = r_t + γ^offset_t ·
    G_t+1 (nothing after a done row), the discount per executed chunk step as in the TD target."""
    out = np.zeros(len(reward), np.float32)
    g = 0.0
    for t in range(len(reward) - 1, -1, -1):
        g = float(reward[t]) + (0.0 if done[t] else gamma ** float(offset[t]) * g)
        out[t] = g
    return out


class ReplayBuffers:
    """The on-policy and off-policy buffers of the online stage (see the module docstring).

    Not thread-safe; one instance per root (a second one, in any process, raises while the
    first holds the lock; :meth:`close` or process death releases it).
    """

    def __init__(self, root: Path | str, capacity: int = 200_000, on_policy_versions: int = 2,
                 seed: int = 0, fsync: bool = True, gamma: float | None = None):
        if capacity < 1 or on_policy_versions < 1:
            raise ValueError("capacity and on_policy_versions must be positive")
        self.root = Path(root)
        self.capacity = int(capacity)
        self.on_policy_versions = int(on_policy_versions)
        self.fsync = fsync
        self.gamma = gamma
        """with a discount, batches also carry each transition's Monte-Carlo return"""
        self._returns: dict[str, np.ndarray] = {}
        self.rng = np.random.default_rng(seed)
        self.episodes_dir = self.root / "episodes"
        self.quarantine_dir = self.root / "quarantine"
        self.index_path = self.root / "index.json"
        self.episodes_dir.mkdir(parents=True, exist_ok=True)
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.root / ".lock", "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock.close()
            raise RuntimeError(f"{self.root} is in use by another ReplayBuffers") from exc
        self._episodes: dict[str, OnlineEpisode] = {}
        self._info: dict[str, dict[str, Any]] = {}   # id -> buffer, version, n, seq, warm_up
        self._versions: set[int] = set()
        self._evicted: set[str] = set()
        self._schema: dict[str, Any] | None = None
        self._next_seq = 0
        self._cache: dict[str, tuple[list[str], np.ndarray]] = {}
        self._load()

    # -- public -------------------------------------------------------------------------------

    def add(self, ep: OnlineEpisode) -> str:
        """Store an episode of the deployed policy: ``"on"``, ``"off"`` (a stale version) or
        ``"duplicate"`` (id already accepted: nothing changes). Raises
        :class:`QuarantineError` after writing the episode and the reason to the quarantine."""
        return self._add(ep, warm_up=False)

    def warm_up(self, ep: OnlineEpisode) -> str:
        """Store a rollout of an offline-trained checkpoint straight into the off-policy
        buffer (its version does not count as seen); ``"off"`` or ``"duplicate"``."""
        return self._add(ep, warm_up=True)

    def __contains__(self, episode_id: str) -> bool:
        return episode_id in self._info

    def episode(self, episode_id: str) -> OnlineEpisode:
        return self._episodes[episode_id]

    def buffer_of(self, episode_id: str) -> str:
        return self._info[episode_id]["buffer"]

    def ids(self, buffer: str | None = None) -> list[str]:
        """Stored episode ids in order of arrival, of one buffer or both."""
        return [i for i, _ in sorted(self._info.items(), key=lambda kv: kv[1]["seq"])
                if buffer is None or self._info[i]["buffer"] == buffer]

    @property
    def recent_versions(self) -> list[int]:
        """The versions whose episodes are on-policy (ascending)."""
        return sorted(self._versions)[-self.on_policy_versions:]

    def transitions(self, buffer: str | None = None) -> int:
        return sum(info["n"] for info in self._info.values()
                   if buffer is None or info["buffer"] == buffer)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for b in (ON, OFF):
            out[f"{b}_episodes"] = sum(1 for i in self._info.values() if i["buffer"] == b)
            out[f"{b}_transitions"] = self.transitions(b)
            out[f"{b}_versions"] = sorted({i["version"] for i in self._info.values()
                                           if i["buffer"] == b})
        out.update(episodes=len(self._info), transitions=self.transitions(),
                   capacity=self.capacity, versions_seen=sorted(self._versions),
                   recent_versions=self.recent_versions, evicted=len(self._evicted),
                   quarantined=len(list(self.quarantine_dir.glob("*.reason.txt"))))
        return out

    def sample(self, batch_size: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """A batch in :mod:`grrl_trainer.data.batches`' layout plus "noise" (B, k, D), "steered"
        (B,), "policy_version" (B,), "timestep" (B,), "length" (B,), "success" (B,),
        "on_policy" (B,) and "episode_id" (list). Rows [0, B_on) are on-policy, the rest
        off-policy, B_on = ceil(B / 2) (all B from the non-empty buffer if one is empty)."""
        import torch  # here, so that episode producers need not import torch

        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        rng = self.rng if rng is None else rng
        n_on, n_off = self.transitions(ON), self.transitions(OFF)
        if n_on == 0 and n_off == 0:
            raise ValueError("both replay buffers are empty")
        b_on = batch_size if n_off == 0 else 0 if n_on == 0 else math.ceil(batch_size / 2)
        rows = self._draw(ON, b_on, rng) + self._draw(OFF, batch_size - b_on, rng)
        return self.batch(rows)

    def batch(self, rows: list[tuple[str, int]]) -> dict[str, Any]:
        """The transitions (episode id, decision index) in :meth:`sample`'s layout ("on_policy"
        says which buffer each row's episode is in)."""
        import torch

        if not rows:
            raise ValueError("no transitions asked for")
        batch_size = len(rows)
        eps = [self._episodes[i] for i, _ in rows]
        ts = [t for _, t in rows]

        def stack(get, dtype=None) -> Any:
            a = np.stack([get(ep, t) for ep, t in zip(eps, ts)])
            return torch.from_numpy(a if dtype is None else a.astype(dtype))

        def obs(shift: int) -> dict[str, Any]:
            out: dict[str, Any] = {"instruction": [ep.instruction for ep in eps]}
            for key in ("state", "images"):
                if key in eps[0].observations:
                    out[key] = stack(lambda ep, t: ep.observations[key][t + shift])
            return out

        k = eps[0].actions.shape[1]
        return {
            "obs": obs(0), "next_obs": obs(1),
            "proprio": stack(lambda ep, t: ep.observations["proprio"][t]),
            "next_proprio": stack(lambda ep, t: ep.observations["proprio"][t + 1]),
            "actions": stack(lambda ep, t: ep.actions[t]),
            "mask": torch.ones(batch_size, k, dtype=torch.bool),
            "reward": stack(lambda ep, t: ep.reward[t]),
            "done": stack(lambda ep, t: ep.done[t]),
            "offset": stack(lambda ep, t: ep.offset[t], np.int64),
            "noise": stack(lambda ep, t: ep.noise[t]),
            "steered": stack(lambda ep, t: ep.steered[t]),
            "policy_version": torch.as_tensor([ep.policy_version for ep in eps]),
            "timestep": torch.as_tensor(ts, dtype=torch.long),
            "length": torch.as_tensor([len(ep) for ep in eps], dtype=torch.long),
            "success": torch.as_tensor([ep.success for ep in eps], dtype=torch.bool),
            "on_policy": torch.as_tensor([self._info[ep.episode_id]["buffer"] == ON for ep in eps]),
            "episode_id": [ep.episode_id for ep in eps],
            **({"mc_return": stack(lambda ep, t: self._mc_returns(ep)[t])}
               if self.gamma is not None else {}),
        }

    def _mc_returns(self, ep: OnlineEpisode) -> np.ndarray:
        out = self._returns.get(ep.episode_id)
        if out is None:
            out = self._returns[ep.episode_id] = discounted_returns(
                ep.reward, ep.offset, ep.done, float(self.gamma))
        return out

    def close(self) -> None:
        """Release the lock (the files are always up to date)."""
        if not self._lock.closed:
            self._lock.close()

    def __enter__(self) -> "ReplayBuffers":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _path(self, episode_id: str) -> Path:
        return self.episodes_dir / f"{episode_id}.npz"

    def _add(self, ep: OnlineEpisode, warm_up: bool) -> str:
        try:
            _check_id(ep.episode_id)
            if ep.episode_id in self._info or ep.episode_id in self._evicted:
                return DUPLICATE
            validate(ep)
            ep = _normalised(ep)
            if self._schema is not None and _schema(ep) != self._schema:
                raise QuarantineError(f"episode schema {_schema(ep)} differs from the "
                                      f"buffer's {self._schema}")
        except QuarantineError as exc:
            self._quarantine_episode(ep, str(exc))
            raise
        seq = self._next_seq
        meta = _episode_meta(ep, seq=seq, warm_up=warm_up)
        _atomic_write(self._path(ep.episode_id),
                      lambda f: np.savez(f, **_episode_arrays(ep, meta)), self.fsync)
        self._next_seq = seq + 1
        self._insert(ep, seq, warm_up)
        evicted = self._enforce_capacity(keep=ep.episode_id)
        self._save_index()
        for episode_id in evicted:
            self._path(episode_id).unlink(missing_ok=True)
        return self._info[ep.episode_id]["buffer"]

    def _insert(self, ep: OnlineEpisode, seq: int, warm_up: bool) -> None:
        if self._schema is None:
            self._schema = _schema(ep)
        if not warm_up:
            self._versions.add(int(ep.policy_version))
        self._episodes[ep.episode_id] = ep
        self._info[ep.episode_id] = {"buffer": OFF, "version": int(ep.policy_version),
                                     "n": len(ep), "seq": seq, "warm_up": warm_up}
        self._assign()

    def _assign(self) -> None:
        """(Re-)derive every episode's buffer from the versions seen: the hand-over."""
        recent = set(self.recent_versions)
        for episode_id, info in self._info.items():
            buffer = ON if not info["warm_up"] and info["version"] in recent else OFF
            if info["buffer"] == ON and buffer == OFF:
                LOG.debug("episode %s (version %d) moves to the off-policy buffer",
                          episode_id, info["version"])
            info["buffer"] = buffer
        self._cache.clear()

    def _enforce_capacity(self, keep: str | None = None) -> list[str]:
        evicted = []
        total = self.transitions()
        order = sorted(self._info, key=lambda i: (self._info[i]["buffer"] == ON,
                                                  self._info[i]["seq"]))
        for episode_id in order:
            if total <= self.capacity:
                break
            if episode_id == keep:
                continue
            total -= self._info.pop(episode_id)["n"]
            self._episodes.pop(episode_id, None)
            self._returns.pop(episode_id, None)
            self._evicted.add(episode_id)
            evicted.append(episode_id)
        if evicted:
            LOG.info("capacity %d: evicted %d episode(s), oldest %s", self.capacity,
                     len(evicted), evicted[0])
            self._cache.clear()
        if total > self.capacity:
            LOG.warning("episode %s alone exceeds the capacity of %d transitions", keep,
                        self.capacity)
        return evicted

    def _draw(self, buffer: str, count: int, rng: np.random.Generator) -> list[tuple[str, int]]:
        if count == 0:
            return []
        if buffer not in self._cache:
            ids = self.ids(buffer)
            self._cache[buffer] = (ids, np.cumsum([self._info[i]["n"] for i in ids]))
        ids, ends = self._cache[buffer]
        flat = rng.integers(0, int(ends[-1]), size=count)
        which = np.searchsorted(ends, flat, side="right")
        starts = ends - np.asarray([self._info[i]["n"] for i in ids])
        return [(ids[e], int(f - starts[e])) for e, f in zip(which, flat)]

    def _index(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "versions_seen": sorted(self._versions),
                "on_policy_versions": self.on_policy_versions, "schema": self._schema,
                "next_seq": self._next_seq, "evicted": sorted(self._evicted),
                "episodes": {i: dict(info) for i, info in self._info.items()}}

    def _save_index(self) -> None:
        data = json.dumps(self._index(), indent=1).encode()
        _atomic_write(self.index_path, lambda f: f.write(data), self.fsync)

    def _quarantine_episode(self, ep: Any, reason: str) -> None:
        raw = str(getattr(ep, "episode_id", "unknown"))
        name = re.sub(r"[^A-Za-z0-9._-]", "_", raw)[:100] or "unknown"
        stem = f"{name}.{time.time_ns()}"
        LOG.error("quarantined episode %r: %s", raw, reason)
        (self.quarantine_dir / f"{stem}.reason.txt").write_text(f"{raw!r}: {reason}\n")
        try:
            arrays = {"meta": np.asarray(json.dumps({
                "episode_id": raw, "reason": reason,
                **{a: repr(getattr(ep, a, None)) for a in ("robot", "policy_version",
                                                           "instruction", "success")}}))}
            for k, v in dict(getattr(ep, "observations", {}) or {}).items():
                arrays[f"obs_{k}"] = v
            for a in ("actions", "noise", "steered", "reward", "done", "offset"):
                arrays[a] = getattr(ep, a, None)
            arrays = {k: a for k, a in ((k, _as_array(v)) for k, v in arrays.items())
                      if a is not None}
            _atomic_write(self.quarantine_dir / f"{stem}.npz",
                          lambda f: np.savez(f, **arrays), fsync=False)
        except Exception as exc:  # noqa: BLE001 -- the reason file is what matters
            LOG.warning("could not save the arrays of quarantined episode %r: %s", raw, exc)

    def _quarantine_file(self, path: Path, reason: str) -> None:
        stem = f"{path.stem}.{time.time_ns()}"
        LOG.error("quarantined episode file %s: %s", path, reason)
        (self.quarantine_dir / f"{stem}.reason.txt").write_text(f"{path.name}: {reason}\n")
        os.replace(path, self.quarantine_dir / f"{stem}.npz")

    def _load(self) -> None:
        temps = [p for d in (self.episodes_dir, self.root) for p in d.iterdir()
                 if _TMP_NAME.search(p.name)]
        for tmp in temps:
            LOG.warning("removing a temporary file left by a killed writer: %s", tmp)
            tmp.unlink(missing_ok=True)
        index: dict[str, Any] = {}
        if self.index_path.exists():
            try:
                index = json.loads(self.index_path.read_text())
                if index.get("format") != FORMAT_VERSION:
                    raise ValueError(f"format {index.get('format')!r}")
            except ValueError as exc:
                backup = self.index_path.with_name(f"index.json.corrupt{time.time_ns()}")
                LOG.error("%s is unreadable (%s): kept as %s, rebuilding from the episode "
                          "files", self.index_path, exc, backup.name)
                os.replace(self.index_path, backup)
                index = {}
        self._versions = {int(v) for v in index.get("versions_seen", [])}
        self._evicted = set(index.get("evicted", []))
        self._schema = index.get("schema")
        self._next_seq = int(index.get("next_seq", 0))
        entries: dict[str, dict[str, Any]] = index.get("episodes", {})
        files = {p.stem: p for p in self.episodes_dir.glob("*.npz")}
        changed = False
        for episode_id in sorted(set(entries) - set(files)):
            LOG.warning("episode %s is in the index but its file is missing: dropped",
                        episode_id)
            changed = True
        loaded = []
        for episode_id, path in sorted(files.items()):
            if episode_id in self._evicted:  # killed between the index write and the unlink
                path.unlink()
                continue
            try:
                ep, meta = _read_episode(path)
                if self._schema is not None and _schema(ep) != self._schema:
                    raise QuarantineError(f"episode schema {_schema(ep)} differs from the "
                                          f"buffer's {self._schema}")
            except QuarantineError as exc:
                self._quarantine_file(path, str(exc))
                changed = True
                continue
            if self._schema is None:
                self._schema = _schema(ep)
            entry = entries.get(episode_id)
            if entry is None:
                LOG.warning("recovering episode %s (version %d): its file was written but not "
                            "indexed", episode_id, ep.policy_version)
                changed = True
                entry = {"seq": int(meta.get("seq", self._next_seq)),
                         "warm_up": bool(meta.get("warm_up", False))}
            loaded.append((int(entry["seq"]), bool(entry["warm_up"]), ep))
        for seq, warm_up, ep in sorted(loaded, key=lambda x: x[0]):
            if not warm_up:
                self._versions.add(int(ep.policy_version))
            self._episodes[ep.episode_id] = ep
            self._info[ep.episode_id] = {"buffer": OFF, "version": int(ep.policy_version),
                                         "n": len(ep), "seq": seq, "warm_up": warm_up}
            self._next_seq = max(self._next_seq, seq + 1)
        self._assign()
        for episode_id, info in self._info.items():
            if entries.get(episode_id, {}).get("buffer") != info["buffer"]:
                changed = True
        evicted = self._enforce_capacity()
        if changed or evicted or not self.index_path.exists():
            self._save_index()
        for episode_id in evicted:
            self._path(episode_id).unlink(missing_ok=True)
        if self._info:
            LOG.info("replay buffers at %s: %s", self.root, self.stats())
