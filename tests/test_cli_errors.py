"""Bad input and damaged files through the CLI: one clear line each, no traceback."""

import json

import pytest

import pyro_clip.backbones.open_clip_weights as weights
from pyro_clip.cli import main
from tests.conftest import TINY


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-clip: error:") and "\n" not in err, err
    return err


def test_out_pointing_at_a_file(tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("not a folder")
    err = _error(capsys, ["fit", "--backbone", TINY, "--out", str(target)])
    assert f"--out {target} is not a folder" in err
    err = _error(capsys, ["fit", "--backbone", TINY, "--out", str(target / "run")])
    assert f"its parent {target} is a file" in err
    assert target.read_text() == "not a folder"


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("method: kalman\nshots: 4\noptions: {covariance: block\nseed: 1\n")
    err = _error(capsys, ["fit", "--config", str(cfg), "--out", str(tmp_path / "o")])
    assert f"{cfg}:4:" in err and "YAML syntax error" in err  # the flow mapping never closes
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: s\nmethods: [zero-shot\n  shots: [1]\n")
    err = _error(capsys, ["suite", str(suite), "--dry-run"])
    assert f"{suite}:3:" in err and "YAML syntax error" in err


def _run_folder(tmp_path, method="linear-probe"):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(
        {"method": method, "backbone": TINY, "dataset": "fashion-mnist", "out": str(run)}))
    return run


def test_evaluate_with_checkpoint_deleted_or_damaged(tmp_path, capsys):
    run = _run_folder(tmp_path)
    argv = ["evaluate", str(run), "--dataset", "fashion-mnist", "--out", str(tmp_path / "ev")]
    err = _error(capsys, argv)
    assert f"{run / 'checkpoint.pt'} is missing" in err and "pyro-clip fit" in err
    (run / "checkpoint.pt").write_bytes(b"\x80\x02not a torch file")
    err = _error(capsys, argv)
    assert f"{run / 'checkpoint.pt'} is damaged" in err


def test_report_with_damaged_metrics_json(tmp_path, capsys):
    run = _run_folder(tmp_path, "zero-shot")
    (run / "metrics.json").write_text('{"test": {"accuracy": 0.5,')  # cut short
    err = _error(capsys, ["report", str(run), "--out", str(tmp_path / "rep")])
    assert f"{run / 'metrics.json'} is damaged: not valid JSON (line 1" in err


def test_missing_local_checkpoint_is_reported_as_missing(tmp_path, capsys):
    missing = tmp_path / "weights" / "model.safetensors"
    err = _error(capsys, ["fit", "--backbone", f"open_clip:pyro-clip-tiny:{missing}",
                          "--out", str(tmp_path / "o")])
    assert f"checkpoint file {missing} does not exist" in err
    assert "offline" not in err and "unknown tag" not in err


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """An empty Hub cache, and open_clip's download path forbidden: reaching it fails."""
    import huggingface_hub
    import open_clip

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def forbidden(*args, **kwargs):
        raise AssertionError("the network / retry path was taken")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", forbidden)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", forbidden)
    return forbidden


def test_hub_tag_with_hf_hub_offline_fails_at_once(no_network, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(weights, "reachable", no_network)  # offline: not even one probe
    err = _error(capsys, ["fit", "--backbone", "open_clip:ViT-B-32:openai",
                          "--out", str(tmp_path / "o")])
    assert "HF_HUB_OFFLINE is set" in err
    assert "--backbone open_clip:ViT-B-32:/path/to/open_clip_model.safetensors?quick_gelu=1" \
        in err


def test_hub_tag_with_unreachable_host_makes_one_probe_and_no_download(
        no_network, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    probes = []
    monkeypatch.setattr(weights, "reachable", lambda host: probes.append(host) or False)
    err = _error(capsys, ["fit", "--backbone", "open_clip:ViT-B-16:laion2b_s34b_b88k",
                          "--out", str(tmp_path / "o")])
    assert probes == ["huggingface.co"]
    assert "huggingface.co cannot be reached" in err and "?quick_gelu=0" in err


def test_reachable_is_false_for_a_closed_port():
    assert weights.reachable("127.0.0.1", timeout=1.0) is False


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("open_clip:ViT-B-322:openai", "unknown open_clip model 'ViT-B-322'; did you mean "
                                       "ViT-B-32"),
        ("open_clip:ViT-B-32:opnai", "unknown open_clip tag 'opnai' for ViT-B-32; did you "
                                     "mean openai?"),
    ],
)
def test_mistyped_model_or_tag_is_unknown_with_close_matches(spec, message, no_network,
                                                             tmp_path, capsys):
    err = _error(capsys, ["fit", "--backbone", spec, "--out", str(tmp_path / "o")])
    assert message in err and "offline" not in err
