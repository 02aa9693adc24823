"""``grrl-bench data``: demonstration collection throughput (with and without rendering) and
loader throughput (with and without mirror augmentation), each pair measured side by side."""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from grrl_trainer.data.collect import CollectConfig, collect
from grrl_trainer.data.dataset import EpisodeDataset
from grrl_trainer.data.windows import TransitionWindows, WindowConfig


def collection_rate(root: Path, images: bool, episodes: int, size: int) -> float:
    cfg = CollectConfig(images=images, image_size=size)
    start = time.perf_counter()
    collect(root, cfg, list(range(episodes)), workers=1, progress=False)
    return episodes / (time.perf_counter() - start) * 60.0


def loader_rate(root: Path, mirror_prob: float, samples: int, horizon: int) -> float:
    win = TransitionWindows(EpisodeDataset(root), WindowConfig(horizon=horizon,
                                                               mirror_prob=mirror_prob))
    idx = np.random.default_rng(0).integers(0, len(win), samples)
    win[int(idx[0])]                                 # open the files outside the timing
    start = time.perf_counter()
    for i in idx:
        win[int(i)]
    return samples / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grrl-bench data", description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=4, help="episodes per collection run")
    parser.add_argument("--size", type=int, default=128, help="image width and height")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--horizon", type=int, default=16)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        with_img = collection_rate(Path(tmp) / "img", True, args.episodes, args.size)
        without = collection_rate(Path(tmp) / "state", False, args.episodes, args.size)
        plain = loader_rate(Path(tmp) / "img", 0.0, args.samples, args.horizon)
        mirrored = loader_rate(Path(tmp) / "img", 1.0, args.samples, args.horizon)
    print(f"collection (1 worker, flawed demonstrator): {with_img:.1f} episodes/min with three "
          f"{args.size}x{args.size} cameras, {without:.1f} without (x{without / with_img:.2f})")
    print(f"loader (3 images {args.size}x{args.size}, k={args.horizon}, next observation): "
          f"{plain:.0f} samples/s plain, {mirrored:.0f} with mirroring "
          f"(x{mirrored / plain:.2f}); per loader worker process")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
