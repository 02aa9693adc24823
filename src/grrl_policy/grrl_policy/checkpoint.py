"""Versioned checkpoints: ``NAME.safetensors`` (weights) + ``NAME.json`` (format version, model
config, policy version, sha256 of the weights file, tensor shapes, free-form metadata).

Loading never unpickles anything: the JSON is parsed, the weights file is hashed and compared
with the JSON (and with an announced digest), every tensor's shape is checked against a model
built from the config, and only then are weights copied in. Any mismatch raises
:class:`CheckpointError` naming the file and the problem; the caller keeps what it had.
Frozen pretrained parts that ship with their own package (the MiniLM text encoder) are not in
the weights file; they are rebuilt from the config.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .model import GRRLModel, ModelConfig

FORMAT = "grrl-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (missing, corrupt, mismatched)."""


@dataclass
class CheckpointMeta:
    """What the JSON beside the weights says."""

    config: ModelConfig
    version: int
    sha256: str
    created: float
    extra: dict[str, Any] = field(default_factory=dict)


def paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights, json) for ``x``, ``x.safetensors`` or ``x.json``."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(model: GRRLModel, path: str | os.PathLike, version: int,
                    extra: dict[str, Any] | None = None) -> CheckpointMeta:
    """Write weights then JSON, each atomically (a reader never sees a half-written file; the
    JSON, written last, is what makes a checkpoint exist). Non-finite weights are refused."""
    weights, meta_path = paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to save non-finite weights ({len(bad)} tensors, e.g. {bad[0]})")
    _atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
    meta = CheckpointMeta(model.cfg, int(version), file_sha256(weights), time.time(), dict(extra or {}))
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "version": meta.version,
           "sha256": meta.sha256, "created": meta.created, "config": model.cfg.to_dict(),
           "tensors": {k: list(v.shape) for k, v in state.items()}, "extra": meta.extra}
    _atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
    return meta


def read_meta(path: str | os.PathLike) -> CheckpointMeta:
    """Parse and validate the JSON of a checkpoint (weights are not read)."""
    _, meta_path = paths(path)
    try:
        doc = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{meta_path}: no such checkpoint config") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{meta_path}: unreadable checkpoint config: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not a {FORMAT} file")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: checkpoint format version {doc.get('format_version')} "
                              f"is not supported (this code reads {FORMAT_VERSION})")
    try:
        cfg = ModelConfig.from_dict(doc["config"])
        return CheckpointMeta(cfg, int(doc["version"]), str(doc["sha256"]), float(doc["created"]),
                              dict(doc.get("extra", {})))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{meta_path}: invalid checkpoint config: {e}") from None


def verify_files(path: str | os.PathLike) -> tuple[CheckpointMeta, str]:
    """The checkpoint's JSON and the sha256 of its weights file, after checking that the file
    exists and hashes to what the JSON records (weights are not loaded)."""
    weights, _ = paths(path)
    meta = read_meta(path)
    if not weights.exists():
        raise CheckpointError(f"{weights}: weights file missing")
    digest = file_sha256(weights)
    if digest != meta.sha256:
        raise CheckpointError(f"{weights}: sha256 {digest[:12]}… does not match its config "
                              f"({meta.sha256[:12]}…): the file is corrupt or was replaced")
    return meta, digest


def load_checkpoint(path: str | os.PathLike, expected_sha256: str | None = None,
                    model: GRRLModel | None = None,
                    device: str | torch.device = "cpu") -> tuple[GRRLModel, CheckpointMeta]:
    """Verify and load a checkpoint into a new model (or into ``model``, whose config must match).

    Checks, in order: JSON format, sha256 of the weights against the JSON and ``expected_sha256``,
    safetensors header, tensor names and shapes. The target model is modified only after all
    checks passed."""
    weights, _ = paths(path)
    meta, digest = verify_files(path)
    if expected_sha256 and digest != expected_sha256:
        raise CheckpointError(f"{weights}: sha256 {digest[:12]}… is not the announced "
                              f"{expected_sha256[:12]}…")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: unreadable safetensors file: {e}") from None
    if model is None:
        model = GRRLModel(meta.config)
    elif model.cfg.to_dict() != meta.config.to_dict():
        raise CheckpointError(f"{weights}: config differs from the running model's")
    check_state(model, state, str(weights))
    model.load_state_dict(state, strict=True)
    return model.to(device), meta


def check_state(model: GRRLModel, state: dict[str, torch.Tensor], where: str) -> None:
    """Names and shapes of ``state`` must equal the model's, exactly."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{where}: tensors missing {missing[:3]}{'…' if len(missing) > 3 else ''}"
                              f", unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{where}: {k} has shape {tuple(v.shape)}, the model expects "
                                  f"{tuple(own[k].shape)}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{where}: {k} holds non-finite values")
