"""Dry run of a suite: validate every expanded run and list what is missing, loading no weights.

Config errors (unknown method, option, data set, protocol, backbone model or tag) raise
``ConfigError``; missing folders, split files, images and local checkpoints are *problems* in
the plan (expected on a machine without the data), never exceptions.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pyro_clip.data.registry import find_dataset, has_validation_split
from pyro_clip.errors import ConfigError, DataError, PyroClipError
from pyro_clip.suite.config import SuiteConfig, SuiteRun, expand
from pyro_clip.suite.estimate import (
    RunEstimate,
    backbone_size,
    default_memory_gib,
    estimate_run,
    format_estimates,
    too_large,
)

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@dataclass
class Plan:
    """What a suite would do: its runs, the ones already done, and the problems found."""

    suite: SuiteConfig
    runs: list[SuiteRun]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: rough per-group memory (and time) estimates, and the memory they are checked against
    estimates: list[RunEstimate] = field(default_factory=list)
    memory_gib: float = 0.0

    @property
    def too_large(self) -> list[str]:
        """Groups of runs that cannot run: refused by their method or above the memory."""
        return too_large(self.estimates, self.memory_gib)

    @property
    def done(self) -> int:
        return sum(r.done for r in self.runs)

    def summary(self) -> str:
        """Human-readable plan (printed by ``pyro-clip suite --dry-run``)."""
        s = self.suite
        per_method = Counter(r.method for r in self.runs)
        lines = [
            f"suite {s.name!r} ({s.source}): {len(self.runs)} runs = {len(s.datasets)} data "
            f"set(s) x {len(s.protocols)} protocol(s) x {len(per_method)} method(s) x "
            f"{len(s.shots)} shot setting(s) x {len(s.seeds)} seed(s); "
            f"{self.done} already done, {len(self.runs) - self.done} to run",
            f"backbone {s.backbone}; data sets {s.datasets}; protocols {s.protocols}; "
            f"shots {s.shots}; seeds {s.seeds}",
            f"methods: {', '.join(per_method)}",
            f"run folders under {s.out}; results {s.results_stem}.json/.md",
            f"executor {s.executor}"
            + (f" at {s.address}" if s.executor == "ray" and s.address else "")
            + f", {s.workers} worker(s); per run {s.resources.cpus} CPU(s), "
            f"{s.resources.gpus:g} GPU(s); up to {s.max_retries} retries of a dead worker",
        ]
        lines += format_estimates(self.estimates, self.memory_gib)
        lines += [f"note: {n}" for n in self.notes]
        if self.too_large:
            lines.append(f"{len(self.too_large)} run group(s) cannot run (memory):")
            lines += [f"  - {p}" for p in self.too_large]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s) (the runs that need them will fail):")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("no problems found: ready to run")
        return "\n".join(lines)


def check_backbone_spec(spec: str) -> tuple[list[str], list[str]]:
    """Parse a backbone spec without building it: ``(problems, notes)``; unknown -> ConfigError."""
    if spec == "conse":
        return [], ["conse loads EfficientNet-Lite0 + MiniLM weights from installed packages"]
    if not spec.startswith("open_clip:"):
        from pyro_clip.backbones.registry import backbone_kinds

        if spec.partition(":")[0] in backbone_kinds():  # a plug-in kind: built when runs start
            return [], []
        raise ConfigError(
            f"unknown backbone {spec!r}; use 'conse' or 'open_clip:<model>[:<tag or checkpoint>]'"
        )
    import open_clip

    from pyro_clip.backbones.open_clip_backbone import resolve_quick_gelu
    from pyro_clip.backbones.registry import known_backbones, parse_open_clip_spec
    from pyro_clip.errors import BackboneError

    try:
        model, pretrained, quick_gelu = parse_open_clip_spec(spec)
    except BackboneError as exc:
        raise ConfigError(str(exc)) from exc
    if f"open_clip:{model}" not in known_backbones():
        raise ConfigError(
            f"unknown open_clip model {model!r} in backbone {spec!r}; see 'pyro-clip list "
            "backbones'"
        )
    if pretrained is None:
        return [], [f"{spec}: random weights (tests only; no pre-trained prior)"]
    is_file = "/" in pretrained or pretrained.endswith(_CHECKPOINT_SUFFIXES)
    if is_file:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            return [f"checkpoint {path} for {spec} does not exist"], []
        try:  # a checkpoint of a model with QuickGELU weights must declare its activation
            resolve_quick_gelu(model, str(path), quick_gelu)
        except BackboneError as exc:
            return [str(exc)], []
        return [], []
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained not in tags:
        raise ConfigError(
            f"open_clip has no pretrained tag {pretrained!r} for {model}; tags: {tags} "
            "(or pass a local checkpoint file)"
        )
    try:
        resolve_quick_gelu(model, pretrained, quick_gelu)
    except BackboneError as exc:
        raise ConfigError(str(exc)) from exc
    return [], [f"{spec}: weights are fetched from the Hugging Face hub (or its local cache) "
                "when the suite runs; offline, pass a local checkpoint path instead"]


def _dataset_problems(name: str, root: str | None, role: str, source: str) -> list[str]:
    """Check a data set name (ConfigError if unknown) and its files (problems)."""
    try:
        data, canonical = find_dataset(name)
    except DataError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    advice = data.evaluation_only(canonical) if role == "train" else None
    if advice is not None:
        raise ConfigError(f"{source}: {name} is evaluation-only; {advice}")
    if not data.reads_files:
        return []
    if root is None:
        raise ConfigError(f"{source}: data set {name!r} reads images from disk; set data_root "
                          "in the suite file or pass --data-root")
    return data.layout_problems(canonical, root)


def dry_run(suite: SuiteConfig) -> Plan:
    """Validate ``suite`` without loading weights or images (see the module docstring)."""
    from pyro_clip.methods import get_method_class

    runs = expand(suite)
    plan = Plan(suite, runs)
    for method in dict.fromkeys(r.method for r in runs):
        options = suite.options_for(method)
        try:
            get_method_class(method)(**options)
        except PyroClipError as exc:
            raise ConfigError(f"{suite.source}: method {method!r}: {exc}") from exc
    for run in runs:
        try:
            run.config.validate()
        except ConfigError as exc:
            raise ConfigError(f"{suite.source}: run {run.out}: {exc}") from exc
    problems, notes = check_backbone_spec(suite.backbone)
    plan.problems += problems
    plan.notes += notes
    roles = {d: "train" for d in suite.datasets}
    for protocol in suite.protocols:
        for d in suite.evals_for(protocol):
            roles.setdefault(d, "eval")
    for name, role in roles.items():
        plan.problems += [f"{name}: {p}" for p in
                          _dataset_problems(name, suite.data_root, role, suite.source)]
        if role == "train" and not has_validation_split(name):
            plan.notes.append(
                f"{name} has no validation split in CoOp's layout; validation shots are held "
                "out of train (disjoint from the training shots)"
            )
    _estimate(plan)
    return plan


def _estimate(plan: Plan) -> None:
    """Fill ``plan.estimates``: one per (data set, protocol, method, shots), seeds counted."""
    suite = plan.suite
    plan.memory_gib = float(suite.device_memory_gib or default_memory_gib(suite.device))
    try:
        backbone_size(suite.backbone)
    except ConfigError:  # a registered plug-in kind the estimator has no sizes for
        plan.notes.append(f"backbone {suite.backbone}: sizes unknown to the estimator (it knows "
                          "conse and open_clip models), memory not estimated")
        return
    groups = Counter(r.group for r in plan.runs if not r.done)
    unknown = set()
    for (dataset, protocol, method, shots), runs in groups.items():
        first = next(r for r in plan.runs if r.group == (dataset, protocol, method, shots))
        est = estimate_run(dataset, protocol, method, shots, runs, first.config.options,
                           suite.backbone, suite.data_root, suite.batch_size, suite.precision)
        if est is None:
            unknown.add(dataset)
        else:
            plan.estimates.append(est)
    plan.notes += [f"{d}: class count unknown (folder not found), memory not estimated"
                   for d in sorted(unknown)]
