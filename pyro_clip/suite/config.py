"""Benchmark suites: one YAML file -> every (data set, protocol, method, shots, seed) run.

A suite file (see ``configs/bench/offline.yaml``, ``configs/paper/*.yaml``)::

    name: offline
    backbone: conse
    datasets: [fashion-mnist]
    data_root: null                 # CoOp's $DATA; "$DATA" and "~" are expanded
    protocols: [few-shot, base-to-new]
    eval_datasets: {few-shot: [fashion-mnist-c], base-to-new: []}   # or one list for both
    methods: all                    # or a list of registered names
    options_from: demo              # start from each method's demo_options, or "defaults"
    method_options: {coop: {epochs: 5}}   # per-method overrides on top
    shots: [1, 2, 4, 8, 16]
    seeds: [1, 2, 3]
    method_seeds: {cocoop: [1]}     # per-method seed list (say why in the file); default: seeds
    diagnostics: metrics            # full (plots, idata.nc) | metrics | none
    out: runs/bench/offline         # run folders: <out>/<dataset>/<protocol>/<method>/...
    results: benchmarks/results/suite_offline   # -> .json and .md
    executor: local                 # local (process pool) | ray (see pyro_clip.suite.executors)
    address: null                   # ray: cluster address (null: RAY_ADDRESS or a local one)
    workers: 1                      # local: worker processes; ray: CPUs of a local cluster
    device_memory_gib: 80           # per run; the dry run fails runs estimated above it
    resources: {cpus: 1, gpus: 0}   # per run: torch threads, and what Ray reserves
    max_retries: 2                  # re-runs of a task whose worker process died

Run folders are written atomically (``pyro_clip.suite.tasks``) and those whose
``metrics.json`` exists are skipped, so a killed suite resumes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyro_clip.errors import ConfigError
from pyro_clip.pipeline.config import PROTOCOLS, RunConfig
from pyro_clip.utils.io import read_yaml

OPTIONS_FROM = ("demo", "defaults")
DIAGNOSTICS = ("full", "metrics", "none")
RESOURCE_KEYS = ("cpus", "gpus")


@dataclass(frozen=True)
class Resources:
    """Per run: ``cpus`` torch threads (and Ray CPUs), ``gpus`` Ray GPUs (may be fractional)."""

    cpus: int = 1
    gpus: float = 0.0

    @classmethod
    def parse(cls, value: Any, source: str) -> Resources:
        if isinstance(value, Resources):
            return value
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: resources must be a mapping like {{cpus: 4, gpus: 1}}, "
                              f"got {value!r}")
        unknown = sorted(set(value) - set(RESOURCE_KEYS))
        if unknown:
            raise ConfigError(f"{source}: unknown resources key(s) {unknown}; known: "
                              f"{list(RESOURCE_KEYS)}")
        cpus, gpus = value.get("cpus", 1), value.get("gpus", 0)
        if not isinstance(cpus, int) or isinstance(cpus, bool) or cpus < 1:
            raise ConfigError(f"{source}: resources.cpus must be an integer >= 1, got {cpus!r}")
        if not isinstance(gpus, int | float) or isinstance(gpus, bool) or gpus < 0:
            raise ConfigError(f"{source}: resources.gpus must be a number >= 0, got {gpus!r}")
        return cls(cpus=cpus, gpus=float(gpus))


@dataclass
class SuiteConfig:
    """A parsed suite file; :func:`expand` turns it into run configurations."""

    name: str = "suite"
    backbone: str = "conse"
    datasets: list[str] = field(default_factory=lambda: ["fashion-mnist"])
    data_root: str | None = None
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    #: per protocol: extra evaluation sets (their test split)
    eval_datasets: dict[str, list[str]] = field(default_factory=dict)
    #: ``"all"`` (every registered method) or explicit names
    methods: list[str] | str = "all"
    options_from: str = "demo"
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    shots: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    #: per-method seed lists overriding ``seeds`` (for methods too costly for the full grid)
    method_seeds: dict[str, list[int]] = field(default_factory=dict)
    #: prompt templates for every run; ``None``: each data set's standard templates
    templates: list[str] | None = None
    batch_size: int = 64
    cache_dir: str | None = None
    #: every run's device / backbone precision / decoding processes (see RunConfig)
    device: str = "auto"
    precision: str = "fp32"
    extraction_workers: int | None = None
    diagnostics: str = "metrics"
    out: str = "runs/suite"
    results: str | None = None
    #: how runs are executed: a name in ``pyro_clip.suite.executors.EXECUTORS``
    executor: str = "local"
    #: Ray cluster address (``auto``, ``ray://host:10001``); None: $RAY_ADDRESS or a local cluster
    address: str | None = None
    #: local: worker processes; ray without an address: CPUs of the local cluster it starts
    workers: int = 1
    #: per run: ``{cpus, gpus}``; cpus is also each run's torch thread count
    resources: Resources = field(default_factory=Resources)
    #: how often a task whose worker process died is re-run (Ray ``max_retries``)
    max_retries: int = 2
    #: memory of the device each run gets, GiB; runs estimated above it fail the dry run
    #: (None: the host's RAM for device cpu, else an 80 GB GPU; see pyro_clip.suite.estimate)
    device_memory_gib: float | None = None
    #: where the file was read from (for messages); not a YAML key
    source: str = "<dict>"

    @property
    def results_stem(self) -> Path:
        """``results`` or ``<out>/results``: the suite writes ``.json`` and ``.md`` next to it."""
        return Path(self.results) if self.results else Path(self.out) / "results"

    def method_names(self) -> list[str]:
        """The methods of the suite (registry order for ``all``), each checked to exist."""
        from pyro_clip.methods import known_methods

        known = known_methods()
        if self.methods == "all":  # minus methods the backbone cannot run (MaPLe on conse)
            from pyro_clip.methods import get_method_class

            return [m for m in known
                    if self.backbone.startswith(get_method_class(m).requires_backbone)]
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise ConfigError(
                f"{self.source}: unknown method(s) {unknown} in 'methods'; registered methods: "
                f"{', '.join(known)} (or write methods: all)"
            )
        return list(self.methods)

    def options_for(self, method: str) -> dict[str, Any]:
        """Options of ``method``: its demo options (or none), then the suite's overrides."""
        from pyro_clip.methods import get_method_class

        base = get_method_class(method).demo_options if self.options_from == "demo" else None
        return {**(base or {}), **self.method_options.get(method, {})}

    def evals_for(self, protocol: str) -> list[str]:
        return list(self.eval_datasets.get(protocol, []))


