"""Minibatch gradient training shared by the trained methods (prompt learners, adapters).

One loop with the habits every method needs: seeded minibatches, SGD or AdamW with a cosine
schedule, a tqdm bar, an atomic end-of-epoch checkpoint that a killed run resumes from, and a
NaN guard that stops with a clear message and restores the last good weights.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from pyro_clip.errors import ConfigError, TrainingError
from pyro_clip.io import save_torch

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
        if self.optimizer not in ("sgd", "adamw"):
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
) -> list[float]:
    """Minimise ``loss_fn(batch_indices)`` over the trainable parameters of ``module``.

    ``n`` examples are shuffled each epoch by a generator seeded with ``settings.seed``. With
    ``checkpoint`` set, state is written there atomically after each epoch and a matching
    checkpoint (same settings, same parameter shapes) is resumed from. Returns epoch-mean losses.
    """
    settings.validate()
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"{desc}: nothing to train (no parameter requires grad)")
    opt = _optimizer(params, settings)
    steps_per_epoch = math.ceil(n / settings.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(settings.seed)
    tag = _tag(module, settings, n)
    history: list[float] = []
    start_epoch = 0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state.get("tag") == tag:
            module.load_state_dict(state["module"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            gen.set_state(state["generator"])
            history, start_epoch = state["history"], state["epoch"]
    good = {k: v.detach().clone() for k, v in module.state_dict().items()}
    bar = tqdm(total=settings.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch,
               desc=desc, disable=not progress, leave=False)
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
            bar.update(1)
            if progress and step % LOG_EVERY == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        history.append(float(total) / n)
        good = {k: v.detach().clone() for k, v in module.state_dict().items()}
        if checkpoint is not None:
            save_torch(checkpoint, {
                "tag": tag, "module": module.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "generator": gen.get_state(),
                "history": history, "epoch": epoch + 1,
            })
    bar.close()
    return history


def _tag(module: nn.Module, settings: TrainSettings, n: int) -> str:
    """A checkpoint is resumed only by the same settings, data size and parameter shapes."""
    shapes = {k: list(v.shape) for k, v in module.state_dict().items()}
    text = json.dumps([asdict(settings), n, shapes], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
