"""``pyro-clip report``: run folders compared side by side (Markdown table)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pyro_clip.errors import DataError
from pyro_clip.io import atomic_write
from pyro_clip.tables import markdown_table, run_summary


def write_report(runs: Sequence[str | Path], out: str | Path) -> Path:
    """Write ``out/report.md`` comparing ``runs``; returns its path."""
    missing = [str(r) for r in runs if not (Path(r) / "metrics.json").exists()]
    if missing:
        raise DataError(f"not run folders (no metrics.json): {', '.join(missing)}")
    table = markdown_table([run_summary(r) for r in runs])
    out = Path(out)
    text = "# pyro-clip report\n\n" + table + "\n"
    return atomic_write(out / "report.md", lambda p: p.write_text(text))
