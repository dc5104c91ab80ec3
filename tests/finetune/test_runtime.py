"""Runtime resolution: which precision "auto" means on a CPU or a GPU."""

from __future__ import annotations

import pytest
import torch

from llm_doe.finetune.runtime import native_bf16, resolve_runtime


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [(False, False, "fp32"), (True, False, "bf16"),
                                                              (False, True, "bf16")])
def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert resolve_runtime("cpu", "auto").precision == expected
    assert resolve_runtime("cpu", "fp32").precision == "fp32"  # an explicit choice always wins
    assert resolve_runtime("cpu", "bf16").precision == "bf16"


@pytest.mark.parametrize(("capability", "expected"), [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_native_bf16_on_cuda_means_ampere_or_later(monkeypatch, capability, expected):
    # V100 (7.0) and T4 (7.5) emulate bf16 (torch.cuda.is_bf16_supported() still says True).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert native_bf16(torch.device("cuda")) is expected
