"""Base-to-new sweep of the prompt learners on the offline default (ConSE, embedded data).

Usage: ``python benchmarks/bench_prompt_sweep.py [--part coop|cocoop|maple|all] [--seeds 1 2 3]
[--shots 4 16] [--threads 1] [--no-select] [--match REGEX] [--summarise-only]``. For each
(seed, shots) split of the runner's base-to-new protocol (first 5 classes base, last 5 new) it
fits: ``zero-shot``; ``coop`` and ``kgcoop`` (w = 8) under ``augment=crop-flip|flip|none``;
``coop-ove-pg`` over a lambda x alpha grid (lambda up to 20) under crop-flip and flip; and
``coop-ove-pg`` with ``select=pseudo-new`` under both ``select_score`` criteria (lambda, alpha
chosen on base-class folds only). ``--part cocoop`` runs a small CoCoOp grid; ``--part maple``
a smoke-scale MaPLe run on the tiny random open_clip ViT (random weights: accuracy is chance,
the row measures that the machinery trains end to end and what a fit costs). Rows are appended
to ``results/prompt_sweep.jsonl`` as they finish, with a hash of the prompt-learner sources
(``code``): a rerun resumes the rows of the same hash and the summary uses only those. The
summary (mean +- std over seeds, paired per-seed differences, issue 14's target check) goes to
``results/prompt_sweep.json`` and ``results/prompt_sweep.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS_DIR, write_result
from pyro_clip.diagnostics.metrics import harmonic_mean
from pyro_clip.methods import MethodContext, create_method
from pyro_clip.pipeline.config import RunConfig
from pyro_clip.pipeline.run import augmented_train, encode_images, get_backbone, select_images
from pyro_clip.utils.io import atomic_write

LAMS = [0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
#: priors stronger than the paper's range (issue 14: the strongest grid point did best)
STRONG_LAMS = [10.0, 20.0]
ALPHAS = [0.1, 1.0, 10.0]
#: the training-time augmentations measured for every CoOp-family setting ("" = the default)
AUGMENTS = ["", "flip"]
#: settings also run without augmentation: the paper default and two strong priors
NO_AUG = [(0.2, 1.0), (5.0, 0.1), (20.0, 0.1)]


def _aug(augment: str) -> tuple[str, dict[str, Any]]:
    return (f" augment={augment}", {"augment": augment}) if augment else ("", {})


def coop_grid(shots: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, method, options) of the CoOp part; select=pseudo-new searches the same grid."""
    lams = LAMS + STRONG_LAMS
    rows = [("zero-shot", "zero-shot", {})]
    for augment in [*AUGMENTS, "none"]:
        tag, opt = _aug(augment)
        rows += [(f"coop{tag}", "coop", opt), (f"kgcoop{tag}", "kgcoop", opt)]
    for augment in AUGMENTS:
        tag, opt = _aug(augment)
        rows += [(f"coop-ove-pg{tag} lam={lam} alpha={a}", "coop-ove-pg",
                  {**opt, "lam": lam, "alpha": a}) for lam in lams for a in ALPHAS]
    rows += [(f"coop-ove-pg augment=none lam={lam} alpha={a}", "coop-ove-pg",
              {"lam": lam, "alpha": a, "augment": "none"}) for lam, a in NO_AUG]
    for augment in AUGMENTS:  # last: the expensive searches (24 candidates x 2 folds each)
        tag, opt = _aug(augment)
        for score in ("accuracy", "log-score"):
            rows.append((f"coop-ove-pg{tag} select=pseudo-new score={score}", "coop-ove-pg",
                         {**opt, "select": "pseudo-new", "select_score": score,
                          "select_grid": {"lam": lams, "alpha": ALPHAS}}))
    return rows


def cocoop_grid() -> list[tuple[str, str, dict[str, Any]]]:
    """CoCoOp, its OVE-PG variant at the paper's lambda (0.1) and stronger priors."""
    return [("cocoop", "cocoop", {})] + [
        (f"cocoop-ove-pg lam={lam} alpha={a}", "cocoop-ove-pg", {"lam": lam, "alpha": a})
        for lam, a in ((0.1, 1.0), (1.0, 1.0), (5.0, 1.0), (5.0, 0.1), (20.0, 0.1))]


