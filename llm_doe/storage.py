"""Study stores: checking, opening and naming them, with their passwords masked.

Optuna's RDB storage is the engine: SQLite by default, any SQLAlchemy URL Optuna supports
when many machines share a study; or a journal file. Everything here checks first and creates
later, so a bad URL or an unwritable folder stops the run before a file exists. Every command
(search, confirm, final, report) opens its store through this module, and everything that
writes a URL or an override anywhere masks it here first.
"""

from __future__ import annotations

import json
import os
import sqlite3
import warnings
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import optuna
from omegaconf import DictConfig, OmegaConf
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from llm_doe.schema import ConfigError, StorageConfig

SUPPORTED_DIALECTS = ("sqlite", "postgresql", "mysql")
#: Tables every Optuna RDB store has: a SQLite file with tables but not these is someone else's.
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})

T = TypeVar("T")


def _first_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_writable(path: str | Path, key: str) -> None:
    """Refuse a path we could not create or write, without creating anything."""
    target = Path(path)
    anchor = _first_existing(target)
    if anchor == target.absolute() and not target.is_dir() and key.endswith("artifacts_dir"):
        raise ConfigError(key, f"{target} exists and is not a folder")
    if not anchor.is_dir() and anchor != target.absolute():
        raise ConfigError(key, f"{anchor} is a file, so {target} cannot be created")
    check = anchor if anchor.is_dir() else anchor.parent
    if not os.access(check, os.W_OK | os.X_OK):
        raise ConfigError(key, f"{target} is not writable ({check} is read-only)")


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for logs and attributes."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def mask_overrides(argv: list[str]) -> list[str]:
    """Command-line overrides with any database password masked."""
    return [f"{a.split('=', 1)[0]}={mask_url(a.split('=', 1)[1])}" if "://" in a and "=" in a else a for a in argv]


def masked_config(config: DictConfig) -> dict[str, Any]:
    """The resolved config with the database password masked: what may be written anywhere
    (a run folder's config.yaml, the study's ``config`` attribute, ``--cfg``, a final export)."""
    resolved = OmegaConf.to_container(config, resolve=True)
    assert isinstance(resolved, dict)
    resolved["storage"]["url"] = mask_url(resolved["storage"]["url"])
    return resolved  # type: ignore[return-value]


def store_key(cfg: StorageConfig) -> str:
    """The config key that names the store, for errors about it."""
    return "storage.journal_path" if cfg.kind == "journal" else "storage.url"


def store_exists(cfg: StorageConfig) -> bool:
    """Whether the store's file exists (always True for a database server: it is asked later)."""
    if cfg.kind == "journal":
        return Path(cfg.journal_path).exists()
    db = sqlite_path(cfg.url)
    return db is None or db.exists()


def store_of(cfg: StorageConfig) -> str:
    """The study store a search with this storage config writes, refusing one that does not exist
    (a report, a confirmation or an export must never create an empty store)."""
    path = Path(cfg.journal_path) if getattr(cfg, "kind", "rdb") == "journal" else sqlite_path(cfg.url)
    if path is not None and path.is_dir():
        raise ConfigError(store_key(cfg), f"{path} is a folder, not a study store file")
    if getattr(cfg, "kind", "rdb") == "journal":
        journal = Path(cfg.journal_path)
        if not journal.is_file():
            raise ConfigError("storage.journal_path", f"no study store at {journal}: run the search first")
        return str(journal)
    db = sqlite_path(cfg.url)
    if db is not None and not db.is_file():
        raise ConfigError("storage.url", f"no study store at {db}: run the search first")
    return full_url(cfg)


