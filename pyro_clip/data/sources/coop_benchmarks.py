"""The 11 CoOp/Dassl benchmarks under a data root (:mod:`pyro_clip.data.dassl_specs` says
where each lives, its prompt templates and its shifted companions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyro_clip.data.base import LabeledImages
from pyro_clip.data.dassl import DasslSplitImages, validate_dassl_layout
from pyro_clip.data.dassl_specs import dassl_names, get_dassl_spec, resolve_dassl
from pyro_clip.data.registry import register_dataset
from pyro_clip.data.sources.base import DataSource, RunDefaults, require_root


@register_dataset
class CoopBenchmarks(DataSource):
    """Names as CoOp spells them or by alias (``Caltech101``, ``pets``); ``image_dir`` and
    ``split_file`` override the layout's paths."""

    description = "CoOp/Dassl layout under --data-root with its split file"
    order = 10
    keywords = ("image_dir", "split_file")

    def names(self) -> list[str]:
        return dassl_names()

    def resolve(self, name: str) -> str | None:
        spec = resolve_dassl(name)
        return None if spec is None else spec.name

    def run_defaults(self, name: str) -> RunDefaults:
        spec = get_dassl_spec(name)
        return RunDefaults(spec.default_templates(), spec.companions)

    def has_validation(self, name: str) -> bool:
        """CoOp's ImageNet protocol has no validation split."""
        return get_dassl_spec(name).name != "imagenet"

    def layout_problems(self, name: str, root: str | Path) -> list[str]:
        return validate_dassl_layout(root, name)

    def load(self, name: str, split: str, root: str | Path | None, skip_corrupt: bool,
             **kw: Any) -> LabeledImages:
        return DasslSplitImages(require_root(name, root), name, split,
                                skip_corrupt=skip_corrupt, **kw)