#: sources whose changes can alter a prompt learner's numbers; rows record their hash
CODE_GLOBS = ["pyro_clip/methods/base.py", "pyro_clip/methods/prompt_learning.py",
              "pyro_clip/methods/kgcoop.py", "pyro_clip/methods/maple.py",
              "pyro_clip/methods/zero_shot.py", "pyro_clip/models/*.py", "pyro_clip/prompts/*.py",
              "pyro_clip/data/*.py", "pyro_clip/backbones/*.py", "pyro_clip/training/*.py",
              "pyro_clip/features/*.py", "pyro_clip/pipeline/*.py", "pyro_clip/types.py",
              "pyro_clip/diagnostics/metrics.py", "pyro_clip/utils/seeding.py",
              "pyro_clip/runtime.py"]


ROOT = Path(__file__).resolve().parents[1]


def code_fingerprint(root: Path = ROOT) -> str:
    """sha256 over the prompt-learner sources: a row is reused only under the same hash."""
    h = hashlib.sha256()
    for path in sorted({p for g in CODE_GLOBS for p in root.glob(g)}):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


class Split:
    """The runner's base-to-new data for one (backbone, seed, shots), views encoded lazily
    (:func:`pyro_clip.pipeline.run.select_images` chooses the images, as ``pyro-clip fit`` does)."""

    def __init__(self, backbone_spec: str, seed: int, shots: int, method: str = "coop") -> None:
        # the method decides the feature kind encode_images returns (pixels for MaPLe)
        self.cfg = RunConfig(backbone=backbone_spec, method=method, protocol="base-to-new",
                             shots=shots, seed=seed, eval_datasets=[], progress=False).resolved()
        self.backbone = get_backbone(backbone_spec)
        cfg, b = self.cfg, self.backbone
        self.images = select_images(cfg)
        self.train = encode_images(cfg, b, self.images.train)
        self.val = encode_images(cfg, b, self.images.val)
        test = encode_images(cfg, b, self.images.test)
        self.base = test.restrict_classes(self.images.base_ids)
        self.new = test.restrict_classes(self.images.new_ids)
        self._views: dict[tuple[str, int], Any] = {}

    def train_for(self, method) -> Any:
        views = getattr(method, "train_views", lambda: None)()
        if not views:
            return self.train
        if views not in self._views:
            self._views[views] = augmented_train(self.cfg, self.backbone, self.images.train,
                                                 self.train, *views)
        return self._views[views]


def fit_eval(split: Split, method_name: str, options: dict[str, Any]) -> dict[str, Any]:
    method = create_method(method_name, **options)
    method.setup(MethodContext(split.backbone, split.cfg.templates, split.cfg.seed,
                               progress=False))
    train = split.train_for(method)
    t0 = time.perf_counter()
    method.fit(train, split.val)
    fit_s = time.perf_counter() - t0
    acc = {}
    with torch.no_grad():
        for name, data in (("base", split.base), ("new", split.new)):
            probs = method.predict(data.features[method.feature_kind], data.classnames).probs
            acc[name] = float((probs.argmax(1) == data.labels).float().mean())
    sel = method.selected.get("pseudo_new", {})
    return {**acc, "h": harmonic_mean(acc["base"], acc["new"]), "fit_seconds": fit_s,
            "selected": sel.get("best"), "selection_table": sel.get("table")}


def reference(row: dict[str, Any]) -> str:
    """The baseline a row's new-class accuracy is paired with: its part's plain learner under
    the same augmentation (``coop``, ``coop augment=flip``, ``cocoop``, ``tiny-vit maple``)."""
    if row["part"] == "coop":
        augment = row["options"].get("augment")
        return f"coop augment={augment}" if augment else "coop"
    return {"cocoop": "cocoop", "maple": "tiny-vit maple"}[row["part"]]


