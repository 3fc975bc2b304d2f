"""What a kind of data set tells the registry: its names, its ``pyro-clip list datasets`` line,
its run defaults and how to read a split (:class:`DataSource`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pyro_clip.data.base import LabeledImages
from pyro_clip.data.dassl_specs import PLAIN_TEMPLATE
from pyro_clip.errors import DataError


@dataclass(frozen=True)
class RunDefaults:
    """What a run on the data set uses when its config does not say."""

    #: prompt templates (``templates``)
    templates: tuple[str, ...] = (PLAIN_TEMPLATE,)
    #: shifted companions evaluated too (``eval_datasets``)
    companions: tuple[str, ...] = ()
    #: training-time augmentation of the methods that augment (``augment=`` option)
    augment: str = "crop-flip"


@dataclass
class DatasetSplits:
    """The three splits of one data set, read together (so that a folder is split once)."""

    train: LabeledImages
    #: ``None`` for data sets without a validation split (:meth:`DataSource.has_validation`)
    val: LabeledImages | None
    test: LabeledImages
    #: how the splits were made, as a split file (folder data sets; ``None`` otherwise)
    record: dict[str, Any] | None = None
    #: one line saying so (folder data sets)
    summary: str | None = None


class DataSource(ABC):
    """One kind of data set. A source with one name sets :attr:`name` and :attr:`description`
    and implements :meth:`load`; a family (the Dassl benchmarks) overrides :meth:`names`,
    :meth:`resolve` and the per-name hooks."""

    #: the canonical name (sources that serve one data set)
    name: ClassVar[str]
    #: what ``pyro-clip list datasets`` prints beside the name
    description: ClassVar[str] = ""
    #: position in ``known_datasets`` and in the listing
    order: ClassVar[int] = 100
    #: keywords :meth:`load` takes (``name:key=value`` or ``load_dataset(**kw)``); any other
    #: is refused by the registry before :meth:`load` is called
    keywords: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[RunDefaults] = RunDefaults()

    def names(self) -> list[str]:
        """Canonical names this source serves."""
        return [self.name]

    def resolve(self, name: str) -> str | None:
        """The canonical name ``name`` spells (case ignored here), or None if not this source's."""
        return next((n for n in self.names() if n.lower() == name.lower()), None)

    def describe(self, name: str) -> str:
        """The ``pyro-clip list datasets`` text of canonical ``name``."""
        return self.description

    def run_defaults(self, name: str) -> RunDefaults:
        """Templates, companions and augmentation of canonical ``name``."""
        return self.defaults

    #: False for data sets that need no ``root`` (the embedded ones)
    reads_files: ClassVar[bool] = True

    def has_validation(self, name: str) -> bool:
        """False when the protocol has no validation split (runs then hold shots out of train)."""
        return True

    def evaluation_only(self, name: str) -> str | None:
        """None when runs may train on ``name``; else the advice for a run that tries."""
        return None

    def layout_problems(self, name: str, root: str | Path) -> list[str]:
        """What is missing under ``root`` for ``name``, read without decoding images (a dry
        run lists it; empty: ready). By default: whether ``root`` is a folder."""
        return [] if Path(root).expanduser().is_dir() else [f"data root {root} does not exist"]

    @abstractmethod
    def load(self, name: str, split: str, root: str | Path | None, skip_corrupt: bool,
             **kw: Any) -> LabeledImages:
        """One split (``train | val | test``) of ``name`` (as the caller spelt it)."""

    def load_splits(self, name: str, root: str | Path | None, skip_corrupt: bool,
                    **kw: Any) -> DatasetSplits:
        """train, val (when :meth:`has_validation`) and test; override to read them together."""
        canonical = self.resolve(name) or name
        val = (self.load(name, "val", root, skip_corrupt, **kw)
               if self.has_validation(canonical) else None)
        return DatasetSplits(self.load(name, "train", root, skip_corrupt, **kw), val,
                             self.load(name, "test", root, skip_corrupt, **kw))


def require_root(name: str, root: str | Path | None) -> Path:
    """``root`` as a path; a data set read from disk without one is a :class:`DataError`."""
    if root is None:
        raise DataError(f"data set {name!r} reads images from disk; pass root=<folder>")
    return Path(root).expanduser()
