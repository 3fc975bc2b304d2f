"""Active labelling with the Kalman adapter: random vs entropy vs BALD acquisition.

Embedded Fashion-MNIST with the offline ConSE backbone (not CLIP). Per seed: the model is
fitted on 1 shot per class of the train split (the prior variance chosen once, on a 4-shot
validation sample of the val split, and kept by every update), then each round scores the
unlabelled rest of the train split (the pool, 800 images minus the labelled ones), labels the
top ``--step`` images (random: a seeded draw) and calls ``update`` with them, until
``--budget`` labels. Test accuracy and ECE (1,000 test images) after every round.

Writes ``benchmarks/results/active.json`` (every curve point, per seed), ``active.png``
(accuracy and ECE vs labels used, mean ± std over seeds) and ``active.md`` (the section
``make bench`` puts into RESULTS.md).

Run: ``python -m benchmarks.bench_active [--seeds 1 2 3] [--budget 160] [--step 10]``.

``--new-classes`` runs the class-incremental check instead (``active_new_classes.json``): fit
on 4 shots of the first 5 classes, ``update`` with 4 shots of the other 5 (classes the model
has never seen), against a one-pass fit on all 40 labels; accuracy on the old and new classes'
test images, categorical and cosine observations.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS_DIR, write_result
from pyro_clip.utils.io import atomic_write

STRATEGIES = ("random", "entropy", "bald")
OPTIONS: dict[str, Any] = {"covariance": "block"}  # the demo's structure; other options default


def labelling_curve(features: dict, strategy: str, seed: int, budget: int, step: int,
                    options: dict[str, Any]) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Accuracy / ECE / NLL after each round of one seed and strategy, and those of a
    one-pass refit on the final labelled set (same validation sample and options)."""
    from pyro_clip.data import few_shot_indices
    from pyro_clip.diagnostics.metrics import classification_metrics
    from pyro_clip.methods import MethodContext, create_method
    from pyro_clip.utils.seeding import seed_everything

    pool, val_all, test, backbone, templates = (features[k] for k in (
        "train", "val", "test", "backbone", "templates"))
    seed_everything(seed)
    labelled, _ = few_shot_indices(pool.labels.numpy(), val_all.labels.numpy(), 1, seed)
    _, val_idx = few_shot_indices(pool.labels.numpy(), val_all.labels.numpy(), 4, seed)
    ctx = MethodContext(backbone, templates, seed, None, False)
    method = create_method("kalman", **options).setup(ctx)
    method.fit(pool.subset(labelled), val_all.subset(val_idx))
    rng = np.random.default_rng(seed)
    labelled = list(labelled)
    curve = []
    def score(model) -> dict[str, float]:
        with torch.no_grad():
            pred = model.predict(test.features["joint"], test.classnames)
        met = classification_metrics(pred.probs, test.labels)
        return {"labels": len(labelled), "accuracy": float(met["accuracy"]),
                "ece": float(met["ece"]), "nll": float(met["nll"])}

    while True:
        curve.append(score(method))
        if len(labelled) >= budget:
            refit = create_method("kalman", **options).setup(ctx)
            refit.fit(pool.subset(labelled), val_all.subset(val_idx))
            return curve, {**score(refit), "prior_var": refit.selected["prior_var"],
                           "sequential_prior_var": method.selected["prior_var"]}
        rest = np.setdiff1d(np.arange(len(pool)), labelled)
        if strategy == "random":
            pick = rng.choice(rest, size=step, replace=False)
        else:
            scores = method.acquisition(pool.features["joint"][rest], score=strategy)
            pick = rest[torch.argsort(scores, descending=True, stable=True)[:step].numpy()]
        method.update(pool.subset(pick))
        labelled.extend(int(i) for i in pick)


