"""The device path: extraction workers, device errors, checkpoints across devices, batched
prompt encoding, and (on a CUDA machine only) every method end to end on CUDA vs CPU."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import pyro_clip.backbones.base as backbone_base
from pyro_clip.cli import main
from pyro_clip.data import ArrayImages, load_dataset
from pyro_clip.data.folders import ImageFolderImages
from pyro_clip.errors import ConfigError
from pyro_clip.features.cache import FeatureCache
from pyro_clip.features.extraction import PreprocessedImages, default_workers, extract_features
from pyro_clip.methods import known_methods
from pyro_clip.methods.base import to_device
from pyro_clip.pipeline.config import RunConfig
from pyro_clip.pipeline.run import load_trained_method, run
from pyro_clip.prompts.cocoop import CoCoOpPromptLearner
from pyro_clip.prompts.coop import CoOpPromptLearner
from pyro_clip.runtime import Runtime
from tests.conftest import TINY

HAS_CUDA = torch.cuda.is_available()
NO_CUDA = "no CUDA GPU visible (torch.cuda.is_available() is False): CUDA-vs-CPU checks skipped"
NAMES = ["dog", "cat", "red car", "boat", "tree", "house", "bird"]


def _folder_set(root) -> ImageFolderImages:
    rng = np.random.default_rng(0)
    for c in ("apple", "pear"):
        (root / c).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return ImageFolderImages(root)


# ----- extraction through the DataLoader --------------------------------------------------
def test_workers_zero_and_two_give_identical_features(tiny_backbone, tmp_path):
    """Decoding in 2 worker processes changes nothing: same rows, same order, same numbers."""
    images = load_dataset("fashion-mnist", "val")
    idx = np.array([5, 0, 17, 3, 150, 42, 9, 101, 64, 33, 2])  # out of order on purpose
    rt = tiny_backbone.runtime
    serial = extract_features(tiny_backbone, images, idx, rt, batch_size=4, workers=0)
    parallel = extract_features(tiny_backbone, images, idx, rt, batch_size=4, workers=2)
    assert set(serial) == {"joint"} and serial["joint"].shape == (len(idx), tiny_backbone.embed_dim)
    assert serial["joint"].dtype == torch.float32 and serial["joint"].device.type == "cpu"
    torch.testing.assert_close(parallel["joint"], serial["joint"], rtol=0, atol=0)
    # an independent reference: preprocess and encode each image on its own, no DataLoader
    ref = torch.cat([tiny_backbone.encode_images(
        tiny_backbone.preprocess(images.load_image(int(i)))[None])["joint"] for i in idx])
    torch.testing.assert_close(serial["joint"], ref, rtol=1e-5, atol=1e-5)

    folder = _folder_set(tmp_path / "fruit")
    a = extract_features(tiny_backbone, folder, np.arange(len(folder)), rt, 3, workers=0)
    b = extract_features(tiny_backbone, folder, np.arange(len(folder)), rt, 3, workers=2)
    torch.testing.assert_close(a["joint"], b["joint"], rtol=0, atol=0)


def test_worker_datasets_pickle_for_spawn(tiny_backbone, tmp_path):
    """Embedded and folder data sets with open_clip's transform survive pickling (spawn)."""
    for images in (load_dataset("fashion-mnist", "test"), _folder_set(tmp_path / "f")):
        ds = PreprocessedImages(images, [1, 0], tiny_backbone.image_transform())
        clone = pickle.loads(pickle.dumps(ds))
        torch.testing.assert_close(clone[0], ds[0], rtol=0, atol=0)


def test_cache_with_workers_equals_cache_without(tiny_backbone, tmp_path):
    images = ArrayImages(np.random.default_rng(1).integers(0, 255, (23, 28, 28), dtype=np.uint8),
                         np.arange(23) % 3, ["a", "b", "c"], name="rand23")
    a = FeatureCache(tmp_path / "a", chunk_size=8, workers=0).get(tiny_backbone, images, 5,
                                                                  progress=False)
    b = FeatureCache(tmp_path / "b", chunk_size=8, workers=2).get(tiny_backbone, images, 5,
                                                                  progress=False)
    torch.testing.assert_close(a.features["joint"], b.features["joint"], rtol=0, atol=0)
    assert a.features["joint"].shape == (23, tiny_backbone.embed_dim)


def test_default_workers_leave_one_cpu():
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_workers() == max(0, min(8, cpus - 1))


