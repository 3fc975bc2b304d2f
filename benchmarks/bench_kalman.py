"""Kalman adapter costs, measured side by side in one run; prints and writes JSON.

1. Categorical EKF update cost per example and covariance memory for each structure at
   10, 100 and 1000 classes x 512-d (configurations whose covariance would exceed
   ``--max-gib`` are reported as skipped with the memory they would need).
2. Full covariance: structured (Kronecker-free) update vs the naive update with a dense
   kron-built Jacobian (target >= 3x), same minibatch, same prior.
3. Fit time and accuracy of ``kalman`` vs ``tip-adapter-f`` and ``linear-probe`` on the
   embedded data (ConSE features, 16 shots); methods not registered yet are skipped.

Usage: ``python -m benchmarks.bench_kalman [--quick]`` (writes benchmarks/results/kalman.json)
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.common import write_result
from pyro_clip.inference.covariance import COVARIANCES, make_covariance
from pyro_clip.inference.kalman import KalmanState, categorical_sqrt
from pyro_clip.inference.kalman_jacobian import DenseJacobian, KronJacobian

DIM = 512


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def structure_costs(
    classes: list[int], batch: int, repeats: int, max_gib: float, max_ms: float = 2000.0
) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for c in classes:
        n = c * (DIM + 1)
        x = torch.nn.functional.normalize(torch.randn(batch, DIM, generator=gen), dim=-1)
        x = torch.cat([x, torch.ones(batch, 1)], 1).double()
        labels = torch.randint(0, c, (batch,), generator=gen)
        for kind in COVARIANCES:
            need = {"full": n * n, "block": c * (DIM + 1) ** 2, "diag": n,
                    "lowrank": n * 11}[kind] * 8 / 2**30
            if need > max_gib:
                rows.append({"classes": c, "covariance": kind, "skipped": True,
                             "memory_gib_needed": round(need, 2)})
                continue
            # every structure's update is at least linear in C: skip sizes whose optimistic
            # (linear) extrapolation from the last measured size already exceeds the budget
            prev = next((r for r in reversed(rows) if r["covariance"] == kind
                         and "ms_per_example" in r), None)
            if prev is not None and batch == 1:
                est = prev["ms_per_example"] * c / prev["classes"]
                if est > max_ms:
                    rows.append({"classes": c, "covariance": kind, "skipped": True,
                                 "at_least_ms_per_example": round(est),
                                 "estimate": f"{prev['classes']}-class time x C ratio",
                                 "memory_mib": need * 2**10})
                    print(rows[-1], flush=True)
                    continue
            state = KalmanState(torch.zeros(n), make_covariance(kind, n, 1.0, c, rank=10))
            jac = KronJacobian.logits(x, c)

            def step(state=state, jac=jac, c=c, x=x, labels=labels):
                logits = x @ state.mean.reshape(c, DIM + 1).T
                state.update_categorical(jac, logits, labels)

            first = _median_time(step, 1)  # also the warm-up
            # a single step over the budget is reported as is, without repeats
            sec = first if 1e3 * first / batch > max_ms else _median_time(step, repeats)
            rows.append({"classes": c, "covariance": kind, "batch": batch,
                         "ms_per_example": 1e3 * sec / batch,
                         "memory_mib": state.cov.memory_bytes() / 2**20})
            print(rows[-1], flush=True)
    return rows


def structured_vs_naive(classes: int, batch: int, repeats: int) -> dict:
    """Same EKF step with the structured Jacobian and with a dense torch.kron Jacobian."""
    gen = torch.Generator().manual_seed(1)
    n = classes * (DIM + 1)
    x = torch.cat([torch.randn(batch, DIM, generator=gen), torch.ones(batch, 1)], 1).double()
    labels = torch.randint(0, classes, (batch,), generator=gen)
    logits = torch.randn(batch, classes, generator=gen).double()
    kron = KronJacobian.logits(x, classes)
    dense = DenseJacobian(torch.cat([torch.kron(torch.eye(classes, dtype=torch.float64),
                                                x[b][None]) for b in range(batch)]))

    def run(jac):
        state = KalmanState(torch.zeros(n), make_covariance("full", n, 1.0))
        return lambda: state.update_categorical(jac, logits, labels)

    def textbook():
        """The textbook gain form on the dense kron-built Jacobian (what one writes first):
        ``H = L^T J``, ``S = I + H P H^T``, ``K = P H^T S^-1``, ``P <- P - K (H P)``."""
        p_cov = torch.eye(n, dtype=torch.float64)
        probs = torch.softmax(logits, -1)
        sqrt_r = torch.block_diag(*categorical_sqrt(probs))
        h = sqrt_r @ dense.j
        pht = p_cov @ h.T
        gain = torch.linalg.solve(torch.eye(h.shape[0], dtype=torch.float64) + h @ pht, pht.T).T
        p_cov -= gain @ (h @ p_cov)
        return p_cov

    # same posterior covariance from both (the comparison is fair)
    state = KalmanState(torch.zeros(n), make_covariance("full", n, 1.0))
    state.update_categorical(kron, logits, labels)
    torch.testing.assert_close(state.cov.dense(), textbook(), rtol=1e-8, atol=1e-10)

    structured = _median_time(run(kron), repeats)
    naive = _median_time(run(dense), repeats)
    naive_textbook = _median_time(textbook, repeats)
    out = {"classes": classes, "dim": DIM, "batch": batch,
           "structured_ms_per_example": 1e3 * structured / batch,
           "naive_kron_ms_per_example": 1e3 * naive / batch,
           "textbook_kron_ms_per_example": 1e3 * naive_textbook / batch,
           # same downdate P -= W^T W, only the Jacobian product differs: bounded near 2x
           "speedup_same_update_dense_jacobian": naive / structured,
           # the textbook gain form on the kron-built Jacobian: the "naive" update
           "speedup": naive_textbook / structured, "target": 3.0}
    print(out, flush=True)
    return out


def method_comparison(shots: int) -> list[dict]:
    from pyro_clip.config import RunConfig
    from pyro_clip.methods import get_method_class
    from pyro_clip.runner import run

    rows = []
    for method, opts in [("zero-shot", {}), ("kalman", {"covariance": "full"}),
                         ("kalman", {"covariance": "block"}), ("kalman", {"covariance": "diag"}),
                         ("kalman", {"covariance": "lowrank"}), ("tip-adapter-f", {}),
                         ("linear-probe", {})]:
        try:
            get_method_class(method)
        except Exception:  # not registered yet: report and go on
            print(f"note: method {method!r} is not registered yet; skipped", flush=True)
            rows.append({"method": method, "skipped": "not registered"})
            continue
        cfg = RunConfig(method=method, backbone="conse", shots=shots, options=opts,
                        eval_datasets=[], progress=False,
                        out=f"/tmp/bench_kalman/{method}-{opts.get('covariance', '')}")
        res = run(cfg)
        rows.append({"method": method, "options": opts,
                     "fit_seconds": res.metrics["fit_seconds"],
                     "accuracy": res.metrics["test"]["accuracy"],
                     "nll": res.metrics["test"]["nll"], "ece": res.metrics["test"]["ece"]})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 and 100 classes, no methods")
    parser.add_argument("--max-gib", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    classes = [10, 100] if args.quick else [10, 100, 1000]
    result = {
        "threads": torch.get_num_threads(),
        "structures_batch1": structure_costs(classes, 1, args.repeats, args.max_gib),
        "structures_batch32": structure_costs([10], 32, args.repeats, args.max_gib),
        "structured_vs_naive": [structured_vs_naive(10, 1, args.repeats),
                                structured_vs_naive(10, 32, args.repeats)],
        "methods": [] if args.quick else method_comparison(16),
    }
    print(json.dumps(result, indent=2))
    write_result("kalman", result)


if __name__ == "__main__":
    main()
