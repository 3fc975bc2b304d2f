"""One entry point for every data source: ``load_dataset(name, split, root, **kw)``.

Names: ``"fashion-mnist"`` (embedded, offline), ``"fashion-mnist-c"`` (its corrupted copy;
keywords ``corruption``, ``severity``), ``"folder"`` (a user's images: ``root/<class>/<images>``
split per class by seed, or ``root/{train,test}/<class>/...`` with an optional ``val/``, or a
split file; see :mod:`pyro_clip.data.folder_splits`) and the CoOp/Dassl benchmarks (``root`` =
the folder holding them; see :mod:`pyro_clip.data.dassl`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pyro_clip.data.base import LabeledImages
from pyro_clip.data.dassl import DasslSplitImages
from pyro_clip.data.dassl_specs import PLAIN_TEMPLATE, dassl_names, resolve_dassl
from pyro_clip.data.embedded import load_embedded
from pyro_clip.data.folder_splits import (
    DEFAULT_SPLIT_SEED,
    FLAT_SHARES,
    VAL_SHARE,
    FolderSplits,
    read_folder_splits,
)
from pyro_clip.data.imagenet_variants import ImageNetVariantImages, resolve_variant, variant_names
from pyro_clip.data.shifted import load_shifted
from pyro_clip.errors import DataError

SPLITS = ("train", "val", "test")
_BUILTIN = ("fashion-mnist", "fashion-mnist-c", "folder")


@dataclass(frozen=True)
class BuiltinSpec:
    """Run defaults of a built-in source (the Dassl sets carry theirs on ``DasslSpec``)."""

    templates: tuple[str, ...] = (PLAIN_TEMPLATE,)
    companions: tuple[str, ...] = ()
    #: training-time augmentation of the methods that augment (``augment=`` option)
    augment: str = "crop-flip"


#: Fashion-MNIST is 28 x 28 px with the object filling the frame: a random resized crop
#: (scale 0.08-1, the papers' choice for >= 224 px natural images) keeps as little as 8 x 8 px
#: of it and costs every method that trains with it; flips alone are within noise of no
#: augmentation for Tip-Adapter(-F) and unstable for CoOp at 16 shots, so none is the
#: measured-best default here (docs/ove_pg.md "augmentation", docs/baselines.md)
_BUILTIN_SPECS = {
    "fashion-mnist": BuiltinSpec(companions=("fashion-mnist-c",), augment="none"),
    "fashion-mnist-c": BuiltinSpec(augment="none"),
    "folder": BuiltinSpec(),
}


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


def _spec(name: str) -> BuiltinSpec:
    key = parse_dataset_spec(name)[0].lower()
    if key in _BUILTIN_SPECS:
        return _BUILTIN_SPECS[key]
    dassl = resolve_dassl(name)
    if dassl is not None:
        return BuiltinSpec(dassl.default_templates(), dassl.companions)
    if resolve_variant(name) is not None:  # evaluated with the training set's templates
        return BuiltinSpec()
    raise DataError(f"unknown data set {name!r}; known: {known_datasets()}")


def default_templates(name: str) -> list[str]:
    """The data set's standard prompt templates (CoOp's per-data-set template; ImageNet: the
    CLIP/Tip-Adapter ensemble), used when a run sets no ``templates``."""
    return list(_spec(name).templates)


def default_eval_datasets(name: str) -> list[str]:
    """The data set's own shifted companions (fashion-mnist -> fashion-mnist-c, imagenet ->
    its four variants), evaluated when a run sets no ``eval_datasets``; empty for most."""
    return list(_spec(name).companions)


def default_augment(name: str) -> str:
    """The data set's training-time augmentation: the papers' ``crop-flip`` (random resized
    crop + flip) for natural images, ``none`` for the embedded 28 px Fashion-MNIST."""
    return _spec(name).augment


#: what ``pyro-clip list datasets`` prints beside each built-in name
_DESCRIPTIONS = {
    "fashion-mnist": "embedded, offline: class-balanced Fashion-MNIST subset (train/val/test)",
    "fashion-mnist-c": "embedded, offline: its shifted copy (evaluation; corruption, severity)",
    "folder": "your images, --data-root ROOT, layouts: ROOT/<class>/<images> (split per class "
              f"by seed {FLAT_SHARES[0]:.0%} train, {FLAT_SHARES[1]:.0%} val, the rest test, "
              "written to the run's split.json); ROOT/train/ + ROOT/test/ (val carved from "
              f"train per class, {VAL_SHARE:.0%}); ROOT/train/ + ROOT/val/ + ROOT/test/ (as "
              "given); or --split-file split.json",
}


def describe_datasets() -> list[str]:
    """One line per known data set: its name and how it is read."""
    lines = []
    for name in known_datasets():
        if name in _DESCRIPTIONS:
            lines.append(f"{name}: {_DESCRIPTIONS[name]}")
        elif resolve_variant(name) is not None:
            lines.append(f"{name}: ImageNet variant under --data-root (evaluation only)")
        else:
            lines.append(f"{name}: CoOp/Dassl layout under --data-root with its split file")
    return lines


def known_datasets() -> list[str]:
    """Every name ``load_dataset`` accepts (canonical spelling)."""
    return [*_BUILTIN, *dassl_names(), *variant_names()]


def _require_root(name: str, root: str | Path | None) -> Path:
    if root is None:
        raise DataError(f"data set {name!r} reads images from disk; pass root=<folder>")
    return Path(root).expanduser()


def _reject_extra(name: str, kw: dict[str, Any], allowed: tuple[str, ...] = ()) -> None:
    extra = sorted(set(kw) - set(allowed))
    if extra:
        raise DataError(
            f"data set {name!r} does not take {extra}; it accepts {sorted(allowed) or 'none'}"
        )


def has_validation_split(name: str) -> bool:
    """False for data sets whose protocol has no validation split (CoOp's ImageNet).

    Callers then hold validation shots out of ``train`` (:func:`few_shot_indices`).
    """
    spec = resolve_dassl(name)
    return not (spec is not None and spec.name == "imagenet")


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
    name, spec_kw = parse_dataset_spec(name)
    kw = {**spec_kw, **kw}
    key = name.lower()
    skip = bool(kw.pop("skip_corrupt", False))
    if key == "fashion-mnist":
        _reject_extra(name, kw, ("invert",))
        return load_embedded(split, **kw)
    if key == "fashion-mnist-c":
        _reject_extra(name, kw, ("corruption", "severity", "invert"))
        return load_shifted(split, **kw)
    if key == "folder":
        return _folder_splits(name, root, skip, kw).images(split)
    if resolve_dassl(name) is not None:
        _reject_extra(name, kw, ("image_dir", "split_file"))
        return DasslSplitImages(_require_root(name, root), name, split, skip_corrupt=skip, **kw)
    if resolve_variant(name) is not None:  # ImageNet-V2/-Sketch/-A/-R: evaluation only
        _reject_extra(name, kw)
        return ImageNetVariantImages(_require_root(name, root), name, split, skip_corrupt=skip)
    raise DataError(f"unknown data set {name!r}; known: {known_datasets()}")


def _folder_splits(name: str, root: str | Path | None, skip: bool,
                   kw: dict[str, Any]) -> FolderSplits:
    _reject_extra(name, kw, ("split_file", "split_seed"))
    seed = kw.get("split_seed", DEFAULT_SPLIT_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"split_seed must be an integer >= 0, got {seed!r}")
    return read_folder_splits(_require_root(name, root), seed, kw.get("split_file"), skip)


@dataclass
class DatasetSplits:
    """The three splits of one data set, read together (so that a folder is split once)."""

    train: LabeledImages
    #: ``None`` for data sets without a validation split (:func:`has_validation_split`)
    val: LabeledImages | None
    test: LabeledImages
    #: how the splits were made, as a split file (folder data sets; ``None`` otherwise)
    record: dict[str, Any] | None = None
    #: one line saying so (folder data sets)
    summary: str | None = None


def load_splits(name: str, root: str | Path | None = None, **kw: Any) -> DatasetSplits:
    """train, val and test of ``name`` (keywords as :func:`load_dataset`)."""
    if name.lower() == "folder":
        skip = bool(kw.pop("skip_corrupt", False))
        splits = _folder_splits(name, root, skip, kw)
        return DatasetSplits(splits.images("train"), splits.images("val"),
                             splits.images("test"), splits.record(), splits.summary())
    train = load_dataset(name, "train", root, **kw)
    val = load_dataset(name, "val", root, **kw) if has_validation_split(name) else None
    return DatasetSplits(train, val, load_dataset(name, "test", root, **kw))
