"""Tip-Adapter vs Tip-Adapter-F variants on one data set, features loaded once (docs/baselines.md).

Each variant is ``name=method:json-options``; every variant sees the same few-shot splits as
``pyro-clip fit`` (``few_shot_indices``) and is scored on the test split::

    OMP_NUM_THREADS=1 python scripts/tip_adapter_f_study.py \\
        'tip=tip-adapter:{}' 'paper=tip-adapter-f:{"init_alpha": 1, "init_beta": 1}' \\
        'now=tip-adapter-f:{}' --shots 4 16 --seeds 1 2 3

Prints one line per fit and a mean ± std (over seeds) summary per variant and shot count.
"""

from __future__ import annotations

import argparse
import json
import statistics

from pyro_clip.data import few_shot_indices
from pyro_clip.diagnostics.metrics import accuracy
from pyro_clip.methods import MethodContext, create_method
from pyro_clip.pipeline.config import RunConfig
from pyro_clip.pipeline.run import get_backbone, load_features
from pyro_clip.utils.seeding import seed_everything


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help="name=method:json-options")
    ap.add_argument("--shots", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--backbone", default="conse")
    ap.add_argument("--dataset", default="fashion-mnist")
    args = ap.parse_args()
    variants = {}
    for v in args.variants:
        name, spec = v.split("=", 1)
        method, opts = spec.split(":", 1)
        variants[name] = (method, json.loads(opts))
    cfg = RunConfig(backbone=args.backbone, dataset=args.dataset, eval_datasets=[],
                    progress=False)
    bb = get_backbone(cfg.backbone)
    tr, va, te = (load_features(cfg, bb, args.dataset, s) for s in ("train", "val", "test"))
    scores: dict[tuple[str, int], list[float]] = {}
    for shots in args.shots:
        for seed in args.seeds:
            ti, vi = few_shot_indices(tr.labels.numpy(), va.labels.numpy(), shots, seed)
            train, val = tr.subset(ti), va.subset(vi)
            for name, (method, opts) in variants.items():
                seed_everything(seed)
                m = create_method(method, **opts)
                m.setup(MethodContext(bb, cfg.templates, seed, None, False))
                m.fit(train, val)
                acc = 100 * accuracy(m.predict(te.features["joint"], te.classnames).probs,
                                     te.labels)
                scores.setdefault((name, shots), []).append(acc)
                sel = {k: m.selected.get(k) for k in ("alpha", "beta", "keys", "val_accuracy")}
                print(f"{name} {shots}-shot seed {seed}: {acc:.1f} {sel}", flush=True)
    for (name, shots), accs in scores.items():
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        runs = ", ".join(f"{a:.1f}" for a in accs)
        print(f"{name} {shots}-shot: {statistics.mean(accs):.2f} ± {sd:.2f} ({runs})")


if __name__ == "__main__":
    main()
