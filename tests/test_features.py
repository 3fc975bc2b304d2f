import numpy as np
import pytest
import torch

from pyro_clip.data import ArrayImages
from pyro_clip.features import FeatureCache, encode_range


class CountingBackbone:
    """Wraps a backbone and counts images encoded (to prove cache hits encode nothing)."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.calls, self.fail_after = inner, 0, fail_after

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_images(self, pixels):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += len(pixels)
        return self.inner.encode_images(pixels)


PIXELS = np.random.default_rng(0).integers(0, 255, (40, 28, 28), dtype=np.uint8)


@pytest.fixture()
def images():
    return ArrayImages(PIXELS, np.arange(40) % 4, ["a", "b", "c", "d"], name="rand")


def test_cache_hit_is_served_from_disk(tmp_path, tiny_backbone, images):
    bb = CountingBackbone(tiny_backbone)
    cache = FeatureCache(tmp_path, chunk_size=16)
    first = cache.get(bb, images, batch_size=8, progress=False)
    assert bb.calls == 40
    second = cache.get(bb, images, batch_size=8, progress=False)
    assert bb.calls == 40
    torch.testing.assert_close(first.features["joint"], second.features["joint"])
    direct = encode_range(tiny_backbone, images, 0, 40, 40)["joint"]
    # batches of 8 vs one of 40: BLAS may block the float32 products differently
    np.testing.assert_allclose(first.features["joint"].numpy(), direct, rtol=1e-5, atol=1e-5)
    assert first.labels.tolist() == images.labels.tolist()
    assert not list(tmp_path.glob("*.parts")) and not list(tmp_path.glob(".*.tmp"))


def test_killed_extraction_resumes_at_first_missing_chunk(tmp_path, tiny_backbone, images):
    cache = FeatureCache(tmp_path, chunk_size=16)
    killed = CountingBackbone(tiny_backbone, fail_after=16)
    with pytest.raises(KeyboardInterrupt):
        cache.get(killed, images, batch_size=8, progress=False)
    assert not cache.path(tiny_backbone, images).exists()
    resumed = CountingBackbone(tiny_backbone)
    feats = cache.get(resumed, images, batch_size=8, progress=False)
    assert resumed.calls == 24  # the first 16-image chunk was kept
    assert feats.features["joint"].shape == (40, tiny_backbone.embed_dim)


def test_cache_key_changes_with_content(tmp_path, tiny_backbone, images):
    pixels = PIXELS.copy()
    pixels[0, 0, 0] ^= 1
    changed = ArrayImages(pixels, images.labels, images.classnames, name="rand")
    cache = FeatureCache(tmp_path)
    assert cache.key(tiny_backbone, images) != cache.key(tiny_backbone, changed)


def test_feature_subset_relabels_classes(tiny_backbone, images, tmp_path):
    fs = FeatureCache(tmp_path).get(tiny_backbone, images, progress=False)
    sub = fs.restrict_classes([2, 3])
    assert sub.classnames == ["c", "d"] and sorted(set(sub.labels.tolist())) == [0, 1]
    assert len(sub) == 20
