"""Reading a study store: an RDB store with one SQL query per table, anything else through Optuna.

Optuna's own ``load_study(...).trials_dataframe()`` builds every ``FrozenTrial`` through the
ORM first (seconds on 10,000 trials, minutes on bigger stores: optuna issues #763 and #4890).
Here an RDB store (SQLite, PostgreSQL, MySQL) is read with plain SQL against Optuna's schema
and the rows are gathered into a :class:`Raw`, exactly what Optuna's API returns for the same
trials (the tests check that); other storages (journal files) and ``optuna.Study`` objects go
through Optuna's public API into the same :class:`Raw`. Turning rows into tables is
:mod:`llm_doe.analysis.tables`' job; this module only knows where rows come from.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, distribution_to_json, json_to_distribution

from llm_doe import optuna_compat
from llm_doe.names import study_metrics

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

#: What a loader accepts: a storage URL, a path to a SQLite ``.db`` (or journal) file, an
#: ``optuna.Study``, or an Optuna storage object.
StudyRef = Union[str, "os.PathLike[str]", optuna.Study, optuna.storages.BaseStorage]

_ARTIFACT_PREFIX = "artifacts:"


# --------------------------------------------------------------------------------------------
# Resolving a study reference
# --------------------------------------------------------------------------------------------


@dataclass
class Raw:
    """One study's rows, keyed by a per-trial key (trial_id in SQL, number via the API)."""

    study_name: str
    directions: list[str]
    study_attrs: dict[str, Any]
    source: str
    trials: pd.DataFrame  # key, number, state, datetime_start, datetime_complete
    study_id: int | None = None
    values: dict[int, dict[Any, float]] = field(default_factory=dict)  # objective -> key -> value
    params: dict[str, dict[Any, Any]] = field(default_factory=dict)
    distributions: dict[str, str] = field(default_factory=dict)  # param -> distribution JSON
    attrs: dict[str, dict[Any, Any]] = field(default_factory=dict)
    last_step: dict[Any, int] = field(default_factory=dict)
    retried: set[int] = field(default_factory=set)  # numbers of trials Optuna re-queued as another trial
    constraints: dict[Any, dict[str, float]] = field(default_factory=dict)  # key -> Optuna's trial.constraints


@dataclass
class _Source:
    """Where a study lives: an SQL engine (fast path) or an Optuna study (API path)."""

    label: str
    engine: Engine | None = None
    owns_engine: bool = False
    study: optuna.Study | None = None
    storage: optuna.storages.BaseStorage | None = None

    def close(self) -> None:
        if self.engine is not None and self.owns_engine:
            self.engine.dispose()


