"""One dataset out of several: ``grrl-data merge --out DIR SRC SRC ...``.

The merged directory holds relative symbolic links to the sources' episode files (``--copy``:
copies), and an info.json whose ``merged_from`` names every source with the settings it was
collected with, so that a training run on it says where each episode came from. The sources
must agree on what an episode contains (schema, step rate, cameras, image size, joints); an
episode name (``ep_<seed>``) found in two sources is refused, not silently shadowed.
``first=N`` keeps only the first N episodes of the union in seed order: one source and
``--first 50`` is the 50-demonstration subset of a learning curve.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from grrl_trainer.data.dataset import EPISODE_GLOB, DatasetError

LOG = logging.getLogger(__name__)

#: info.json fields every source must share: they define what an episode holds
SHARED = ("schema_version", "fps", "images", "image_size", "cameras", "joint_names")


def _info(root: Path) -> dict:
    path = root / "info.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{root}: no readable info.json ({exc})") from None


def merge_datasets(out: Path, sources: list[Path], copy: bool = False,
                   first: int | None = None) -> int:
    """Make ``out`` the union of ``sources`` (its first ``first`` episodes in seed order if
    given); returns the number of episodes in it."""
    out, sources = Path(out), [Path(s) for s in sources]
    if first is not None and first < 1:
        raise DatasetError(f"first must be at least 1, got {first}")
    if len(sources) < (1 if first is not None else 2):
        raise DatasetError("merge needs at least two source datasets (or one and --first)")
    if (out / "info.json").exists() or (out / "episodes").exists():
        raise DatasetError(f"{out} exists already; merge into a new directory")
    infos = [_info(s) for s in sources]
    for src, info in zip(sources[1:], infos[1:]):
        differ = [k for k in SHARED if info.get(k) != infos[0].get(k)]
        if differ:
            raise DatasetError(f"{src} differs from {sources[0]} in {differ}: its episodes "
                               "hold other data")
    names: dict[str, Path] = {}
    for src in sources:
        files = sorted((src / "episodes").glob(EPISODE_GLOB))
        if not files:
            raise DatasetError(f"{src}: no episodes")
        for f in files:
            if f.name in names:
                raise DatasetError(f"{f.name} is in both {names[f.name].parent.parent} and "
                                   f"{src}: collect the sources with disjoint seeds")
            names[f.name] = f
    if first is not None:
        if first > len(names):
            raise DatasetError(f"--first {first}: the sources hold only {len(names)} episodes")
        names = dict(sorted(names.items())[:first])     # ep_<zero-padded seed>: seed order
    (out / "episodes").mkdir(parents=True)
    for name, f in names.items():
        target = out / "episodes" / name
        if copy:
            shutil.copy2(f, target)
        else:
            target.symlink_to(os.path.relpath(f.resolve(), target.parent))
    info = {k: infos[0][k] for k in SHARED if k in infos[0]}
    info["merged_from"] = [
        {"path": os.path.relpath(s.resolve(), out.resolve()),
         "episodes": len(list((s / "episodes").glob(EPISODE_GLOB))),
         "collection": i.get("collection", i.get("merged_from"))}
        for s, i in zip(sources, infos)]
    if first is not None:
        info["first"] = first
    (out / "info.json").write_text(json.dumps(info, indent=1))
    LOG.info("merged %d episodes of %d datasets into %s (%s)", len(names), len(sources), out,
             "copies" if copy else "links")
    return len(names)
