"""Where and in what precision a run computes: the one home of the device and the dtypes.

A :class:`Runtime` is resolved once per run from ``--device`` / ``--precision`` and handed to
the backbone and to every method through :class:`~pyro_clip.methods.MethodContext`; no other
module picks a device. Backbone forwards run under :meth:`Runtime.autocast` (bf16 / fp16 on
CUDA); the Bayesian maths (covariances, Pólya-Gamma conditionals) keeps ``math_dtype``
(float64 by default, which data-centre GPUs run natively).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from pyro_clip.errors import ConfigError

DEVICES_HELP = "auto | cpu | cuda | cuda:N"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MATH_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible (``CUDA_VISIBLE_DEVICES`` respected), else cpu.

    An explicit ``cuda`` / ``cuda:N`` without such a GPU is an error, never a silent fallback.
    """
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"device must be {DEVICES_HELP}, got {spec!r}") from exc
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(f"device must be {DEVICES_HELP}, got {spec!r}")
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        raise ConfigError(
            f"--device {spec} was asked for but no CUDA GPU is visible{hint}; "
            "use --device cpu or --device auto"
        )
    index = device.index if device.index is not None else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible "
            f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
        )
    return torch.device("cuda", index)


@dataclass(frozen=True)
class Runtime:
    """Device, backbone precision and the dtype of the Bayesian maths.

    >>> rt = Runtime.resolve("cpu", "fp32")
    >>> rt.device.type, rt.precision, rt.math_dtype
    ('cpu', 'fp32', torch.float64)
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: precision of backbone forwards (autocast); "fp32" disables autocast
    precision: str = "fp32"
    #: dtype of covariances and other factored quantities
    math_dtype: torch.dtype = torch.float64

    @classmethod
    def resolve(
        cls, device: str = "auto", precision: str = "fp32", math_dtype: str = "float64"
    ) -> Runtime:
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if math_dtype not in MATH_DTYPES:
            raise ConfigError(
                f"math_dtype must be one of {sorted(MATH_DTYPES)}, got {math_dtype!r}"
            )
        dev = resolve_device(device)
        if dev.type == "cpu" and precision == "fp16":
            raise ConfigError("precision fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
        return cls(dev, precision, MATH_DTYPES[math_dtype])

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def autocast_dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for backbone forwards (a no-op at fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def to(self, tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Move ``tensor`` to the device (non-blocking from pinned memory), optionally cast."""
        return tensor.to(self.device, dtype=dtype, non_blocking=self.is_cuda)

    def scope(self) -> contextlib.AbstractContextManager:
        """Context in which tensor factories (``torch.zeros``, ``torch.eye``, ...) default to
        the device (``torch.device`` as a context manager); a no-op on the CPU, which is the
        default already (the mode costs Python overhead on every torch call)."""
        if not self.is_cuda:
            return contextlib.nullcontext()
        return torch.device(self.device)

    def describe(self) -> dict[str, str]:
        """What ``config.json`` records: device, precision, math dtype and the GPU's name."""
        info = {
            "device": str(self.device),
            "precision": self.precision,
            "math_dtype": str(self.math_dtype).removeprefix("torch."),
        }
        if self.is_cuda:
            info["gpu_name"] = torch.cuda.get_device_name(self.device)
        return info

    @contextlib.contextmanager
    def synchronized(self) -> Iterator[None]:
        """Context that waits for queued device work on exit (for timing)."""
        try:
            yield
        finally:
            if self.is_cuda:
                torch.cuda.synchronize(self.device)


CPU = Runtime()
