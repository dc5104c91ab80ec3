"""Where a run computes: device, autocast precision, threads, and what it cost in memory.

Runtime settings are not hyperparameters (convention 7): they say where and how fast a trial
runs, never what it learns, so they may differ between the runs of one study.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Runtime:
    """Where a trial runs; not a hyperparameter."""

    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None = fp32
    log_every_steps: int = 20
    progress: bool = False
    log_every_s: float = 30.0  # progress lines at least this often when no bar shows (0: by steps only)

    @property
    def precision(self) -> str:
        """What ``train.precision=auto`` resolved to: fp32 | bf16 | fp16."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")  # type: ignore[arg-type]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward pass's autocast (a no-op in fp32)."""
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (so bf16 autocast is faster, not emulated):
    NVIDIA GPUs of compute capability 8.0 and later (Ampere), ROCm GPUs with bf16, CPUs with
    AVX512-BF16 or AMX (Zen 4, Sapphire Rapids and later). Older CPUs and GPUs (V100, T4)
    would emulate bf16, slower than fp32."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        if torch.version.hip:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def resolve_runtime(device: str, precision: str, log_every_steps: int = 20, progress: bool = False,
                    log_every_s: float = 30.0) -> Runtime:
    """auto device = CUDA when present; auto precision = bf16 autocast where the device computes
    bf16 natively (:func:`native_bf16`), else fp32. Weights and optimizer state stay fp32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if precision == "auto":
        dtype = torch.bfloat16 if native_bf16(dev) else None
    else:
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(dev, dtype, log_every_steps, progress, log_every_s)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of the run: CUDA's allocator peak, or the process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is KiB on Linux, bytes on macOS: the process's peak resident set.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
