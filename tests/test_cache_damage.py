"""A damaged feature-cache shard is reported, dropped and re-encoded; other sets never see it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_clip.data import ArrayImages
from pyro_clip.features.cache import FeatureCache

RNG = np.random.default_rng(3)
PIXELS_A = RNG.integers(0, 255, (40, 16, 16), dtype=np.uint8)
PIXELS_B = RNG.integers(0, 255, (12, 16, 16), dtype=np.uint8)


class Counting:
    """A backbone that counts the images it encodes."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_images(self, pixels):
        self.calls += len(pixels)
        return self.inner.encode_images(pixels)


def _sets():
    a = ArrayImages(PIXELS_A, np.arange(40) % 4, list("abcd"), name="set-a")
    b = ArrayImages(PIXELS_B, np.arange(12) % 3, list("xyz"), name="set-b")
    return a, b


def _keys(shard: Path) -> list[str]:
    with np.load(shard) as data:
        return data["keys"].tolist()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def _nan_rows(path: Path) -> None:
    with np.load(path) as data:
        arrays = {name: data[name].copy() for name in data.files}
    for name in arrays:
        if name.startswith("feat_"):
            arrays[name][[1, 5]] = np.nan
    np.savez(path.with_suffix(""), **arrays)  # a valid zip: only a load check can tell


@pytest.mark.parametrize("damage", [_truncate, _random_bytes, _nan_rows],
                         ids=["truncated", "random-bytes", "nan-rows"])
def test_damaged_shard_is_dropped_and_re_encoded(tmp_path, tiny_backbone, damage):
    a, b = _sets()
    cache = FeatureCache(tmp_path, chunk_size=16)
    clean_a = cache.get(tiny_backbone, a, batch_size=16, progress=False).features["joint"]
    clean_b = cache.get(tiny_backbone, b, batch_size=16, progress=False).features["joint"]
    folder = cache.backbone_dir(tiny_backbone)
    keys_a = set(a.item_keys())
    shards_a = [s for s in sorted(folder.glob("*.npz")) if set(_keys(s)) <= keys_a]
    victim = shards_a[1]
    n_rows = len(_keys(victim))
    damage(victim)

    # another data set with the same backbone is served as before (an unreadable shard is
    # found when the shards are listed, a NaN one when its rows are read), then the damaged
    # one: the victim is reported with its path, and only its images are encoded again
    counting = Counting(tiny_backbone)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got_b = FeatureCache(tmp_path, chunk_size=16).get(counting, b, batch_size=16,
                                                          progress=False).features["joint"]
        torch.testing.assert_close(got_b, clean_b)
        assert counting.calls == 0
        got_a = FeatureCache(tmp_path, chunk_size=16).get(counting, a, batch_size=16,
                                                          progress=False).features["joint"]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, "\n".join(messages)
    assert f"shard {victim} is damaged" in messages[0] and "encoded again" in messages[0]
    assert counting.calls == n_rows
    assert torch.isfinite(got_a).all()
    torch.testing.assert_close(got_a, clean_a, rtol=1e-5, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired: read again without a word
        FeatureCache(tmp_path, chunk_size=16).get(counting, a, batch_size=16, progress=False)
    assert counting.calls == n_rows