def open_store(cfg: StorageConfig, read: Callable[[optuna.storages.BaseStorage], T], *, read_only: bool = False
               ) -> tuple[optuna.storages.BaseStorage, T]:
    """Open the store and make a first ``read`` of it (e.g. its study names); an unreachable
    server or a file that is no study store becomes one ConfigError line, "cannot open the
    study store ...", before anything runs. ``read_only`` opens another study's store (a warm
    start's source) as :func:`make_storage` says: nothing in it is written.

    Optuna's "experimental" warnings (heartbeats) are silenced here: they would break the
    one-line error contract of the commands.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = make_storage(cfg, read_only=read_only)
        return storage, read(storage)
    except ConfigError:
        raise
    except Exception as err:  # unreachable server, foreign file: say so before running anything
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(store_key(cfg), f"cannot open the study store {storage_label(cfg)}: "
                                          f"{mask_url(message)}") from None


def check_journal_file(journal: Path) -> None:
    """An existing journal path must hold an Optuna journal (JSON records, one a line) or
    nothing: anything else (a SQLite file, a text of one's own) is refused untouched, before
    Optuna appends its first record to it."""
    with open(journal, "rb") as handle:
        first = handle.readline(1 << 16).strip()
    if not first:
        return  # empty: a new journal
    try:
        record = json.loads(first.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        record = None
    if not isinstance(record, dict) or "op_code" not in record:
        raise ConfigError("storage.journal_path", f"{journal} exists and is not an Optuna journal file: "
                                                  "name another file, or a new one")


def storage_label(cfg: StorageConfig) -> str:
    """What to show users: the masked URL, or the journal file."""
    return f"journal:{cfg.journal_path}" if cfg.kind == "journal" else mask_url(cfg.url)


def full_url(cfg: StorageConfig) -> str:
    """The URL with the password from ``storage.password_env`` when the URL carries none."""
    parsed = make_url(cfg.url)
    password = os.environ.get(cfg.password_env)
    if parsed.get_backend_name() != "sqlite" and parsed.password is None and password:
        parsed = parsed.set(password=password)
    return parsed.render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    """The database file of a sqlite URL (None for other back ends)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    return Path(parsed.database or "")


def check_storage(cfg: StorageConfig) -> None:
    """Validate the storage (and that a SQLite or journal file could be created)."""
    if cfg.kind == "journal":
        journal = Path(cfg.journal_path)
        if journal.is_dir():
            raise ConfigError("storage.journal_path", f"{journal} is a folder, not a journal file")
        if not journal.exists():
            check_writable(journal, "storage.journal_path")
        elif not os.access(journal, os.R_OK | os.W_OK):
            raise ConfigError("storage.journal_path", f"{journal} is not readable and writable")
        else:
            check_journal_file(journal)
        return
    try:
        parsed = make_url(cfg.url)
    except ArgumentError:
        raise ConfigError("storage.url", f"{mask_url(cfg.url)!r} is not a database URL (e.g. sqlite:///studies/NAME.db)") from None
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_DIALECTS:
        raise ConfigError("storage.url", f"unsupported database {backend!r}; use one of {', '.join(SUPPORTED_DIALECTS)}")
    if backend != "sqlite":
        try:
            parsed.get_dialect().import_dbapi()
        except ImportError as err:
            raise ConfigError("storage.url", f"the driver for {parsed.drivername!r} is not installed ({err}); "
                                             "for PostgreSQL: pip install psycopg2-binary") from None
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ConfigError("storage.url", "a SQLite URL needs a file path (sqlite:///path/to/study.db); in-memory studies are lost")
        db = Path(parsed.database)
        if db.is_dir():
            raise ConfigError("storage.url", f"{db} is a folder, not a database file")
        if db.exists():
            if not os.access(db, os.R_OK | os.W_OK):
                raise ConfigError("storage.url", f"{db} is not readable and writable")
            folder = db.absolute().parent
            if not os.access(folder, os.W_OK | os.X_OK):  # SQLite's journal (-wal, -shm) lives beside it
                raise ConfigError("storage.url", f"{db} is in a read-only folder ({folder}): SQLite writes its journal "
                                                 "files beside the database; make the folder writable or move the store")
            check_optuna_sqlite(db, "storage.url")
        else:
            check_writable(db, "storage.url")


def sqlite_tables(db: Path) -> set[str]:
    """The tables of an existing SQLite file, read through a read-only connection (SQLite's
    ``mode=ro``: nothing can be written, whoever runs it). Raises sqlite3.DatabaseError for a
    file that is not a SQLite database."""
    with closing(sqlite3.connect(f"file:{quote(str(db.absolute()))}?mode=ro", uri=True)) as connection:
        return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def check_optuna_sqlite(db: Path, key: str) -> None:
    """Refuse an existing SQLite file that is not an Optuna study store (someone else's tables,
    or no SQLite file at all), without writing to it. An empty file (0 bytes, or no tables) may
    become a store."""
    if db.stat().st_size == 0:
        return
    try:
        tables = sqlite_tables(db)
    except sqlite3.OperationalError as err:  # a file SQLite cannot open (a WAL store in a read-only folder)
        raise ConfigError(key, f"{db} cannot be opened ({err})") from None
    except sqlite3.DatabaseError as err:
        raise ConfigError(key, f"{db} is not a SQLite database ({err}): give a new file for the study store") from None
    if tables and not tables >= OPTUNA_TABLES:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise ConfigError(key, f"{db} is a SQLite database but not an Optuna study store (its tables: {shown}); "
                               "it is left untouched: give a new file for the study store")


def make_storage(cfg: StorageConfig, *, read_only: bool = False) -> optuna.storages.BaseStorage:
    """Create the storage (and a SQLite or journal file's folder). Call after every check passed.

    ``read_only`` opens an existing store that must not change (a warm start's source): no
    tables are created, no folder, no heartbeats; a SQLite file is opened through SQLite's
    read-only mode (``mode=ro``: any write fails, even as root) with its journal mode as it is,
    and must already be an Optuna store (one ConfigError line otherwise).

    RDB storages get heartbeats: a trial whose worker died (SIGKILL, node lost) is failed after
    ``grace_period`` and re-queued with the same parameters and its intermediate values by
    Optuna's own ``RetryHeartbeatStaleTrialCallback``; the objective resumes it from its checkpoint.
    """
    if cfg.kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        Path(cfg.journal_path).absolute().parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(cfg.journal_path))
    db = sqlite_path(cfg.url)
    if read_only:
        return _read_only_storage(cfg, db)
    engine_kwargs: dict[str, Any] = {}
    if db is not None:
        db.absolute().parent.mkdir(parents=True, exist_ok=True)
        # Wait on a locked database instead of failing ("database is locked").
        engine_kwargs["connect_args"] = {"timeout": cfg.sqlite_timeout}
    else:
        engine_kwargs["pool_pre_ping"] = True  # survive a server that dropped idle connections
    heartbeat: dict[str, Any] = {}
    if cfg.heartbeat_interval is not None:
        heartbeat = {
            "heartbeat_interval": cfg.heartbeat_interval,
            "grace_period": cfg.grace_period,
            "heartbeat_stale_trial_callback": retry_callback(cfg.max_retry),
        }
    storage = optuna.storages.RDBStorage(full_url(cfg), engine_kwargs=engine_kwargs, **heartbeat)
    if db is not None:
        _sqlite_wal(storage)
    return storage


