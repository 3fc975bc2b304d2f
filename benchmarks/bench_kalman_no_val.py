"""Kalman without validation data, through the Python API (``pyro_clip.fit(..., val=None)``).

With no validation set the ``kalman`` method keeps the first value of ``prior_var_grid``; this
measures what that costs against the CLI's protocol (prior variance chosen on the min(K, 4)-shot
validation sample), and whether the Laplace evidence of the filtered posterior,
``log p(D) ~ log p(D | m) + log N(m; m0, s0 I) - log q(m)`` (MacKay 1992), would choose the
prior variance as well without validation data. ConSE backbone, embedded data, full test
split, covariance ``block``, 4 and 16 shots, seeds 1-3, prior variances 1, 10, 100.

Usage: ``python -m benchmarks.bench_kalman_no_val`` (writes
benchmarks/results/kalman_no_val.json).
"""

from __future__ import annotations

import math
import statistics

import torch
import torch.nn.functional as F

import pyro_clip as pc
from benchmarks.common import write_result

GRID = (1.0, 10.0, 100.0)
#: how each rule picks one run among a seed's prior variances (runs in GRID order)
RULES = {
    "val=None (first grid value)": lambda runs: runs[0],
    "validation NLL (CLI)": lambda runs: min(runs, key=lambda run: run["val_nll"]),
    "Laplace evidence": lambda runs: max(runs, key=lambda run: run["evidence"]),
}


def laplace_evidence(model: pc.FittedModel, train: pc.Features) -> float:
    """``log p(y | m) + log N(m; m0, s0 I) - log q(m)`` at the filtered mean ``m``."""
    k = model.method
    state, adapter = k.state, k.adapter
    text = k.ctx.text_classifier(k.train_classnames)
    loglik = -F.cross_entropy(adapter.logits(state.mean, train.x, text), train.y,
                              reduction="sum").item()
    d = state.mean - adapter.prior_mean()
    log_prior = (-0.5 * (d @ d) / k.prior_var
                 - 0.5 * d.numel() * math.log(2 * math.pi * k.prior_var)).item()
    post = state.posterior()
    log_q = post.log_prob(state.mean.reshape(post.event_shape)).item()
    return loglik + log_prior - log_q


def main() -> None:
    backbone = pc.load_backbone("conse", device="cpu")
    test = pc.encode(backbone, pc.load_dataset("fashion-mnist", "test"))
    runs = []
    for shots in (4, 16):
        for seed in (1, 2, 3):
            train = pc.encode(backbone, pc.load_dataset("fashion-mnist", "train", shots=shots,
                                                        seed=seed))
            val = pc.encode(backbone, pc.load_dataset("fashion-mnist", "val",
                                                      shots=min(shots, 4), seed=seed))
            for pv in GRID:
                model = pc.fit("kalman", train, None, backbone=backbone, covariance="block",
                               prior_var=pv, seed=seed)
                probs_val = model.predict(val)
                runs.append({
                    "shots": shots, "seed": seed, "prior_var": pv,
                    "evidence": laplace_evidence(model, train),
                    "val_nll": -probs_val[torch.arange(len(val)), val.y].log().mean().item(),
                    "test_acc": (model.predict(test).argmax(1) == test.y).float().mean().item(),
                })
                print(runs[-1], flush=True)
    summary = {}
    for shots in (4, 16):
        for name, pick in RULES.items():
            chosen = [pick([r for r in runs if r["shots"] == shots and r["seed"] == s])
                      for s in (1, 2, 3)]
            accs = [100 * r["test_acc"] for r in chosen]
            summary[f"{shots} shots, {name}"] = {
                "prior_var": [r["prior_var"] for r in chosen],
                "test_acc_mean": statistics.mean(accs), "test_acc_std": statistics.stdev(accs)}
    print(summary)
    write_result("kalman_no_val", {"grid": GRID, "summary": summary, "runs": runs})


if __name__ == "__main__":
    main()
