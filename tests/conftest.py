"""Shared fixtures: a tiny random open_clip backbone and an isolated feature cache.

``PYRO_CLIP_DETERMINISTIC=1`` runs the suite under ``torch.use_deterministic_algorithms(True)``
(an op without a deterministic implementation then raises instead of silently varying); run it
with ``OMP_NUM_THREADS=1`` and ``=2`` to check that no assertion depends on the thread count
(see README, Reproducibility).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYRO_CLIP_DETERMINISTIC", "") not in ("", "0"):
        torch.use_deterministic_algorithms(True)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # pytest-xdist runs one worker per core: one thread each (and in the processes a test
        # starts, e.g. notebook kernels) instead of every worker using every core
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ["MKL_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run ``slow`` tests first (stable order otherwise): with ``-n 2`` a long test left for
    the end would keep one worker busy while the other idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_report_header(config: pytest.Config) -> str:
    return (f"torch threads {torch.get_num_threads()}, deterministic algorithms "
            f"{torch.are_deterministic_algorithms_enabled()}")

TINY = "open_clip:pyro-clip-tiny"


def session_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's temporary folder, shared by the pytest-xdist workers (each worker's own
    base folder is a sub-folder ``popen-gwN`` of it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test session writes features to its own cache, never the user's (one cache for
    all xdist workers: the cache's file lock makes concurrent writers safe)."""
    monkeypatch.setenv("PYRO_CLIP_CACHE", str(session_root(tmp_path_factory) / "feature-cache"))


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
