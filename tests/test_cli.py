"""End-to-end runs through the CLI with the tiny random backbone (fast, offline)."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pyro_clip.cli import main
from tests.conftest import TINY


def _fit(tmp_path, *extra):
    out = tmp_path / "run"
    code = main(["fit", "--method", "zero-shot", "--backbone", TINY, "--shots", "2",
                 "--no-progress", "--out", str(out), *extra])
    assert code == 0
    return out


def test_fit_writes_output_contract(tmp_path):
    out = _fit(tmp_path)
    cfg = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert cfg["method"] == "zero-shot" and cfg["backbone"] == TINY and cfg["shots"] == 2
    assert cfg["n_train"] == 20 and cfg["backbone_fingerprint"]
    for name in ("test", "fashion-mnist-c"):
        block = metrics[name]
        assert block["n"] == 1000 and len(block["per_class_accuracy"]) == 10
        assert 0 <= block["accuracy"] <= 1 and block["nll"] > 0 and 0 <= block["brier"] <= 2
    preds = np.load(out / "predictions.npz")
    probs = preds["test/probs"]
    assert probs.shape == (1000, 10)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    acc = (probs.argmax(1) == preds["test/labels"]).mean()
    assert acc == pytest.approx(metrics["test"]["accuracy"])


def test_yaml_config_and_flags_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"protocol": "base-to-new", "shots": 4, "seed": 3,
                                   "eval-datasets": []}))
    out = _fit(tmp_path, "--config", str(cfg), "--seed", "2")
    saved = json.loads((out / "config.json").read_text())
    assert saved["protocol"] == "base-to-new" and saved["shots"] == 2 and saved["seed"] == 2
    assert saved["train_classnames"] == ["t-shirt", "trousers", "sweater", "dress", "coat"]
    m = json.loads((out / "metrics.json").read_text())
    b, n = m["base"]["accuracy"], m["new"]["accuracy"]
    assert m["base_to_new"]["h"] == pytest.approx(2 * b * n / (b + n))
    assert m["base"]["n"] == 500 and m["new"]["n"] == 500
    # the new classes' images as semantic OOD for the model fitted on the base classes
    assert m["semantic_ood"]["in_distribution"] == "base"
    assert 0 <= m["semantic_ood"]["new"]["msp"]["aupr_out"] <= 1


def test_same_seed_reproduces_predictions(tmp_path):
    """A method with randomness (the seed draws the shots, the filter's minibatch order and
    its Monte Carlo draws): the same seed gives the same predictions to the bit, another
    seed does not (so the check can fail)."""
    def probs(folder, seed):
        out = tmp_path / folder
        assert main(["fit", "--method", "kalman", "--backbone", TINY, "--shots", "2",
                     "--seed", seed, "--opt", "prior_var_grid=[1.0]", "--no-eval-datasets",
                     "--no-progress", "--out", str(out)]) == 0
        return np.load(out / "predictions.npz")["test/probs"]

    a, b, other = probs("a", "1"), probs("b", "1"), probs("c", "2")
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - other).max() > 1e-4


def test_evaluate_and_report(tmp_path, capsys):
    out = _fit(tmp_path, "--no-eval-datasets")
    ev = tmp_path / "ev"
    assert main(["evaluate", str(out), "--dataset", "fashion-mnist-c", "--out", str(ev)]) == 0
    m = json.loads((ev / "metrics.json").read_text())
    assert m["fashion-mnist-c"]["n"] == 1000
    # the diagnostics of a fit's evaluation sets: calibration, PPCs, idata.nc, plots
    assert {"ece", "ppc"} <= set(m["fashion-mnist-c"])
    from pyro_clip.diagnostics import arviz_io

    idata = arviz_io.load(ev / "idata.nc")
    assert "predictions" in idata.groups() and "log_likelihood" not in idata.groups()
    labels = idata.predictions_constant_data["labels_fashion_mnist_c"].values
    np.testing.assert_array_equal(labels, np.load(ev / "predictions.npz")["fashion-mnist-c/labels"])
    with pytest.raises(arviz_io.NoPosteriorError):
        arviz_io.loo(idata)
    assert (ev / "plots" / "reliability.png").exists()
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    html = tmp_path / "rep" / "report.html"
    assert f"report written to {html}" in capsys.readouterr().out
    assert "zero-shot" in html.read_text()
    assert "zero-shot" in (html.parent / "report.md").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "--method", "nope"], "unknown method 'nope'; known methods: "),
        (["fit", "--backbone", "clip-xxl"], "unknown backbone 'clip-xxl'"),
        (["fit", "--dataset", "folder", "--data-root", "/does/not/exist"], "does not exist"),
        (["fit", "--shots", "0"], "shots must be >= 1"),
        (["fit", "--opt", "lr"], "--opt expects key=value"),
        (["fit", "--method", "zero-shot", "--opt", "lr=0.1"], "has no option"),
        (["report", "/no/such/run"], "not run folders"),
    ],
)
def test_bad_input_gives_one_clear_line(argv, message, capsys, tmp_path):
    argv = [*argv, "--out", str(tmp_path / "o")] if argv[0] == "fit" else argv
    if argv[0] == "fit":
        argv += ["--backbone", TINY] if "--backbone" not in argv else []
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-clip: error:") and message in err and "\n" not in err


def test_help_states_every_default():
    import argparse

    from pyro_clip.cli import make_parser

    parser = make_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in [("pyro-clip", parser), *subs.choices.items()]:
        formatter = sub._get_formatter()
        for action in sub._actions:
            if not action.option_strings or action.required or action.help is None \
                    or isinstance(action, argparse._HelpAction):
                continue
            text = formatter._get_help_string(action) % {"default": action.default}
            assert "default" in text, f"{name} {action.option_strings[0]}: {text!r}"
    fit_help = subs.choices["fit"].format_help()
    assert "(default: 16)" in fit_help and "(default: 64)" in fit_help  # shots, batch size


def test_out_refuses_a_finished_run_without_overwrite(tmp_path, capsys):
    done = tmp_path / "done"
    done.mkdir()
    (done / "metrics.json").write_text("{}")
    argv = ["fit", "--backbone", TINY, "--shots", "2", "--no-progress", "--no-eval-datasets",
            "--out", str(done)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds a finished run" in err and "--overwrite" in err
    assert (done / "metrics.json").read_text() == "{}"  # untouched
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads((done / "metrics.json").read_text())["test"]["n"] == 1000
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main([*argv[:-1], str(afile)]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_default_out_is_a_fresh_folder_and_latest_follows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    taken = tmp_path / "runs" / "zero-shot-fashion-mnist-2shot-s1"
    taken.mkdir(parents=True)
    (taken / "metrics.json").write_text("{}")  # an earlier run: never overwritten
    assert main(["fit", "--backbone", TINY, "--shots", "2", "--no-progress",
                 "--no-eval-datasets"]) == 0
    fresh = tmp_path / "runs" / "zero-shot-fashion-mnist-2shot-s1-2"
    assert json.loads((fresh / "config.json").read_text())["out"] == str(Path("runs") / fresh.name)
    assert (taken / "metrics.json").read_text() == "{}"
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and latest.resolve() == fresh.resolve()


def test_run_dirs_number_taken_names_and_replace_latest(tmp_path):
    from pyro_clip.utils.run_dirs import fresh_run_dir, point_latest, run_dir_name

    name = run_dir_name("kalman", "folder:x/y", 4, 2)
    assert name == "kalman-folder_x_y-4shot-s2"
    a, b, c = (fresh_run_dir(name, tmp_path) for _ in range(3))
    assert [p.name for p in (a, b, c)] == [name, f"{name}-2", f"{name}-3"]
    point_latest(a, tmp_path)
    link = point_latest(b, tmp_path)
    assert link.resolve() == b.resolve() and not Path(link.readlink()).is_absolute()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, f"{name}-2",
                                                                  f"{name}-3", "latest"])


def test_third_party_warnings_hidden_unless_verbose_ours_shown():
    import warnings

    from pyro_clip.data.fewshot import sample_few_shot
    from pyro_clip.utils.noise import third_party_quiet

    third_party = compile("import warnings\nwarnings.warn('jit is deprecated', FutureWarning)",
                          "/site-packages/torch/jit/_fake.py", "exec")

    def emit():
        exec(third_party, {})
        sample_few_shot(np.array([0, 0, 1]), 2, seed=0)  # ours: class 1 is short

    for quiet, expected in ((True, ["fewer than 2"]), (False, ["jit is", "fewer than 2"])):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            with third_party_quiet(enabled=quiet):
                emit()
        assert [next(e for e in expected if e in str(w.message)) for w in rec] == expected
    import logging

    retries = logging.getLogger("huggingface_hub.utils._http")  # where HF logs its retries
    with third_party_quiet():
        assert not retries.isEnabledFor(logging.WARNING)
    assert retries.isEnabledFor(logging.WARNING)
