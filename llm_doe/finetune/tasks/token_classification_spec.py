"""``task=token_classification``, declared (plain data, no torch; ``tasks/__init__.py`` registers
it): see :mod:`llm_doe.plugins` and :mod:`llm_doe.finetune.tasks.token_classification`."""

from __future__ import annotations

from llm_doe.plugins import TaskSpec

SPEC = TaskSpec(
    name="token_classification",
    target="llm_doe.finetune.tasks.token_classification.TokenClassificationTask",
    # seqeval's entity-level micro figures, per word.
    metrics={"val_loss": "minimize", "precision": "maximize", "recall": "maximize", "f1": "maximize"},
    sources=("conll", "uner_en_ewt"),
    keys=("name", "label_all_tokens"),
    source_keys={"path": ("conll",), "val_path": ("conll",), "test_path": ("conll",),
                 "token_column": ("conll", "uner_en_ewt"), "tag_column": ("conll", "uner_en_ewt"),
                 "labels": ("conll", "uner_en_ewt"), "encoding": ("conll",)},
    data_keys=("source", "path", "val_path", "test_path", "token_column", "tag_column", "labels"),
    peft_task_type="TOKEN_CLS",
    model_class="AutoModelForTokenClassification",
    pipeline_tag="token-classification",
)
