"""Reproducible runs: one call seeds Python, NumPy, torch and Pyro."""

from __future__ import annotations

import random

import numpy as np
import pyro
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