def _mean_std(vals: list[float]) -> tuple[float, float]:
    return statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean +- std over seeds per (setting, shots), and the paired per-seed differences of
    new-class accuracy against the setting's reference (:func:`reference`) and default coop."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    by_seed: dict[tuple[str, int, int], dict[str, Any]] = {}
    for r in rows:  # one row per (setting, shots, seed): the first (parallel workers may repeat)
        key = (r["label"], r["shots"], r["seed"])
        if key not in by_seed:
            by_seed[key] = r
            groups[(r["label"], r["shots"])].append(r)
    out = []
    for (label, shots), rs in groups.items():
        s = {"label": label, "shots": shots, "n_seeds": len(rs), "seeds": [r["seed"] for r in rs],
             "fit_seconds": statistics.mean(r["fit_seconds"] for r in rs)}
        for k in ("base", "new", "h"):
            s[k], s[f"{k}_std"] = _mean_std([100 * r[k] for r in rs])
        for name, ref in (("ref", reference(rs[0])), ("coop", "coop")):
            if rs[0]["part"] != "coop" and name == "coop":
                continue
            diffs = [100 * (r["new"] - by_seed[(ref, shots, r["seed"])]["new"]) for r in rs
                     if (ref, shots, r["seed"]) in by_seed]
            if diffs:
                s[f"new_minus_{name}"], s[f"new_minus_{name}_std"] = _mean_std(diffs)
                s[f"{name}_label"] = ref
        s["selected"] = [r["selected"] for r in rs if r.get("selected")]
        out.append(s)
    return out


#: the OVE-PG papers' defaults per learner (CoOp lambda 0.2, CoCoOp 0.1; alpha 1)
PAPER_DEFAULTS = ("coop-ove-pg", "lam=0.2 alpha=1.0"), ("cocoop-ove-pg", "lam=0.1 alpha=1.0")


def is_selected(label: str) -> bool:
    """Settings chosen without new-class data: the papers' defaults and pseudo-new searches."""
    return "select=" in label or any(label.startswith(m) and label.endswith(d)
                                     for m, d in PAPER_DEFAULTS)


