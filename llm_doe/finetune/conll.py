"""CoNLL / IOB2 files: sentences of words with one tag each, split as every other source is.

A file holds one token per line, its columns separated by tabs (or, in a line without a tab,
by spaces); a blank line ends a sentence. ``-DOCSTART-`` lines (CoNLL-2003's document breaks)
are skipped, and so are ``#`` comment lines before a sentence's first token (CoNLL-U's
``# sent_id = ...``, ``# text = ...``). The word is in column ``data.token_column`` (null: the
first) and the tag in ``data.tag_column`` (null: the last), both 0-based, negative from the end.
Tags are IOB tags: ``O``, or ``B-``/``I-`` (also ``E-``/``S-``) and an entity type. Gzipped files
(``.gz``) are read as they are.

``data.path`` is the training file; ``data.val_path`` and ``data.test_path`` are optional, and a
split without its file is cut from the training sentences as :mod:`llm_doe.finetune.data` cuts
text: the test split first (``data.test_seed``, else ``data.seed``), then validation (seed + 1),
then training from the rest (seed + 2). ``data.train_size``, ``data.val_size`` and
``data.test_size`` cap the sentences taken from each (a seeded sample of a file; null: all of a
split's own file, or a tenth of the training sentences, at least 2 and at most 200, for a cut split).

``data=uner_en_ewt`` (``data.source=uner_en_ewt``) reads the Universal NER English EWT files
shipped in ``llm_doe/data/uner_en_ewt`` (CC BY-SA 4.0, Mayhew et al., NAACL 2024) instead: its
dev file for training and validation, its test file for the test split, the token in column 1
and the tag in column 2 (the repository's training file is not shipped; see that folder's README).

The label set is the training file's tags (``O`` first, then by entity type, ``B-`` before
``I-``), or ``data.labels`` in its order; a tag of any split outside it is an error that names
the tag and the file.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sklearn.model_selection import train_test_split

from llm_doe.finetune.data import Splits
from llm_doe.schema import ConfigError, DataConfig, held_out_size

#: The Universal NER English EWT files shipped with llm_doe (README.md there says what they are).
UNER_DIR = Path(__file__).resolve().parent.parent / "data" / "uner_en_ewt"
UNER_TRAIN = UNER_DIR / "en_ewt-ud-dev.iob2.gz"
UNER_TEST = UNER_DIR / "en_ewt-ud-test.iob2.gz"
#: The ``data.source`` that reads them.
UNER_SOURCE = "uner_en_ewt"

_TAG = re.compile(r"O|[BIES]-\S+")


@dataclass
class Sentences:
    """One split: each sentence's words and their tags (as written in the file)."""

    words: list[list[str]]
    tags: list[list[str]]
    origin: str = ""  # the file the sentences came from

    def __len__(self) -> int:
        return len(self.words)

    def take(self, index: Sequence[int]) -> Sentences:
        return Sentences([self.words[i] for i in index], [self.tags[i] for i in index], self.origin)


#: train/val for the search, test held back and counted: the text reader's :class:`~llm_doe.finetune.data.Splits`.
TaggedSplits = Splits[Sentences]


def _open(path: Path, encoding: str) -> Any:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding)
    return open(path, encoding=encoding)


def _column(fields: list[str], column: int) -> str | None:
    return fields[column] if -len(fields) <= column < len(fields) else None


def read_conll(path: str | os.PathLike[str], *, token_column: int = 0, tag_column: int = -1, encoding: str = "utf-8",
               key: str = "data.path") -> Sentences:
    """Every sentence of a CoNLL / IOB2 file.

    Args:
        path: The file (``.gz``: gzip-compressed).
        token_column: The word's column (0-based; negative from the end).
        tag_column: The tag's column, likewise.
        encoding: The file's text encoding.
        key: The config key that named the file (what an error names).

    Raises:
        ConfigError: a missing or unreadable file, a row without the token or tag column, a tag
            that is not an IOB tag, a file without a sentence.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(key, f"{path}: no such file")
    words: list[list[str]] = []
    tags: list[list[str]] = []
    sentence: tuple[list[str], list[str]] = ([], [])
    try:
        with _open(path, encoding) as handle:
            for number, line in enumerate(handle, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    if sentence[0]:
                        words.append(sentence[0])
                        tags.append(sentence[1])
                        sentence = ([], [])
                    continue
                if line.startswith("#") and not sentence[0]:
                    continue  # a comment before the sentence's first token
                fields = line.split("\t") if "\t" in line else line.split()
                if fields[0] == "-DOCSTART-":
                    continue
                token, tag = _column(fields, token_column), _column(fields, tag_column)
                if token is None or tag is None:
                    which = "data.token_column" if token is None else "data.tag_column"
                    column = token_column if token is None else tag_column
                    raise ConfigError(which, f"{path} line {number} has {len(fields)} columns, no column {column}: "
                                             f"{line[:80]!r}")
                tag = tag.strip()
                if not _TAG.fullmatch(tag):
                    raise ConfigError("data.tag_column", f"{path} line {number}: {tag!r} in column {tag_column} is "
                                                         "not an IOB tag (O, B-TYPE, I-TYPE): set data.tag_column to "
                                                         "the tag's column (0-based)")
                sentence[0].append(token.strip())
                sentence[1].append(tag)
    except (UnicodeDecodeError, OSError, EOFError) as err:
        raise ConfigError(key, f"{path}: cannot read ({str(err).splitlines()[0]})") from None
    if sentence[0]:
        words.append(sentence[0])
        tags.append(sentence[1])
    if not words:
        raise ConfigError(key, f"{path}: no sentence in it (one token per line, a blank line between sentences)")
    return Sentences(words, tags, str(path))


def label_order(tags: set[str]) -> list[str]:
    """``O`` first, then by entity type, each type's prefixes in B, I, E, S order."""
    prefixes = "BIES"
    return sorted(tags, key=lambda t: ("",) if t == "O" else (t[2:], str(prefixes.index(t[0]))))


