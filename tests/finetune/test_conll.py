"""data=conll: CoNLL / IOB2 files read, split and checked (small files written here, and the
Universal NER English EWT files shipped in the package)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from llm_doe.finetune.conll import UNER_DIR, UNER_TEST, UNER_TRAIN, label_order, read_conll, split_conll
from llm_doe.schema import ConfigError, DataConfig

# CoNLL-2003's layout: token POS chunk NER, documents opened by -DOCSTART-, a space between columns.
CONLL2003 = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
1996-08-22 CD I-NP O
"""


def conll_cfg(path: Path | None, **kw) -> DataConfig:
    """data=conll with ``path`` (None: data=uner_en_ewt, the shipped files in their columns)."""
    if path is None:
        return DataConfig(**{"source": "uner_en_ewt", "token_column": 1, "tag_column": 2, "train_size": None,
                             "val_size": 300, "test_size": 2077, **kw})
    return DataConfig(**{"source": "conll", "path": str(path), "token_column": 0, "tag_column": -1,
                         "train_size": None, "val_size": 1, "test_size": 1, **kw})


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return path


def test_conll2003_layout_skips_docstart_and_breaks_sentences_at_blank_lines(tmp_path):
    got = read_conll(write(tmp_path, "train.txt", CONLL2003))
    assert got.words == [["EU", "rejects", "German", "call", "."], ["Peter", "Blackburn"], ["BRUSSELS", "1996-08-22"]]
    assert got.tags == [["B-ORG", "O", "B-MISC", "O", "O"], ["B-PER", "I-PER"], ["B-LOC", "O"]]
    assert got.origin.endswith("train.txt")


def test_comment_lines_and_the_token_and_tag_columns_are_configurable(tmp_path):
    text = ("# sent_id = a-1\n# text = Tampa Bay # 1\n1\tTampa\tB-LOC\t-\tstephen\n2\tBay\tI-LOC\t-\tstephen\n"
            "3\t#\tO\t-\t-\n4\t1\tO\t-\t-\n\n# sent_id = a-2\n1\tHi\tO\t-\t-\n")
    got = read_conll(write(tmp_path, "u.iob2", text), token_column=1, tag_column=2)
    # "#" as a token inside a sentence is a token, not a comment.
    assert got.words == [["Tampa", "Bay", "#", "1"], ["Hi"]]
    assert got.tags == [["B-LOC", "I-LOC", "O", "O"], ["O"]]


def test_the_default_tag_column_is_the_last_and_a_wrong_one_says_which_key(tmp_path):
    path = write(tmp_path, "u.iob2", "1\tTampa\tB-LOC\t-\tstephen\n")
    with pytest.raises(ConfigError) as err:
        read_conll(path)  # the last column holds the annotator's name
    assert err.value.key == "data.tag_column" and "'stephen'" in str(err.value) and "line 1" in str(err.value)
    with pytest.raises(ConfigError) as err:
        read_conll(path, token_column=1, tag_column=7)
    assert err.value.key == "data.tag_column" and "5 columns, no column 7" in str(err.value)


def test_a_missing_or_empty_file_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="no such file") as err:
        read_conll(tmp_path / "nope.txt", key="data.val_path")
    assert err.value.key == "data.val_path"
    with pytest.raises(ConfigError, match="no sentence"):
        read_conll(write(tmp_path, "empty.txt", "-DOCSTART- -X- -X- O\n\n\n"))


def test_gzipped_files_read_as_plain_ones(tmp_path):
    path = tmp_path / "train.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(CONLL2003)
    assert read_conll(path).words == read_conll(write(tmp_path, "train.txt", CONLL2003)).words


def test_labels_come_from_the_training_file_o_first_then_by_type():
    assert label_order({"I-PER", "B-LOC", "O", "B-PER", "I-LOC", "B-MISC"}) == \
        ["O", "B-LOC", "I-LOC", "B-MISC", "B-PER", "I-PER"]


def test_val_and_test_files_are_read_and_an_unseen_tag_names_the_tag_and_the_file(tmp_path):
    train = write(tmp_path, "train.txt", CONLL2003)
    val = write(tmp_path, "val.txt", "Paris NNP B-NP B-LOC\n")
    test = write(tmp_path, "test.txt", "Ann NNP B-NP B-PER\n\nACME NNP B-NP B-COMPANY\n")
    splits = split_conll(conll_cfg(train, val_path=str(val), test_path=str(write(tmp_path, "t2.txt", "Bo X X B-PER\n")),
                                   val_size=None, test_size=None))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 1, 1)
    assert splits.label_names == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER"]
    with pytest.raises(ConfigError) as err:
        split_conll(conll_cfg(train, val_path=str(val), test_path=str(test), val_size=None, test_size=None))
    assert err.value.key == "data.test_path"
    assert "'B-COMPANY'" in str(err.value) and str(test) in str(err.value) and "\n" not in str(err.value)


