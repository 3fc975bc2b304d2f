"""Run configuration: one dataclass, settable from YAML and overridden by CLI flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pyro_clip.errors import ConfigError
from pyro_clip.utils.io import check_out_dir, read_yaml

PROTOCOLS = ("few-shot", "base-to-new")


@dataclass
class RunConfig:
    """Everything needed to reproduce a run (written to ``config.json``)."""

    method: str = "zero-shot"
    backbone: str = "conse"
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    #: a split file: a run's ``split.json`` (folder data sets) or a Dassl ``split_zhou_*.json``
    split_file: str | None = None
    #: extra evaluation sets (their test split); ``None``: the data set's own shifted
    #: companions (fashion-mnist -> fashion-mnist-c, imagenet -> its variants, else none)
    eval_datasets: list[str] | None = None
    protocol: str = "few-shot"
    shots: int = 16
    seed: int = 1
    #: prompt templates with ``{}``; ``None``: the data set's standard ones (CoOp's)
    templates: list[str] | None = None
    #: method hyper-parameters (``--opt key=value``)
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    cache_dir: str | None = None
    #: run folder; ``None``: a fresh ``runs/<method>-<dataset>-<shots>shot-s<seed>`` (numbered
    #: if taken), with ``runs/latest`` pointing at it (:mod:`pyro_clip.utils.run_dirs`)
    out: str | None = None
    progress: bool = True
    #: ``auto`` (CUDA when available) | ``cpu`` | ``cuda`` | ``cuda:N`` (see pyro_clip.runtime)
    device: str = "auto"
    #: backbone forward precision: ``fp32`` | ``bf16`` | ``fp16`` (autocast)
    precision: str = "fp32"
    #: image-decoding worker processes for feature extraction (``None``: from the CPU count)
    workers: int | None = None
    #: drop unreadable images of file-based data sets instead of stopping (``--skip-corrupt``);
    #: the count per split is written to config.json as ``data_report``
    skip_corrupt: bool = False

    def validate(self) -> RunConfig:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.shots < 1:
            raise ConfigError(f"shots must be >= 1 (Dassl uses 1, 2, 4, 8, 16), got {self.shots}")
        if self.out is not None:  # None: a fresh folder is chosen at run time
            check_out_dir(self.out)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"workers must be >= 0 (0 = decode in the main process), "
                              f"got {self.workers}")
        if self.templates is not None and (
            not self.templates or any("{}" not in t for t in self.templates)
        ):
            raise ConfigError("every prompt template needs a '{}' for the class name")
        return self

    def resolved(self) -> RunConfig:
        """A copy with ``templates``, ``eval_datasets`` and, for a method that augments its
        training images without an ``augment`` option given, ``augment`` filled from the data
        set's defaults (what ``config.json`` records)."""
        from pyro_clip.data import default_eval_datasets, default_templates
        from pyro_clip.data.registry import default_augment
        from pyro_clip.methods import get_method_class, known_methods  # registers them all

        options = dict(self.options)
        # unknown method names are refused by create_method, with the known ones listed
        if self.method in known_methods() and "augment" not in options \
                and "augment" in get_method_class(self.method).default_options():
            options["augment"] = default_augment(self.dataset)
        return dataclasses.replace(
            self,
            templates=list(self.templates) if self.templates is not None
            else default_templates(self.dataset),
            eval_datasets=list(self.eval_datasets) if self.eval_datasets is not None
            else default_eval_datasets(self.dataset),
            options=options,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown config key(s) {sorted(unknown)}; known: {sorted(names)}")
        return cls(**data)


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of :class:`RunConfig` fields (dashes allowed in keys)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options, got {type(data).__name__}")
    return {k.replace("-", "_"): v for k, v in data.items()}


def parse_option(text: str) -> tuple[str, Any]:
    """``"lr=0.01"`` -> ``("lr", 0.01)``; the value is parsed as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise ConfigError(f"--opt expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip().replace("-", "_"), yaml.safe_load(value)
