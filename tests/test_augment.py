"""Augmented views: deterministic per (image, view, seed), keyed in the cache, aligned rows."""

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_clip.data import load_dataset
from pyro_clip.data.augment import AugmentedView, augment_image
from pyro_clip.errors import ConfigError
from pyro_clip.features.views import view_key
from pyro_clip.methods import create_method
from pyro_clip.pipeline.config import RunConfig


def _gradient_image() -> Image.Image:
    a = np.arange(32 * 24 * 3, dtype=np.uint8).reshape(24, 32, 3)
    return Image.fromarray(a)


def test_views_are_deterministic_and_keyed_by_augment_view_and_seed():
    images = load_dataset("fashion-mnist", "train")
    a = np.asarray(AugmentedView(images, "crop-flip", 1, 3).load_image(7))
    b = np.asarray(AugmentedView(images, "crop-flip", 1, 3).load_image(7))
    np.testing.assert_array_equal(a, b)
    prints = {AugmentedView(images, aug, v, s).fingerprint()
              for aug, v, s in [("crop-flip", 0, 1), ("crop-flip", 1, 1), ("crop-flip", 0, 2),
                                ("flip", 0, 1)]}
    assert len(prints) == 4 and images.fingerprint() not in prints
    views = [np.asarray(AugmentedView(images, "crop-flip", v, 3).load_image(7)) for v in range(4)]
    assert len({v.tobytes() for v in views}) == 4
    np.testing.assert_array_equal(AugmentedView(images, "crop-flip", 0, 1).labels, images.labels)


def test_flip_is_a_mirror_half_the_time_and_leaves_the_global_rng_alone():
    img = _gradient_image()
    state = torch.random.get_rng_state()
    outs = [np.asarray(augment_image(img, "flip", s)) for s in range(200)]
    assert torch.equal(torch.random.get_rng_state(), state)
    flipped = [np.array_equal(o, np.asarray(img)[:, ::-1]) for o in outs]
    kept = [np.array_equal(o, np.asarray(img)) for o in outs]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 70 < sum(flipped) < 130  # Binomial(200, 1/2): 5 sd either side


def test_crop_flip_keeps_the_size_and_crops_a_region():
    img = _gradient_image()
    outs = [augment_image(img, "crop-flip", s) for s in range(20)]
    assert all(o.size == img.size for o in outs)
    assert any(not np.array_equal(np.asarray(o), np.asarray(img)) for o in outs)


def test_bad_augment_options_are_refused():
    with pytest.raises(ConfigError, match="augment must be one of"):
        create_method("coop", augment="rotate")
    with pytest.raises(ConfigError, match="n_views"):
        create_method("kgcoop", n_views=0)


def test_runner_views_align_with_the_training_rows(tiny_backbone, tmp_path):
    """augment='none' views are the training images themselves: the rows must coincide."""
    from pyro_clip.pipeline.run import augmented_train, encode_images, select_images

    cfg = RunConfig(backbone="open_clip:pyro-clip-tiny", cache_dir=str(tmp_path), shots=2,
                    protocol="base-to-new", eval_datasets=[], progress=False).resolved()
    images = select_images(cfg)  # base-class shots, relabelled
    train = encode_images(cfg, tiny_backbone, images.train)
    out = augmented_train(cfg, tiny_backbone, images.train, train, "none", 1)
    # same images, same batch: equal up to float32 rounding (another row would differ by O(1))
    torch.testing.assert_close(out.features[view_key("joint", 0)], train.features["joint"],
                               rtol=1e-5, atol=1e-6)
    crop = augmented_train(cfg, tiny_backbone, images.train, train, "crop-flip", 2)
    assert crop.features[view_key("joint", 1)].shape == train.features["joint"].shape
    assert not torch.allclose(crop.features[view_key("joint", 1)], train.features["joint"])
    n_cached = len(list(tmp_path.rglob("*.npz")))
    again = augmented_train(cfg, tiny_backbone, images.train, train, "crop-flip", 2)
    assert len(list(tmp_path.rglob("*.npz"))) == n_cached  # served from the cache
    torch.testing.assert_close(again.features[view_key("joint", 1)],
                               crop.features[view_key("joint", 1)], atol=0, rtol=0)


def test_training_on_identical_views_equals_training_without_views(tiny_backbone):
    """The view draw has its own generator: with every view equal to the image, CLIP-Adapter
    and CoOp train exactly as with augment=none (same minibatches, same updates)."""
    from pyro_clip.features.cache import FeatureSet
    from pyro_clip.methods import MethodContext

    names = ["cat", "dog", "car"]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, tiny_backbone.embed_dim, generator=g), torch.arange(3).repeat(4)
    plain = FeatureSet({"joint": x}, y, names, "t")
    views = FeatureSet({"joint": x, **{view_key("joint", v): x for v in range(3)}}, y, names, "t")
    empty = plain.subset([])
    for method, opts, attr in (("clip-adapter", {"epochs": 3}, "adapter"),
                               ("coop", {"epochs": 2, "batch_size": 4}, "learner")):
        fitted = []
        for data, aug in ((plain, "none"), (views, "crop-flip")):
            m = create_method(method, augment=aug, n_views=3, **opts)
            m.setup(MethodContext(tiny_backbone, seed=1, progress=False))
            m.fit(data, empty)
            fitted.append(getattr(m, attr).state_dict())
        for k in fitted[0]:
            torch.testing.assert_close(fitted[1][k], fitted[0][k], atol=0, rtol=0)


def test_view_sampler_is_seeded_and_uses_every_view():
    from pyro_clip.features.views import ViewSampler

    views = torch.arange(4.0)[:, None, None].expand(4, 50, 1)  # view v holds the value v
    a, b = ViewSampler(views, 3), ViewSampler(views, 3)
    idx = torch.arange(50)
    draws = torch.cat([a(idx) for _ in range(20)]).flatten()
    torch.testing.assert_close(draws, torch.cat([b(idx) for _ in range(20)]).flatten())
    counts = torch.bincount(draws.long(), minlength=4)
    assert (counts > 200).all()  # 1000 draws per view expected


def test_runs_take_the_data_sets_augmentation_unless_one_is_given():
    """The embedded 28 px Fashion-MNIST trains without augmentation; natural-image sets with the
    papers' crop + flip; an explicit option wins; methods that do not augment get none."""
    from pyro_clip.data.registry import default_augment

    assert default_augment("fashion-mnist") == "none" and default_augment("imagenet") == "crop-flip"
    assert RunConfig(method="coop").resolved().options["augment"] == "none"
    assert RunConfig(method="tip-adapter-f", dataset="imagenet").resolved().options == {
        "augment": "crop-flip"}
    assert RunConfig(method="coop", options={"augment": "flip"}).resolved().options == {
        "augment": "flip"}
    assert "augment" not in RunConfig(method="kalman").resolved().options
    # a library user building the method directly gets the papers' default
    assert create_method("coop").options["augment"] == "crop-flip"
