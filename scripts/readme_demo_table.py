"""Print the README's demo table from the run folders ``pyro-clip demo`` wrote.

One row per method: accuracy, ECE, NLL, shifted accuracy and OOD AUROC of the few-shot run
(``out/<method>``), base / new / H of the base-to-new run (``out/<method>_base-to-new``),
from :func:`pyro_clip.reporting.tables.run_summary`.

    python scripts/readme_demo_table.py runs/demo
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pyro_clip.errors import DataError
from pyro_clip.reporting.tables import run_summary
from pyro_clip.suite.demo import demo_methods, run_dir

FEW_SHOT = (("acc", "acc"), ("ece", "ECE"), ("nll", "NLL"), ("shift_acc", "shifted acc"),
            ("ood_auroc", "OOD AUROC"))
BASE_TO_NEW = (("base", "base"), ("new", "new"), ("h", "H"))
PERCENT = {"acc", "shift_acc", "ood_auroc", "base", "new", "h"}
#: the README's row order: the prior, the prompt learners, the Bayesian adapter, the baselines
#: (demo methods not named here follow in registry order)
README_ORDER = ("zero-shot", "coop", "coop-ove-pg", "kgcoop", "cocoop", "cocoop-ove-pg",
                "kalman", "linear-probe", "clip-adapter", "tip-adapter", "tip-adapter-f",
                "laplace")


def cell(key: str, value: float | None) -> str:
    if value is None:
        return ""
    return f"{100 * value:.1f}" if key in PERCENT else f"{value:.3f}"


def readme_table(out: Path) -> str:
    """The table in :data:`README_ORDER`; a method missing either run is an error."""
    head = ["method", *(t for _, t in FEW_SHOT + BASE_TO_NEW)]
    lines = ["| " + " | ".join(head) + " |",
             "|---|" + "|".join("---:" for _ in head[1:]) + "|"]
    methods = demo_methods()
    ordered = [m for m in README_ORDER if m in methods]
    for method in ordered + [m for m in methods if m not in ordered]:
        few, b2n = run_dir(out, method, "few-shot"), run_dir(out, method, "base-to-new")
        missing = [str(p) for p in (few, b2n) if not (p / "metrics.json").is_file()]
        if missing:
            raise DataError(f"no finished demo run in {', '.join(missing)}; run "
                            f"'pyro-clip demo --out {out}' first")
        a, b = run_summary(few), run_summary(b2n)
        cells = [cell(k, a[k]) for k, _ in FEW_SHOT] + [cell(k, b[k]) for k, _ in BASE_TO_NEW]
        lines.append("| " + " | ".join([method, *cells]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("runs/demo"),
                        help="the demo's --out folder")
    print(readme_table(parser.parse_args().out))


if __name__ == "__main__":
    main()
