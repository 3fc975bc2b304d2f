"""Peak memory of a default ``kalman`` fit (``covariance=auto``) on a 100-class, 512-d problem.

Synthetic features (clusters around random class centres, a noisy copy of the centres as the
zero-shot text classifier), ``shots`` examples per class for training and validation, the
method's default options (Monte Carlo predictive, 1,000 draws); prints the structure
``covariance=auto`` chose and the process's peak resident memory (``ru_maxrss``) before the
fit, after the fit, and after predicting ``--test`` examples and the training set and running
the held-out posterior predictive checks on them (what a ``fit`` run's diagnostics do with the
predictions). The tiny random open_clip backbone supplies only the logit scale; the 512-d
class embeddings are placed in the method context's text cache.

Usage: ``python -m benchmarks.kalman_default_memory [--classes 100] [--shots 4] [--test 1000]``
(writes benchmarks/results/kalman_default_memory.json)
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
import torch.nn.functional as F

from benchmarks.common import write_result
from pyro_clip.diagnostics.ppc import ppc_checks, ppc_summary
from pyro_clip.diagnostics.predictive import predictive_draws
from pyro_clip.methods import MethodContext, create_method
from pyro_clip.pipeline.run import get_backbone
from pyro_clip.types import FeatureSet

DIM = 512
TINY = "open_clip:pyro-clip-tiny"


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--test", type=int, default=1000, help="test examples (about)")
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(args.classes, DIM, generator=gen), dim=-1)
    names = [f"class {c}" for c in range(args.classes)]

    def split(per_class: int, name: str) -> FeatureSet:
        y = torch.arange(args.classes).repeat_interleave(per_class)
        x = F.normalize(centres[y] + torch.randn(len(y), DIM, generator=gen) / DIM**0.5, dim=-1)
        return FeatureSet({"joint": x}, y, names, name)

    train, val = split(args.shots, "train"), split(args.shots, "val")
    test = split(max(1, args.test // args.classes), "test")  # predicted once, for its memory
    ctx = MethodContext(get_backbone(TINY), seed=1, progress=False)
    text = F.normalize(centres + 1.2 * torch.randn(args.classes, DIM, generator=gen)
                       / DIM**0.5, dim=-1)
    ctx._text_cache[tuple(names)] = text
    before = _peak_mib()
    method = create_method("kalman").setup(ctx)
    started = time.perf_counter()
    method.fit(train, val)
    after_fit = _peak_mib()
    fit_seconds = time.perf_counter() - started
    for data in (test, train):  # the predictions a run makes, and their held-out checks
        pred = method.predict(data.features["joint"], names)
        draws = predictive_draws(pred.probs, data.labels, names, pred.logit_samples,
                                 seed=1, replicates=pred.replicates)
        ppc_summary(ppc_checks(pred.probs, draws))
    seconds = time.perf_counter() - started
    row = {
        "classes": args.classes, "dim": DIM, "shots": args.shots,
        "covariance": method.options["covariance"],
        "state_mib": method.state.cov.memory_bytes() / 2**20,
        "test_examples": len(test), "mc_samples": method.options["mc_samples"],
        "peak_rss_mib_before_fit": before, "peak_rss_mib_after_fit": after_fit,
        "peak_rss_mib_after": _peak_mib(),
        "fit_seconds": fit_seconds, "fit_predict_and_checks_seconds": seconds,
        "selected": method.selected,
    }
    print(row, flush=True)
    write_result("kalman_default_memory", {"rows": [row]})


if __name__ == "__main__":
    main()
