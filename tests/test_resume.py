"""Resuming training: a SIGKILLed run resumed equals an uninterrupted one, for every method
trained with :mod:`pyro_clip.training.loop`; checkpoints of other runs are never resumed (issue 11
defect 5, issue 16 stale resume)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import pyro_clip.training.loop as training
from pyro_clip.cli import main
from pyro_clip.training.loop import TrainSettings, checkpoint_identity, train
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
#: 2 shots x 10 classes = 20 examples, batch 4: 5 steps per epoch, 3 epochs
OPTS = {"epochs": 3, "batch_size": 4}
STEPS, KILL_EPOCH, KILL_STEP = 5, 2, 3  # killed at step 3 of epoch 2 (epoch 1 checkpointed)
METHODS = ["coop", "coop-ove-pg", "cocoop", "cocoop-ove-pg", "kgcoop", "maple", "clip-adapter",
           "tip-adapter-f"]
#: per-method settings the tiny backbone needs (MaPLe's prompts go at most 2 layers deep)
EXTRA_OPTS = {"maple": {"prompt_depth": 2}}

#: the child runs the real CLI; its loss is wrapped only to stop at a known step (it writes a
#: marker and waits), where the test SIGKILLs it
CHILD = textwrap.dedent("""
    import os, sys, time
    import pyro_clip.training.loop as T
    import pyro_clip.methods.clip_adapter, pyro_clip.methods.prompt_learning
    import pyro_clip.methods.tip_adapter
    from pyro_clip.cli import main
    real, marker, kill_at = T.train, sys.argv[1], int(sys.argv[2])

    def train(module, loss_fn, n, settings, checkpoint=None, **kw):
        calls = [0]
        def wrapped(idx):
            calls[0] += 1
            if calls[0] == kill_at:
                with open(marker + ".tmp", "w") as fh:  # atomic: the test polls for marker
                    fh.write(str(checkpoint.exists()))
                os.replace(marker + ".tmp", marker)
                time.sleep(600)
            return loss_fn(idx)
        return real(module, wrapped, n, settings, checkpoint=checkpoint, **kw)

    for mod in (pyro_clip.methods.clip_adapter, pyro_clip.methods.prompt_learning,
                pyro_clip.methods.tip_adapter):
        mod.train = train
    sys.exit(main(sys.argv[3:]))