def summarise(runs: list[dict[str, Any]], strategies: tuple[str, ...]) -> dict[str, Any]:
    """Per strategy and budget: mean and std over seeds; paired differences to random."""
    out: dict[str, Any] = {}
    by = {(r["strategy"], r["seed"]): {p["labels"]: p for p in r["curve"]} for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    budgets = sorted({p["labels"] for r in runs for p in r["curve"]})
    for s in strategies:
        rows = []
        for b in budgets:
            acc = np.array([by[s, k][b]["accuracy"] for k in seeds])
            ece = np.array([by[s, k][b]["ece"] for k in seeds])
            diff = acc - np.array([by["random", k][b]["accuracy"] for k in seeds])
            rows.append({"labels": b, "accuracy_mean": acc.mean(), "accuracy_std": acc.std(),
                         "ece_mean": ece.mean(), "ece_std": ece.std(),
                         "acc_minus_random_mean": diff.mean(), "acc_minus_random_std": diff.std(),
                         "beats_random_every_seed": bool((diff > 0).all())})
        refit = np.array([r["refit"]["accuracy"] for r in runs if r["strategy"] == s])
        out[s] = {"budgets": rows,
                  "refit_accuracy_mean": float(refit.mean()),
                  "refit_accuracy_std": float(refit.std()),
                  "mean_accuracy_over_budgets": float(np.mean([r["accuracy_mean"]
                                                               for r in rows])),
                  "mean_ece_over_budgets": float(np.mean([r["ece_mean"] for r in rows]))}
    return out


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for s, block in summary.items():
        rows = block["budgets"]
        x = [r["labels"] for r in rows]
        for ax, key in zip(axes, ("accuracy", "ece"), strict=True):
            m = np.array([r[f"{key}_mean"] for r in rows])
            sd = np.array([r[f"{key}_std"] for r in rows])
            scale = 100 if key == "accuracy" else 1
            ax.plot(x, scale * m, marker="o", ms=3, label=s)
            ax.fill_between(x, scale * (m - sd), scale * (m + sd), alpha=0.2)
    axes[0].set(xlabel="labels used", ylabel="test accuracy (%)", title="accuracy")
    axes[1].set(xlabel="labels used", ylabel="ECE", title="calibration (ECE)")
    axes[0].legend()
    fig.suptitle("Kalman adapter (block), embedded Fashion-MNIST, ConSE backbone (not CLIP); "
                 "mean ± std over seeds", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def markdown(summary: dict[str, Any], seeds: list[int], png: str) -> str:
    order = [*STRATEGIES, "variance"]
    strategies = sorted(summary, key=order.index)  # random first, also when read from JSON
    lines = ["## Active labelling (`python -m benchmarks.bench_active`)", "",
             f"Kalman adapter `{OPTIONS}`, 1 shot per class then +10 labels per round from the "
             f"train split's pool, seeds {seeds}; test accuracy % (mean ± std) and, for each "
             "active strategy, its paired difference to random (points, mean ± std over "
             f"seeds). Plot: `{png}`. Last column: a one-pass fit on the same final labels, "
             "prior variance re-chosen (the sequential model keeps the one chosen at 1 shot). "
             "Reading: docs/kalman.md, \"Active labelling, measured\".", "",
             "| labels | " + " | ".join(strategies)
             + " | " + " | ".join(f"{s} - random" for s in strategies if s != "random") + " |",
             "|---:|" + "---:|" * (2 * len(strategies) - 1)]
    budgets = [r["labels"] for r in summary[strategies[0]]["budgets"]]
    for i, b in enumerate(budgets):
        cells = [f"{100 * summary[s]['budgets'][i]['accuracy_mean']:.1f} ± "
                 f"{100 * summary[s]['budgets'][i]['accuracy_std']:.1f}" for s in strategies]
        cells += [f"{100 * summary[s]['budgets'][i]['acc_minus_random_mean']:+.1f} ± "
                  f"{100 * summary[s]['budgets'][i]['acc_minus_random_std']:.1f}"
                  for s in strategies if s != "random"]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    last = budgets[-1]
    lines += ["", "| strategy | mean accuracy over budgets % | mean ECE over budgets | "
              f"sequential at {last} labels % | one-pass refit on the same {last} labels % |",
              "|---|---:|---:|---:|---:|"]
    lines += [f"| {s} | {100 * v['mean_accuracy_over_budgets']:.1f} | "
              f"{v['mean_ece_over_budgets']:.3f} | "
              f"{100 * v['budgets'][-1]['accuracy_mean']:.1f} ± "
              f"{100 * v['budgets'][-1]['accuracy_std']:.1f} | "
              f"{100 * v['refit_accuracy_mean']:.1f} ± {100 * v['refit_accuracy_std']:.1f} |"
              for s, v in ((s, summary[s]) for s in strategies)]
    return "\n".join(lines) + "\n"


def load_features() -> dict[str, Any]:
    from pyro_clip.pipeline.config import RunConfig
    from pyro_clip.pipeline.run import get_backbone
    from pyro_clip.pipeline.run import load_features as load

    cfg = RunConfig(backbone="conse", progress=False).resolved()
    backbone = get_backbone(cfg.backbone)
    out: dict[str, Any] = {s: load(cfg, backbone, cfg.dataset, s) for s in ("train", "val",
                                                                             "test")}
    return {**out, "backbone": backbone, "templates": cfg.templates}


def new_class_study(features: dict, seeds: list[int], shots: int = 4) -> list[dict[str, Any]]:
    """Old / new / all test accuracy before and after an update that adds 5 unseen classes,
    and of a one-pass fit on the same labels with every class (see module docstring)."""
    from pyro_clip.data import few_shot_indices
    from pyro_clip.methods import MethodContext, create_method

    pool, val_all, test = features["train"], features["val"], features["test"]
    names, old_ids = pool.classnames, list(range(5))
    rows = []
    for seed in seeds:
        tr, va = few_shot_indices(pool.labels.numpy(), val_all.labels.numpy(), shots, seed)
        old_tr = [i for i in tr if pool.labels[i] < 5]
        new_tr = [i for i in tr if pool.labels[i] >= 5]
        old_va = [i for i in va if val_all.labels[i] < 5]
        ctx = MethodContext(features["backbone"], features["templates"], seed, None, False)

        def acc(model) -> dict[str, float]:
            hit = (model.predict(test.features["joint"], names).probs.argmax(1)
                   == test.labels).float()
            return {"old": float(hit[test.labels < 5].mean()),
                    "new": float(hit[test.labels >= 5].mean()), "all": float(hit.mean())}

        row: dict[str, Any] = {"seed": seed}
        for obs in ("categorical", "cosine"):
            opts = {**OPTIONS, "observation": obs}
            m = create_method("kalman", **opts).setup(ctx)
            m.fit(pool.subset(old_tr, old_ids), val_all.subset(old_va, old_ids))
            row[f"{obs}_before_update"] = acc(m)
            m.update(pool.subset(new_tr))
            row[f"{obs}_after_update"] = acc(m)
            one = create_method("kalman", **opts).setup(ctx)
            one.fit(pool.subset(list(tr)), val_all.subset(list(va)))
            row[f"{obs}_one_pass_all_classes"] = acc(one)
        rows.append(row)
        print(row, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--budget", type=int, default=160)
    p.add_argument("--step", type=int, default=10)
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES),
                   choices=[*STRATEGIES, "variance"])
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--new-classes", action="store_true",
                   help="the class-incremental check instead of the labelling curves")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: the small per-example updates gain nothing from "
                        "more and slow down on a loaded machine)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if "random" not in args.strategies:
        p.error("--strategies must include random (the baseline of the paired differences)")
    features = load_features()
    if args.new_classes:
        rows = new_class_study(features, args.seeds)
        write_result("active_new_classes", {"options": OPTIONS, "seeds": args.seeds,
                                            "shots": 4, "runs": rows}, args.out_dir)
        return
    runs, started = [], time.perf_counter()
    for seed in args.seeds:
        for s in args.strategies:
            t0 = time.perf_counter()
            curve, refit = labelling_curve(features, s, seed, args.budget, args.step, OPTIONS)
            runs.append({"strategy": s, "seed": seed, "curve": curve, "refit": refit,
                         "seconds": time.perf_counter() - t0})
            print(f"seed {seed} {s:8s} " + " ".join(
                f"{p['labels']}:{100 * p['accuracy']:.1f}" for p in curve), flush=True)
    summary = summarise(runs, tuple(args.strategies))
    png = args.out_dir / "active.png"
    plot(summary, png)
    text = markdown(summary, args.seeds, png.name)
    atomic_write(args.out_dir / "active.md", lambda path: path.write_text(text))
    write_result("active", {"options": OPTIONS, "seeds": args.seeds, "budget": args.budget,
                            "step": args.step, "strategies": args.strategies,
                            "threads": args.threads,
                            "seconds": time.perf_counter() - started, "summary": summary,
                            "runs": runs}, args.out_dir)


if __name__ == "__main__":
    main()
