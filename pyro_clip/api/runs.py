"""Run folders written by the CLI: ``load_run`` (a fitted model back) and ``report``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyro_clip
from pyro_clip.api.model import FittedModel
from pyro_clip.backbones.base import DualEncoder
from pyro_clip.errors import BackboneError, DataError
from pyro_clip.pipeline.run import get_backbone, load_trained_method, read_run_config
from pyro_clip.reporting.html import find_runs, write_report
from pyro_clip.runtime import Runtime


def _rerun(run_dir: Path, version: str, why: object) -> DataError:
    return DataError(f"{run_dir} cannot be loaded by this pyro-clip ({pyro_clip.__version__}; "
                     f"the run was written by {version}): {why}; re-run it with pyro-clip fit "
                     "(its settings are in its config.json)")


def load_run(run_dir: str | Path, *, backbone: DualEncoder | None = None,
             device: str = "auto", precision: str = "fp32") -> FittedModel:
    """The fitted model of a ``pyro-clip fit`` (or ``demo``) run folder.

    The backbone is the run's (``config.json``), built on ``device`` and computing in
    ``precision`` now, whatever the run was fitted with (precision is not part of the
    backbone's identity: a bf16 run reloads in fp32); a ``backbone`` passed in must have the
    same weights (its fingerprint is checked). ``model.config`` is the run's ``config.json``.

    >>> import pyro_clip as pc
    >>> model = pc.load_run("runs/demo/kalman", device="cpu")  # a pyro-clip fit --out folder
    >>> model.name, model.encoder.runtime.precision, len(model.classnames)
    ('kalman', 'fp32', 10)
    >>> pc.load_run("runs/missing")
    Traceback (most recent call last):
    ...
    pyro_clip.errors.DataError: runs/missing is not a run folder (no config.json); ...
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise DataError(f"{run_dir} is not a run folder (no config.json); pass a folder "
                        "written by pyro-clip fit --out or pyro-clip demo")
    try:
        cfg, cfg_data = read_run_config(run_dir)
    except (TypeError, ValueError) as exc:
        raise _rerun(run_dir, "another version", exc) from exc
    version = cfg_data.get("versions", {}).get("pyro_clip", "an unknown version")
    runtime = Runtime.resolve(device, precision)
    backbone = backbone if backbone is not None else get_backbone(cfg.backbone, runtime)
    try:
        method = load_trained_method(run_dir, backbone, backbone.runtime)
    except BackboneError as exc:
        fitted_in = cfg_data.get("runtime", {}).get("precision", cfg.precision)
        if fitted_in != "fp32":  # earlier versions put the precision in the fingerprint
            raise _rerun(run_dir, version, f"fitted in {fitted_in} when the precision was "
                         "part of the backbone's fingerprint") from exc
        raise
    except (KeyError, TypeError, AttributeError, RuntimeError) as exc:
        raise _rerun(run_dir, version, f"{type(exc).__name__}: {exc}") from exc
    classnames = cfg_data.get("train_classnames") or getattr(method, "train_classnames", [])
    return FittedModel(method, backbone, classnames, None, cfg_data)


def report(runs: Sequence[str | Path] | str | Path, out: str | Path = "report") -> Path:
    """``pyro-clip report``: one self-contained HTML file comparing run folders; a folder
    holding run folders (``runs/demo``) stands for all of them. Returns ``out/report.html``.

    >>> import pyro_clip as pc
    >>> pc.report(["runs/demo"], out="report").name
    'report.html'
    >>> pc.report(["runs/missing"], out="report")
    Traceback (most recent call last):
    ...
    pyro_clip.errors.DataError: not run folders (no metrics.json): runs/missing; ...
    """
    if isinstance(runs, str | Path):
        runs = [runs]
    return write_report(find_runs(runs), out)
