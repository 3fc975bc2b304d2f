"""QuickGELU resolution: OpenAI weights must run in the QuickGELU network they were trained in."""

from __future__ import annotations

import pytest
import torch
from open_clip.pretrained import _PRETRAINED
from open_clip.transformer import QuickGELU

from pyro_clip.backbones import create_backbone
from pyro_clip.backbones.open_clip_backbone import resolve_quick_gelu
from pyro_clip.backbones.registry import parse_open_clip_spec
from pyro_clip.errors import BackboneError

TINY = "pyro-clip-tiny"


def _uses_quick_gelu(backbone) -> bool:
    return any(isinstance(m, QuickGELU) for m in backbone.model.modules())


def test_pretrained_tag_config_decides_the_activation():
    # open_clip's own table, no download: OpenAI tags are QuickGELU, LAION's are GELU
    assert resolve_quick_gelu("ViT-B-16", "openai", None) is True
    assert resolve_quick_gelu("ViT-B-16-quickgelu", "openai", None) is True
    assert resolve_quick_gelu("ViT-B-16", "laion2b_s34b_b88k", None) is False
    assert resolve_quick_gelu("RN50", "openai", None) is True
    assert resolve_quick_gelu("ViT-B-16", None, None) is False
    assert resolve_quick_gelu("ViT-B-16-quickgelu", None, None) is True


def test_declarations_that_contradict_the_weights_are_refused():
    with pytest.raises(BackboneError, match="trained with QuickGELU"):
        resolve_quick_gelu("ViT-B-16", "openai", False)
    with pytest.raises(BackboneError, match="open_clip:ViT-B-16:laion2b_s34b_b88k"):
        resolve_quick_gelu("ViT-B-16-quickgelu", "laion2b_s34b_b88k", None)
    with pytest.raises(BackboneError, match="drop the '-quickgelu' suffix"):
        resolve_quick_gelu("ViT-B-16-quickgelu", None, False)


def test_spec_parsing_reads_the_declaration():
    assert parse_open_clip_spec("open_clip:ViT-B-16:openai") == ("ViT-B-16", "openai", None)
    assert parse_open_clip_spec("open_clip:ViT-B-16:/w/m.pt?quick_gelu=1") == (
        "ViT-B-16", "/w/m.pt", True)
    assert parse_open_clip_spec("open_clip:ViT-B-16:C:/w/m.pt?quick_gelu=0") == (
        "ViT-B-16", "C:/w/m.pt", False)
    assert parse_open_clip_spec("open_clip:ViT-B-16") == ("ViT-B-16", None, None)
    with pytest.raises(BackboneError, match="quick_gelu=1 or quick_gelu=0"):
        parse_open_clip_spec("open_clip:ViT-B-16:/w/m.pt?gelu=yes")


def test_local_checkpoint_of_a_model_with_quick_gelu_weights_must_declare_it(tmp_path):
    path = tmp_path / "ViT-B-16.pt"
    path.write_bytes(b"not read before the activation is known")
    with pytest.raises(BackboneError, match=r"\?quick_gelu=1 \(OpenAI weights\)"):
        resolve_quick_gelu("ViT-B-16", str(path), None)
    assert resolve_quick_gelu("ViT-B-16", str(path), True) is True
    assert resolve_quick_gelu("ViT-B-16-quickgelu", str(path), None) is True
    # a model no QuickGELU weights exist for needs no declaration
    assert resolve_quick_gelu(TINY, str(path), None) is False


@pytest.fixture()
def quick_gelu_tag(tmp_path, monkeypatch):
    """A registered pretrained tag of the tiny model with ``quick_gelu=True`` and local weights
    (as open_clip registers OpenAI's), so the real factory path runs without a download."""
    ref = create_backbone(f"open_clip:{TINY}?quick_gelu=1", seed=3)
    path = tmp_path / "tiny_qg.pt"
    torch.save(ref.model.state_dict(), path)
    cfg = {"file": str(path), "quick_gelu": True, "mean": (0.5,) * 3, "std": (0.25,) * 3}
    monkeypatch.setitem(_PRETRAINED, TINY, {"qgtag": cfg})
    return ref, path


def test_quick_gelu_tag_builds_the_quick_gelu_network(quick_gelu_tag):
    ref, path = quick_gelu_tag
    # fails on the old code: the GELU model was built and the tag's weights loaded into it
    model = create_backbone(f"open_clip:{TINY}:qgtag")
    assert model.quick_gelu and _uses_quick_gelu(model)
    assert model.architecture == f"{TINY}-quickgelu"
    gelu = create_backbone(f"open_clip:{TINY}:{path}?quick_gelu=0")  # same weights, GELU
    assert not _uses_quick_gelu(gelu)
    texts = ["a photo of a dog.", "a photo of a cat."]
    torch.testing.assert_close(model.encode_text(texts), ref.encode_text(texts))
    assert not torch.allclose(gelu.encode_text(texts), ref.encode_text(texts), atol=1e-4)
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.encode_images(pixels)["joint"],
                               ref.encode_images(pixels)["joint"])


def test_fingerprint_names_the_resolved_activation(tmp_path):
    gelu = create_backbone(f"open_clip:{TINY}", seed=0)
    quick = create_backbone(f"open_clip:{TINY}?quick_gelu=1", seed=0)
    assert not _uses_quick_gelu(gelu) and _uses_quick_gelu(quick)
    assert gelu.fingerprint() != quick.fingerprint()
    path = tmp_path / "w.pt"
    torch.save(quick.model.state_dict(), path)
    declared = create_backbone(f"open_clip:{TINY}:{path}?quick_gelu=1")
    undeclared = create_backbone(f"open_clip:{TINY}:{path}")
    assert _uses_quick_gelu(declared) and not _uses_quick_gelu(undeclared)
    assert declared.fingerprint() != undeclared.fingerprint()


def test_suite_dry_run_reports_an_undeclared_checkpoint(tmp_path):
    from pyro_clip.suite.check import check_backbone_spec

    path = tmp_path / "ViT-B-16.pt"
    path.write_bytes(b"weights")
    problems, _ = check_backbone_spec(f"open_clip:ViT-B-16:{path}")
    assert len(problems) == 1 and "?quick_gelu=1" in problems[0]
    assert check_backbone_spec(f"open_clip:ViT-B-16:{path}?quick_gelu=1")[0] == []
    assert check_backbone_spec("open_clip:ViT-B-16-quickgelu:openai")[0] == []
