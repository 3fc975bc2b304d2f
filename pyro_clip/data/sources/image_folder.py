"""``folder``: the user's own images in one of the layouts of
:mod:`pyro_clip.data.folder_splits`, split once per run and recorded as a split file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyro_clip.data.base import LabeledImages
from pyro_clip.data.folder_splits import (
    DEFAULT_SPLIT_SEED,
    FLAT_SHARES,
    VAL_SHARE,
    FolderSplits,
    read_folder_splits,
)
from pyro_clip.data.registry import register_dataset
from pyro_clip.data.sources.base import DatasetSplits, DataSource, require_root
from pyro_clip.errors import DataError


@register_dataset
class ImageFolder(DataSource):
    """``split_file`` (a run's ``split.json``) or ``split_seed`` (the seed of the split of a
    flat folder, default ``DEFAULT_SPLIT_SEED``)."""

    name = "folder"
    description = (
        "your images, --data-root ROOT, layouts: ROOT/<class>/<images> (split per class "
        f"by seed {FLAT_SHARES[0]:.0%} train, {FLAT_SHARES[1]:.0%} val, the rest test, "
        "written to the run's split.json); ROOT/train/ + ROOT/test/ (val carved from "
        f"train per class, {VAL_SHARE:.0%}); ROOT/train/ + ROOT/val/ + ROOT/test/ (as "
        "given); or --split-file split.json"
    )
    order = 2
    keywords = ("split_file", "split_seed")

    def load(self, name: str, split: str, root: str | Path | None, skip_corrupt: bool,
             **kw: Any) -> LabeledImages:
        return self._splits(name, root, skip_corrupt, **kw).images(split)

    def layout_problems(self, name: str, root: str | Path) -> list[str]:
        return [] if Path(root).expanduser().is_dir() else [f"image folder {root} does not exist"]

    def load_splits(self, name: str, root: str | Path | None, skip_corrupt: bool,
                    **kw: Any) -> DatasetSplits:
        """All three from one split of the folder, with its record and summary line."""
        splits = self._splits(name, root, skip_corrupt, **kw)
        return DatasetSplits(splits.images("train"), splits.images("val"),
                             splits.images("test"), splits.record(), splits.summary())

    @staticmethod
    def _splits(name: str, root: str | Path | None, skip_corrupt: bool,
                split_file: str | Path | None = None,
                split_seed: int = DEFAULT_SPLIT_SEED) -> FolderSplits:
        if isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0:
            raise DataError(f"split_seed must be an integer >= 0, got {split_seed!r}")
        return read_folder_splits(require_root(name, root), split_seed, split_file, skip_corrupt)
