"""Kalman adapter costs and accuracy, measured side by side in one run; prints and writes JSON.

1. Categorical EKF update cost per example and state memory for every structure at 10, 100
   and 1,000 classes x 512-d, each at the method's ``batch_size=auto`` (kron: max(16, C);
   block: 1 below 256 classes, 32 from 256; diag: 1; full, lowrank: clamp(160 // C, 1, 16)),
   plus lowrank with ``top_classes=64`` from 256 classes. A structure whose state does not
   fit is reported as skipped with the bytes it would need (targets: kron at 1,000 classes
   <= 2 ms/example and <= 100 MB; block <= 30 ms/example).
2. A kron Kalman fit of a synthetic 16,000-example, 1,000-class, 512-d problem (target < 2 min).
3. Accuracy of every structure against full on the embedded data (ConSE features) at 4 and
   16 shots, seeds 1-3 (target: every structure within 2 points of full, mean of 3 seeds).

The machine's load average (``os.getloadavg``) is recorded with the timings.
Usage: ``python -m benchmarks.bench_kalman [--quick] [--skip-accuracy]``
(writes benchmarks/results/kalman.json, or --name; the committed runs are kalman_costs.json,
kalman_costs_1thread.json, kalman_accuracy.json and kalman_accuracy_holdout.json)
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

from benchmarks.common import write_result
from pyro_clip.errors import ConfigError
from pyro_clip.inference.covariance import (
    COVARIANCES,
    estimate_bytes,
    make_covariance,
    structure,
)
from pyro_clip.inference.kalman import KalmanState
from pyro_clip.inference.kalman_jacobian import KronJacobian

DIM = 512
MAX_GIB = 8.0
LOWRANK_TOP_CLASSES = 64


def _auto_batch(kind: str, c: int) -> int:
    """The method's ``batch_size=auto``."""
    return structure(kind).auto_batch_size(c)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _inputs(n: int, gen: torch.Generator) -> torch.Tensor:
    x = F.normalize(torch.randn(n, DIM, generator=gen), dim=-1)
    return torch.cat([x, torch.ones(n, 1)], 1).double()


def structure_costs(
    classes: list[int], repeats: int, kinds: tuple[str, ...] = COVARIANCES
) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for c in classes:
        n = c * (DIM + 1)
        variants = [(kind, 0) for kind in kinds]
        if "lowrank" in kinds and c >= 256:  # its (R + C)^2 Gram eigh dominates: truncate
            variants.append(("lowrank", LOWRANK_TOP_CLASSES))
        for kind, top in variants:
            batch = _auto_batch(kind, c)
            row = {"classes": c, "dim": DIM, "covariance": kind, "batch": batch,
                   "load_avg_1min": os.getloadavg()[0]}
            if top:
                row["top_classes"] = top
            try:
                cov = make_covariance(kind, n, 1.0, n_blocks=c, rank=10, max_gib=MAX_GIB,
                                      top_classes=top,
                                      kron_mean_step="auto")  # the method's default
            except ConfigError as exc:
                rows.append({**row, "skipped": str(exc),
                             "state_bytes_needed": estimate_bytes(kind, n, c, 10)})
                print(rows[-1], flush=True)
                continue
            state = KalmanState(torch.zeros(n), cov)
            x = _inputs(batch, gen)
            labels = torch.randint(0, c, (batch,), generator=gen)
            jac = KronJacobian.logits(x, c)

            def step(state=state, jac=jac, c=c, x=x, labels=labels):
                logits = x @ state.mean.reshape(c, DIM + 1).T
                state.update_categorical(jac, logits, labels)

            first = _median_time(step, 1)  # warm-up (and the only run if it is slow)
            sec = first if first > 20 else _median_time(step, repeats)
            rows.append({**row, "ms_per_example": 1e3 * sec / batch,
                         "memory_mib": state.cov.memory_bytes() / 2**20})
            print(rows[-1], flush=True)
            del state, cov
    return rows


def kron_imagenet_scale(n_classes: int = 1000, shots: int = 16, seed: int = 0) -> dict:
    """Filter a synthetic ImageNet-sized problem with kron: clusters around class centres,
    prior mean a noisy copy of the centres (a weak zero-shot classifier)."""
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_classes, DIM, generator=gen), dim=-1)
    noise = lambda n, size: size * torch.randn(n, DIM, generator=gen) / DIM**0.5  # noqa: E731
    text = F.normalize(centres + noise(n_classes, 1.2), dim=-1)  # |noise| ~ 1.2 |centre|

    def draw(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n_classes).repeat_interleave(per_class)
        x = F.normalize(centres[y] + noise(len(y), 1.0), dim=-1)
        return torch.cat([x, torch.ones(len(y), 1)], 1).double(), y

    x, y = draw(shots)
    xt, yt = draw(5)
    scale = 50.0
    w0 = torch.cat([scale * text, torch.zeros(n_classes, 1)], 1).double()
    state = KalmanState(w0.reshape(-1), make_covariance("kron", w0.numel(), 1.0,
                                                        n_blocks=n_classes,
                                                        kron_mean_step="auto"))
    batch = _auto_batch("kron", n_classes)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    for idx in torch.randperm(len(y), generator=gen).split(batch):
        logits = x[idx] @ state.mean.reshape(n_classes, -1).T
        state.update_categorical(KronJacobian.logits(x[idx], n_classes), logits, y[idx])
    seconds = time.perf_counter() - t0
    acc = float(((xt @ state.mean.reshape(n_classes, -1).T).argmax(1) == yt).double().mean())
    zs = float(((xt @ w0.T).argmax(1) == yt).double().mean())
    out = {"examples": len(y), "classes": n_classes, "dim": DIM, "batch": batch,
           "fit_seconds": seconds, "ms_per_example": 1e3 * seconds / len(y),
           "target_seconds": 120, "test_accuracy": acc, "prior_mean_accuracy": zs,
           "state_mib": state.cov.memory_bytes() / 2**20, "load_avg_1min": load}
    print(out, flush=True)
    return out


