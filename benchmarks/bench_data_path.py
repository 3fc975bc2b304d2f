"""Run set-up on a folder data set of 20,000 small JPEGs at 16 shots: before vs after issue 16.

Before (the old data path, reproduced with today's pieces): every file's bytes are hashed
(``PYRO_CLIP_HASH=content``) and every image of every split is encoded. After: files are keyed
by path, size and mtime, and only the images the run uses are encoded (16 shots per class,
min(16, 4) validation shots per class, the test split). The synthetic set has 50 classes with
380 train, 10 val and 10 test images each (20,000 JPEGs, 32x32); its test split is 2.5% of the
images (ImageNet's: 3.8%, where a 16-shot run needs 70k of 1.33M images, 19x fewer).
A second seed (after, warm cache) shows the reuse of cached rows across seeds.
Target (issue 16): at least 10x less work (images encoded, and set-up time) after than before.
Run: ``python -m benchmarks.bench_data_path [--root DIR] [--classes 50]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import pyro_clip.features.cache as features
from benchmarks.common import print_result, write_result
from pyro_clip.data import load_dataset
from pyro_clip.pipeline.config import RunConfig
from pyro_clip.pipeline.run import encode_images, get_backbone, select_images

BACKBONE = "open_clip:pyro-clip-tiny"  # random tiny ViT (32 px): the cost is the data path


def make_folder(root: Path, classes: int, per_class: dict[str, int], size: int = 32) -> int:
    """``root/<split>/class_<k>/<i>.jpg`` random JPEGs; reused if already complete."""
    total = classes * sum(per_class.values())
    marker = root / f".complete-{classes}-{'-'.join(map(str, per_class.values()))}"
    if marker.exists():
        return total
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for c in range(classes):
            folder = root / split / f"class_{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)
    marker.touch()
    return total


class EncodeCounter:
    """Counts images passed through the cache's one encode function."""

    def __init__(self) -> None:
        self.count = 0
        self._real = features.iter_features

        def counting(backbone, images, indices, *args, **kwargs):
            self.count += len(indices)
            return self._real(backbone, images, indices, *args, **kwargs)

        features.iter_features = counting


def before(root: Path, cache_dir: Path, batch_size: int, counter: EncodeCounter) -> dict:
    """Old path: list, content-hash every file, encode every split in full."""
    os.environ["PYRO_CLIP_HASH"] = "content"
    backbone = get_backbone(BACKBONE)
    start, n0 = time.perf_counter(), counter.count
    splits = [load_dataset("folder", s, root=root) for s in ("train", "val", "test")]
    listed = time.perf_counter()
    for ds in splits:
        ds.fingerprint()  # the old cache key: sha256 over every file's bytes
    keyed = time.perf_counter()
    cache = features.FeatureCache(cache_dir)
    for ds in splits:
        cache.get(backbone, ds, batch_size=batch_size, progress=False)
    done = time.perf_counter()
    return {"list_s": listed - start, "key_s": keyed - listed, "encode_s": done - keyed,
            "total_s": done - start, "images_encoded": counter.count - n0,
            "bytes_hashed": sum(p.stat().st_size for ds in splits for p in ds.paths)}


def after(root: Path, cache_dir: Path, batch_size: int, counter: EncodeCounter, seed: int,
          shots: int) -> dict:
    """New path: list + sample from labels, stat keys, encode only the run's images."""
    os.environ["PYRO_CLIP_HASH"] = "stat"
    backbone = get_backbone(BACKBONE)
    cfg = RunConfig(backbone=BACKBONE, dataset="folder", data_root=str(root), shots=shots,
                    seed=seed, eval_datasets=[], cache_dir=str(cache_dir),
                    batch_size=batch_size, progress=False).resolved()
    start, n0 = time.perf_counter(), counter.count
    images = select_images(cfg)
    listed = time.perf_counter()
    for ds in (images.train, images.val, images.test):
        ds.item_keys()
    keyed = time.perf_counter()
    for ds in (images.train, images.val, images.test):
        encode_images(cfg, backbone, ds)
    done = time.perf_counter()
    return {"list_s": listed - start, "key_s": keyed - listed, "encode_s": done - keyed,
            "total_s": done - start, "images_encoded": counter.count - n0, "bytes_hashed": 0}


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", help="folder for the synthetic JPEGs (default: a temp folder)")
    p.add_argument("--classes", type=int, default=50)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args()
    per_class = {"train": 380, "val": 10, "test": 10}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp) / "jpegs"
        t0 = time.perf_counter()
        n_images = make_folder(root, args.classes, per_class)
        make_s = time.perf_counter() - t0
        get_backbone(BACKBONE)  # build once, outside the timings
        counter = EncodeCounter()
        load = os.getloadavg()
        old = before(root, Path(tmp) / "cache-before", args.batch_size, counter)
        new = after(root, Path(tmp) / "cache-after", args.batch_size, counter, 1, args.shots)
        new_seed2 = after(root, Path(tmp) / "cache-after", args.batch_size, counter, 2,
                          args.shots)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    res = {
        "backbone": BACKBONE,
        "images": n_images,
        "classes": args.classes,
        "per_class": per_class,
        "shots": args.shots,
        "make_jpegs_s": make_s,
        "before": old,
        "after": new,
        "after_second_seed_warm": new_seed2,
        "encode_work_ratio": old["images_encoded"] / new["images_encoded"],
        "setup_time_speedup": old["total_s"] / new["total_s"],
        "keying_time_speedup": old["key_s"] / max(new["key_s"], 1e-9),
        "second_seed_setup_speedup": old["total_s"] / new_seed2["total_s"],
        "target_encode_work_ratio": 10,
        "target_setup_time_speedup": 10,
        "load_average_at_start": load,
        "uptime_at_end": uptime,
    }
    print_result(res)
    write_result("data_path", res)
    return res


if __name__ == "__main__":
    main()
