"""Fashion-MNIST-C: determinism, and each corruption changes pixels by the intended amount."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pyro_clip.data import CORRUPTIONS, load_dataset, load_embedded, load_shifted
from pyro_clip.data.embedded import embedded_arrays
from pyro_clip.errors import DataError


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    """Original (white-on-black) test pixels as float."""
    return embedded_arrays("test")[0].astype(np.float64)


def _raw(corruption: str, severity: int) -> np.ndarray:
    return load_shifted("test", corruption, severity, invert=False).images.astype(np.float64)


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_same_call_same_pixels(corruption: str) -> None:
    a = load_shifted("test", corruption, 3)
    b = load_shifted("test", corruption, 3)
    assert np.array_equal(a.images, b.images)
    assert a.fingerprint() == b.fingerprint()
    assert a.name == f"fashion-mnist-c/{corruption}-3"
    assert np.array_equal(a.labels, load_embedded("test").labels)


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_damage_grows_with_severity(corruption: str, clean: np.ndarray) -> None:
    damage = [np.abs(_raw(corruption, s) - clean).mean() for s in (1, 3, 5)]
    # every corruption moves pixels by a visible amount (>= 3 grey levels on average) without
    # destroying the image entirely (< 100 levels), and more at higher severity
    assert 3.0 < damage[0] < damage[1] < damage[2] < 100.0, damage


def test_contrast_scales_deviation_from_the_mean(clean: np.ndarray) -> None:
    for severity, factor in zip((1, 5), (0.4, 0.05), strict=True):
        out = _raw("contrast", severity)
        ratio = out.std(axis=(1, 2)) / clean.std(axis=(1, 2))
        assert np.allclose(ratio, factor, atol=0.02)
        assert np.allclose(out.mean(axis=(1, 2)), clean.mean(axis=(1, 2)), atol=0.5)


def test_noise_has_the_stated_sd(clean: np.ndarray) -> None:
    out = _raw("gaussian_noise", 1)
    mid = (clean > 90) & (clean < 165)  # far from 0 and 255: clipping is negligible at sd 20
    residual = (out - clean)[mid]
    assert abs(residual.std() - 0.08 * 255) < 0.05 * 0.08 * 255
    assert abs(residual.mean()) < 0.5


def test_blur_keeps_brightness_and_removes_detail(clean: np.ndarray) -> None:
    out = _raw("blur", 3)
    assert abs(out.mean() - clean.mean()) < 0.5

    def detail(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x, axis=2)).mean())

    assert detail(out) < 0.6 * detail(clean)


def test_rotation_turns_each_image_by_plus_or_minus_the_angle(clean: np.ndarray) -> None:
    out = _raw("rotation", 4)  # 45 degrees
    src = clean.astype(np.uint8)
    signs = []
    for i in range(50):
        turned = {
            s: np.asarray(Image.fromarray(src[i]).rotate(s * 45.0, Image.Resampling.BILINEAR))
            for s in (-1, 1)
        }
        match = [s for s, t in turned.items() if np.array_equal(t, out[i])]
        assert len(match) == 1
        signs.append(match[0])
    assert set(signs) == {-1, 1}


def test_all_concatenates_every_corruption_in_order() -> None:
    everything = load_shifted("test", "all", 2)
    assert len(everything) == 4000
    assert everything.name == "fashion-mnist-c/all-2"
    parts = [load_shifted("test", c, 2).images for c in CORRUPTIONS]
    assert np.array_equal(everything.images, np.concatenate(parts))
    assert np.array_equal(everything.labels, np.tile(load_embedded("test").labels, 4))


def test_invert_and_severity_change_fingerprint() -> None:
    a = load_shifted("test", "blur", 2)
    assert np.array_equal(a.images, 255 - load_shifted("test", "blur", 2, invert=False).images)
    assert a.fingerprint() != load_shifted("test", "blur", 3).fingerprint()
    assert a.fingerprint() != load_shifted("test", "blur", 2, invert=False).fingerprint()


def test_other_splits_and_bad_arguments() -> None:
    val = load_dataset("fashion-mnist-c", "val", corruption="contrast", severity=1)
    assert len(val) == 200 and val.name == "fashion-mnist-c/contrast-1/val"
    with pytest.raises(DataError, match="severity"):
        load_shifted(severity=6)
    with pytest.raises(DataError, match="unknown corruption"):
        load_shifted(corruption="snow")


def test_severity_from_a_data_set_spec_string() -> None:
    from pyro_clip.data.registry import parse_dataset_spec

    assert parse_dataset_spec("fashion-mnist-c") == ("fashion-mnist-c", {})
    assert parse_dataset_spec("fashion-mnist-c:severity=5, corruption=blur") == (
        "fashion-mnist-c", {"severity": 5, "corruption": "blur"})
    five = load_dataset("fashion-mnist-c:severity=5", "test")
    direct = load_shifted("test", severity=5)
    assert five.tag == direct.tag and five.name == "fashion-mnist-c/mixed-5"
    np.testing.assert_array_equal(five.images, direct.images)
    with pytest.raises(DataError, match="severity=5"):
        load_dataset("fashion-mnist-c:5", "test")
    with pytest.raises(DataError, match=r"integer in 1\.\.5"):
        load_dataset("fashion-mnist-c:severity=9", "test")