def test_data_labels_fix_the_label_set_and_its_order(tmp_path):
    train = write(tmp_path, "train.txt", CONLL2003)
    labels = ["O", "B-PER", "I-PER", "B-ORG", "B-LOC", "B-MISC", "I-MISC"]
    splits = split_conll(conll_cfg(train, labels=labels))
    assert splits.label_names == labels  # I-MISC never occurs: still a label
    with pytest.raises(ConfigError, match="does not apply to data=conll") as err:
        split_conll(conll_cfg(train, label_names={"B-PER": "person"}))
    assert err.value.key == "data.label_names"
    with pytest.raises(ConfigError, match="'B-LOC' in .*train.txt is not in data.labels") as err:
        split_conll(conll_cfg(train, labels=["O", "B-PER", "I-PER", "B-ORG", "B-MISC"]))
    assert err.value.key == "data.labels"


def test_without_files_the_splits_are_cut_from_training_seeded_test_first(tmp_path):
    lines = "".join(f"w{i} B-X\n\n" if i % 3 == 0 else f"w{i} O\n\n" for i in range(40))
    train = write(tmp_path, "train.txt", lines)
    a = split_conll(conll_cfg(train, val_size=5, test_size=10))
    assert (len(a.train), len(a.val), len(a.test)) == (25, 5, 10)
    every = [w for part in (a.train, a.val, a.test) for w in part.words]
    assert sorted(w[0] for w in every) == sorted(f"w{i}" for i in range(40))  # a partition
    again = split_conll(conll_cfg(train, val_size=5, test_size=10))
    assert again.test.words == a.test.words and again.val.words == a.val.words  # seeded
    other = split_conll(conll_cfg(train, val_size=5, test_size=10, seed=7, test_seed=1234))
    assert other.test.words == a.test.words and other.val.words != a.val.words  # the test split pinned
    capped = split_conll(conll_cfg(train, val_size=5, test_size=10, train_size=8))
    assert len(capped.train) == 8 and capped.test.words == a.test.words
    with pytest.raises(ConfigError, match="more than the 30 sentences left") as err:
        split_conll(conll_cfg(train, val_size=30, test_size=10))
    assert err.value.key == "data.val_size"
    tenth = split_conll(conll_cfg(train, val_size=None, test_size=None))  # null, no file: a tenth, at least 2
    assert (len(tenth.train), len(tenth.val), len(tenth.test)) == (32, 4, 4)


def test_sizes_cap_the_sentences_taken_from_a_file_null_takes_all(tmp_path):
    train = write(tmp_path, "train.txt", CONLL2003)
    test = write(tmp_path, "test.txt", "".join(f"w{i} O\n\n" for i in range(30)))
    whole = split_conll(conll_cfg(train, test_path=str(test), test_size=None, val_size=1))
    assert len(whole.test) == 30 and len(whole.train) == 2
    capped = split_conll(conll_cfg(train, test_path=str(test), test_size=12, val_size=1))
    assert len(capped.test) == 12 and set(map(tuple, capped.test.words)) < set(map(tuple, whole.test.words))
    assert capped.test.words == split_conll(conll_cfg(train, test_path=str(test), test_size=12, val_size=1)).test.words


def test_the_shipped_uner_english_ewt_files_are_the_default(tmp_path):
    assert {p.name for p in UNER_DIR.iterdir()} >= {"LICENSE.txt", "README.md", UNER_TRAIN.name, UNER_TEST.name}
    assert "Attribution-ShareAlike 4.0" in (UNER_DIR / "LICENSE.txt").read_text(encoding="utf-8")
    assert "Mayhew" in (UNER_DIR / "README.md").read_text(encoding="utf-8")
    splits = split_conll(conll_cfg(None))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1701, 300, 2077)
    assert splits.label_names == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert splits.train.origin == str(UNER_TRAIN) and splits.test.origin == str(UNER_TEST)
    first = read_conll(UNER_TEST, token_column=1, tag_column=2)
    assert first.words[0] == ["What", "is", "this", "Miramar", "?"] and first.tags[0] == ["O", "O", "O", "B-LOC", "O"]
    assert len(split_conll(conll_cfg(None, test_size=100)).test) == 100  # a seeded sample of the test file
    with pytest.raises(ConfigError, match="is required with data=conll") as err:
        split_conll(DataConfig(source="conll"))
    assert err.value.key == "data.path"
