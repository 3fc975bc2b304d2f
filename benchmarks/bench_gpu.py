"""The GPU path at the papers' scale, on whatever CUDA GPU it finds (random-weight ViT-B/16).

Sections, each with its peak GPU memory:

1. **extraction**: images/s of ``FeatureCache.get`` on synthetic JPEG files on disk (DataLoader
   workers decode, bf16 forward) vs the raw bf16 forward on pre-decoded tensors already on the
   GPU. Target: ``extraction_vs_raw_ratio >= 0.9`` with enough workers.
2. **prompt steps**: one CoOp training step with 1,000 class prompts, softmax vs OVE-PG
   (Pólya-Gamma draws by ``polyagamma`` on the host: one device->host copy of ``c``, one
   host->device copy of omega). Target: ``ove_pg_vs_softmax_step_ratio <= 1.10``. The draw
   alone and the ``omega=mean`` step (no host round trip) are timed too.
3. **kalman** and **laplace**: a fit on 16,000 x 512-d features with 1,000 classes
   (``--kalman-structure``: any registered covariance, ``diag`` by default).

Budget: under 10 minutes on one GPU. On a machine without CUDA it prints why and exits 0
(nothing measured); ``--cpu-smoke`` runs every section at toy size on the CPU (tests).
Run: ``python -m benchmarks.bench_gpu [--workers N] [--kalman-structure diag|kron|...]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.common import write_result
from pyro_clip.data.folders import ImageFolderImages
from pyro_clip.features.cache import FeatureCache, FeatureSet
from pyro_clip.features.extraction import default_workers
from pyro_clip.methods import MethodContext, create_method
from pyro_clip.models.ove_pg import OvePGConfig, ove_differences, ove_pg_loss
from pyro_clip.models.polya_gamma import sample_pg
from pyro_clip.pipeline.run import get_backbone
from pyro_clip.prompts.coop import CoOpPromptLearner
from pyro_clip.runtime import Runtime

FULL = {"backbone": "open_clip:ViT-B-16", "images": 8192, "image_size": 320, "classes": 1000,
        "batch": 32, "n_features": 16000, "steps": 10}
SMOKE = {"backbone": "open_clip:pyro-clip-tiny", "images": 48, "image_size": 40, "classes": 12,
         "batch": 4, "n_features": 120, "steps": 2}


def write_jpegs(root: Path, n: int, size: int, n_classes: int = 10) -> ImageFolderImages:
    """``n`` smooth random colour JPEGs (like photos, unlike noise, they compress) in
    ``root/<class>/``; decoding them costs what real photos of that size cost."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class_{i % n_classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 255, (size // 16, size // 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.BICUBIC)
        img.save(folder / f"{i:06d}.jpg", quality=90)
    return ImageFolderImages(root)