def test_negative_workers_is_a_config_error(tiny_backbone):
    images = load_dataset("fashion-mnist", "val")
    with pytest.raises(ConfigError, match="workers must be >= 0"):
        extract_features(tiny_backbone, images, [0], tiny_backbone.runtime, 4, workers=-1)


# ----- device selection -------------------------------------------------------------------
@pytest.mark.skipif(HAS_CUDA, reason="a CUDA GPU is visible, so --device cuda is valid here")
def test_device_cuda_without_gpu_is_a_clear_cli_error(tmp_path, capsys):
    code = main(["fit", "--method", "zero-shot", "--backbone", TINY, "--device", "cuda",
                 "--no-eval-datasets", "--no-progress", "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err and "no CUDA GPU is visible" in err and "--device cpu" in err


def test_cuda_visible_devices_is_respected():
    """With CUDA_VISIBLE_DEVICES="" no GPU exists for torch: auto is the CPU, cuda an error."""
    code = (
        "from pyro_clip.runtime import Runtime\n"
        "from pyro_clip.errors import ConfigError\n"
        "print(Runtime.resolve('auto').device)\n"
        "try:\n    Runtime.resolve('cuda:0')\nexcept ConfigError as e:\n    print(e)\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout.splitlines()
    assert out[0] == "cpu"
    assert "no CUDA GPU is visible (CUDA_VISIBLE_DEVICES='')" in out[1]


def test_runtime_scope_is_a_no_op_on_cpu():
    with Runtime.resolve("cpu").scope():
        assert torch.zeros(1).device.type == "cpu"


# ----- checkpoints and the method boundary --------------------------------------------------
def test_to_device_moves_nested_structures():
    state = {"a": torch.ones(2), "b": [torch.zeros(1), "name"], "c": (3, torch.eye(2))}
    moved = to_device(state, "cpu")
    assert moved["b"][1] == "name" and moved["c"][0] == 3
    torch.testing.assert_close(moved["c"][1], torch.eye(2))


@pytest.mark.parametrize("method", ["tip-adapter-f", "kalman"])
def test_checkpoint_holds_cpu_tensors_and_reloads_with_map_location(method, tmp_path):
    out = tmp_path / "run"
    opts = ["--opt", "epochs=1"] if method == "tip-adapter-f" else ["--opt", "covariance=diag"]
    cfg_args = ["fit", "--method", method, "--backbone", TINY, "--shots", "2", "--device",
                "cpu", "--no-eval-datasets", "--no-progress", "--out", str(out), *opts]
    assert main(cfg_args) == 0
    ckpt = torch.load(out / "checkpoint.pt", map_location="meta", weights_only=False)

    def devices(obj):
        if isinstance(obj, torch.Tensor):
            return {obj.device.type}
        if isinstance(obj, dict):
            return set().union(*map(devices, obj.values())) if obj else set()
        if isinstance(obj, list | tuple):
            return set().union(*map(devices, obj)) if obj else set()
        return set()

    assert devices(ckpt["state"]) == {"meta"}  # map_location reaches every tensor
    plain = torch.load(out / "checkpoint.pt", weights_only=False)
    assert devices(plain["state"]) == {"cpu"}  # saved on the CPU: loads anywhere
    method_obj = load_trained_method(out, runtime=Runtime.resolve("cpu"))
    test = np.load(out / "predictions.npz")
    from pyro_clip.pipeline.run import get_backbone, load_features
    feats = load_features(RunConfig(backbone=TINY, progress=False), get_backbone(TINY),
                          "fashion-mnist", "test")
    probs = method_obj.predict(feats.features["joint"], feats.classnames).probs
    np.testing.assert_allclose(probs.numpy(), test["test/probs"], rtol=1e-5, atol=1e-6)


# ----- class prompts encoded once per prediction (issue 16) --------------------------------
class _CountingText:
    """Counts text-tower passes and prompts encoded."""

    def __init__(self, backbone):
        self.backbone, self.calls, self.prompts = backbone, 0, 0
        self.inner = backbone.encode_token_embeddings

    def __call__(self, embeddings, tokens):
        self.calls += 1
        self.prompts += embeddings.shape[0]
        return self.inner(embeddings, tokens)


def test_coop_prediction_encodes_class_prompts_once(tiny_backbone, monkeypatch):
    learner = CoOpPromptLearner(tiny_backbone, n_ctx=4, seed=3)
    with torch.no_grad():
        learner.ctx.add_(0.1 * torch.randn_like(learner.ctx))
    x = torch.randn(600, tiny_backbone.embed_dim)
    reference = torch.cat([learner.logits(x[i:i + 256], NAMES) for i in range(0, 600, 256)])
    counter = _CountingText(tiny_backbone)
    monkeypatch.setattr(tiny_backbone, "encode_token_embeddings", counter)
    got = learner.predict_logits(x, NAMES, chunk=100)
    assert counter.calls == 1 and counter.prompts == len(NAMES)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)


def test_cocoop_prediction_chunks_images_by_token_budget(tiny_backbone, monkeypatch):
    learner = CoCoOpPromptLearner(tiny_backbone, n_ctx=4, seed=2, chunk=32)
    x = torch.randn(10, tiny_backbone.embed_dim)
    reference = torch.cat([learner.logits(x[i:i + 1], NAMES) for i in range(10)])  # per image
    tokens, _ = learner.prompts(NAMES)
    per_image = len(NAMES) * tokens.ids.shape[1]
    counter = _CountingText(tiny_backbone)
    monkeypatch.setattr(tiny_backbone, "encode_token_embeddings", counter)
    got = learner.predict_logits(x, NAMES, max_tokens=3 * per_image)
    assert counter.calls == 4 and counter.prompts == 10 * len(NAMES)  # 3 + 3 + 3 + 1 images
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)


class _BatchSizes(_CountingText):
    def __call__(self, embeddings, tokens):
        self.sizes = [*getattr(self, "sizes", []), embeddings.shape[0]]
        return super().__call__(embeddings, tokens)


def test_zero_shot_weights_batched_equal_one_class_at_a_time(tiny_backbone, monkeypatch):
    templates = ("a photo of a {}.", "a drawing of the {}, big.")
    lengths = tiny_backbone.tokenize([t.format(n) for t in templates for n in NAMES]).eot_index
    counter = _BatchSizes(tiny_backbone)
    monkeypatch.setattr(tiny_backbone, "encode_token_embeddings", counter)
    tiny_backbone.zero_shot_weights(NAMES, templates)
    # one pass per distinct token length, every prompt exactly once
    assert counter.calls == len(torch.unique(lengths)) and counter.prompts == 2 * len(NAMES)
    monkeypatch.setattr(backbone_base, "TEXT_BATCH", 3)  # and passes of at most TEXT_BATCH
    counter = _BatchSizes(tiny_backbone)
    monkeypatch.setattr(tiny_backbone, "encode_token_embeddings", counter)
    got = tiny_backbone.zero_shot_weights(NAMES, templates)
    assert max(counter.sizes) <= 3 and counter.prompts == 2 * len(NAMES)
    monkeypatch.undo()
    ref = torch.stack([
        F.normalize(F.normalize(tiny_backbone.encode_text([t.format(n) for t in templates]),
                                dim=-1).mean(0), dim=-1)
        for n in NAMES])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


# ----- CUDA vs CPU, every method end to end (GPU machines only) ----------------------------
#: trained methods accumulate float round-off differently on the GPU (and cuDNN convolutions
#: default to TF32), so probabilities agree to these tolerances, not bit for bit
PROB_ATOL = {"coop": 2e-2, "coop-ove-pg": 2e-2, "cocoop": 2e-2, "cocoop-ove-pg": 2e-2,
             "clip-adapter": 1e-2, "tip-adapter-f": 1e-2}
FAST = {"coop": {"epochs": 2}, "coop-ove-pg": {"epochs": 2}, "cocoop": {"epochs": 1},
        "cocoop-ove-pg": {"epochs": 1}, "clip-adapter": {"epochs": 5},
        "tip-adapter-f": {"epochs": 2}, "kalman": {"covariance": "diag"}}


@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
def test_cached_features_match_between_cpu_and_cuda(tmp_path):
    from pyro_clip.pipeline.run import get_backbone

    images = load_dataset("fashion-mnist", "val")
    idx = np.arange(64)
    cpu_bb = get_backbone(TINY, Runtime.resolve("cpu"))
    cpu = extract_features(cpu_bb, images, idx, cpu_bb.runtime, 16, workers=0)["joint"]
    gpu_bb = get_backbone(TINY, Runtime.resolve("cuda"))
    gpu = extract_features(gpu_bb, images, idx, gpu_bb.runtime, 16, workers=2)["joint"]
    assert gpu.device.type == "cpu"
    torch.testing.assert_close(gpu, cpu, rtol=2e-3, atol=2e-3 * float(cpu.abs().max()))


@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
@pytest.mark.parametrize("method", known_methods())
def test_method_on_cuda_matches_cpu(method, tmp_path):
    probs, cfgs = {}, {}
    for device in ("cpu", "cuda"):
        cfg = RunConfig(method=method, backbone=TINY, shots=2, eval_datasets=[],
                        options=FAST.get(method, {}), out=str(tmp_path / device),
                        progress=False, device=device, workers=2)
        result = run(cfg)
        probs[device] = result.evaluations["test"].prediction.probs
        cfgs[device] = result.runtime.describe()
    assert probs["cuda"].device.type == "cpu"  # outputs cross the boundary on the CPU
    assert cfgs["cuda"]["device"].startswith("cuda") and "gpu_name" in cfgs["cuda"]
    torch.testing.assert_close(probs["cuda"], probs["cpu"], rtol=0,
                               atol=PROB_ATOL.get(method, 1e-4))
    if (tmp_path / "cuda" / "checkpoint.pt").exists():  # trained on cuda, reloaded on cpu
        reloaded = load_trained_method(tmp_path / "cuda", runtime=Runtime.resolve("cpu"))
        saved = np.load(tmp_path / "cuda" / "predictions.npz")["test/probs"]
        from pyro_clip.pipeline.run import get_backbone, load_features
        feats = load_features(RunConfig(backbone=TINY, progress=False), get_backbone(TINY),
                              "fashion-mnist", "test")
        again = reloaded.predict(feats.features["joint"], feats.classnames).probs.numpy()
        np.testing.assert_allclose(again, saved, rtol=0, atol=PROB_ATOL.get(method, 1e-4))


# ----- the GPU benchmark script ------------------------------------------------------------
def test_bench_gpu_cpu_smoke_measures_every_section(tmp_path):
    from benchmarks import bench_gpu

    res = bench_gpu.main(["--cpu-smoke", "--out-dir", str(tmp_path)])
    saved = (tmp_path / "gpu_cpu_smoke.json").read_text()
    assert '"mode": "cpu-smoke"' in saved
    ext, steps = res["extraction"], res["prompt_steps"]
    assert ext["images"] == bench_gpu.SMOKE["images"] and ext["extraction_vs_raw_ratio"] > 0
    assert steps["classes"] == bench_gpu.SMOKE["classes"]
    assert steps["pg_draws_per_step"] == steps["batch"] * (steps["classes"] - 1)
    for key in ("softmax_step_s", "ove_pg_step_s", "ove_pg_omega_mean_step_s", "pg_draw_s"):
        assert steps[key] > 0
    assert res["kalman"]["n"] == bench_gpu.SMOKE["n_features"] and res["kalman"]["fit_s"] > 0
    assert res["laplace"]["fit_s"] > 0


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA GPU is visible: the script would measure it")
def test_bench_gpu_without_gpu_says_so_and_measures_nothing(tmp_path, capsys):
    from benchmarks import bench_gpu

    assert bench_gpu.main(["--out-dir", str(tmp_path)]) is None
    assert "no CUDA GPU is visible" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_device_elbo_equals_pyro_trace_elbo_in_value_and_gradient():
    """The sync-free ELBO is Pyro's Trace_ELBO: same loss, same gradient (same psi draws)."""
    from pyro.infer import Trace_ELBO

    from pyro_clip.models.ove_pg import (
        DeviceTraceELBO,
        OvePGConfig,
        ove_pg_guide,
        ove_pg_model,
    )

    gen = torch.Generator().manual_seed(0)
    f0 = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    omega = torch.rand(6, 4, generator=gen, dtype=torch.float64) + 0.1
    cfg = OvePGConfig(num_samples=3)
    values, grads = [], []
    for elbo in (Trace_ELBO(max_plate_nesting=2), DeviceTraceELBO(max_plate_nesting=2)):
        f = (f0 + 0.3).clone().requires_grad_()
        torch.manual_seed(7)
        loss = elbo.differentiable_loss(ove_pg_model, ove_pg_guide, f, f0, labels, omega, cfg)
        loss.backward()
        values.append(loss.detach())
        grads.append(f.grad)
    torch.testing.assert_close(values[1], values[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)
