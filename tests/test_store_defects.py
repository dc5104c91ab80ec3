"""Stores, study names and input files that must not be written over, escaped from, or
misnamed: each refused with one line (exit 2) before anything is written."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import optuna
import pytest

from llm_doe.search import main
from tests.conftest import TINY, store_args


def _fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


@pytest.mark.parametrize("name", ["../../escape", "a/b", "/abs/olute", "..", "back\\slash"])
def test_a_study_name_that_leaves_the_studies_folder_is_refused(tmp_path, capsys, monkeypatch, name):
    work = tmp_path / "deep" / "er"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    # The default store, artifacts, checkpoints and run folders: all studies/${study.name}...
    code = main(["+study=smoke", *TINY, f"study.name='{name}'"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("llm_doe: error: study.name: ") and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "er"]  # nothing written anywhere


@pytest.mark.parametrize("override", ["study.warm_start.top_k=2", "study.warm_start.storage=other.db"])
def test_warm_start_settings_without_a_study_name_are_refused(tmp_path, capsys, override):
    code = main(["+study=smoke", *TINY, *store_args(tmp_path), override])
    err = capsys.readouterr().err.strip()
    key = override.split("=")[0]
    assert code == 2 and err.startswith(f"llm_doe: error: {key}: ") and "study_name" in err, err
    assert not list(tmp_path.iterdir())


def _conversations(tmp_path: Path, encoding: str) -> Path:
    path = tmp_path / f"chats-{encoding}.jsonl"
    lines = ['{"prompt": "Hello", "response": "Hi"}', '{"prompt": "Café?", "response": "Oui, café."}']
    path.write_bytes("\n".join(lines).encode(encoding) + b"\n")
    return path


@pytest.mark.parametrize(("data", "path", "says"), [
    ("jsonl", "latin1", ":2: not UTF-8 text (byte 0xe9 at column 16)"),
    ("jsonl", "folder", "is a folder, not a JSONL file"),
    ("csv", "folder", "is a folder, not a CSV file"),
])
def test_unreadable_data_files_are_one_line_and_exit_2(tmp_path, capsys, data, path, says):
    given = _conversations(tmp_path, "latin-1") if path == "latin1" else tmp_path / "a_folder"
    given.mkdir(exist_ok=True) if path == "folder" else None
    work = tmp_path / "work"
    work.mkdir()
    study = ["+study=sft_smoke", "model=tiny_llama"] if data == "jsonl" else ["+study=smoke", *TINY]
    code = main([*study, *store_args(work), f"data={data}", f"data.path={given}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("llm_doe: error: data.path: ") and "\n" not in err, err
    assert says in err and "no such file" not in err, err
    assert not list(work.iterdir())