def _check_tags(sentences: Sentences, labels: Sequence[str], key: str, against: str) -> None:
    known = set(labels)
    for sentence in sentences.tags:
        for tag in sentence:
            if tag not in known:
                raise ConfigError(key, f"tag {tag!r} in {sentences.origin} is not in {against} "
                                       f"({', '.join(labels)})")


def _cut(items: list[int], size: int, seed: int, key: str) -> tuple[list[int], list[int]]:
    """Take ``size`` of ``items`` (seeded), and the rest."""
    if size >= len(items):
        raise ConfigError(key, f"{size} is more than the {len(items)} sentences left for it")
    if size == 0:
        return [], items
    taken, rest = train_test_split(items, train_size=size, random_state=seed)
    return list(taken), list(rest)


def _cap(sentences: Sentences, size: int | None, seed: int) -> Sentences:
    """At most ``size`` sentences of a file (a seeded sample, in file order; null: all)."""
    if size is None or size >= len(sentences):
        return sentences
    taken, _ = _cut(list(range(len(sentences))), size, seed, "")
    return sentences.take(sorted(taken))


@dataclass
class ConllFiles:
    """The CoNLL files a data config reads (None: the split is cut from training) and their columns."""

    train: Path
    val: Path | None
    test: Path | None
    token_column: int
    tag_column: int


def conll_files(cfg: DataConfig) -> ConllFiles:
    """The files and columns ``cfg`` reads: the user's (``data=conll``), or the shipped UNER
    English EWT set (``data=uner_en_ewt``: its dev file to train and validate, its test file)."""
    if cfg.source == UNER_SOURCE:
        return ConllFiles(UNER_TRAIN, None, UNER_TEST, cfg.token_column, cfg.tag_column)
    if not cfg.path:
        raise ConfigError("data.path", "is required with data=conll (the training file)")
    return ConllFiles(Path(cfg.path), Path(cfg.val_path) if cfg.val_path else None,
                      Path(cfg.test_path) if cfg.test_path else None, cfg.token_column, cfg.tag_column)


def split_conll(cfg: DataConfig) -> TaggedSplits:
    """The configured train / validation / test sentences and the label set (uncached).

    Raises:
        ConfigError: a bad file (see :func:`read_conll`), sizes the sentences cannot meet, a
            tag outside the label set.
    """
    if cfg.label_names:
        raise ConfigError("data.label_names", "does not apply to data=conll: a tag is its own name (choose and order "
                                              "the tags with data.labels)")
    files = conll_files(cfg)

    def read(path: Path, key: str) -> Sentences:
        return read_conll(path, token_column=files.token_column, tag_column=files.tag_column, encoding=cfg.encoding,
                          key=key)

    train = read(files.train, "data.path")
    if cfg.labels is not None:
        labels = [str(v) for v in cfg.labels]
        bad = [v for v in labels if not _TAG.fullmatch(v)]
        if bad:
            raise ConfigError("data.labels", f"{bad} are not IOB tags (O, B-TYPE, I-TYPE)")
        _check_tags(train, labels, "data.labels", "data.labels")
    else:
        labels = label_order({t for sentence in train.tags for t in sentence})
    test_seed = cfg.seed if cfg.test_seed is None else cfg.test_seed
    rest = list(range(len(train)))
    if files.test is not None:
        test = _cap(read(files.test, "data.test_path"), cfg.test_size, test_seed)
        _check_tags(test, labels, "data.test_path", "data.labels" if cfg.labels is not None else
                    f"the training file {train.origin}")
    else:
        taken, rest = _cut(rest, held_out_size(cfg.test_size, len(train)), test_seed, "data.test_size")
        test = train.take(taken)
    if files.val is not None:
        val = _cap(read(files.val, "data.val_path"), cfg.val_size, cfg.seed + 1)
        _check_tags(val, labels, "data.val_path", "data.labels" if cfg.labels is not None else
                    f"the training file {train.origin}")
    else:
        taken, rest = _cut(rest, held_out_size(cfg.val_size, len(train)), cfg.seed + 1, "data.val_size")
        val = train.take(taken)
    if cfg.train_size is not None and cfg.train_size < len(rest):
        rest, _ = _cut(rest, cfg.train_size, cfg.seed + 2, "data.train_size")
    if not rest:
        raise ConfigError("data.train_size", f"no training sentence left in {train.origin} after the validation and "
                                             "test splits")
    return TaggedSplits(train.take(rest), val, test, labels)


def _data_key(cfg: DataConfig) -> tuple[Any, ...]:
    return tuple(sorted((k, repr(v)) for k, v in asdict(cfg).items() if k != "max_length"))


_SPLITS: dict[tuple[Any, ...], TaggedSplits] = {}


def load_conll(cfg: DataConfig) -> TaggedSplits:
    """:func:`split_conll`, once per process per data config (trials share the result)."""
    key = _data_key(cfg)
    if key not in _SPLITS:
        _SPLITS[key] = split_conll(cfg)
    return _SPLITS[key]


def clear_caches() -> None:
    """Forget cached splits (tests start from a clean process state with it)."""
    _SPLITS.clear()
