"""``fashion-mnist-c``: the embedded set's corrupted copy (:mod:`pyro_clip.data.shifted`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyro_clip.data.base import LabeledImages
from pyro_clip.data.registry import register_dataset
from pyro_clip.data.shifted import load_shifted
from pyro_clip.data.sources.base import DataSource, RunDefaults


@register_dataset
class FashionMnistC(DataSource):
    """Offline, for evaluation under shift: ``corruption``, ``severity`` (and ``invert``)."""

    name = "fashion-mnist-c"
    description = "embedded, offline: its shifted copy (evaluation; corruption, severity)"
    order = 1
    keywords = ("corruption", "severity", "invert")
    reads_files = False
    defaults = RunDefaults(augment="none")  # as fashion-mnist (see its source)

    def load(self, name: str, split: str, root: str | Path | None, skip_corrupt: bool,
             **kw: Any) -> LabeledImages:
        return load_shifted(split, **kw)
