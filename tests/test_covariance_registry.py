"""The covariance registry: plug-in structures, memory estimates, the size-based default."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from pyro_clip.errors import ConfigError
from pyro_clip.inference.covariance import (
    AUTO_STATE_GIB,
    COVARIANCES,
    DiagCovariance,
    build_covariance,
    choose_structure,
    estimate_bytes,
    register_covariance,
    structure,
    structures,
)
from pyro_clip.inference.covariance import registry as registry_module


@pytest.mark.parametrize("kind", COVARIANCES)
def test_estimate_matches_the_allocated_state(kind: str) -> None:
    """The estimate made before allocating equals the bytes the built state holds."""
    c, p = 4, 7
    cov = build_covariance(kind, c * p, 1.0, n_blocks=c, options={"rank": 3})
    assert estimate_bytes(kind, c * p, c, 3) == cov.memory_bytes()


def test_unknown_structure_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="full, block, diag, lowrank, kron"):
        estimate_bytes("dense", 10)


def test_a_new_structure_is_one_registered_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registering a subclass makes it a ``covariance=`` choice with its own policy."""
    monkeypatch.setattr(registry_module, "_STRUCTURES", dict(registry_module._STRUCTURES))

    @register_covariance
    class ScaledDiag(DiagCovariance):
        kind = "scaled-diag"
        order = 50
        tempered_passes = 3

        @classmethod
        def from_options(cls, n: int, prior_var: float, n_blocks: int,
                         options: Mapping[str, Any]) -> ScaledDiag:
            return cls(n, 2.0 * prior_var)

    assert list(structures()) == [*COVARIANCES, "scaled-diag"]
    assert structure("scaled-diag").tempered_passes == 3
    cov = build_covariance("scaled-diag", 6, 1.5)
    assert isinstance(cov, ScaledDiag) and float(cov.diagonal()[0]) == 3.0
    with pytest.raises(TypeError, match="registered twice"):
        @register_covariance
        class Clash(DiagCovariance):
            kind = "scaled-diag"


@pytest.mark.parametrize(("n_classes", "kind"), [(10, "full"), (15, "full"), (16, "block"),
                                                 (100, "block"), (255, "block"), (256, "kron"),
                                                 (1000, "kron")])
def test_auto_picks_by_size_at_512_dims(n_classes: int, kind: str) -> None:
    """``covariance=auto`` on a linear head over 512-d features plus a bias: full while its
    (C P)^2 state fits the budget, then block's C P^2, then kron."""
    n = n_classes * 513
    assert choose_structure(n, n_classes) == kind
    assert estimate_bytes(kind, n, n_classes) <= AUTO_STATE_GIB * 2**30


def test_auto_default_at_100_classes_stays_under_4_gb() -> None:
    """The default's state for 100 classes x 512 dims, with the few copies a fit holds at its
    peak (best and current prior-variance states, symmetrised copy, Cholesky factor and its
    product while repairing): well under 4 GB, where ``full`` alone would need 21 GB."""
    n = 100 * 513
    kind = choose_structure(n, 100)
    assert 5 * estimate_bytes(kind, n, 100) < 4e9
    assert estimate_bytes("full", n, 100) > 4e9


def test_auto_respects_the_structures_option_checks() -> None:
    """kron factors a linear head only: a residual adapter never gets it."""
    assert choose_structure(1000 * 513, 1000, {"adapter": "residual"}) == "block"
