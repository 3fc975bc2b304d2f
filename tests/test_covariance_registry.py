"""The covariance registry: plug-in structures, memory estimates, the size-based default."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from pyro_clip.errors import ConfigError
from pyro_clip.inference.covariance import (
    COVARIANCES,
    DiagCovariance,
    build_covariance,
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