""")


def _fit_args(method: str, out: Path) -> list[str]:
    args = ["fit", "--method", method, "--backbone", TINY, "--shots", "2", "--no-progress",
            "--no-eval-datasets", "--out", str(out)]
    for k, v in {**OPTS, **EXTRA_OPTS.get(method, {})}.items():
        args += ["--opt", f"{k}={v}"]
    return args


def _start_and_kill(method: str, out: Path, tmp_path: Path) -> None:
    """Run ``fit`` in a subprocess and SIGKILL it mid-epoch ``KILL_EPOCH``."""
    marker = tmp_path / f"{method}.at-kill-point"
    kill_at = (KILL_EPOCH - 1) * STEPS + KILL_STEP
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(marker), str(kill_at),
                             *_fit_args(method, out)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"{method} run ended before the kill point:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{method} run never reached the kill point")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert marker.read_text() == "True"  # the epoch-1 checkpoint existed when it was killed


def _count_loss_calls(monkeypatch) -> dict[str, int]:
    """Count loss evaluations of in-process runs (to prove the resumed run did resume)."""
    import pyro_clip.methods.clip_adapter as ca
    import pyro_clip.methods.prompt_learning as pl
    import pyro_clip.methods.tip_adapter as ta

    calls = {"n": 0}

    def counting(module, loss_fn, *args, **kw):
        def wrapped(idx):
            calls["n"] += 1
            return loss_fn(idx)
        return training.train(module, wrapped, *args, **kw)

    for mod in (ca, pl, ta):
        monkeypatch.setattr(mod, "train", counting)
    import pyro_clip.pipeline.run as runner

    monkeypatch.setattr(runner, "RUN_HOOKS", [])  # diagnostics plots: not under test, slow
    return calls


def _state(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["state"]


def _assert_same_tensors(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _metrics(out: Path) -> dict:
    m = json.loads((out / "metrics.json").read_text())
    return {k: v for k, v in m.items() if not k.endswith("_seconds")}


@pytest.mark.parametrize("method", METHODS)
def test_sigkilled_run_resumed_equals_uninterrupted(method, tmp_path, monkeypatch):
    calls = _count_loss_calls(monkeypatch)
    ref = tmp_path / "uninterrupted"
    assert main(_fit_args(method, ref)) == 0
    assert calls["n"] == OPTS["epochs"] * STEPS

    out = tmp_path / "killed"
    _start_and_kill(method, out, tmp_path)
    saved = torch.load(out / "train_state.pt", weights_only=False)
    assert saved["epoch"] == KILL_EPOCH - 1 and saved["identity"]["method"] == method

    calls["n"] = 0
    assert main(_fit_args(method, out)) == 0
    assert calls["n"] == (OPTS["epochs"] - saved["epoch"]) * STEPS  # resumed, not retrained
    assert not (out / "train_state.pt").exists()  # removed once training finished
    _assert_same_tensors(_state(out), _state(ref))
    np.testing.assert_array_equal(np.load(out / "predictions.npz")["test/probs"],
                                  np.load(ref / "predictions.npz")["test/probs"])
    assert _metrics(out) == _metrics(ref)


def test_other_method_into_the_same_folder_trains_from_scratch(tmp_path, monkeypatch):
    """A killed coop run leaves train_state.pt; coop-ove-pg into the same --out must train."""
    out = tmp_path / "shared"
    _start_and_kill("coop", out, tmp_path)
    assert (out / "train_state.pt").exists()
    calls = _count_loss_calls(monkeypatch)
    assert main(_fit_args("coop-ove-pg", out)) == 0
    assert calls["n"] == OPTS["epochs"] * STEPS  # all epochs trained, nothing resumed
    assert not (out / "train_state.pt").exists()
    fresh = tmp_path / "fresh"
    assert main(_fit_args("coop-ove-pg", fresh)) == 0
    _assert_same_tensors(_state(out), _state(fresh))
    # and it differs from what resuming the coop checkpoint would have produced
    coop = tmp_path / "coop"
    assert main(_fit_args("coop", coop)) == 0
    assert not torch.equal(_state(out)["learner"]["ctx"], _state(coop)["learner"]["ctx"])


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    return x, y


def _fit(x, y, identity, ckpt, stop_after=None):
    model = nn.Linear(3, 1, bias=False)
    nn.init.zeros_(model.weight)
    calls = {"n": 0}

    def loss(i):
        calls["n"] += 1
        if stop_after is not None and calls["n"] > stop_after:
            raise KeyboardInterrupt
        return ((model(x[i]).squeeze(-1) - y[i]) ** 2).mean()

    s = TrainSettings(epochs=4, batch_size=8, lr=0.05, weight_decay=0.0)
    train(model, loss, len(y), s, checkpoint=ckpt, progress=False, identity=identity)
    return model.weight.detach(), calls["n"]


@pytest.mark.parametrize("change", ["method", "options", "fp", "data", "templates"])
def test_checkpoint_of_another_run_is_not_resumed(change, tmp_path):
    x, y = _problem()
    base = dict(method="coop", options={"lr": 0.05}, fp="bb1", data=(x, y), templates=["{}"])
    other = {**base, change: {"method": "coop-ove-pg", "options": {"lr": 0.1}, "fp": "bb2",
                              "data": (x, y + 1), "templates": ["a {}"]}[change]}
    ident = [checkpoint_identity(d["method"], d["options"], d["fp"], *d["data"],
                                 templates=d["templates"]) for d in (base, other)]
    assert ident[0] != ident[1]
    ckpt = tmp_path / "train_state.pt"
    with pytest.raises(KeyboardInterrupt):
        _fit(x, y, ident[0], ckpt, stop_after=6)  # 4 steps/epoch: killed in epoch 2
    assert torch.load(ckpt, weights_only=False)["epoch"] == 1
    xo, yo = other["data"]
    w, n_calls = _fit(xo, yo, ident[1], ckpt)
    assert n_calls == 16 and not ckpt.exists()  # trained all 4 epochs, then removed
    fresh, _ = _fit(xo, yo, ident[1], None)
    assert torch.equal(w, fresh)


def test_numpy_generator_used_by_the_loss_is_checkpointed(tmp_path):
    """A loss drawing noise from a NumPy generator (the PG sampler's) resumes exactly."""
    x, y = _problem()
    s = TrainSettings(epochs=4, batch_size=8, lr=0.05, weight_decay=0.0)

    def run(ckpt, stop_after=None):
        model = nn.Linear(3, 1, bias=False)
        nn.init.zeros_(model.weight)
        rng = np.random.default_rng(5)
        calls = {"n": 0}

        def loss(i):
            calls["n"] += 1
            if stop_after is not None and calls["n"] > stop_after:
                raise KeyboardInterrupt
            noise = torch.from_numpy(rng.normal(size=len(i))).float()
            return ((model(x[i]).squeeze(-1) - y[i] - noise) ** 2).mean()

        train(model, loss, len(y), s, checkpoint=ckpt, progress=False, rngs={"noise": rng})
        return model.weight.detach()

    ref = run(None)
    ckpt = tmp_path / "train_state.pt"
    with pytest.raises(KeyboardInterrupt):
        run(ckpt, stop_after=10)
    assert torch.equal(run(ckpt), ref)