def target_check(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 14's target for each selected setting: new >= zero-shot new and above coop's by
    more than the seed spread, judged unpaired (difference of means > the larger seed std) and
    paired (mean per-seed difference > its std)."""
    index = {(s["label"], s["shots"]): s for s in summary}
    out = []
    for s in summary:
        zs = index.get(("zero-shot", s["shots"]))
        ref = index.get((s.get("ref_label", ""), s["shots"]))
        if not is_selected(s["label"]) or zs is None or ref is None:
            continue
        gap = s["new"] - ref["new"]
        spread = max(s["new_std"], ref["new_std"])
        out.append({"label": s["label"], "shots": s["shots"], "new": s["new"],
                    "new_std": s["new_std"], "zero_shot_new": zs["new"], "ref": ref["label"],
                    "ref_new": ref["new"], "ref_new_std": ref["new_std"], "gap": gap,
                    "spread": spread, "paired": s["new_minus_ref"],
                    "paired_std": s["new_minus_ref_std"],
                    "meets_zero_shot": s["new"] >= zs["new"],
                    "meets_unpaired": s["new"] >= zs["new"] and gap > spread,
                    "meets_paired": s["new"] >= zs["new"] and
                    s["new_minus_ref"] > s["new_minus_ref_std"] and s["new_minus_ref"] > 0})
    return out


def _pm(s: dict[str, Any], key: str) -> str:
    return f"{s[key]:+.1f} ± {s[f'{key}_std']:.1f}" if key in s else "—"


def markdown(summary: list[dict[str, Any]], targets: list[dict[str, Any]]) -> str:
    lines = ["| setting | shots | seeds | base | new | H | new - ref (paired) | "
             "new - coop (paired) | fit s |", "|---|---|---|---|---|---|---|---|---|"]
    for s in sorted(summary, key=lambda s: (s["shots"], s["label"])):
        lines.append(f"| {s['label']} | {s['shots']} | {s['n_seeds']} "
                     f"| {s['base']:.1f} ± {s['base_std']:.1f} | "
                     f"{s['new']:.1f} ± {s['new_std']:.1f} | {s['h']:.1f} ± {s['h_std']:.1f} "
                     f"| {_pm(s, 'new_minus_ref')} | {_pm(s, 'new_minus_coop')} "
                     f"| {s['fit_seconds']:.1f} |")
    lines += ["", "Target (issue 14) for the settings chosen without new-class data: new >= "
              "zero-shot new, and above the reference (same learner and augmentation, no OVE-PG) "
              "by more than the seed spread.", "",
              "| setting | shots | new | zero-shot new | ref new | gap (unpaired) | spread "
              "| paired diff | >= zero-shot | unpaired met | paired met |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in sorted(targets, key=lambda t: (t["shots"], t["label"])):
        yes = {True: "yes", False: "no"}
        lines.append(f"| {t['label']} | {t['shots']} | {t['new']:.1f} ± {t['new_std']:.1f} "
                     f"| {t['zero_shot_new']:.1f} | {t['ref_new']:.1f} ± {t['ref_new_std']:.1f} "
                     f"| {t['gap']:+.1f} | {t['spread']:.1f} | {t['paired']:+.1f} ± "
                     f"{t['paired_std']:.1f} | {yes[t['meets_zero_shot']]} "
                     f"| {yes[t['meets_unpaired']]} | {yes[t['meets_paired']]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--part", choices=["coop", "cocoop", "maple", "all"], default="all")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--shots", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--summarise-only", action="store_true")
    ap.add_argument("--no-select", action="store_true",
                    help="skip the select=pseudo-new rows (the costly searches) for now")
    ap.add_argument("--match", default="", help="run only the settings whose label matches "
                    "this regular expression (e.g. '^coop-ove-pg select=')")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    jsonl = RESULTS_DIR / "prompt_sweep.jsonl"
    code = code_fingerprint()
    plan: list[tuple[str, str, int, list]] = []
    if args.part in ("coop", "all"):
        plan += [("conse", "coop", shots, coop_grid(shots)) for shots in args.shots]
    if args.part in ("cocoop", "all"):
        plan += [("conse", "cocoop", shots, cocoop_grid()) for shots in args.shots]
    if args.part in ("maple", "all"):
        plan += [("open_clip:pyro-clip-tiny", "maple", shots, [
            ("tiny-vit maple", "maple", {"prompt_depth": 2}),
            ("tiny-vit maple-ove-pg", "maple-ove-pg", {"prompt_depth": 2}),
        ]) for shots in (4,)]
    old = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    # resume: rows of the same code are reused; older rows stay in the log, out of the summary
    done = {(r["label"], r["shots"], r["seed"]) for r in old if r.get("code") == code}
    for spec, part, shots, grid in ([] if args.summarise_only else plan):
        for seed in args.seeds:
            split = None
            for label, method, options in grid:
                if ((label, shots, seed) in done or (args.no_select and "select=" in label)
                        or not re.search(args.match, label)):
                    continue
                split = split or Split(spec, seed, shots, grid[-1][1])
                row = {"part": part, "label": label, "method": method, "options": options,
                       "shots": shots, "seed": seed, "code": code,
                       **fit_eval(split, method, options)}
                print(json.dumps(row), flush=True)
                with jsonl.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    rows = [r for r in rows if r.get("code") == code]
    summary = summarise(rows)
    targets = target_check(summary)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    write_result("prompt_sweep", {"summary": summary, "targets": targets, "code": code,
                                  "rows": rows, "uptime": load,
                                  "omp_num_threads": os.environ.get("OMP_NUM_THREADS")})
    table = markdown(summary, targets)
    atomic_write(Path(RESULTS_DIR / "prompt_sweep.md"), lambda p: p.write_text(table))
    print(table)


if __name__ == "__main__":
    main()
