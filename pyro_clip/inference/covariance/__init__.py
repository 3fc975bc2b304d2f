"""Covariance structures for Kalman filtering of adapter weights: one module per structure.

``base`` holds the interface (with each structure's policy), ``gains`` the categorical gain
terms, ``registry`` the names, memory estimates and factory; every other module is one
structure that registers itself.
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
from pyro_clip.inference.covariance.kron import KronCovariance
from pyro_clip.inference.covariance.lowrank import LowRankCovariance
from pyro_clip.inference.covariance.registry import (
    AUTO_STATE_GIB,
    COVARIANCES,
    MAX_STATE_GIB,
    build_covariance,
    choose_structure,
    estimate_bytes,
    make_covariance,
    register_covariance,
    structure,
    structures,
)

__all__ = [
    "AUTO_STATE_GIB", "COVARIANCES", "DTYPE", "MAX_STATE_GIB", "BlockCovariance", "Covariance",
    "CovarianceWarning", "DiagCovariance", "FullCovariance", "KronCovariance",
    "LowRankCovariance", "build_covariance", "categorical_block_gain", "categorical_gain_terms",
    "choose_structure", "estimate_bytes", "make_covariance", "register_covariance",
    "safe_cholesky", "structure", "structures",
]
