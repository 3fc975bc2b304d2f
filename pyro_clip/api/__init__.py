"""The Python API: ``import pyro_clip as pc`` (every name is re-exported there).

``load_backbone`` / ``load_dataset`` / ``encode`` -> :class:`Features`; ``fit`` ->
:class:`FittedModel` (``predict``, ``posterior``, ...); ``evaluate``; ``load_run`` and
``report`` for CLI run folders. Each takes the CLI's names (backbone specs, data sets,
methods, ``--opt`` options).
"""

from pyro_clip.api.evaluation import EvaluationResult, evaluate
from pyro_clip.api.loading import encode, load_backbone, load_dataset
from pyro_clip.api.model import FittedModel, fit
from pyro_clip.api.runs import load_run, report
from pyro_clip.types import FeatureSet as Features

__all__ = [
    "EvaluationResult",
    "Features",
    "FittedModel",
    "encode",
    "evaluate",
    "fit",
    "load_backbone",
    "load_dataset",
    "load_run",
    "report",
]
