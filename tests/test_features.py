import numpy as np
import pytest
import torch

from pyro_clip.data import ArrayImages, SubsetImages
from pyro_clip.features.cache import FeatureCache


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


def _reference(backbone, images, indices):
    """Each image encoded on its own, straight through the backbone."""
    rows = [backbone.encode_images(backbone.preprocess(images.load_image(i))[None])["joint"]
            for i in indices]
    return torch.cat(rows).float()


def test_cache_hit_is_served_from_disk(tmp_path, tiny_backbone, images):
    bb = CountingBackbone(tiny_backbone)
    cache = FeatureCache(tmp_path, chunk_size=16)
    first = cache.get(bb, images, batch_size=8, progress=False)
    assert bb.calls == 40
    second = FeatureCache(tmp_path, chunk_size=16).get(bb, images, batch_size=8, progress=False)
    assert bb.calls == 40
    torch.testing.assert_close(first.features["joint"], second.features["joint"])
    torch.testing.assert_close(first.features["joint"],
                               _reference(tiny_backbone, images, range(40)),
                               rtol=1e-5, atol=1e-5)
    assert first.labels.tolist() == images.labels.tolist()
    assert not list(tmp_path.rglob("*.tmp"))


def test_killed_extraction_resumes_at_first_missing_chunk(tmp_path, tiny_backbone, images):
    cache = FeatureCache(tmp_path, chunk_size=16)
    killed = CountingBackbone(tiny_backbone, fail_after=16)
    with pytest.raises(KeyboardInterrupt):
        cache.get(killed, images, batch_size=8, progress=False)
    assert len(cache.missing(tiny_backbone, images)) == 24  # the first chunk is on disk
    resumed = CountingBackbone(tiny_backbone)
    feats = FeatureCache(tmp_path, chunk_size=16).get(resumed, images, batch_size=8,
                                                      progress=False)
    assert resumed.calls == 24  # the first 16-image chunk was kept
    assert feats.features["joint"].shape == (40, tiny_backbone.embed_dim)


def test_subsets_encode_only_their_images_and_share_overlaps(tmp_path, tiny_backbone, images):
    # fails on the old cache: every subset was a new key, encoded in full
    bb = CountingBackbone(tiny_backbone)
    cache = FeatureCache(tmp_path, chunk_size=16)
    a = SubsetImages(images, [0, 5, 9, 30], name="a")
    b = SubsetImages(images, [9, 30, 31], name="b")  # overlaps a in 9 and 30
    fa = cache.get(bb, a, batch_size=8, progress=False)
    assert bb.calls == 4
    fb = cache.get(bb, b, batch_size=8, progress=False)
    assert bb.calls == 5  # only image 31 was new
    torch.testing.assert_close(fb.features["joint"][:2], fa.features["joint"][2:])
    full = cache.get(bb, images, batch_size=8, progress=False)
    assert bb.calls == 40
    torch.testing.assert_close(full.features["joint"][[9, 30, 31]], fb.features["joint"])
    assert fb.labels.tolist() == images.labels[[9, 30, 31]].tolist()


def test_cache_key_changes_with_content(tmp_path, tiny_backbone, images):
    pixels = PIXELS.copy()
    pixels[0, 0, 0] ^= 1
    changed = ArrayImages(pixels, images.labels, images.classnames, name="rand")
    cache = FeatureCache(tmp_path)
    assert cache.key(tiny_backbone, images) != cache.key(tiny_backbone, changed)
    assert changed.item_keys()[1:] == images.item_keys()[1:]
    assert changed.item_keys()[0] != images.item_keys()[0]
    cache.get(tiny_backbone, images, progress=False)
    assert cache.missing(tiny_backbone, changed) == [0]


def test_feature_subset_relabels_classes(tiny_backbone, images, tmp_path):
    fs = FeatureCache(tmp_path).get(tiny_backbone, images, progress=False)
    sub = fs.restrict_classes([2, 3])
    assert sub.classnames == ["c", "d"] and sorted(set(sub.labels.tolist())) == [0, 1]
    assert len(sub) == 20