def accuracy_vs_full(
    shots: list[int], seeds: list[int], options: dict | None = None, on_row=None
) -> dict:
    """Features are encoded (or read from the cache) once; each structure is fitted on the
    runner's few-shot split (``few_shot_indices``, validation shots from train) and scored
    on the 1,000-image test split with the runner's metrics."""
    from pyro_clip.data import few_shot_indices
    from pyro_clip.diagnostics.metrics import classification_metrics
    from pyro_clip.methods import MethodContext, create_method
    from pyro_clip.pipeline.config import RunConfig
    from pyro_clip.pipeline.run import get_backbone, load_features
    from pyro_clip.runtime import Runtime
    from pyro_clip.utils.seeding import seed_everything

    cfg = RunConfig(backbone="conse", progress=False).resolved()
    backbone = get_backbone(cfg.backbone)
    train_all = load_features(cfg, backbone, cfg.dataset, "train")
    test = load_features(cfg, backbone, cfg.dataset, "test")
    rows = []
    for k in shots:
        for seed in seeds:
            seed_everything(seed)
            tr_idx, val_idx = few_shot_indices(train_all.labels.numpy(), None, k, seed)
            train, val = train_all.subset(tr_idx), train_all.subset(val_idx)
            ctx = MethodContext(backbone, cfg.templates, seed, "/tmp/bench_kalman", False,
                                Runtime.resolve("cpu"))
            for cov in ("zero-shot", *COVARIANCES):
                name, opts = ("zero-shot", {}) if cov == "zero-shot" else (
                    "kalman", {"covariance": cov, **(options or {})})
                method = create_method(name, **opts).setup(ctx)
                t0 = time.perf_counter()
                method.fit(train, val)
                with torch.no_grad():
                    pred = method.predict(test.features[method.feature_kind], test.classnames)
                met = classification_metrics(pred.probs, test.labels)
                rows.append({"shots": k, "seed": seed, "covariance": cov,
                             "accuracy": float(met["accuracy"]), "nll": float(met["nll"]),
                             "ece": float(met["ece"]),
                             "prior_var": getattr(method, "selected", {}).get("prior_var"),
                             "seconds": time.perf_counter() - t0,
                             "load_avg_1min": os.getloadavg()[0]})
                print(rows[-1], flush=True)
                if on_row is not None:  # partial results survive an interrupted run
                    on_row({"options": options or {}, "runs": rows, "partial": True})
    summary = {}
    for k in shots:
        mean = {c: sum(r["accuracy"] for r in rows if r["shots"] == k and r["covariance"] == c)
                / len(seeds) for c in ("zero-shot", *COVARIANCES)}
        summary[str(k)] = {"mean_accuracy": mean,
                           "points_below_full": {c: 100 * (mean["full"] - mean[c])
                                                 for c in COVARIANCES}}
    return {"options": options or {}, "runs": rows, "summary": summary,
            "target_points_below_full": 2.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 and 100 classes only")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-costs", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 avoids oversubscription on a loaded machine)")
    parser.add_argument("--structures", default=",".join(COVARIANCES),
                        help="comma-separated structures for the cost part")
    parser.add_argument("--name", default=None, help="results file name (default kalman)")
    parser.add_argument("--shots", type=int, nargs="+", default=[4, 16],
                        help="accuracy part: shot counts")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                        help="accuracy part: seeds (4 5 6: a hold-out check of the defaults, "
                             "which were chosen looking at seeds 1-3)")
    parser.add_argument("--center-inputs", action="store_true",
                        help="accuracy part with --opt center_inputs=true for every structure")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    classes = [10, 100] if args.quick else [10, 100, 1000]
    kinds = tuple(args.structures.split(","))
    result: dict = {"threads": torch.get_num_threads()}
    if not args.skip_costs:
        result["structures"] = structure_costs(classes, args.repeats, kinds)
        if not args.quick and "kron" in kinds:
            result["kron_16000x1000"] = kron_imagenet_scale()
    if not args.skip_accuracy:
        opts = {"center_inputs": True} if args.center_inputs else None
        name = args.name or ("kalman_accuracy" if args.skip_costs else "kalman")
        result["accuracy"] = accuracy_vs_full(
            args.shots, args.seeds, opts,
            on_row=lambda part: write_result(name, {**result, "accuracy": part}))
    print(json.dumps(result, indent=2))
    # the accuracy part alone (it takes long on a shared machine) gets its own file
    write_result(args.name or ("kalman_accuracy" if args.skip_costs else "kalman"), result)


if __name__ == "__main__":
    main()
