"""Feature extraction: cached pipeline vs the raw backbone forward, and cached re-run speed-up.

Targets (issue 2): cold ``FeatureCache.get`` images/s >= 0.9 x a bare preprocess + forward loop
over the same images; a cached re-run >= 50x faster than the cold extraction.
Run: ``python -m benchmarks.bench_features [--backbone conse] [--n 256]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from benchmarks.common import print_result, write_result
from pyro_clip.backbones import create_backbone
from pyro_clip.data import SubsetImages, load_dataset
from pyro_clip.features.cache import FeatureCache


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backbone", default="conse")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    backbone = create_backbone(args.backbone)
    data = SubsetImages(load_dataset("fashion-mnist", "test"), range(args.n))

    @torch.no_grad()
    def raw() -> None:  # the bare loop a user would write: decode, preprocess, forward
        for b0 in range(0, args.n, args.batch_size):
            idx = range(b0, min(b0 + args.batch_size, args.n))
            backbone.encode_images(torch.stack([backbone.preprocess(data.load_image(i))
                                                for i in idx]))

    def cold_and_warm() -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as tmp:
            cache = FeatureCache(tmp)
            t0 = time.perf_counter()
            cache.get(backbone, data, batch_size=args.batch_size, progress=False)
            t1 = time.perf_counter()
            cache.get(backbone, data, batch_size=args.batch_size, progress=False)
            return t1 - t0, time.perf_counter() - t1

    raw()  # warm-up (allocator, kernels)
    raw_times, cold_times, warm_times = [], [], []
    for _ in range(args.repeats):  # interleaved, so load from other processes hits both alike
        t0 = time.perf_counter()
        raw()
        raw_times.append(time.perf_counter() - t0)
        cold, warm = cold_and_warm()
        cold_times.append(cold)
        warm_times.append(warm)
    raw_s, cold_s, warm_s = min(raw_times), min(cold_times), min(warm_times)
    res = {
        "backbone": backbone.name,
        "images": args.n,
        "raw_images_per_s": args.n / raw_s,
        "cached_pipeline_images_per_s": args.n / cold_s,
        "pipeline_vs_raw_ratio": raw_s / cold_s,
        "target_pipeline_vs_raw": 0.9,
        "rerun_speedup": cold_s / warm_s,
        "target_rerun_speedup": 50,
    }
    print_result(res)
    write_result("features", res)
    return res


if __name__ == "__main__":
    main()
