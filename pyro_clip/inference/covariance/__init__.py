"""Covariance structures for Kalman filtering of adapter weights: one module per structure.

``base`` holds the interface, ``gains`` the categorical gain terms, ``registry`` the factory.
"""

from pyro_clip.inference.covariance.base import (
    DTYPE,
    Covariance,
    CovarianceWarning,
    safe_cholesky,
)
from pyro_clip.inference.covariance.block import BlockCovariance
from pyro_clip.inference.covariance.diag import DiagCovariance
from pyro_clip.inference.covariance.full import FullCovariance
from pyro_clip.inference.covariance.gains import categorical_block_gain, categorical_gain_terms
from pyro_clip.inference.covariance.lowrank import LowRankCovariance
from pyro_clip.inference.covariance.registry import (
    COVARIANCES,
    MAX_STATE_GIB,
    estimate_bytes,
    make_covariance,
)

__all__ = [
    "COVARIANCES", "DTYPE", "MAX_STATE_GIB", "BlockCovariance", "Covariance", "CovarianceWarning",
    "DiagCovariance", "FullCovariance", "LowRankCovariance", "categorical_block_gain",
    "categorical_gain_terms", "estimate_bytes", "make_covariance", "safe_cholesky",
]