def _as_list(value: Any, key: str, source: str, kind: type) -> list:
    items = value if isinstance(value, list) else [value]
    bad = [v for v in items if not isinstance(v, kind) or isinstance(v, bool)]
    if bad:
        raise ConfigError(f"{source}: {key!r} must be a list of {kind.__name__}, got {bad!r}")
    return items


def _expand_path(value: str | None) -> str | None:
    return os.path.expanduser(os.path.expandvars(value)) if value else value


def parse_suite(data: dict[str, Any], source: str = "<dict>") -> SuiteConfig:
    """Validate a suite mapping (keys with ``-`` or ``_``) into a :class:`SuiteConfig`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a suite file must be a mapping, got {type(data).__name__}")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    known = set(SuiteConfig.__dataclass_fields__) - {"source"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown suite key(s) {unknown}; known: {sorted(known)}")
    cfg = SuiteConfig(**data, source=source)
    cfg.datasets = _as_list(cfg.datasets, "datasets", source, str)
    cfg.protocols = _as_list(cfg.protocols, "protocols", source, str)
    cfg.shots = _as_list(cfg.shots, "shots", source, int)
    cfg.seeds = _as_list(cfg.seeds, "seeds", source, int)
    if cfg.templates is not None:
        cfg.templates = _as_list(cfg.templates, "templates", source, str)
    bad = [p for p in cfg.protocols if p not in PROTOCOLS]
    if bad:
        raise ConfigError(f"{source}: unknown protocol(s) {bad}; choose from {list(PROTOCOLS)}")
    if isinstance(cfg.eval_datasets, list | str) or cfg.eval_datasets is None:
        shared = _as_list(cfg.eval_datasets or [], "eval_datasets", source, str)
        cfg.eval_datasets = {p: list(shared) for p in cfg.protocols}
    elif isinstance(cfg.eval_datasets, dict):
        extra = sorted(set(cfg.eval_datasets) - set(PROTOCOLS))
        if extra:
            raise ConfigError(
                f"{source}: eval_datasets keys must be protocols {list(PROTOCOLS)}, got {extra}"
            )
        cfg.eval_datasets = {p: _as_list(v or [], f"eval_datasets.{p}", source, str)
                             for p, v in cfg.eval_datasets.items()}
    if cfg.methods != "all":
        cfg.methods = _as_list(cfg.methods, "methods", source, str)
    if cfg.options_from not in OPTIONS_FROM:
        raise ConfigError(f"{source}: options_from must be one of {OPTIONS_FROM}, "
                          f"got {cfg.options_from!r}")
    if cfg.diagnostics not in DIAGNOSTICS:
        raise ConfigError(f"{source}: diagnostics must be one of {DIAGNOSTICS}, "
                          f"got {cfg.diagnostics!r}")
    cfg.method_options = cfg.method_options or {}
    if not isinstance(cfg.method_options, dict) or not all(
        isinstance(v, dict) for v in cfg.method_options.values()
    ):
        raise ConfigError(f"{source}: method_options must map method name -> {{option: value}}")
    cfg.method_seeds = cfg.method_seeds or {}
    if not isinstance(cfg.method_seeds, dict):
        raise ConfigError(f"{source}: method_seeds must map method name -> [seed, ...]")
    cfg.method_seeds = {m: _as_list(v, f"method_seeds.{m}", source, int)
                        for m, v in cfg.method_seeds.items()}
    if any(s < 1 for s in cfg.shots):
        raise ConfigError(f"{source}: shots must be >= 1 (Dassl uses 1, 2, 4, 8, 16)")
    for key in ("datasets", "protocols", "shots", "seeds"):
        if not getattr(cfg, key):
            raise ConfigError(f"{source}: {key!r} is empty; list at least one")
    cfg.resources = Resources.parse(cfg.resources, source)
    for key in ("workers", "max_retries"):
        value = getattr(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < (key == "workers"):
            raise ConfigError(f"{source}: {key} must be an integer >= {int(key == 'workers')}, "
                              f"got {value!r}")
    mem = cfg.device_memory_gib
    if mem is not None and (isinstance(mem, bool) or not isinstance(mem, int | float)
                            or not mem > 0):
        raise ConfigError(f"{source}: device_memory_gib must be a number > 0 (GiB of the "
                          f"device each run gets, e.g. 80), got {mem!r}")
    from pyro_clip.suite.executors import check_executor_name

    check_executor_name(cfg.executor, source)
    cfg.data_root = _expand_path(cfg.data_root)
    cfg.cache_dir = _expand_path(cfg.cache_dir)
    return cfg


def load_suite(path: str | Path, **overrides: Any) -> SuiteConfig:
    """Read a suite YAML file; ``overrides`` (e.g. ``data_root``, ``out``) replace its keys."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"suite file {path} does not exist (see configs/bench, configs/paper)")
    data = read_yaml(path) or {}
    if isinstance(data, dict):
        data.update({k: v for k, v in overrides.items() if v is not None})
    return parse_suite(data, source=str(path))


