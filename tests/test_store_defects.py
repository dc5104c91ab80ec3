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
    ("jsonl", "folder", "is a folder, not a data file"),
    ("csv", "folder", "is a folder, not a data file"),
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


def _optuna_source(tmp_path: Path) -> Path:
    """A finished smoke-like study written by Optuna alone (no training; SQLite's default
    rollback journal, as a study made outside llm_doe has), its engine closed."""
    import gc

    db = tmp_path / "source" / "src.db"
    db.parent.mkdir()
    study = optuna.create_study(study_name="src", storage=f"sqlite:///{db}")
    for rate in (2e-4, 5e-4, 1e-3, 2e-3):
        study.enqueue_trial({"train.learning_rate": rate})
    study.optimize(lambda t: abs(t.suggest_float("train.learning_rate", 1e-4, 3e-3, log=True) - 1e-3), n_trials=4)
    del study
    gc.collect()
    return db


def _tables(db: Path) -> set[str]:
    from llm_doe.storage import sqlite_tables

    return sqlite_tables(db)


def test_a_warm_start_source_is_never_written_even_by_a_refused_run(tmp_path, capsys):
    db = _optuna_source(tmp_path)
    db.chmod(0o444)  # as a user would protect it (root ignores the mode: SQLite's mode=ro is what holds)
    before = _fingerprint(db)
    warm = ["study.warm_start.study_name=src", f"study.warm_start.storage={db}"]
    # Refused after the source was opened and read: 4 points for 3 trials.
    code = main(["+study=smoke", *TINY, *store_args(tmp_path / "a"), *warm, "study.warm_start.top_k=4"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("llm_doe: error: study.warm_start.top_k: 4 points"), err
    assert _fingerprint(db) == before
    # A run that uses the read-only source: its two best points run first; the source unchanged.
    code = main(["+study=smoke", *TINY, *store_args(tmp_path / "b"), *warm, "study.warm_start.top_k=2",
                 "study.n_trials=2", "pruner=none"])
    assert code == 0, capsys.readouterr()
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/b/t.db")
    assert [t.user_attrs["enqueued_from"] for t in study.trials] == ["src#2", "src#1"]
    assert _fingerprint(db) == before
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # as it was: not switched to WAL


def _foreign(path: Path) -> Path:
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        con.execute("INSERT INTO users (name) VALUES ('ada')")
    return path


@pytest.mark.parametrize("role", ["source", "store"])
def test_a_sqlite_file_that_is_no_optuna_store_is_refused_and_left_untouched(tmp_path, capsys, role):
    db = _foreign(tmp_path / "app.db")
    before = _fingerprint(db)
    work = tmp_path / "work"
    work.mkdir()
    store = store_args(work)
    if role == "source":
        extra = ["study.warm_start.study_name=src", f"study.warm_start.storage={db}"]
        key = "study.warm_start.storage"
    else:
        store = [a for a in store if not a.startswith("storage.url")]
        extra, key = [f"storage.url=sqlite:///{db}"], "storage.url"
    code = main(["+study=smoke", *TINY, *store, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"llm_doe: error: {key}: ") and "\n" not in err, err
    assert "not an Optuna study store" in err and "users" in err, err
    assert _tables(db) == {"users"} and _fingerprint(db) == before
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL
    assert not list(work.iterdir())


def test_a_file_that_is_not_sqlite_is_refused_and_a_zero_byte_file_becomes_the_store(tmp_path, capsys):
    text = tmp_path / "notes.db"
    text.write_text("my notes, not a database\n" * 100)
    store = [a for a in store_args(tmp_path) if not a.startswith("storage.url")]
    code = main(["+study=smoke", *TINY, *store, f"storage.url=sqlite:///{text}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("llm_doe: error: storage.url: ") and "not a SQLite database" in err, err
    assert text.read_text() == "my notes, not a database\n" * 100
    empty = tmp_path / "empty.db"
    empty.touch()
    assert main(["+study=smoke", *TINY, *store, f"storage.url=sqlite:///{empty}", "study.n_trials=1"]) == 0
    assert len(optuna.load_study(study_name="t", storage=f"sqlite:///{empty}").trials) == 1


def test_a_long_read_takes_no_write_lock_and_writes_still_begin_immediate(tmp_path):
    """A reader (a notebook loading trials) holds its read transaction open while another
    process's storage (a worker) writes: the write goes through at once; before, every
    transaction began BEGIN IMMEDIATE and the writer waited out its busy timeout ("locked")."""
    import threading
    import time

    from sqlalchemy import event

    from llm_doe.schema import StorageConfig
    from llm_doe.storage import make_storage

    cfg = StorageConfig(url=f"sqlite:///{tmp_path}/s.db", heartbeat_interval=None, sqlite_timeout=2)
    reader = make_storage(cfg)
    study = optuna.create_study(study_name="s", storage=reader)
    study.enqueue_trial({"x": 1.0})
    study_id = reader.get_study_id_from_name("s")
    begins: dict[str, list[str]] = {"reader": [], "writer": []}
    inside, release = threading.Event(), threading.Event()

    def hold(conn, cursor, statement, *args):
        if statement.startswith("BEGIN"):
            begins["reader"].append(statement)
        elif statement.lstrip().upper().startswith("SELECT") and not inside.is_set():
            inside.set()  # the read transaction is open: keep it open until the writer is done
            release.wait(20)

    event.listen(reader.engine, "before_cursor_execute", hold)
    thread = threading.Thread(target=reader.get_all_trials, args=(study_id,))
    thread.start()
    assert inside.wait(10)
    writer = make_storage(cfg)  # another process's storage: its own engine and connections
    event.listen(writer.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *a: statement.startswith("BEGIN") and begins["writer"].append(statement))
    started = time.perf_counter()
    try:
        optuna.load_study(study_name="s", storage=writer).enqueue_trial({"x": 2.0})
        took = time.perf_counter() - started
    finally:
        release.set()
        thread.join(10)
    assert took < 1.0, took  # never waited for the reader
    assert begins["reader"] == ["BEGIN"]  # the read: no write lock
    assert "BEGIN IMMEDIATE" in begins["writer"]  # the write: the lock at BEGIN, atomic read-then-write
    assert len(optuna.load_study(study_name="s", storage=reader).trials) == 2


def test_a_folder_named_as_a_store_is_called_a_folder(tmp_path, capsys):
    folder = tmp_path / "studies.db"
    folder.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    code = main(["+study=smoke", *TINY, *store_args(work), "study.warm_start.study_name=src",
                 f"study.warm_start.storage={folder}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"llm_doe: error: study.warm_start.storage: {folder} is a folder, not a study store file"
    assert not list(work.iterdir())


def test_a_store_in_a_read_only_folder_is_one_clear_line(tmp_path, capsys, monkeypatch):
    """The tests run as root, whom a folder's mode does not stop (nor os.access): the check is run
    with os.access answering from the mode bits, as it does for any other user; SQLite would
    otherwise fail later with "attempt to write a readonly database"."""
    import stat

    from llm_doe import storage

    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "t.db"
    optuna.create_study(study_name="t", storage=f"sqlite:///{db}")
    folder.chmod(0o555)
    monkeypatch.setattr(storage.os, "access", lambda path, mode: not (mode & os.W_OK) or bool(
        os.stat(path).st_mode & stat.S_IWUSR))
    work = tmp_path / "work"
    work.mkdir()
    store = [a for a in store_args(work) if not a.startswith("storage.url")]
    try:
        code = main(["+study=smoke", *TINY, *store, f"storage.url=sqlite:///{db}", "study.n_trials=1"])
    finally:
        monkeypatch.undo()
        folder.chmod(0o755)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"llm_doe: error: storage.url: {db} is in a read-only folder"), err
    assert "readonly database" not in err


def test_a_journal_path_that_is_no_journal_is_refused_untouched(tmp_path, capsys):
    """storage=journal on an existing file of another kind (a SQLite file) is one line, and its
    bytes stay: Optuna would append its first record to it, then fail to read it back."""
    foreign = _foreign(tmp_path / "other.db")
    before = hashlib.sha256(foreign.read_bytes()).hexdigest()
    code = main(["+study=smoke", *TINY, *store_args(tmp_path / "w"), "storage=journal",
                 f"storage.journal_path={foreign}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"llm_doe: error: storage.journal_path: {foreign} exists and is not an Optuna journal file: name another file, or a new one"
    assert hashlib.sha256(foreign.read_bytes()).hexdigest() == before
    journal = tmp_path / "j.journal"
    assert main(["+study=smoke", *TINY, *store_args(tmp_path / "w2"), "storage=journal", f"storage.journal_path={journal}",
                 "study.n_trials=1"]) == 0
    assert main(["+study=smoke", *TINY, *store_args(tmp_path / "w2"), "storage=journal", f"storage.journal_path={journal}",
                 "study.n_trials=2"]) == 0  # a real journal resumes
