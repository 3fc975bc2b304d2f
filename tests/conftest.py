"""Shared fixtures: a tiny random open_clip backbone and an isolated feature cache.

``PYRO_CLIP_DETERMINISTIC=1`` runs the suite under ``torch.use_deterministic_algorithms(True)``
(an op without a deterministic implementation then raises instead of silently varying); run it
with ``OMP_NUM_THREADS=1`` and ``=2`` to check that no assertion depends on the thread count
(see README, Reproducibility).
"""

from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYRO_CLIP_DETERMINISTIC", "") not in ("", "0"):
        torch.use_deterministic_algorithms(True)


def pytest_report_header(config: pytest.Config) -> str:
    return (f"torch threads {torch.get_num_threads()}, deterministic algorithms "
            f"{torch.are_deterministic_algorithms_enabled()}")

TINY = "open_clip:pyro-clip-tiny"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test session writes features to its own cache, never the user's."""
    monkeypatch.setenv("PYRO_CLIP_CACHE", str(tmp_path_factory.getbasetemp() / "feature-cache"))


@pytest.fixture(scope="session")
def tiny_backbone():
    from pyro_clip.pipeline.run import get_backbone

    return get_backbone(TINY)


@pytest.fixture(scope="session")
def conse_backbone():
    from pyro_clip.pipeline.run import get_backbone

    return get_backbone("conse")


@pytest.fixture
def float64_default():
    """Run a test with float64 as torch's default dtype (references computed in float64)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