def _read_only_storage(cfg: StorageConfig, db: Path | None) -> optuna.storages.BaseStorage:
    """The store opened for reading only (see :func:`make_storage`)."""
    if cfg.kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(cfg.journal_path))  # read without a lock
    url = full_url(cfg)
    engine_kwargs: dict[str, Any] = {}
    if db is not None:
        check_optuna_sqlite(db, store_key(cfg))
        if db.stat().st_size == 0:
            raise ConfigError(store_key(cfg), f"{db} is an empty file, not a study store")
        url = f"sqlite:///file:{quote(str(db.absolute()))}?mode=ro&uri=true"
        engine_kwargs["connect_args"] = {"timeout": cfg.sqlite_timeout}
    else:
        engine_kwargs["pool_pre_ping"] = True
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, skip_table_creation=True)


def _sqlite_wal(storage: optuna.storages.RDBStorage) -> None:
    """WAL journal with synchronous=NORMAL: a commit no longer waits for an fsync (20 ms to
    ~1 ms per report here) and readers (the dashboard, other workers) never block the writer.
    Still crash-safe for the application; the last commits may be lost only on power loss.

    Every writing transaction begins with ``BEGIN IMMEDIATE``: Python's sqlite3 runs a SELECT
    outside any transaction, so Optuna's read-then-write steps were not atomic on SQLite (its
    ``FOR UPDATE`` is a no-op there). Two workers starting together both popped the same WAITING
    trial (an enqueued or re-queued one) and ran it twice. Taking the write lock at BEGIN makes
    each step atomic; other writers wait for it (the busy timeout). A transaction of a storage
    method that only reads (``get_*``, the trials the cache loads: see
    :func:`~llm_doe.optuna_compat.rdb_reader_names`) begins a plain ``BEGIN``: a long read (a
    notebook loading every trial) takes no write lock, so it never holds up the workers' writes
    (WAL lets them commit beside it). SQLAlchemy's documented recipe for pysqlite."""
    import functools
    import threading

    from sqlalchemy import event

    from llm_doe.optuna_compat import rdb_reader_names

    reading = threading.local()  # how deep this thread is inside read-only storage calls

    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver's own implicit BEGIN off: we emit it below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    def begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN" if getattr(reading, "depth", 0) else "BEGIN IMMEDIATE")

    def reader(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def read(*args: Any, **kwargs: Any) -> Any:
            reading.depth = getattr(reading, "depth", 0) + 1
            try:
                return method(*args, **kwargs)
            finally:
                reading.depth -= 1

        return read

    for name in rdb_reader_names():
        method = getattr(storage, name, None)
        if callable(method):
            setattr(storage, name, reader(method))  # this storage's own: other RDBStorages are untouched
    event.listen(storage.engine, "connect", pragmas)
    event.listen(storage.engine, "begin", begin)
    storage.engine.dispose()  # connections opened while creating the tables get the pragmas too


def retry_callback(max_retry: int | None = None) -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    """Optuna's re-queue of a dead trial: same params, same intermediate values."""
    return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)
