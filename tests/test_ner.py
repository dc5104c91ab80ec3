"""task=token_classification end to end: a ner_sweep study on the shipped Universal NER English
EWT (tiny BERT, a few dozen sentences), its trials' entity metrics and entities.csv, LoRA, the
final export that ``pipeline("token-classification")`` loads, and bad CoNLL input refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest

from llm_doe.analysis import load_artifacts, load_trials
from llm_doe.final import main as final
from llm_doe.search import main
from tests.conftest import store_args

NER = ["+study=ner_sweep", "model=tiny", "data.train_size=48", "data.val_size=16", "data.test_size=24",
       "train.num_epochs=1", "train.evals_per_epoch=2", "runtime.progress=false", "runtime.num_threads=1"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("llm_doe: error: ") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def ner_study(tmp_path_factory) -> dict[str, Any]:
    """Two trials of ner_sweep on a slice of the shipped data."""
    tmp = tmp_path_factory.mktemp("ner")
    args = [*NER, *store_args(tmp, "ner")]
    assert main([*args, "study.n_trials=2"]) == 0
    return {"tmp": tmp, "args": args, "url": f"sqlite:///{tmp}/ner.db"}


def test_a_ner_study_records_entity_metrics_and_an_entities_csv_per_trial(ner_study):
    study = optuna.load_study(study_name="ner", storage=ner_study["url"])
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE and study.user_attrs["metric"] == "f1"
    assert study.user_attrs["classes"] == "0: O, 1: B-LOC, 2: I-LOC, 3: B-ORG, 4: I-ORG, 5: B-PER, 6: I-PER"
    for trial in study.trials:
        attrs = trial.user_attrs
        assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == attrs["f1"]
        # The entity metrics are numbers, not overwritten by any other figure the trial records.
        assert all(isinstance(attrs[m], float) and 0.0 <= attrs[m] <= 1.0 for m in ("precision", "recall", "f1"))
        assert attrs["val_loss"] > 0
    files = load_artifacts(ner_study["url"], "ner").groupby("trial")["filename"].apply(set).tolist()
    assert files == [{"config.yaml", "metrics.jsonl", "entities.csv"}] * 2
    table = load_trials(ner_study["url"], "ner")
    assert table["precision"].dtype.kind == "f" and table["f1"].notna().all()
    # The trial's config.yaml shows the keys that apply to the task and its data.
    shown = next(p.read_text(encoding="utf-8") for p in (ner_study["tmp"] / "art").rglob("*")
             if p.is_file() and p.read_bytes().startswith(b"task:"))
    assert "label_all_tokens: false" in shown and "token_column: 1" in shown and "loss_on" not in shown
    assert "source: uner_en_ewt" in shown and "val_path" not in shown


def test_final_exports_a_tagger_that_the_token_classification_pipeline_loads(ner_study, tmp_path):
    from transformers import pipeline

    out = tmp_path / "export"
    assert final([*ner_study["args"], f"final.output_dir={out}", f"hydra.run.dir={tmp_path}/run"]) == 0
    metrics = json.loads((out / "test_metrics.json").read_text(encoding="utf-8"))
    assert metrics["n_test"] == 24 and all(isinstance(metrics[m], float) for m in ("precision", "recall", "f1"))
    assert (out / "entities.csv").read_text(encoding="utf-8").startswith("entity,precision,recall,f1,support")
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "pipeline_tag: token-classification" in card and "## Per-entity test figures" in card
    assert "| PER |" in card and "Universal NER English EWT" in card
    tagger = pipeline("token-classification", model=str(out), aggregation_strategy="simple")
    assert tagger.model.config.id2label == {0: "O", 1: "B-LOC", 2: "I-LOC", 3: "B-ORG", 4: "I-ORG", 5: "B-PER",
                                            6: "I-PER"}
    found = tagger("Barack Obama visited Paris with Google engineers.")
    assert isinstance(found, list) and all(f["entity_group"] in {"LOC", "ORG", "PER"} for f in found)


def test_lora_trains_a_token_classifier_and_its_export_merges(tmp_path):
    args = [*NER, "peft=lora", *store_args(tmp_path, "lora")]
    assert main([*args, "study.n_trials=1"]) == 0
    attrs = optuna.load_study(study_name="lora", storage=f"sqlite:///{tmp_path}/lora.db").trials[0].user_attrs
    assert 0 < attrs["trainable_params"] < attrs["total_params"] / 10 and 0.0 <= attrs["f1"] <= 1.0
    out = tmp_path / "export"
    assert final([*args, f"final.output_dir={out}", f"hydra.run.dir={tmp_path}/run2"]) == 0
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["task_type"] == "TOKEN_CLS"
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(out)
    assert model.config.id2label[5] == "B-PER"


def _conll(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_a_tag_training_never_saw_is_refused_naming_the_tag_and_the_file(tmp_path, capsys):
    train = _conll(tmp_path, "train.txt", "".join(f"Ann{i} B-PER\nsaw O\nRome B-LOC\n\n" for i in range(30)))
    test = _conll(tmp_path, "test.txt", "ACME B-ORG\nsold O\n\n")
    args = [*NER, "data=conll", f"data.path={train}", f"data.test_path={test}", "data.test_size=null",
            "data.val_size=4", "data.train_size=null", *store_args(tmp_path, "bad"), "study.n_trials=1"]
    assert main(args) == 2
    err = _one_line_error(capsys)
    assert "data.test_path: tag 'B-ORG'" in err and "test.txt" in err
    assert not (tmp_path / "bad.db").exists()  # refused before anything is written


def test_your_own_conll_file_reads_the_first_and_last_columns(tmp_path):
    lines = "-DOCSTART- -X- -X- O\n\n" + "".join(f"Ann{i} NNP B-NP B-PER\nsaw VBD B-VP O\nRome NNP B-NP B-LOC\n\n"
                                                 for i in range(40))
    args = [*NER, "data=conll", f"data.path={_conll(tmp_path, 'train.txt', lines)}", "data.train_size=null",
            "data.val_size=8", "data.test_size=8", *store_args(tmp_path, "own"), "study.n_trials=1"]
    assert main(args) == 0
    study = optuna.load_study(study_name="own", storage=f"sqlite:///{tmp_path}/own.db")
    assert study.user_attrs["classes"] == "0: O, 1: B-LOC, 2: B-PER"
