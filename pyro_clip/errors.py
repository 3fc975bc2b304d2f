"""Exceptions raised for bad user input; each message names the problem and the fix."""


class PyroClipError(Exception):
    """Base class for every error pyro-clip raises on purpose."""


class DataError(PyroClipError, ValueError):
    """A data set, folder, split file or image cannot be used as given."""


class BackboneError(PyroClipError, ValueError):
    """A backbone is unknown, or its weights or a checkpoint cannot be loaded."""


class ConfigError(PyroClipError, ValueError):
    """A configuration value is out of range or inconsistent."""


class TrainingError(PyroClipError, RuntimeError):
    """Training diverged (e.g. a NaN loss); the last good checkpoint is kept."""


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped before its convergence criterion was met."""