def _is_sqlite_file(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(16) == b"SQLite format 3\x00"


def _open(ref: StudyRef) -> _Source:
    """Pick the fast SQL path where the store is an RDB, else Optuna's API."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    if isinstance(ref, optuna.Study):
        return _Source(label=ref.study_name, study=ref, storage=optuna_compat.study_storage(ref))
    if isinstance(ref, optuna.storages.BaseStorage):
        rdb = optuna_compat.rdb_backend(ref)
        if rdb is not None:
            return _Source(label=rdb.engine.url.render_as_string(hide_password=True), engine=rdb.engine)
        return _Source(label=type(ref).__name__, storage=ref)
    text = os.fspath(ref)
    if "://" in text:
        url = make_url(text)
        label = url.render_as_string(hide_password=True)  # labels land in errors and attrs
        if url.get_backend_name() == "sqlite":
            if not url.database or url.database == ":memory:":
                raise ValueError(f"{label}: an in-memory SQLite store holds no study to read")
            if not Path(url.database).is_file():
                raise FileNotFoundError(f"no study store at {url.database} (from {label})")
        return _Source(label=label, engine=sqlalchemy.create_engine(url), owns_engine=True)
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"no study store at {path}")
    if _is_sqlite_file(path):
        sqlite_url = f"sqlite:///{path.absolute()}"
        return _Source(label=sqlite_url, engine=sqlalchemy.create_engine(sqlite_url), owns_engine=True)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return _Source(label=str(path), storage=JournalStorage(JournalFileBackend(str(path))))


def _api_study(source: _Source, study_name: str | None) -> optuna.Study:
    if source.study is not None:
        if study_name is not None and study_name != source.study.study_name:
            raise ValueError(f"study_name={study_name!r} but the study given is {source.study.study_name!r}")
        return source.study
    assert source.storage is not None
    names = optuna.get_all_study_names(storage=source.storage)
    return optuna.load_study(study_name=_pick_name(names, study_name, source.label), storage=source.storage)


def _pick_name(names: Sequence[str], wanted: str | None, label: str) -> str:
    if wanted is None:
        if len(names) == 1:
            return names[0]
        raise ValueError(f"{label} holds {len(names)} studies ({', '.join(sorted(names)) or 'none'}): "
                         "pass study_name")
    if wanted not in names:
        raise ValueError(f"no study {wanted!r} in {label}; it holds: {', '.join(sorted(names)) or 'no study'}")
    return wanted


# --------------------------------------------------------------------------------------------
# The SQL fast path: Optuna's RDB schema, one query per table
# --------------------------------------------------------------------------------------------


def _tables() -> dict[str, Any]:
    """Lightweight table handles: no types, so rows come back as the driver returns them."""
    from sqlalchemy import column, table

    return {
        "studies": table("studies", column("study_id"), column("study_name")),
        "directions": table("study_directions", column("study_id"), column("direction"), column("objective")),
        "study_attrs": table("study_user_attributes", column("study_id"), column("key"), column("value_json")),
        "trials": table("trials", column("trial_id"), column("number"), column("study_id"), column("state"),
                        column("datetime_start"), column("datetime_complete")),
        "values": table("trial_values", column("trial_id"), column("objective"), column("value"),
                        column("value_type")),
        "params": table("trial_params", column("trial_id"), column("param_name"), column("param_value"),
                        column("distribution_json")),
        "attrs": table("trial_user_attributes", column("trial_id"), column("key"), column("value_json")),
        "system": table("trial_system_attributes", column("trial_id"), column("key"), column("value_json")),
        "steps": table("trial_intermediate_values", column("trial_id"), column("step"),
                       column("intermediate_value"), column("intermediate_value_type")),
    }


_STORED_FLOAT = {"INF_POS": math.inf, "INF_NEG": -math.inf, "NAN": math.nan}


def _stored_float(value: float | None, kind: str) -> float:
    """Optuna stores inf/nan as NULL plus a type column."""
    if kind == "FINITE":
        return float(value)  # type: ignore[arg-type]
    return _STORED_FLOAT[kind]


def _fetch(conn: Connection, statement: Any) -> list[tuple[Any, ...]]:
    """All rows as the driver's plain tuples.

    SQLAlchemy's Row objects cost ~1 us each to build and pandas probes them attribute by
    attribute; on 200,000 intermediate values that alone is most of a second.
    """
    result = conn.execute(statement)
    try:
        cursor = getattr(result, "cursor", None)
        if cursor is None:  # pragma: no cover - every DBAPI result has one
            return [tuple(row) for row in result]
        return cursor.fetchall() if cursor.description else []
    finally:
        result.close()


def _frame(rows: list[tuple[Any, ...]], columns: list[str]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame({name: [] for name in columns})
    return pd.DataFrame.from_records(rows, columns=columns)


def _sql_study(conn: Connection, label: str, study_name: str | None) -> tuple[int, str, list[str], dict[str, Any]]:
    from sqlalchemy import select
    from sqlalchemy.exc import DBAPIError

    t = _tables()
    try:
        rows = _fetch(conn, select(t["studies"].c.study_id, t["studies"].c.study_name))
    except DBAPIError as err:
        raise ValueError(f"{label} is not an Optuna study store: {str(err.orig).splitlines()[0]}") from None
    ids = {name: sid for sid, name in rows}
    name = _pick_name(list(ids), study_name, label)
    sid = ids[name]
    d = t["directions"]
    directions = [str(r[0]).lower() for r in
                  _fetch(conn, select(d.c.direction).where(d.c.study_id == sid).order_by(d.c.objective))]
    a = t["study_attrs"]
    attrs = {k: json.loads(v) for k, v in _fetch(conn, select(a.c.key, a.c.value_json).where(a.c.study_id == sid))}
    return sid, name, directions, attrs


def _sql_raw(source: _Source, study_name: str | None, attr_keys: Sequence[str] | None) -> Raw:
    """Read one study's trials, values, params and (selected) user attributes with SQL."""
    from sqlalchemy import select

    t = _tables()
    tr = t["trials"]
    assert source.engine is not None
    with source.engine.connect() as conn:
        sid, name, directions, study_attrs = _sql_study(conn, source.label, study_name)
        attr_keys = _with_study_metrics(attr_keys, study_attrs)
        of_study = tr.c.study_id == sid
        trials = _frame(
            _fetch(conn, select(tr.c.trial_id, tr.c.number, tr.c.state, tr.c.datetime_start, tr.c.datetime_complete)
                   .where(of_study)),
            ["key", "number", "state", "datetime_start", "datetime_complete"])
        raw = Raw(name, directions, study_attrs, source.label, trials, study_id=sid)

        v = t["values"]
        for key, objective, value, kind in _fetch(conn,
                select(v.c.trial_id, v.c.objective, v.c.value, v.c.value_type)
                .join_from(v, tr, v.c.trial_id == tr.c.trial_id).where(of_study)):
            raw.values.setdefault(objective, {})[key] = _stored_float(value, kind)

        p = t["params"]
        dists: dict[str, BaseDistribution] = {}
        for key, pname, value, dist_json in _fetch(conn,
                select(p.c.trial_id, p.c.param_name, p.c.param_value, p.c.distribution_json)
                .join_from(p, tr, p.c.trial_id == tr.c.trial_id).where(of_study)):
            dist = dists.get(dist_json)
            if dist is None:
                dist = dists[dist_json] = json_to_distribution(dist_json)
            raw.params.setdefault(pname, {})[key] = dist.to_external_repr(value)
            raw.distributions[pname] = dist_json

        a = t["attrs"]
        query = select(a.c.trial_id, a.c.key, a.c.value_json).join_from(a, tr, a.c.trial_id == tr.c.trial_id) \
            .where(of_study)
        if attr_keys is not None:
            query = query.where(a.c.key.in_(list(attr_keys)))
        loads = json.loads
        for key, akey, value_json in _fetch(conn, query):
            raw.attrs.setdefault(akey, {})[key] = loads(value_json)

        s = t["steps"]
        from sqlalchemy import func

        raw.last_step = dict(_fetch(conn,
            select(s.c.trial_id, func.max(s.c.step)).join_from(s, tr, s.c.trial_id == tr.c.trial_id)
            .where(of_study, tr.c.state == "PRUNED").group_by(s.c.trial_id)))

        sy = t["system"]  # Optuna's retry chains: a re-queued trial lists the trials it retries
        for (history,) in _fetch(conn, select(sy.c.value_json).join_from(sy, tr, sy.c.trial_id == tr.c.trial_id)
                                 .where(of_study, sy.c.key == optuna_compat.RETRY_HISTORY_KEY)):
            raw.retried.update(json.loads(history))

        # trial.set_constraint's values (system attributes "constraints:<name>"; Optuna < 4 stored
        # one list under "constraints"): what FrozenTrial.constraints returns.
        prefix = optuna_compat.CONSTRAINTS_KEY
        rows = _fetch(conn, select(sy.c.trial_id, sy.c.key, sy.c.value_json)
                      .join_from(sy, tr, sy.c.trial_id == tr.c.trial_id).where(of_study, sy.c.key.like(f"{prefix}%")))
        for key, akey, value_json in sorted(rows, key=lambda row: row[1] != prefix):  # the old list first
            raw.constraints.setdefault(key, {}).update(optuna_compat.constraint_entries(akey, json.loads(value_json)))
    return raw


def _api_raw(study: optuna.Study, attr_keys: Sequence[str] | None, label: str) -> Raw:
    """The same rows through Optuna's public API (journal files, Study objects)."""
    frozen = study.get_trials(deepcopy=False)
    trials = pd.DataFrame(
        [(t.number, t.number, t.state.name, t.datetime_start, t.datetime_complete) for t in frozen],
        columns=["key", "number", "state", "datetime_start", "datetime_complete"])
    raw = Raw(study.study_name, [d.name.lower() for d in study.directions], dict(study.user_attrs), label, trials)
    attr_keys = _with_study_metrics(attr_keys, raw.study_attrs)
    for t in frozen:
        for i, value in enumerate(t.values or ()):
            raw.values.setdefault(i, {})[t.number] = value
        for pname, value in t.params.items():
            raw.params.setdefault(pname, {})[t.number] = value
            raw.distributions[pname] = distribution_to_json(t.distributions[pname])
        for akey, value in t.user_attrs.items():
            if attr_keys is None or akey in attr_keys:
                raw.attrs.setdefault(akey, {})[t.number] = value
        if t.state == optuna.trial.TrialState.PRUNED and t.last_step is not None:
            raw.last_step[t.number] = t.last_step
        raw.retried.update(optuna_compat.retry_history(t))
        if t.constraints:
            raw.constraints[t.number] = dict(t.constraints)
    return raw


def _with_study_metrics(attr_keys: Sequence[str] | None, study_attrs: dict[str, Any]) -> Sequence[str] | None:
    """The attributes asked for and the metrics the study's task records (a user's task records
    its own, which no list of built-in metrics names); None (every attribute) stays None."""
    if attr_keys is None:
        return None
    return [*attr_keys, *(m for m in study_metrics(study_attrs) if m not in attr_keys)]


def read_raw(storage: StudyRef, study_name: str | None, attr_keys: Sequence[str] | None) -> Raw:
    source = _open(storage)
    try:
        if source.engine is not None:
            return _sql_raw(source, study_name, attr_keys)
        return _api_raw(_api_study(source, study_name), attr_keys, source.label)
    finally:
        source.close()


def study_names(storage: StudyRef) -> list[str]:
    """The names of the studies in a store (to check one exists before reading it)."""
    from sqlalchemy import select

    source = _open(storage)
    try:
        if source.study is not None:
            return [source.study.study_name]
        if source.engine is None:
            return optuna.get_all_study_names(storage=source.storage)  # type: ignore[arg-type]
        studies = _tables()["studies"]
        from sqlalchemy.exc import DBAPIError

        try:
            with source.engine.connect() as conn:
                return [row[0] for row in _fetch(conn, select(studies.c.study_name))]
        except DBAPIError as err:
            raise ValueError(f"{source.label} is not an Optuna study store: {str(err.orig).splitlines()[0]}") from None
    finally:
        source.close()



# --------------------------------------------------------------------------------------------
# Intermediate values and artifacts
# --------------------------------------------------------------------------------------------


def _curve_rows(source: _Source, study_name: str | None) -> tuple[pd.DataFrame, Raw]:
    from sqlalchemy import select

    t = _tables()
    tr, s = t["trials"], t["steps"]
    if source.engine is None:
        study = _api_study(source, study_name)
        raw = _api_raw(study, [], source.label)
        rows = [(tr_.number, step, value) for tr_ in study.get_trials(deepcopy=False)
                for step, value in sorted(tr_.intermediate_values.items())]
        return pd.DataFrame(rows, columns=["trial", "step", "value"]), raw
    raw = _sql_raw(source, study_name, [])
    assert source.engine is not None
    joined = tr.c.trial_id == s.c.trial_id
    with source.engine.connect() as conn:
        # Values only: the type column (inf/nan are stored as NULL + a type) is fetched for the
        # rare non-finite rows alone, which spares a string per row.
        frame = _frame(_fetch(conn, select(tr.c.number, s.c.step, s.c.intermediate_value).join_from(s, tr, joined)
                              .where(tr.c.study_id == raw.study_id)), ["trial", "step", "value"])
        special = _fetch(conn, select(tr.c.number, s.c.step, s.c.intermediate_value_type).join_from(s, tr, joined)
                         .where(tr.c.study_id == raw.study_id, s.c.intermediate_value_type != "FINITE"))
    frame["value"] = frame["value"].astype(float)
    if special:
        fix = pd.Series([_STORED_FLOAT[str(kind)] for _, _, kind in special],
                        index=pd.MultiIndex.from_tuples([(n, st) for n, st, _ in special]))
        index = pd.MultiIndex.from_arrays([frame["trial"], frame["step"]])
        frame["value"] = frame["value"].where(~index.isin(fix.index), fix.reindex(index).to_numpy())
    return frame, raw


def curve_rows(storage: StudyRef, study_name: str | None) -> tuple[pd.DataFrame, Raw]:
    """Every trial's intermediate values (columns ``trial``, ``step``, ``value``) and the study's
    rows without user attributes (for the states and parameters joined onto the curves)."""
    source = _open(storage)
    try:
        return _curve_rows(source, study_name)
    finally:
        source.close()


def artifact_rows(storage: StudyRef, study_name: str | None) -> list[tuple[Any, ...]]:
    """``(number, trial_id, filename, artifact_id, mimetype, encoding)`` of every artifact of every
    trial: what ``optuna.artifacts.get_all_artifact_meta`` lists, read in one query on an RDB."""
    from sqlalchemy import select

    source = _open(storage)
    rows: list[tuple[Any, ...]] = []
    try:
        if source.engine is not None:
            t = _tables()
            tr, sy = t["trials"], t["system"]
            with source.engine.connect() as conn:
                sid, _, _, _ = _sql_study(conn, source.label, study_name)
                for number, trial_id, value_json in _fetch(conn,
                        select(tr.c.number, tr.c.trial_id, sy.c.value_json)
                        .join_from(sy, tr, sy.c.trial_id == tr.c.trial_id)
                        .where(tr.c.study_id == sid, sy.c.key.like(_ARTIFACT_PREFIX + "%"))):
                    meta = json.loads(json.loads(value_json))
                    rows.append((number, trial_id, meta["filename"], meta["artifact_id"], meta["mimetype"],
                                 meta["encoding"]))
        else:
            study = _api_study(source, study_name)
            storage = optuna_compat.study_storage(study)
            for trial in study.get_trials(deepcopy=False):
                for meta in optuna.artifacts.get_all_artifact_meta(trial, storage=storage):
                    rows.append((trial.number, optuna_compat.trial_id(trial), meta.filename, meta.artifact_id,
                                 meta.mimetype, meta.encoding))
    finally:
        source.close()
    return rows
