"""``suite --dry-run`` memory estimates: closed-form sizes and the declared device limit."""

import math

import pytest

from pyro_clip.cli import main
from pyro_clip.errors import ConfigError
from pyro_clip.inference.covariance.registry import estimate_bytes
from pyro_clip.suite import dry_run
from pyro_clip.suite.config import parse_suite
from pyro_clip.suite.estimate import GIB, estimate_run


def test_kalman_full_state_matches_the_closed_form():
    """(C (D+1))^2 float64 numbers, times 3 for the update's temporaries, refused above 8 GiB."""
    c, d = 100, 384
    est = estimate_run("caltech-101", "few-shot", "kalman", 4, 1, {"covariance": "full"},
                       "conse", None, 64, "fp32")
    state = 8 * (c * (d + 1)) ** 2
    assert state == estimate_bytes("full", c * (d + 1), c)
    assert est.classes == c and est.peak_bytes > 3 * state
    assert "max_state_gib=8" in est.refusal and f"{state / GIB:.1f} GiB" in est.refusal
    small = estimate_run("eurosat", "few-shot", "kalman", 4, 1, {"covariance": "full"},
                         "conse", None, 64, "fp32")
    assert small.refusal == "" and small.classes == 10


def test_base_to_new_fits_the_base_half():
    est = estimate_run("sun397", "base-to-new", "linear-probe", 16, 3, {}, "conse", None, 64,
                       "fp32")
    assert est.classes == math.ceil(397 / 2) and est.runs == 3


def test_monte_carlo_predictives_are_counted_per_chunk():
    """The chunked predictive: no (N, C, C) covariances nor (S, N, C) draws of a whole set,
    but at least the (S, N) replicates of the test set and one chunk of draws."""
    from pyro_clip.inference.predictive import PREDICTIVE_BYTES

    n, c, s = 50000, 1000, 1000
    for method in ("laplace", "kalman"):
        est = estimate_run("imagenet", "few-shot", method, 16, 1, {}, "conse", None, 64, "fp32")
        assert 8 * s * n + PREDICTIVE_BYTES <= est.peak_bytes < 8 * n * c * c
        assert "predictive" in est.detail


def _suite(tmp_path, **changes):
    data = {"name": "t", "datasets": ["fashion-mnist"], "protocols": ["few-shot"],
            "methods": ["zero-shot", "kalman"], "shots": [1, 16], "seeds": [1, 2],
            "out": str(tmp_path / "runs"), **changes}
    return parse_suite(data, source="t.yaml")


def test_a_run_above_the_declared_memory_fails_the_dry_run(tmp_path, capsys):
    plan = dry_run(_suite(tmp_path, device_memory_gib=0.01))
    assert plan.memory_gib == 0.01
    assert {line.split(" at ")[0] for line in plan.too_large} == {
        "fashion-mnist/few-shot/zero-shot", "fashion-mnist/few-shot/kalman"}
    assert dry_run(_suite(tmp_path, device_memory_gib=64)).too_large == []
    with pytest.raises(ConfigError, match="device_memory_gib must be a number > 0"):
        _suite(tmp_path, device_memory_gib=-1)


def test_the_cli_prints_the_estimate_and_refuses(tmp_path, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"name: s\nmethods: [zero-shot]\nshots: [1]\nseeds: [1]\n"
                   f"protocols: [few-shot]\nout: {tmp_path / 'runs'}\ndevice_memory_gib: 0.01\n")
    assert main(["suite", str(cfg), "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert "memory estimate per run" in captured.out
    assert "fashion-mnist/few-shot (10 training classes): zero-shot" in captured.out
    assert "cannot run" in captured.err and "device_memory_gib" in captured.err