@dataclass(frozen=True)
class SuiteRun:
    """One expanded run: its grouping key and its :class:`RunConfig`."""

    dataset: str
    protocol: str
    method: str
    shots: int
    seed: int
    config: RunConfig

    @property
    def group(self) -> tuple[str, str, str, int]:
        """Runs that differ only by seed are aggregated together."""
        return (self.dataset, self.protocol, self.method, self.shots)

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def done(self) -> bool:
        return (self.out / "metrics.json").is_file()


def expand(suite: SuiteConfig) -> list[SuiteRun]:
    """Every (data set, protocol, method, shots, seed) combination, in that nesting order."""
    methods = suite.method_names()
    for key in ("method_options", "method_seeds"):
        unknown = sorted(set(getattr(suite, key)) - set(methods))
        if unknown:
            raise ConfigError(
                f"{suite.source}: {key} for {unknown}, which the suite does not run "
                f"(its methods: {', '.join(methods)}); fix the name or remove the entry"
            )
    runs = []
    for dataset in suite.datasets:
        for protocol in suite.protocols:
            for method in methods:
                options = suite.options_for(method)
                for shots in suite.shots:
                    for seed in suite.method_seeds.get(method, suite.seeds):
                        out = (Path(suite.out) / dataset / protocol / method
                               / f"shots{shots}" / f"seed{seed}")
                        cfg = RunConfig(
                            method=method, backbone=suite.backbone, dataset=dataset,
                            data_root=suite.data_root, eval_datasets=suite.evals_for(protocol),
                            protocol=protocol, shots=shots, seed=seed,
                            templates=suite.templates and list(suite.templates),
                            options=dict(options),
                            batch_size=suite.batch_size, cache_dir=suite.cache_dir,
                            out=str(out), progress=False, device=suite.device,
                            precision=suite.precision, workers=suite.extraction_workers,
                        )
                        runs.append(SuiteRun(dataset, protocol, method, shots, seed, cfg))
    return runs