class Section:
    """Times with synchronisation and records the peak device memory of one section."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def __enter__(self) -> Section:
        if self.runtime.is_cuda:
            torch.cuda.synchronize(self.runtime.device)
            torch.cuda.reset_peak_memory_stats(self.runtime.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.runtime.is_cuda:
            torch.cuda.synchronize(self.runtime.device)
        self.seconds = time.perf_counter() - self.t0
        self.peak_gib = (torch.cuda.max_memory_allocated(self.runtime.device) / 2**30
                         if self.runtime.is_cuda else None)


def timed_steps(fn: Callable[[], Any], runtime: Runtime, steps: int) -> float:
    """Median seconds of ``fn`` over ``steps`` synchronised calls after one warm-up call."""
    fn()
    times = []
    for _ in range(steps):
        with runtime.synchronized():
            t0 = time.perf_counter()
            fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_extraction(backbone, runtime: Runtime, size: dict, workers: int, tmp: Path) -> dict:
    images = write_jpegs(tmp / "jpegs", size["images"], size["image_size"])
    batch = 256 if runtime.is_cuda else 16
    pixels = torch.stack([backbone.preprocess(images.load_image(i)) for i in range(min(
        len(images), 1024))])
    pixels = pixels.repeat(-(-len(images) // len(pixels)), 1, 1, 1)[: len(images)]
    pixels = pixels.to(runtime.device)

    @torch.no_grad()
    def raw(px: torch.Tensor) -> None:
        for b0 in range(0, len(px), batch):
            backbone.encode_images(px[b0 : b0 + batch])

    raw(pixels)  # warm-up: kernels, allocator
    with Section(runtime) as raw_s:
        raw(pixels)
    pixels = None  # free the device copy before the cache section measures its peak
    with Section(runtime) as cache_s:
        FeatureCache(tmp / "cache", workers=workers).get(backbone, images, batch, progress=False)
    raw_ips, cache_ips = len(images) / raw_s.seconds, len(images) / cache_s.seconds
    return {"images": len(images), "image_size": size["image_size"], "batch_size": batch,
            "workers": workers, "raw_forward_images_per_s": raw_ips,
            "cache_images_per_s": cache_ips, "extraction_vs_raw_ratio": cache_ips / raw_ips,
            "target_extraction_vs_raw": 0.9, "raw_peak_gib": raw_s.peak_gib,
            "cache_peak_gib": cache_s.peak_gib}


def bench_prompt_steps(backbone, runtime: Runtime, size: dict) -> dict:
    c, b = size["classes"], size["batch"]
    names = [f"class number {i}" for i in range(c)]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, backbone.embed_dim, generator=gen).to(runtime.device)
    y = torch.randint(0, c, (b,), generator=gen).to(runtime.device)
    with runtime.scope():
        ctx = MethodContext(backbone, runtime=runtime)
        f0 = ctx.zero_shot_logits(x, names).float()
        learner = CoOpPromptLearner(backbone, n_ctx=4, seed=1)
        opt = torch.optim.SGD(learner.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"classes": c, "batch": b}
    tilts = ove_differences(f0, y).cpu()  # as the method does: the fixed tilts on the host once

    def step(likelihood: str, omega_mode: str = "sample") -> Callable[[], None]:
        cfg = OvePGConfig(omega=omega_mode)

        def run() -> None:
            with runtime.scope():
                f = learner.logits(x, names)  # queued on the device
                if likelihood == "softmax":
                    loss = F.cross_entropy(f, y)
                else:  # the host draw overlaps the queued forward; one host->device copy
                    omega = (sample_pg(tilts, rng).to(f.device, non_blocking=True)
                             if omega_mode == "sample" else None)
                    loss = ove_pg_loss(f, f0, y, cfg, rng, omega=omega)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return run

    for key, fn in {"softmax": step("softmax"), "ove_pg": step("ove-pg"),
                    "ove_pg_omega_mean": step("ove-pg", "mean")}.items():
        with Section(runtime) as s:
            out[f"{key}_step_s"] = timed_steps(fn, runtime, size["steps"])
        out[f"{key}_peak_gib"] = s.peak_gib
    out["pg_draw_s"] = timed_steps(
        lambda: sample_pg(tilts, rng).to(runtime.device, non_blocking=True), runtime,
        size["steps"])
    out["pg_draws_per_step"] = int(tilts.numel())
    out["ove_pg_vs_softmax_step_ratio"] = out["ove_pg_step_s"] / out["softmax_step_s"]
    out["target_ove_pg_vs_softmax_step"] = 1.10
    return out


def synthetic_features(n: int, dim: int, c: int, seed: int) -> FeatureSet:
    """Gaussian clusters, the same on every machine: ``n`` rows over ``c`` classes."""
    gen = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(c, dim, generator=gen), dim=-1)
    labels = torch.arange(n) % c
    x = means[labels] + 0.5 / dim**0.5 * torch.randn(n, dim, generator=gen)
    return FeatureSet({"joint": x}, labels, [f"class number {i}" for i in range(c)], "synthetic")


def bench_head(name: str, options: dict, backbone, runtime: Runtime, size: dict) -> dict:
    train = synthetic_features(size["n_features"], backbone.embed_dim, size["classes"], 1)
    val = synthetic_features(size["classes"], backbone.embed_dim, size["classes"], 2)
    method = create_method(name, **options)
    method.setup(MethodContext(backbone, seed=1, progress=False, runtime=runtime))
    method.ctx.text_classifier(train.classnames)  # the text encode is not part of the fit
    with Section(runtime) as s:
        method.fit(train, val)
    return {"n": len(train), "dim": backbone.embed_dim, "classes": size["classes"],
            "options": options, "fit_s": s.seconds, "peak_gib": s.peak_gib}


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu-smoke", action="store_true",
                   help="toy sizes on the CPU: proves the script works (no GPU needed)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"],
                   help="backbone precision (default: bf16 on the GPU, fp32 for --cpu-smoke)")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding processes (default: all CPUs but one)")
    p.add_argument("--kalman-structure", default="diag",
                   help="kalman covariance (diag | block | lowrank | kron when available)")
    p.add_argument("--kalman-batch", type=int, default=1,
                   help="kalman minibatch (the categorical update is O((B C)^3))")
    p.add_argument("--skip", action="append", default=[],
                   choices=["extraction", "prompt", "kalman", "laplace"])
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args(argv)

    if args.cpu_smoke:
        size, runtime = SMOKE, Runtime.resolve("cpu", args.precision or "fp32")
    else:
        if not torch.cuda.is_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            print("bench_gpu: no CUDA GPU is visible to torch"
                  + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else "")
                  + "; nothing measured. Run it on a GPU machine, or --cpu-smoke to check the "
                  "script itself.", file=sys.stderr)
            return None
        size, runtime = FULL, Runtime.resolve(args.device, args.precision or "bf16")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = args.workers if args.workers is not None else (
        max(1, (cpus or 2) - 1) if not args.cpu_smoke else min(2, default_workers()))
    started = time.perf_counter()
    backbone = get_backbone(size["backbone"], runtime)
    res: dict[str, Any] = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu",
                           "runtime": runtime.describe(), "backbone": backbone.name,
                           "cpus": cpus, "load_average_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        if "extraction" not in args.skip:
            res["extraction"] = bench_extraction(backbone, runtime, size, workers, Path(tmp))
            print("extraction", res["extraction"], flush=True)
    if "prompt" not in args.skip:
        res["prompt_steps"] = bench_prompt_steps(backbone, runtime, size)
        print("prompt_steps", res["prompt_steps"], flush=True)
    if "kalman" not in args.skip:
        opts = {"covariance": args.kalman_structure, "prior_var": 10.0,
                "batch_size": args.kalman_batch, "epochs": 1}
        res["kalman"] = bench_head("kalman", opts, backbone, runtime, size)
        print("kalman", res["kalman"], flush=True)
    if "laplace" not in args.skip:
        opts = {"lam": 1e-3, "prior_precision": "marglik", "hessian_structure": "kron"}
        res["laplace"] = bench_head("laplace", opts, backbone, runtime, size)
        print("laplace", res["laplace"], flush=True)
    res["total_s"] = time.perf_counter() - started
    res["target_total_s"] = 600
    res["load_average_end"] = os.getloadavg()
    name = "gpu_cpu_smoke" if args.cpu_smoke else "gpu"
    write_result(name, res, args.out_dir)
    return res


if __name__ == "__main__":
    main()
