"""One entry point for every data source: ``load_dataset(name, split, root, **kw)``.

Each kind of data set is a :class:`~pyro_clip.data.sources.base.DataSource` that registers
itself with :func:`register_dataset` (the built-in ones are the modules of
:mod:`pyro_clip.data.sources`, imported the first time a data set is asked for; a source
defined elsewhere registers when its module is imported). Built in: ``"fashion-mnist"``
(embedded, offline), ``"fashion-mnist-c"`` (its corrupted copy; keywords ``corruption``,
``severity``), ``"folder"`` (a user's images; see :mod:`pyro_clip.data.folder_splits`), the
CoOp/Dassl benchmarks and the ImageNet variants (``root`` = the folder holding them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml

from pyro_clip.data.base import LabeledImages
from pyro_clip.data.sources.base import DatasetSplits, DataSource, RunDefaults
from pyro_clip.errors import DataError
from pyro_clip.utils.names import close_matches
from pyro_clip.utils.plugins import import_plugins

__all__ = ["SPLITS", "DataSource", "DatasetSplits", "RunDefaults", "default_augment",
           "default_eval_datasets", "default_templates", "describe_datasets", "find_dataset",
           "has_validation_split", "known_datasets", "load_dataset", "load_splits",
           "parse_dataset_spec", "register_dataset", "unregister_dataset"]

SPLITS = ("train", "val", "test")

_SOURCES: list[DataSource] = []

S = TypeVar("S", bound=type[DataSource])


def register_dataset(cls: S) -> S:
    """Class decorator: serve the names of ``cls()`` through :func:`load_dataset`."""
    source = cls()
    names = source.names()
    if not names or not all(isinstance(n, str) and n and ":" not in n for n in names):
        raise TypeError(f"{cls.__name__} needs a name (class attribute name = '<name>', no "
                        "':') or names() to register")
    kept = [s for s in _SOURCES if type(s).__qualname__ != cls.__qualname__]  # a re-import
    taken = [n for n in names if any(s.resolve(n) is not None for s in kept)]
    if taken:
        raise TypeError(f"data set(s) {taken} of {cls.__name__} are registered already; "
                        "give them other names")
    _SOURCES[:] = [*kept, source]
    return cls


def unregister_dataset(name: str) -> None:
    """Forget the source that serves ``name``, with all its names (a plug-in's tests clean up
    with it)."""
    source = _find(name)
    if source is None:
        raise DataError(f"no data set {name!r} is registered; known: {known_datasets()}")
    _SOURCES.remove(source)


def _sources() -> list[DataSource]:
    import_plugins("pyro_clip.data.sources")
    return sorted(_SOURCES, key=lambda s: s.order)


def _find(name: str) -> DataSource | None:
    return next((s for s in _sources() if s.resolve(name) is not None), None)


def find_dataset(name: str) -> tuple[DataSource, str]:
    """The source of ``name`` and its canonical spelling; unknown names fail with the list of
    known ones and the close matches."""
    source = _find(name)
    if source is None:
        known = known_datasets()
        raise DataError(f"unknown data set {name!r}; known: {known}{close_matches(name, known)}")
    return source, source.resolve(name) or name


def parse_dataset_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"fashion-mnist-c:severity=5,corruption=blur"`` -> ``("fashion-mnist-c", {"severity": 5,
    "corruption": "blur"})``: a data set name with keyword arguments for :func:`load_dataset`
    after a colon (values parsed as YAML scalars); a plain name has none."""
    name, _, rest = spec.partition(":")
    kw: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise DataError(f"data set {spec!r}: expected name:key=value[,key=value], got "
                            f"{item!r} (e.g. fashion-mnist-c:severity=5)")
        kw[key.strip()] = yaml.safe_load(value)
    return name.strip(), kw


def _run_defaults(name: str) -> RunDefaults:
    source, canonical = find_dataset(parse_dataset_spec(name)[0])
    return source.run_defaults(canonical)


def default_templates(name: str) -> list[str]:
    """The data set's standard prompt templates (CoOp's per-data-set template; ImageNet: the
    CLIP/Tip-Adapter ensemble), used when a run sets no ``templates``."""
    return list(_run_defaults(name).templates)


def default_eval_datasets(name: str) -> list[str]:
    """The data set's own shifted companions (fashion-mnist -> fashion-mnist-c, imagenet ->
    its four variants), evaluated when a run sets no ``eval_datasets``; empty for most."""
    return list(_run_defaults(name).companions)


def default_augment(name: str) -> str:
    """The data set's training-time augmentation: the papers' ``crop-flip`` (random resized
    crop + flip) for natural images, ``none`` for the embedded 28 px Fashion-MNIST."""
    return _run_defaults(name).augment


def describe_datasets() -> list[str]:
    """One line per known data set: its name and how it is read."""
    return [f"{name}: {source.describe(name)}" for source in _sources()
            for name in source.names()]


def known_datasets() -> list[str]:
    """Every name ``load_dataset`` accepts (canonical spelling)."""
    return [name for source in _sources() for name in source.names()]


def has_validation_split(name: str) -> bool:
    """False for data sets whose protocol has no validation split (CoOp's ImageNet); True for
    names no source knows (loading them fails with the known names).

    Callers then hold validation shots out of ``train`` (:func:`few_shot_indices`).
    """
    source = _find(name)
    return source is None or source.has_validation(source.resolve(name) or name)


def _prepare(name: str, kw: dict[str, Any]) -> tuple[DataSource, str, bool, dict[str, Any]]:
    """Source, the name as given (keywords after a colon stripped), ``skip_corrupt`` and the
    source's keywords; a keyword the source does not take is a :class:`DataError`."""
    name, spec_kw = parse_dataset_spec(name)
    kw = {**spec_kw, **kw}
    skip = bool(kw.pop("skip_corrupt", False))
    source = find_dataset(name)[0]
    extra = sorted(set(kw) - set(source.keywords))
    if extra:
        raise DataError(f"data set {name!r} does not take {extra}; it accepts "
                        f"{sorted(source.keywords) or 'none'}")
    return source, name, skip, kw


def load_dataset(name: str, split: str, root: str | Path | None = None, **kw: Any) -> LabeledImages:
    """Load one split of a named data set (see the module docstring for the names).

    Args:
        name: one of :func:`known_datasets` (Dassl aliases such as ``"Caltech101"`` work),
            optionally with keywords after a colon (:func:`parse_dataset_spec`).
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: folder with the images; required for ``"folder"`` and the Dassl benchmarks.
        **kw: passed on: ``invert`` (Fashion-MNIST), ``corruption`` / ``severity``
            (Fashion-MNIST-C), ``image_dir`` / ``split_file`` (Dassl), ``split_file`` /
            ``split_seed`` (folder: a run's ``split.json``, or the seed of the split of a
            flat folder, default ``DEFAULT_SPLIT_SEED``), ``skip_corrupt``
            (every data set read from files: drop unreadable images instead of stopping;
            ignored by the embedded sets, whose images cannot be corrupt).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    source, name, skip, kw = _prepare(name, kw)
    return source.load(name, split, root, skip, **kw)


def load_splits(name: str, root: str | Path | None = None, **kw: Any) -> DatasetSplits:
    """train, val and test of ``name`` (keywords as :func:`load_dataset`)."""
    source, name, skip, kw = _prepare(name, kw)
    return source.load_splits(name, root, skip, **kw)
