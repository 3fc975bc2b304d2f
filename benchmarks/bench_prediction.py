"""Prediction with 1,000 classes: class prompts encoded once per call vs once per image chunk.

Before (issue 16): CoOp's ``predict`` re-encoded all C class prompts for every chunk of 256
images, and the zero-shot classifier encoded one class at a time. After: CoOp encodes the C
prompts once per ``predict`` call, the zero-shot classifier encodes all C x T prompts in
batches, and CoCoOp (image-conditional prompts, B x C text passes by construction) batches its
(images x classes) prompts by a token budget instead of 32 images at a time. The "before" code
is reproduced here, side by side, on the same learner and features.
Targets: CoOp prediction speed-up >= N / 256 / 2 (half the ideal for N images), zero-shot >= 2x.
Run: ``python -m benchmarks.bench_prediction [--classes 1000] [--images 2560]``.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from benchmarks.common import best_of, write_result
from pyro_clip.pipeline.run import get_backbone
from pyro_clip.prompts.cocoop import CoCoOpPromptLearner
from pyro_clip.prompts.coop import CoOpPromptLearner
from pyro_clip.runtime import Runtime

TINY = "open_clip:pyro-clip-tiny"


def class_names(n: int) -> list[str]:
    """``n`` distinct names of varied length (like ImageNet's), deterministic."""
    words = ["red", "small", "striped", "northern", "giant", "spotted", "sea", "grey", "wild",
             "house", "snow", "desert"]
    nouns = ["fox", "owl", "crab", "lamp", "boat", "kettle", "tiger", "moth", "violin", "truck",
             "lizard", "tower"]
    names = []
    for i in range(n):
        a, b, c = words[i % 12], words[(i // 12) % 12], nouns[(i // 144) % 12]
        names.append(f"{a} {c}" if i % 3 == 0 else f"{a} {b} {c} {i}")
    return names


@torch.no_grad()
def coop_before(learner: CoOpPromptLearner, x: torch.Tensor, names: list[str]) -> torch.Tensor:
    """The old ``predict``: ``learner.logits`` (which encodes every prompt) per 256 images."""
    return torch.cat([learner.logits(x[i : i + 256], names) for i in range(0, len(x), 256)])


@torch.no_grad()
def zero_shot_before(backbone, names: list[str], templates: tuple[str, ...]) -> torch.Tensor:
    """The old classifier: one text-tower pass per class."""
    rows = []
    for name in names:
        feats = F.normalize(backbone.encode_text([t.format(name) for t in templates]), dim=-1)
        rows.append(F.normalize(feats.mean(0), dim=-1))
    return torch.stack(rows)


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--images", type=int, default=2560)
    p.add_argument("--cocoop-images", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    runtime = Runtime.resolve(args.device)
    backbone = get_backbone(TINY, runtime)
    names = class_names(args.classes)
    templates = ("a photo of a {}.", "a blurry photo of the {}.")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, backbone.embed_dim, generator=gen).to(runtime.device)
    coop = CoOpPromptLearner(backbone, n_ctx=4, seed=1)
    cocoop = CoCoOpPromptLearner(backbone, n_ctx=4, seed=1)
    coop.prompts(names)  # tokenisation is cached per class list in both versions
    xc = x[: args.cocoop_images]

    def sync(fn):
        def run():
            with runtime.synchronized():
                fn()
        return run

    # correctness first: the new paths give the old numbers
    torch.testing.assert_close(coop.predict_logits(x[:256], names),
                               coop_before(coop, x[:256], names), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(backbone.zero_shot_weights(names[:100], templates),
                               zero_shot_before(backbone, names[:100], templates), rtol=1e-4,
                               atol=1e-5)
    runs = {
        "coop_before_s": lambda: coop_before(coop, x, names),
        "coop_after_s": lambda: coop.predict_logits(x, names),
        "zero_shot_before_s": lambda: zero_shot_before(backbone, names, templates),
        "zero_shot_after_s": lambda: backbone.zero_shot_weights(names, templates),
        "cocoop_before_s": lambda: torch.no_grad()(cocoop.logits)(xc, names, 32),
        "cocoop_after_s": lambda: cocoop.predict_logits(xc, names),
    }
    timings = {}
    for key, fn in runs.items():  # before/after pairs back to back: the same machine load
        timings[key] = best_of(sync(fn), args.repeats)
        print(f"{key}: {timings[key]:.3f}", flush=True)
    ideal = -(-args.images // 256)
    res = {
        "backbone": backbone.name,
        "runtime": runtime.describe(),
        "classes": args.classes,
        "images": args.images,
        "cocoop_images": args.cocoop_images,
        "templates": len(templates),
        **timings,
        "coop_prediction_speedup": timings["coop_before_s"] / timings["coop_after_s"],
        "target_coop_prediction": ideal / 2,
        "coop_ideal_speedup": ideal,
        "zero_shot_classifier_speedup": timings["zero_shot_before_s"]
        / timings["zero_shot_after_s"],
        "target_zero_shot_classifier": 2.0,
        "cocoop_prediction_speedup": timings["cocoop_before_s"] / timings["cocoop_after_s"],
        "load_average": os.getloadavg(),
    }
    write_result("prediction", res)
    for k, v in res.items():
        if k.endswith("speedup") or k.endswith("_s"):
            print(f"{k}: {v:.3f}")
    return res


if __name__ == "__main__":
    main()
