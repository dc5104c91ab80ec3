"""``task=causal_lm``, declared (plain data, no torch; ``tasks/__init__.py`` registers it): see
:mod:`llm_doe.plugins`."""

from __future__ import annotations

from llm_doe.plugins import TaskSpec

SPEC = TaskSpec(
    name="causal_lm",
    target="llm_doe.finetune.tasks.causal_lm.CausalLMTask",
    metrics={"val_loss": "minimize", "perplexity": "minimize"},
    sources=("chat_pairs", "jsonl"),
    keys=("name", "loss_on", "sample_prompts", "sample_max_new_tokens", "packing"),
    source_keys={"path": ("jsonl",), "prompt_field": ("jsonl",), "response_field": ("jsonl",),
                 "truncation": ("chat_pairs", "jsonl")},
    data_keys=("source", "path", "prompt_field", "response_field"),
    peft_task_type="CAUSAL_LM",
    model_class="AutoModelForCausalLM",
    pipeline_tag="text-generation",
)
