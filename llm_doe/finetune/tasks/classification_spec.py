"""``task=classification``, declared (plain data, no torch; ``tasks/__init__.py`` registers it): see
:mod:`llm_doe.plugins`."""

from __future__ import annotations

from llm_doe.plugins import TaskSpec, TrialCheck

#: A classifier's evaluations also return how many distinct classes it predicted (1: a constant
#: predictor, which learned nothing): a check, not a metric to optimise.
PREDICTED_CLASSES = "predicted_classes"

SPEC = TaskSpec(
    name="classification",
    target="llm_doe.finetune.tasks.classification.ClassificationTask",
    metrics={"val_loss": "minimize", "accuracy": "maximize", "f1": "maximize", "roc_auc": "maximize"},
    sources=("tweets", "csv", "hub"),
    keys=("name",),
    # A text source's columns, labels and encoding mean nothing to another task's data (a chat file).
    source_keys={"path": ("csv",), "name": ("hub",), "config_name": ("hub",), "split": ("hub",),
                 **dict.fromkeys(("text_column", "label_column", "labels", "label_names", "drop_duplicates"),
                                 ("tweets", "csv", "hub")),
                 "encoding": ("tweets", "csv")},
    data_keys=("source", "path", "name", "config_name", "split", "text_column", "label_column", "labels",
               "label_names"),
    peft_task_type="SEQ_CLS",
    model_class="AutoModelForSequenceClassification",
    pipeline_tag="text-classification",
    levers=("augment", "distill"),
    checks=(TrialCheck(PREDICTED_CLASSES, 1, "trial {trial} learned nothing: at its best evaluation it predicts one "
                                             "class for every validation example (a constant predictor; accuracy "
                                             "{accuracy} is the majority share)"),),
)
