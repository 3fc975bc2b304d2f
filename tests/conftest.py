"""Shared fixtures: a tiny random open_clip backbone and an isolated feature cache."""

from __future__ import annotations

import pytest

TINY = "open_clip:pyro-clip-tiny"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test session writes features to its own cache, never the user's."""
    monkeypatch.setenv("PYRO_CLIP_CACHE", str(tmp_path_factory.getbasetemp() / "feature-cache"))


@pytest.fixture(scope="session")
def tiny_backbone():
    from pyro_clip.runner import get_backbone

    return get_backbone(TINY)


@pytest.fixture(scope="session")
def conse_backbone():
    from pyro_clip.runner import get_backbone

    return get_backbone("conse")
