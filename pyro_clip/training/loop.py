"""Minibatch gradient training shared by the trained methods (prompt learners, adapters).

One loop with the habits every method needs: seeded minibatches, SGD or AdamW with a cosine
schedule, a progress bar, an atomic end-of-epoch checkpoint that a killed run resumes from, and a
NaN guard that stops with a clear message and restores the last good weights.

The checkpoint holds every random state the loop and the loss draw from (the minibatch
generator, torch's global CPU and CUDA generators, NumPy generators the loss uses such as the
Pólya-Gamma sampler's, NumPy's and Python's global ones), so a resumed run equals an
uninterrupted one bit for bit on the same machine. It is resumed only by a run with the same
identity (method, options, backbone fingerprint, fingerprint of the training data, settings,
parameter shapes) and removed once training finishes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pyro_clip.errors import ConfigError, TrainingError
from pyro_clip.utils.io import save_torch
from pyro_clip.utils.progress import progress_bar

log = logging.getLogger(__name__)

#: optimisers :class:`TrainSettings` accepts
OPTIMIZERS = ("sgd", "adamw")

#: steps between loss read-backs for the progress bar (each is a device -> host sync)
LOG_EVERY = 25


@dataclass
class TrainSettings:
    """Optimiser settings; defaults follow CoOp (SGD, lr 2e-3, cosine, batch 32)."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-3
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 1

    def validate(self) -> TrainSettings:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {self.epochs}, "
                              f"{self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        return self


def _optimizer(params: list[nn.Parameter], s: TrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)


def train(
    module: nn.Module,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    settings: TrainSettings,
    checkpoint: Path | None = None,
    progress: bool = True,
    desc: str = "training",
    identity: Mapping[str, Any] | None = None,
    rngs: Mapping[str, np.random.Generator] | None = None,
) -> list[float]:
    """Minimise ``loss_fn(batch_indices)`` over the trainable parameters of ``module``.

    ``n`` examples are shuffled each epoch by a generator seeded with ``settings.seed``. With
    ``checkpoint`` set, state is written there atomically after each epoch, a checkpoint with
    the same tag (``identity`` from :func:`checkpoint_identity`, settings, ``n``, parameter
    shapes) is resumed from, and the file is deleted when training completes. ``rngs``: NumPy
    generators ``loss_fn`` draws from, checkpointed with the rest. Returns epoch-mean losses.
    """
    settings.validate()
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"{desc}: nothing to train (no parameter requires grad)")
    opt = _optimizer(params, settings)
    steps_per_epoch = math.ceil(n / settings.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(settings.seed)
    rngs = dict(rngs or {})
    tag = _tag(module, settings, n, identity)
    history: list[float] = []
    start_epoch = 0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state.get("tag") == tag:
            module.load_state_dict(state["module"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            gen.set_state(state["generator"])
            _set_rng_states(state.get("rng_states", {}), rngs)
            history, start_epoch = state["history"], state["epoch"]
            log.info("%s: resumed from %s after epoch %d", desc, checkpoint, start_epoch)
        else:
            log.warning("%s: ignoring %s, written by another run (%s); it will be replaced",
                        desc, checkpoint, state.get("identity", "no identity recorded"))
    good = {k: v.detach().clone() for k, v in module.state_dict().items()}
    bar = progress_bar(total=settings.epochs * steps_per_epoch,
                       initial=start_epoch * steps_per_epoch, desc=desc, enabled=progress)
    for epoch in range(start_epoch, settings.epochs):
        # drawn where the generator lives (CPU): the same order on every device
        order = torch.randperm(n, generator=gen, device=gen.device)
        total = torch.zeros((), dtype=torch.float64)
        for step in range(steps_per_epoch):
            idx = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            loss = loss_fn(idx)
            if not torch.isfinite(loss):
                module.load_state_dict(good)
                where = f"epoch {epoch + 1} step {step + 1}"
                kept = f"; the last good checkpoint is {checkpoint}" if checkpoint else ""
                raise TrainingError(
                    f"{desc}: loss became {loss.item()} at {where}; weights restored to the "
                    f"last good epoch{kept}. Lower the learning rate (now {settings.lr})."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            # summed on the device; read back once an epoch (and every LOG_EVERY steps for the
            # bar) so that a step queues its GPU work without waiting for it
            total = total.to(loss.device) + loss.detach().double() * len(idx)
            if progress and step % LOG_EVERY == 0:
                bar.step(loss=loss.item())
            else:
                bar.update(1)
        history.append(float(total) / n)
        good = {k: v.detach().clone() for k, v in module.state_dict().items()}
        if checkpoint is not None:
            save_torch(checkpoint, {
                "tag": tag, "identity": dict(identity or {}), "module": module.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "generator": gen.get_state(), "rng_states": _rng_states(rngs),
                "history": history, "epoch": epoch + 1,
            })
    bar.close(f"loss {history[-1]:.4f}" if history else "")
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)  # finished: a later run must not resume from it
    return history


def data_fingerprint(*tensors: torch.Tensor) -> str:
    """SHA-256 over the dtype, shape and bytes of each tensor (the training features, labels)."""
    h = hashlib.sha256()
    for t in tensors:
        a = t.detach().cpu().contiguous()
        h.update(f"{a.dtype}{tuple(a.shape)}".encode())
        h.update(a.view(torch.uint8).numpy().tobytes() if a.numel() else b"")
    return h.hexdigest()


def checkpoint_identity(method: str, options: Mapping[str, Any], backbone_fingerprint: str,
                        *data: torch.Tensor, templates: Sequence[str] = ()) -> dict[str, Any]:
    """What a resumable checkpoint must share with the run resuming it: the method,
    its options, the backbone, the prompt templates (they set the zero-shot prior) and the
    training data (:func:`data_fingerprint` of ``data``)."""
    return {"method": method, "options": json.loads(json.dumps(dict(options), default=str)),
            "backbone": backbone_fingerprint, "templates": list(templates),
            "data": data_fingerprint(*data)}


def _rng_states(rngs: Mapping[str, np.random.Generator]) -> dict[str, Any]:
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(), "numpy_global": np.random.get_state(),
        "python": random.getstate(),
        "numpy": {k: g.bit_generator.state for k, g in rngs.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: Mapping[str, Any], rngs: Mapping[str, np.random.Generator]) -> None:
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "numpy_global" in states:
        np.random.set_state(states["numpy_global"])
    if "python" in states:
        random.setstate(states["python"])
    for k, g in rngs.items():
        if k in states.get("numpy", {}):
            g.bit_generator.state = states["numpy"][k]
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _tag(module: nn.Module, settings: TrainSettings, n: int,
         identity: Mapping[str, Any] | None) -> str:
    """A checkpoint is resumed only by the same run identity, settings, data size and shapes."""
    shapes = {k: list(v.shape) for k, v in module.state_dict().items()}
    text = json.dumps([asdict(settings), n, shapes, dict(identity or {})], sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()
