"""Studies -> tidy pandas tables, the tuning playbook's checks, and matplotlib figures.

Reviewing a study means comparing trials in Jupyter, in a shared report or next to
optuna-dashboard. Optuna's own ``load_study(...).trials_dataframe()`` builds every
``FrozenTrial`` through the ORM first (seconds on 10,000 trials, minutes on bigger stores:
optuna issues #763 and #4890) and knows nothing of this project's metrics. Here an RDB store
(SQLite, PostgreSQL, MySQL) is read with one SQL query per table and the rows are assembled
into exactly what Optuna's API returns for the same trials (the tests check that); other
storages (journal files) and ``optuna.Study`` objects go through Optuna's public API.

Two kinds of functions, so notebooks hold no logic and plots do no I/O:

* loaders take a study reference (``storage, study_name``) and return DataFrames:
  :func:`load_trials`, :func:`load_curves`, :func:`load_roc`, :func:`load_artifacts`,
  :func:`compare`;
* checks and plots take those DataFrames: :func:`boundary_report`, :func:`failure_report`,
  :func:`isolation`, :func:`param_importances`, :func:`plot_learning_curves`,
  :func:`plot_roc_curves`, :func:`plot_objective_vs_params`, :func:`plot_importance`.
  The study's search space, direction and metric travel with a table in ``DataFrame.attrs``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
    json_to_distribution,
)

from llm_doe._optuna_compat import rdb_backend, study_storage
from llm_doe._optuna_compat import trial_id as optuna_trial_id

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from sqlalchemy.engine import Connection, Engine

#: What a loader accepts: a storage URL, a path to a SQLite ``.db`` (or journal) file, an
#: ``optuna.Study``, or an Optuna storage object.
StudyRef = Union[str, "os.PathLike[str]", optuna.Study, optuna.storages.BaseStorage]

#: The final metrics every trial records (at its best evaluation).
METRICS = ("val_loss", "accuracy", "f1", "roc_auc")
_TEXT_ATTRS = ("stop_reason", "fail_reason", "precision")
_BASE_ATTRS = (*METRICS, "best_step", "duration_s", "pruned_at_step", "requeued", *_TEXT_ATTRS)
#: How a trial stopped by Ctrl-C/SIGTERM and re-queued was marked before it carried ``requeued``.
_REQUEUED_REASON = "interrupted "
_ARTIFACT_PREFIX = "artifacts:"
_STATE_STYLE = {"COMPLETE": "-", "PRUNED": "--", "FAIL": ":", "RUNNING": "-.", "WAITING": "-."}
_PREFERRED_PARAM = "train.learning_rate"
#: Seeds: searched as nuisance parameters or set by the confirmation; labels, not quantities.
SEED_PARAMS = ("train.seed", "data.seed")


# --------------------------------------------------------------------------------------------
# Resolving a study reference
# --------------------------------------------------------------------------------------------


@dataclass
class _Raw:
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
        return _Source(label=ref.study_name, study=ref, storage=study_storage(ref))
    if isinstance(ref, optuna.storages.BaseStorage):
        rdb = rdb_backend(ref)
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
        url = f"sqlite:///{path.absolute()}"
        return _Source(label=url, engine=sqlalchemy.create_engine(url), owns_engine=True)
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


def _sql_raw(source: _Source, study_name: str | None, attr_keys: Sequence[str] | None) -> _Raw:
    """Read one study's trials, values, params and (selected) user attributes with SQL."""
    from sqlalchemy import select

    t = _tables()
    tr = t["trials"]
    assert source.engine is not None
    with source.engine.connect() as conn:
        sid, name, directions, study_attrs = _sql_study(conn, source.label, study_name)
        of_study = tr.c.study_id == sid
        trials = _frame(
            _fetch(conn, select(tr.c.trial_id, tr.c.number, tr.c.state, tr.c.datetime_start, tr.c.datetime_complete)
                   .where(of_study)),
            ["key", "number", "state", "datetime_start", "datetime_complete"])
        raw = _Raw(name, directions, study_attrs, source.label, trials, study_id=sid)

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
                                 .where(of_study, sy.c.key == "retry_history")):
            raw.retried.update(json.loads(history))
    return raw


def _api_raw(study: optuna.Study, attr_keys: Sequence[str] | None, label: str) -> _Raw:
    """The same rows through Optuna's public API (journal files, Study objects)."""
    frozen = study.get_trials(deepcopy=False)
    trials = pd.DataFrame(
        [(t.number, t.number, t.state.name, t.datetime_start, t.datetime_complete) for t in frozen],
        columns=["key", "number", "state", "datetime_start", "datetime_complete"])
    raw = _Raw(study.study_name, [d.name.lower() for d in study.directions], dict(study.user_attrs), label, trials)
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
        raw.retried.update(t.system_attrs.get("retry_history") or ())
    return raw


def _raw(storage: StudyRef, study_name: str | None, attr_keys: Sequence[str] | None) -> _Raw:
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
# Tables
# --------------------------------------------------------------------------------------------


def _datetimes(values: pd.Series) -> pd.Series:
    """SQLite returns text, other drivers datetimes: one dtype either way."""
    return pd.to_datetime(values, format="ISO8601").astype("datetime64[us]")


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float, np.number)) and not isinstance(value, bool))


def _column(keys: pd.Series, mapping: Mapping[Any, Any]) -> pd.Series:
    """One value per trial key; NaN where a trial has none.

    Numbers take pandas' vectorised path (a ``None`` number reads as NaN). Anything else keeps
    its Python objects, so a categorical choice ``None`` stays ``None``, distinct from "not
    sampled" (NaN), and dict/list attributes stay what Optuna returns.
    """
    if not mapping:
        return pd.Series(np.nan, index=keys.index, dtype=float)
    if all(_is_number(v) for v in mapping.values()):
        return keys.map(mapping)
    get = mapping.get
    return pd.Series([get(k, np.nan) for k in keys], index=keys.index, dtype=object)


def _steps(values: pd.Series) -> pd.Series:
    """Evaluation indices as nullable integers (most trials have none of some)."""
    return pd.to_numeric(values, errors="coerce").astype("Int64")


def _space_json(raw: _Raw) -> dict[str, str]:
    """The searched space: as llm_doe recorded it on the study, else as the trials' distributions say
    (a study written by other code may have no ``space`` attribute, or one in another format)."""
    space = raw.study_attrs.get("space")
    if isinstance(space, Mapping) and space:
        try:
            for text in space.values():
                json_to_distribution(text)
        except (TypeError, ValueError, KeyError):
            pass
        else:
            return {str(k): str(v) for k, v in space.items()}
    return dict(sorted(raw.distributions.items()))


def _attrs(raw: _Raw) -> dict[str, Any]:
    direction = raw.directions[0] if len(raw.directions) == 1 else None
    return {"study_name": raw.study_name, "storage": raw.source, "directions": list(raw.directions),
            "direction": direction, "metric": raw.study_attrs.get("metric", "value"), "space": _space_json(raw),
            "study_user_attrs": raw.study_attrs}


def _param_names(raw: _Raw) -> list[str]:
    names = list(_space_json(raw))
    return names + sorted(set(raw.params) - set(names))


def _requeued(numbers: pd.Series, states: pd.Series, marked: pd.Series, reasons: pd.Series,
              retried: set[int]) -> pd.Series:
    """FAIL trials that were re-queued and go on as another trial (interrupted by a signal, or
    heartbeat-stale): marked ``requeued``, named in another trial's Optuna ``retry_history``, or
    (written before the mark) with an ``interrupted ...`` fail_reason."""
    old = reasons.map(lambda r: isinstance(r, str) and r.startswith(_REQUEUED_REASON) and "re-queued" in r)
    flagged = marked.map(lambda v: v is True) | numbers.isin(retried) | old.astype(bool)
    return (states == "FAIL") & flagged


def _trials_frame(raw: _Raw, extra_attrs: Sequence[str]) -> pd.DataFrame:
    base = raw.trials.sort_values("number", kind="stable").reset_index(drop=True)
    keys = base["key"]
    out: dict[str, Any] = {"number": base["number"].astype("int64"), "state": base["state"].astype(str)}
    if len(raw.directions) <= 1:
        out["value"] = _column(keys, raw.values.get(0, {})).astype(float)
    else:
        for i in range(len(raw.directions)):
            out[f"values_{i}"] = _column(keys, raw.values.get(i, {})).astype(float)
    space = _space_json(raw)
    for name in _param_names(raw):
        out[name] = _column(keys, raw.params.get(name, {}))
        dist_json = space.get(name) or raw.distributions.get(name)
        if dist_json and isinstance(json_to_distribution(dist_json), IntDistribution):
            out[name] = out[name].astype("Int64")  # whole numbers stay whole where some trials lack them
    for name in METRICS:
        out[name] = pd.to_numeric(_column(keys, raw.attrs.get(name, {})), errors="coerce").astype(float)
    out["best_step"] = _steps(_column(keys, raw.attrs.get("best_step", {})))
    start, complete = _datetimes(base["datetime_start"]), _datetimes(base["datetime_complete"])
    measured = _column(keys, raw.attrs.get("duration_s", {}))
    out["duration_s"] = pd.to_numeric(measured, errors="coerce").fillna((complete - start).dt.total_seconds())
    pruned_at = _column(keys, raw.attrs.get("pruned_at_step", {}))
    out["pruned_at_step"] = _steps(pd.to_numeric(pruned_at, errors="coerce").fillna(_column(keys, raw.last_step)))
    for name in _TEXT_ATTRS:
        out[name] = _column(keys, raw.attrs.get(name, {})).astype(object)
    out["requeued"] = _requeued(out["number"], out["state"], _column(keys, raw.attrs.get("requeued", {})),
                                out["fail_reason"], raw.retried)
    for name in extra_attrs:
        if name not in out:
            out[name] = _column(keys, raw.attrs.get(name, {}))
    out["datetime_start"], out["datetime_complete"] = start, complete
    frame = pd.DataFrame(out)
    frame.attrs.update(_attrs(raw))
    return frame


def load_trials(storage: StudyRef, study_name: str | None = None, *,
                user_attrs: bool | Sequence[str] = False) -> pd.DataFrame:
    """One row per trial: what a review of a study compares.

    Columns: ``number``, ``state`` (``COMPLETE``, ``PRUNED``, ``FAIL``, ...), ``value`` (the
    objective as Optuna stores it; ``values_0``, ``values_1``, ... for several objectives),
    every searched parameter under its config path (``train.learning_rate``), the final metrics
    ``val_loss``, ``accuracy``, ``f1``, ``roc_auc`` and ``best_step``, ``duration_s`` (the
    objective's own timing, else the trial's start-to-finish time), ``pruned_at_step`` (the
    evaluation a pruned trial stopped at), ``stop_reason``, ``fail_reason``, ``requeued`` (a FAIL
    trial that was interrupted or went stale and was re-queued: it goes on as another trial, so
    it is no failure), ``datetime_start``, ``datetime_complete``. The study's name, direction(s),
    metric, search space (parameter -> Optuna distribution JSON) and user attributes ride along
    in ``DataFrame.attrs`` for the checks and plots below.

    An RDB store is read with plain SQL (under a second for 10,000 trials, where
    ``optuna.load_study(...).trials_dataframe()`` takes several); the result equals what
    Optuna's API returns for the same trials.

    Args:
        storage: A storage URL (``sqlite:///studies/lr_sweep.db``), a path to a SQLite ``.db``
            or a journal file, an ``optuna.Study`` or an Optuna storage object.
        study_name: The study to read; may be omitted when the store holds only one.
        user_attrs: Also add user attributes as columns under their own names: ``True`` for
            all (the ``config.*`` keys, the cost figures, ...), or a list of names. Off by
            default: a trial carries ~60 of them and only the reads you ask for are paid.

    Returns:
        The trials, ordered by number.
    """
    extra: list[str] = []
    if user_attrs is True:
        keys: list[str] | None = None
    else:
        extra = [] if user_attrs is False else [str(k) for k in user_attrs]  # type: ignore[union-attr]
        keys = [*_BASE_ATTRS, *extra]
    raw = _raw(storage, study_name, keys)
    if user_attrs is True:
        extra = sorted(raw.attrs)
    return _trials_frame(raw, extra)


def _curves_rows(source: _Source, study_name: str | None) -> tuple[pd.DataFrame, _Raw]:
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


def load_curves(storage: StudyRef, study_name: str | None = None, *, params: bool = True) -> pd.DataFrame:
    """Every trial's intermediate values in long form, for seaborn or matplotlib.

    A step is an evaluation index (1, 2, ...), so trials with different batch sizes line up at
    the same point of training; the value is the study's metric at that evaluation.

    Args:
        storage: As for :func:`load_trials`.
        study_name: As for :func:`load_trials`.
        params: Join each trial's state and parameters onto its rows (``hue=`` ready).

    Returns:
        Columns ``trial`` (the trial number), ``step``, ``value``, then ``state`` and one
        column per parameter; ordered by trial and step. ``attrs`` as for :func:`load_trials`.
    """
    source = _open(storage)
    try:
        curves, raw = _curves_rows(source, study_name)
    finally:
        source.close()
    curves = curves.astype({"trial": "int64", "step": "int64", "value": float})
    curves = curves.sort_values(["trial", "step"], kind="stable").reset_index(drop=True)
    if params:
        trials = _trials_frame(raw, [])
        by_number = trials.set_index("number")
        curves["state"] = curves["trial"].map(by_number["state"]).astype(str)
        for name in _param_names(raw):
            curves[name] = curves["trial"].map(by_number[name])
    curves.attrs.update(_attrs(raw))
    return curves


def load_artifacts(storage: StudyRef, study_name: str | None = None) -> pd.DataFrame:
    """The artifacts uploaded to each trial (``config.yaml``, ``metrics.json``, ``roc.csv``, ``roc.png``).

    Returns:
        Columns ``trial`` (number), ``trial_id`` (Optuna's id, as in dashboard URLs),
        ``filename``, ``artifact_id``, ``mimetype``, ``encoding``: what
        ``optuna.artifacts.get_all_artifact_meta`` lists, for every trial at once.
    """
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
            for trial in study.get_trials(deepcopy=False):
                for meta in optuna.artifacts.get_all_artifact_meta(trial, storage=study_storage(study)):
                    rows.append((trial.number, optuna_trial_id(trial), meta.filename, meta.artifact_id, meta.mimetype,
                                 meta.encoding))
    finally:
        source.close()
    frame = pd.DataFrame(rows, columns=["trial", "trial_id", "filename", "artifact_id", "mimetype", "encoding"])
    return frame.sort_values(["trial", "filename"], kind="stable").reset_index(drop=True)


#: What an artifact store raises for a missing file (FileSystemArtifactStore: ArtifactNotFound).
_MISSING_ARTIFACT = (FileNotFoundError, optuna.artifacts.exceptions.ArtifactNotFound)


def _recorded_artifacts_dir(attrs: Mapping[str, Any]) -> str | None:
    """The ``storage.artifacts_dir`` the search recorded on the study (relative to where it ran)."""
    config = attrs.get("study_user_attrs", {}).get("config") or {}
    value = (config.get("storage") or {}).get("artifacts_dir") if isinstance(config, Mapping) else None
    return str(value) if value else None


def _artifact_store(artifacts_dir: str | os.PathLike[str] | Any, attrs: Mapping[str, Any], probe: str | None) -> Any:
    """The artifact store holding this study's files: the folder given, else the one the study recorded.

    A notebook's default folder is relative to the notebook, the recorded one to where the search
    ran; the first that really holds the study's files wins (``probe``: one of its artifact ids).
    """
    from optuna.artifacts import FileSystemArtifactStore

    if artifacts_dir is not None and not isinstance(artifacts_dir, (str, os.PathLike)):
        return artifacts_dir  # an Optuna artifact store
    recorded = _recorded_artifacts_dir(attrs)
    candidates = [str(c) for c in (artifacts_dir, recorded) if c is not None]
    for candidate in dict.fromkeys(candidates):
        if not Path(candidate).is_dir():
            continue
        store = FileSystemArtifactStore(candidate)
        if probe is not None:
            try:
                store.open_reader(probe).close()
            except _MISSING_ARTIFACT:
                continue
        if artifacts_dir is not None and candidate != str(artifacts_dir):
            import warnings

            warnings.warn(f"artifacts_dir {artifacts_dir} does not hold this study's artifacts; using the "
                          f"storage.artifacts_dir the study recorded: {candidate}", stacklevel=3)
        return store
    raise FileNotFoundError(f"no folder among {candidates or ['(none given)']} holds the study's artifacts: pass "
                            "artifacts_dir= (the study's storage.artifacts_dir)")


def load_roc(storage: StudyRef, study_name: str | None = None, *,
             artifacts_dir: str | os.PathLike[str] | Any | None = None,
             numbers: Iterable[int] | None = None) -> pd.DataFrame:
    """The ROC curve of each trial's best evaluation (its ``roc.csv`` artifact), in long form.

    The files live in the study's artifact store, which the database does not point to:
    pass ``artifacts_dir`` (the study's ``storage.artifacts_dir``). Without it, or when it does
    not hold the study's files, the folder the search recorded on the study is used (with a
    warning in the second case); a relative recorded path only resolves from where the search ran.

    Args:
        storage: As for :func:`load_trials`.
        study_name: As for :func:`load_trials`.
        artifacts_dir: The study's ``storage.artifacts_dir`` (or an Optuna artifact store).
        numbers: Only these trials (default: every trial that has a ROC curve).

    Returns:
        Columns ``trial``, ``fpr``, ``tpr``, ``threshold``, ``auc`` (area under that curve),
        ``state``, ``value`` and one column per parameter; ``attrs`` as for :func:`load_trials`.
    """
    metas = load_artifacts(storage, study_name)
    metas = metas[metas["filename"] == "roc.csv"].drop_duplicates("trial", keep="last")
    if numbers is not None:
        metas = metas[metas["trial"].isin(list(numbers))]
    trials = load_trials(storage, study_name)
    store = _artifact_store(artifacts_dir, trials.attrs, metas["artifact_id"].iloc[0] if len(metas) else None)
    by_number = trials.set_index("number")
    params = list(trials.attrs["space"]) + [c for c in _param_columns(trials) if c not in trials.attrs["space"]]
    parts = []
    for number, artifact_id in zip(metas["trial"], metas["artifact_id"]):
        try:
            with store.open_reader(artifact_id) as handle:
                points = pd.read_csv(handle)
        except _MISSING_ARTIFACT:
            raise FileNotFoundError(f"trial {number}'s roc.csv (artifact {artifact_id}) is missing from the "
                                    "study's artifact store") from None
        points.insert(0, "trial", int(number))
        fpr, tpr = points["fpr"].to_numpy(float), points["tpr"].to_numpy(float)
        points["auc"] = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)) if len(fpr) > 1 else np.nan
        parts.append(points)
    columns = ["trial", "fpr", "tpr", "threshold", "auc"]
    roc = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({c: [] for c in columns})
    roc = roc.astype({"trial": "int64"})
    roc["state"] = roc["trial"].map(by_number["state"]).astype(str)
    roc["value"] = roc["trial"].map(by_number["value"]) if "value" in by_number else np.nan
    for name in params:
        roc[name] = roc["trial"].map(by_number[name])
    roc.attrs.update(trials.attrs)
    return roc


def compare(studies: Iterable[StudyRef | tuple[StudyRef, str] | str], *, storage: StudyRef | None = None,
            user_attrs: bool | Sequence[str] = False) -> pd.DataFrame:
    """:func:`load_trials` of several studies in one table, with a leading ``study`` column.

    Args:
        studies: Each an ``optuna.Study``, a ``(storage, study_name)`` pair, or a study name
            in ``storage``.
        storage: The store for entries given by name only.
        user_attrs: As for :func:`load_trials`.

    Returns:
        The trials of every study; a parameter one study did not search is NaN in its rows.
    """
    frames = []
    for entry in studies:
        if isinstance(entry, tuple):
            ref, name = entry
        elif isinstance(entry, optuna.Study):
            ref, name = entry, entry.study_name
        elif isinstance(entry, str) and "://" not in entry and storage is not None:
            ref, name = storage, entry
        else:
            raise TypeError(f"cannot read {entry!r}: give a Study, a (storage, study_name) pair, "
                            "or a name with storage=")
        frame = load_trials(ref, name, user_attrs=user_attrs)
        frame.insert(0, "study", frame.attrs["study_name"])
        frames.append(frame)
    if not frames:
        raise ValueError("compare() needs at least one study")
    return pd.concat(frames, ignore_index=True, sort=False)


# --------------------------------------------------------------------------------------------
# The tuning playbook's checks
# --------------------------------------------------------------------------------------------


def space_of(table: pd.DataFrame) -> dict[str, BaseDistribution]:
    """The searched space of a table from :func:`load_trials` (parameter -> Optuna distribution)."""
    space = table.attrs.get("space")
    if space is None:
        raise ValueError("this table carries no search space in .attrs: pass one from load_trials() or space=")
    return {name: json_to_distribution(text) for name, text in space.items()}


def _param_columns(table: pd.DataFrame) -> list[str]:
    space = table.attrs.get("space") or {}
    return [c for c in space if c in table.columns]


def _maximize(table: pd.DataFrame) -> bool:
    direction = table.attrs.get("direction")
    if direction not in ("minimize", "maximize"):
        raise ValueError("the checks need a single-objective table from load_trials() (direction in .attrs)")
    return direction == "maximize"


def _complete(table: pd.DataFrame) -> pd.DataFrame:
    done = table[(table["state"] == "COMPLETE") & np.isfinite(table["value"].astype(float))]
    return done


def best_trial(table: pd.DataFrame) -> pd.Series:
    """The best COMPLETE trial's row (pruned trials stop early, so their values do not compete)."""
    done = _complete(table)
    if done.empty:
        raise ValueError("no COMPLETE trial with a finite value")
    index = done["value"].idxmax() if _maximize(table) else done["value"].idxmin()
    return done.loc[index]


def _default_param(table: pd.DataFrame) -> str:
    params = _param_columns(table)
    if not params:
        raise ValueError("the table has no searched parameter")
    return _PREFERRED_PARAM if _PREFERRED_PARAM in params else params[0]


def _position(value: float, dist: FloatDistribution | IntDistribution) -> float:
    low, high = float(dist.low), float(dist.high)
    if dist.log:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


def _boundary_frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """The boundary table with a boolean ``near_edge`` even when empty: pandas 3 reads an empty
    object column used as a mask as a column selection, and ``report[report["near_edge"]]``
    then loses every column."""
    frame = pd.DataFrame(rows, columns=columns)
    frame["near_edge"] = frame["near_edge"].astype(bool)
    return frame


def boundary_report(table: pd.DataFrame, *, margin: float = 0.1, top_k: int = 5) -> pd.DataFrame:
    """Is the best trial near the edge of a searched range? (Google's tuning playbook.)

    A best value in the outer ``margin`` of a range (measured on the log scale where the space
    is logarithmic) means the optimum may lie outside it: widen the range and search again
    before drawing conclusions. Categorical parameters have no edge and are left out.

    Args:
        table: From :func:`load_trials`.
        margin: The fraction of a range, at each end, that counts as "near the edge".
        top_k: Also report how many of the ``top_k`` best trials sit near an edge.

    Returns:
        One row per numeric parameter: ``param``, ``low``, ``high``, ``log``, ``best`` (the best
        trial's value), ``position`` (0 = low end, 1 = high end), ``edge`` (``low``, ``high`` or
        empty), ``near_edge``, ``top_k_near_edge`` (fraction), ``advice``.
    """
    columns = ["param", "low", "high", "log", "best", "position", "edge", "near_edge", "top_k_near_edge", "advice"]
    done = _complete(table)
    if done.empty:
        return _boundary_frame([], columns)
    best = best_trial(table)
    ranked = done.sort_values("value", ascending=not _maximize(table)).head(top_k)
    rows = []
    for name, dist in space_of(table).items():
        if not isinstance(dist, (FloatDistribution, IntDistribution)) or name not in table.columns:
            continue
        if name in SEED_PARAMS:
            continue  # a seed's number is a label, not a scale: it has no edge to be near
        if pd.isna(best[name]):
            continue
        position = _position(float(best[name]), dist)
        edge = "low" if position <= margin else "high" if position >= 1 - margin else ""
        top_positions = [_position(float(v), dist) for v in ranked[name].dropna()]
        near = [p <= margin or p >= 1 - margin for p in top_positions]
        scale = " (log scale)" if dist.log else ""
        if edge:
            advice = (f"the best {name} ({_fmt(best[name])}) lies in the {'lowest' if edge == 'low' else 'highest'} "
                      f"{margin:.0%} of [{_fmt(dist.low)}, {_fmt(dist.high)}]{scale}: the optimum may lie beyond; "
                      f"widen the range {'downward' if edge == 'low' else 'upward'} and search again")
        else:
            advice = f"the best {name} ({_fmt(best[name])}) is inside [{_fmt(dist.low)}, {_fmt(dist.high)}]{scale}"
        rows.append({"param": name, "low": dist.low, "high": dist.high, "log": dist.log, "best": best[name],
                     "position": position, "edge": edge, "near_edge": bool(edge),
                     "top_k_near_edge": float(np.mean(near)) if near else np.nan, "advice": advice})
    return _boundary_frame(rows, columns)


def failure_report(table: pd.DataFrame) -> pd.Series:
    """How many trials failed, diverged or were pruned, and what fraction of the study that is.

    The playbook counts infeasible trials: a large failed or diverged fraction says the space
    reaches into settings that cannot train (too high a learning rate, too big a batch) and
    should shrink before its results are read. A trial stopped by Ctrl-C or SIGTERM, or whose
    worker died, and that was re-queued (the ``requeued`` column) is no such failure: it goes
    on as another trial, so it is counted apart and left out of the fractions.

    Returns:
        ``trials``, ``complete``, ``pruned``, ``failed`` (FAIL, re-queued ones excluded),
        ``diverged`` (failed with a ``diverged: ...`` reason), ``requeued`` (FAIL, interrupted
        and re-queued), ``running`` (running or waiting), and ``failed_fraction``,
        ``diverged_fraction``, ``pruned_fraction`` (of the trials that are not re-queued).
    """
    n = len(table)
    requeued = table["requeued"].astype(bool) if "requeued" in table else pd.Series(False, index=table.index)
    states = table.loc[~requeued, "state"].value_counts()
    reasons = table["fail_reason"] if "fail_reason" in table else pd.Series([], dtype=object)
    diverged = int(reasons.dropna().astype(str).str.startswith("diverged").sum())
    counts = {
        "trials": n,
        "complete": int(states.get("COMPLETE", 0)),
        "pruned": int(states.get("PRUNED", 0)),
        "failed": int(states.get("FAIL", 0)),
        "diverged": diverged,
        "requeued": int(requeued.sum()),
        "running": int(states.get("RUNNING", 0) + states.get("WAITING", 0)),
    }
    counted = n - counts["requeued"]
    for name in ("failed", "diverged", "pruned"):
        counts[f"{name}_fraction"] = counts[name] / counted if counted else 0.0
    return pd.Series(counts, name="trials", dtype=object)


def trial_counts_text(failures: pd.Series) -> str:
    """One sentence of :func:`failure_report`'s counts (the study note and the report say it)."""
    requeued = f", {failures['requeued']} interrupted (re-queued)" if failures.get("requeued") else ""
    return (f"{failures['trials']} trials: {failures['complete']} complete, {failures['pruned']} pruned, "
            f"{failures['failed']} failed ({failures['diverged']} diverged){requeued}, {failures['running']} running.")


def isolation(table: pd.DataFrame, param: str | None = None, *, bins: int | None = None) -> pd.DataFrame:
    """The best trial for each value (or range) of one parameter: the playbook's isolation plot as a table.

    Comparing the best trial per value, rather than all trials, separates the parameter's own
    effect from the luck of the other parameters' draws.

    Args:
        table: From :func:`load_trials`.
        param: The parameter to isolate (default: ``train.learning_rate`` if searched, else the
            first parameter).
        bins: Group a numeric parameter into this many ranges (log-spaced on a log scale).
            Default: categorical and integer parameters by value, floats into 5 ranges once
            they take more than 10 values.

    Returns:
        Indexed by value (or range): ``trials`` (COMPLETE trials there), ``best_value``,
        ``best_trial``, and the best trial's other parameters.
    """
    param = param or _default_param(table)
    done = _complete(table)
    dist = space_of(table).get(param) if table.attrs.get("space") else None
    key: pd.Series = done[param]
    numeric = isinstance(dist, (FloatDistribution, IntDistribution))
    if bins is None and isinstance(dist, FloatDistribution) and done[param].nunique() > 10:
        bins = 5
    if bins is not None and numeric and not done.empty:
        low, high = float(dist.low), float(dist.high)  # type: ignore[union-attr]
        edges = np.geomspace(low, high, bins + 1) if dist.log else np.linspace(low, high, bins + 1)  # type: ignore[union-attr]
        key = pd.cut(done[param].astype(float), edges, include_lowest=True)
    maximize = _maximize(table)
    others = [c for c in _param_columns(table) if c != param]
    rows = {}
    for value, group in done.groupby(key, observed=True, sort=True):
        best = group.loc[group["value"].idxmax() if maximize else group["value"].idxmin()]
        rows[value] = {"trials": len(group), "best_value": best["value"], "best_trial": int(best["number"]),
                       **{name: best[name] for name in others}}
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=["trials", "best_value", "best_trial", *others])
    frame.index.name = param
    return frame


def _to_python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def param_importances(table: pd.DataFrame, *, evaluator: optuna.importance.BaseImportanceEvaluator | None = None
                      ) -> pd.Series:
    """Which parameters matter, by one of Optuna's importance evaluators over the COMPLETE trials.

    The table's trials are handed to Optuna in memory (no second read of the store), so the
    numbers are Optuna's own: PED-ANOVA by default, or ``FanovaImportanceEvaluator()`` /
    ``MeanDecreaseImpurityImportanceEvaluator()``.

    Returns:
        Importance per parameter, largest first (empty with fewer than two COMPLETE trials).
    """
    space = space_of(table)
    done = _complete(table).dropna(subset=[p for p in space if p in table.columns])
    if len(done) < 2 or not space:
        return pd.Series(dtype=float, name="importance")
    names = [p for p in space if p in done.columns]
    distributions = {n: space[n] for n in names}
    trials = []
    for values, value in zip(done[names].astype(object).to_numpy().tolist(), done["value"].astype(float).tolist()):
        params = {n: int(v) if isinstance(space[n], IntDistribution) else _to_python(v) for n, v in zip(names, values)}
        trials.append(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created in memory" line
    try:
        study = optuna.create_study(direction="maximize" if _maximize(table) else "minimize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.add_trials(trials)
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return pd.Series(importances, name="importance", dtype=float).sort_values(ascending=False)


def study_warnings(table: pd.DataFrame, *, margin: float = 0.1) -> list[str]:
    """The review's warnings in words: best trials on a range edge, failed or diverged trials,
    trials that ran in different precisions."""
    notes = []
    failures = failure_report(table)
    if failures["failed"]:
        counted = failures["trials"] - failures["requeued"]  # a re-queued trial goes on as another
        notes.append(f"{failures['failed']} of {counted} trials failed ({failures['failed_fraction']:.0%})"
                     + (f", {failures['diverged']} of them diverged" if failures["diverged"] else "")
                     + ": see fail_reason; a space that cannot train should shrink"
                     + (f" ({failures['requeued']} interrupted and re-queued trial(s) not counted)"
                        if failures["requeued"] else ""))
    if table.attrs.get("direction") and not _complete(table).empty:
        for advice in boundary_report(table, margin=margin).query("near_edge")["advice"]:
            notes.append(advice)
    if _complete(table).empty:
        notes.append("no trial completed: nothing to compare yet")
    if "precision" in table:
        # train.precision=auto follows the machine: workers on different hardware may differ,
        # and trials written before trials recorded it have none (fp32 on CPU, bf16 on GPU).
        ran = table.loc[table["state"].isin(["COMPLETE", "PRUNED"]), "precision"]
        counts = ran.fillna("not recorded").value_counts()
        if len(counts) > 1 and ran.notna().any():
            listed = ", ".join(f"{name}: {n}" for name, n in counts.sort_index().items())
            notes.append(f"trials ran in different precisions ({listed}): their values may not compare; "
                         "pin train.precision to one of them")
    return notes


def _set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        node = tree.get(part)
        if not isinstance(node, dict):
            node = tree[part] = {}
        tree = node
    tree[parts[-1]] = value


def best_config(table: pd.DataFrame, number: int | None = None, *, as_yaml: bool = False) -> dict[str, Any] | str:
    """The full resolved config of the best trial (or trial ``number``): the study's config with
    that trial's parameters applied, as the trial ran it (YAML text with ``as_yaml``)."""
    import copy

    row = best_trial(table) if number is None else table.set_index("number").loc[number].rename(number)
    config = copy.deepcopy(table.attrs.get("study_user_attrs", {}).get("config") or {})
    for name in _param_columns(table):
        if not pd.isna(row[name]):
            _set_path(config, name, _to_python(row[name]))
    if as_yaml:
        import yaml

        return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    return config


def _choice_literal(value: Any) -> str:
    """A value in Hydra's override grammar, exact (floats by repr, so they round-trip)."""
    value = _to_python(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def rerun_command(table: pd.DataFrame, number: int | None = None) -> str:
    """The exact command that reruns the best trial (or trial ``number``) as a one-trial study.

    It repeats the study's own command (from its provenance) with the search space narrowed to
    that trial's values, a new ``study.name`` and ``study.n_trials=1``: same data, seeds and
    settings, so the rerun reproduces the trial (on the same hardware and versions).
    """
    row = best_trial(table) if number is None else table.set_index("number").loc[number].rename(number)
    trial_number = int(row["number"]) if "number" in row.index else int(row.name)  # type: ignore[arg-type]
    name = table.attrs.get("study_name", "study")
    command = (table.attrs.get("study_user_attrs", {}).get("provenance") or {}).get("command")
    if command:
        args = shlex.split(command)
        head_end = args.index("llm_doe.search") + 1 if "llm_doe.search" in args else 0
        head, overrides = args[:head_end], args[head_end:]
    else:
        head, overrides = ["python", "-m", "llm_doe.search"], [f"+study={name}"]
    keep = [a for a in overrides if not re.match(r"^\+{0,2}study\.(name|n_trials)=", a) and a != "--cfg"]
    space = ",".join(f'{p}:"choice({_choice_literal(row[p])})"' for p in _param_columns(table)
                     if not pd.isna(row[p]))
    return shlex.join([*head, *keep, f"study.name={name}_trial{trial_number}", "study.n_trials=1",
                       f"study.space={{{space}}}"])


# --------------------------------------------------------------------------------------------
# Plots: matplotlib Figures, no I/O
# --------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    value = _to_python(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """A fresh Figure (not pyplot's: no global state, no double display in notebooks) or the given axes."""
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _colouring(frame: pd.DataFrame, by: str) -> tuple[Any, Any, bool]:
    """(values -> colours, a ScalarMappable for a colour bar or None, is numeric).

    The colour function takes an array, so 10,000 curves are coloured in one call."""
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm, Normalize

    values = frame[by].dropna()
    space = frame.attrs.get("space") or {}
    dist = json_to_distribution(space[by]) if by in space else None
    if isinstance(dist, CategoricalDistribution) or not pd.api.types.is_numeric_dtype(values) or values.empty:
        cmap = matplotlib.colormaps["tab10"]
        levels = {v: cmap(i % 10) for i, v in enumerate(pd.unique(values))}
        return (lambda vs: [levels.get(v, "grey") for v in vs]), None, False
    low, high = float(values.min()), float(values.max())
    log = bool(getattr(dist, "log", False)) and low > 0
    if high <= low:
        high = low * 1.0001 + 1e-12
    norm = LogNorm(low, high) if log else Normalize(low, high)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="grey")  # a trial without the parameter
    mappable = ScalarMappable(norm=norm, cmap=cmap)
    return (lambda vs: cmap(norm(pd.to_numeric(pd.Series(vs), errors="coerce").to_numpy(float)))), mappable, True


def _metric_label(frame: pd.DataFrame) -> str:
    return str(frame.attrs.get("metric", "value"))


def plot_learning_curves(curves: pd.DataFrame, *, color_by: str | None = None, ax: Axes | None = None) -> Figure:
    """Each trial's validation metric per evaluation, coloured by a parameter (the learning rate).

    Line style tells the state (solid complete, dashed pruned, dotted failed), so a pruned
    trial reads as "stopped here" rather than "ended badly".

    Args:
        curves: From :func:`load_curves`.
        color_by: The parameter that colours the lines (default: ``train.learning_rate`` if
            searched, else the first parameter); on a log colour scale where the space is log.
        ax: Draw into these axes instead of a new figure.
    """
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    fig, ax = _axes(ax, (7.5, 4.5))
    color_by = color_by or _default_param(curves)
    colour, mappable, numeric = _colouring(curves, color_by)
    for state, frame in curves.groupby("state", sort=True):
        frame = frame.sort_values(["trial", "step"], kind="stable")
        # One LineCollection per state, cut at trial boundaries: no per-trial Python loop.
        starts = np.flatnonzero(np.diff(frame["trial"].to_numpy())) + 1
        points = np.column_stack([frame["step"].to_numpy(float), frame["value"].to_numpy(float)])
        segments = np.split(points, starts)
        colours = colour(frame[color_by].to_numpy()[np.r_[0, starts]])
        ax.add_collection(LineCollection(segments, colors=colours, linestyles=_STATE_STYLE.get(str(state), "-"),
                                         linewidths=1.5 if len(segments) <= 200 else 0.6, alpha=0.9))
        if len(segments) <= 200:  # where each trial ended (x: pruned); noise on thousands of curves
            ends = points[np.r_[starts - 1, len(points) - 1]]
            ax.plot(ends[:, 0], ends[:, 1], ls="none", marker="x" if state == "PRUNED" else "o", ms=4,
                    color="black", alpha=0.5)
    ax.autoscale_view()
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("evaluation step")
    ax.set_ylabel(_metric_label(curves))
    ax.set_title(f"{curves.attrs.get('study_name', '')}: learning curves by {color_by}".lstrip(": "))
    states = sorted(curves["state"].unique()) if len(curves) else []
    handles = [Line2D([], [], color="black", ls=_STATE_STYLE.get(s, "-"), label=s.lower()) for s in states]
    if numeric and mappable is not None:
        fig.colorbar(mappable, ax=ax, label=color_by)
    elif not numeric:
        handles += [Line2D([], [], color=colour([v])[0], label=f"{color_by}={v}") for v in pd.unique(curves[color_by])]
    if handles:
        ax.legend(handles=handles, fontsize="small", loc="best")
    return fig


def plot_roc_curves(roc: pd.DataFrame, *, label_by: str | None = None, ax: Axes | None = None) -> Figure:
    """The trials' ROC curves overlaid, labelled and coloured by a parameter (the learning rate).

    The seed document's figure: binary classifiers fine-tuned with different learning rates,
    each at its best evaluation; a curve hugging the top-left corner separates the classes
    best, the diagonal is chance.

    Args:
        roc: From :func:`load_roc`.
        label_by: The parameter in each label and colour (default as :func:`plot_learning_curves`).
        ax: Draw into these axes instead of a new figure.
    """
    fig, ax = _axes(ax, (6.0, 5.5))
    label_by = label_by or _default_param(roc)
    colour, _, _ = _colouring(roc, label_by)
    order = roc.groupby("trial", sort=True)[label_by].first().sort_values(kind="stable")
    for number, value in order.items():
        trial = roc[roc["trial"] == number]
        auc = trial["auc"].iloc[0]
        ax.plot(trial["fpr"], trial["tpr"], color=colour([value])[0], lw=1.8,
                label=f"{label_by.rsplit('.', 1)[-1]}={_fmt(value)}  AUC {auc:.3f}  (#{number})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC at each trial's best evaluation, by {label_by}")
    ax.legend(fontsize="x-small", loc="lower right")
    return fig


def plot_objective_vs_params(table: pd.DataFrame, *, params: Sequence[str] | None = None) -> Figure:
    """The objective of every COMPLETE trial against each parameter, on a log axis where the space is log.

    Pruned trials are drawn hollow at their last reported value (they stopped early, so they
    are shown, not ranked); the best trial is starred.
    """
    from matplotlib.figure import Figure

    params = list(params or _param_columns(table))
    space = space_of(table)
    ncols = min(3, max(1, len(params)))
    nrows = max(1, math.ceil(len(params) / ncols))
    fig = Figure(figsize=(4.6 * ncols, 3.8 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    done = _complete(table)
    pruned = table[(table["state"] == "PRUNED") & np.isfinite(table["value"].astype(float))]
    best = best_trial(table) if not done.empty else None
    for ax, name in zip(axes, params):
        dist = space.get(name)
        if isinstance(dist, CategoricalDistribution):
            positions = {c: i for i, c in enumerate(dist.choices)}
            x = done[name].map(positions)
            xp = pruned[name].map(positions)
            ax.set_xticks(range(len(dist.choices)), [str(c) for c in dist.choices])
        else:
            x, xp = done[name].astype(float), pruned[name].astype(float)
            if getattr(dist, "log", False):
                ax.set_xscale("log")
        ax.scatter(x, done["value"], s=30, color="tab:blue", label="complete", zorder=2)
        if not pruned.empty:
            ax.scatter(xp, pruned["value"], s=30, facecolors="none", edgecolors="tab:grey", label="pruned", zorder=2)
        if best is not None and not pd.isna(best[name]):
            bx = positions[best[name]] if isinstance(dist, CategoricalDistribution) else float(best[name])
            ax.scatter([bx], [best["value"]], marker="*", s=220, color="tab:red",
                       label=f"best (#{int(best['number'])})", zorder=3)
        if isinstance(dist, (FloatDistribution, IntDistribution)):
            # The searched range's ends, so a best trial on an edge shows as one.
            for end in (dist.low, dist.high):
                ax.axvline(end, color="tab:grey", ls=":", lw=1)
        ax.set_xlabel(name)
        ax.set_ylabel(_metric_label(table))
        ax.legend(fontsize="x-small")
    for ax in axes[len(params):]:
        ax.set_visible(False)
    fig.suptitle(f"{table.attrs.get('study_name', '')}: objective vs parameters".lstrip(": "))
    return fig


def plot_importance(importances: pd.Series, *, ax: Axes | None = None) -> Figure:
    """Parameter importances (from :func:`param_importances`) as horizontal bars, largest on top."""
    fig, ax = _axes(ax, (6.0, 0.5 + 0.45 * max(1, len(importances))))
    ordered = importances.sort_values()
    ax.barh([str(i) for i in ordered.index], ordered.to_numpy(float), color="tab:blue")
    for y, value in enumerate(ordered.to_numpy(float)):
        ax.text(value, y, f" {value:.2f}", va="center", fontsize="small")
    ax.set_xlim(0, max(1.0, float(ordered.max()) * 1.15) if len(ordered) else 1.0)
    ax.set_xlabel("importance")
    ax.set_title("parameter importance" if len(ordered) else "parameter importance (needs 2+ complete trials)")
    return fig


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """A Figure as PNG bytes (for reports and notes)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Confirmation: the best configurations re-run with several seeds (python -m llm_doe.confirm)
# --------------------------------------------------------------------------------------------

#: ``python -m llm_doe.confirm`` writes its runs to this linked study, in the same store.
CONFIRM_SUFFIX = "-confirm"
#: What a confirmation summarises per configuration: the objective, then the final metrics.
CONFIRM_QUANTITIES = ("value", *METRICS)


def confirmation_name(study_name: str) -> str:
    """The linked confirmation study of ``study_name`` (``lr_sweep`` -> ``lr_sweep-confirm``)."""
    return study_name if study_name.endswith(CONFIRM_SUFFIX) else study_name + CONFIRM_SUFFIX


def load_confirmation(storage: StudyRef, study_name: str) -> pd.DataFrame:
    """One row per confirmation run, as :func:`load_trials`, with ``source_trial`` (the trial of the
    searched study whose configuration it re-runs), ``seed`` and ``data_seed``.

    Args:
        storage: As for :func:`load_trials`.
        study_name: The searched study (``lr_sweep``) or its confirmation (``lr_sweep-confirm``).
    """
    return load_trials(storage, confirmation_name(study_name), user_attrs=["source_trial", "seed", "data_seed"])


def _mean_ci(values: np.ndarray, level: float) -> tuple[float, float, float, float]:
    """Mean, sample standard deviation and the t-interval of the mean (NaN below two values)."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return (math.nan,) * 4  # type: ignore[return-value]
    mean = float(np.mean(values))
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(np.std(values, ddof=1))
    if std == 0.0:
        return mean, 0.0, mean, mean
    low, high = stats.t.interval(level, n - 1, loc=mean, scale=std / math.sqrt(n))
    return mean, std, float(low), float(high)


def paired_p_value(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided paired t-test of ``a`` against ``b`` (same seeds, same order): scipy's ``ttest_rel``.

    NaN where the test says nothing: fewer than two pairs, or identical samples. Differences
    that are all the same non-zero number (no seed-to-seed noise at all) give 0.
    """
    from scipy import stats

    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(diffs) < 2 or not np.isfinite(diffs).all():
        return math.nan
    if np.ptp(diffs) == 0.0:
        return math.nan if diffs[0] == 0.0 else 0.0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # near-constant differences: precision note
        return float(stats.ttest_rel(a, b).pvalue)


def confirmation_stats(runs: pd.DataFrame, *, direction: str | None = None, alpha: float = 0.05,
                       level: float = 0.95) -> pd.DataFrame:
    """Per configuration: mean, standard deviation and confidence interval of the objective and the
    metrics over seeds, and a paired t-test of each configuration against the best one.

    A single search trial is one draw of the seed's luck; the top of a search is where lucky draws
    gather. Re-running each configuration with the same K seeds makes the comparison paired (seed
    by seed), which removes the variance the seeds share, and says whether the winner is a winner.
    The best configuration is the one with the best mean objective, so its tests against the others
    are post hoc: read a p-value near ``alpha`` as "maybe", and with many configurations expect an
    occasional false "significant".

    Args:
        runs: From :func:`load_confirmation` (or any frame with ``source_trial``, ``seed``,
            ``state``, ``value``, the metric columns and ``number``). COMPLETE runs count; a
            (configuration, seed) pair run twice counts once (its latest run).
        direction: ``minimize`` or ``maximize``; default: ``runs.attrs["direction"]``.
        alpha: Significance level of the tests.
        level: Confidence level of the intervals.

    Returns:
        Indexed by ``trial`` (the source trial), best first: the configuration's parameters,
        ``n`` (seeds with a result), ``values`` and ``seeds`` (the objective per seed),
        ``<q>_mean``, ``<q>_std``, ``<q>_ci_low``, ``<q>_ci_high`` for ``q`` in ``value``,
        ``val_loss``, ``accuracy``, ``f1``, ``roc_auc``; ``n_paired``, ``diff_vs_best`` (mean
        paired difference of the objective), ``p_value``, ``significant``, ``best``, ``rank``.
        ``.attrs`` holds ``summary`` (the verdict in words), ``best_trial``, ``distinguishable``,
        ``n_seeds``, ``alpha``, ``level``, ``direction``, ``metric``.
    """
    direction = direction or runs.attrs.get("direction") or "minimize"
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be minimize or maximize, got {direction!r}")
    maximize = direction == "maximize"
    value = pd.to_numeric(runs["value"], errors="coerce")
    done = runs[(runs["state"] == "COMPLETE") & np.isfinite(value) & runs["source_trial"].notna()].copy()
    pair = ["seed"] + (["data_seed"] if "data_seed" in done.columns and done["data_seed"].notna().any() else [])
    if "number" in done.columns:
        done = done.sort_values("number", kind="stable")
    done = done.drop_duplicates(["source_trial", *pair], keep="last")
    done["source_trial"] = done["source_trial"].astype(int)
    params = [c for c in _param_columns(runs) if c not in SEED_PARAMS] if runs.attrs.get("space") else []
    columns = [*params, "n", "values", "seeds"]
    for q in CONFIRM_QUANTITIES:
        columns += [f"{q}_mean", f"{q}_std", f"{q}_ci_low", f"{q}_ci_high"]
    columns += ["n_paired", "diff_vs_best", "p_value", "significant", "beats_best", "best", "rank"]
    rows: dict[int, dict[str, Any]] = {}
    keyed: dict[int, pd.Series] = {}
    for trial, group in done.groupby("source_trial", sort=True):
        group = group.sort_values(pair, kind="stable")
        row: dict[str, Any] = {p: _to_python(group[p].iloc[0]) for p in params}
        row["n"] = len(group)
        row["values"] = [float(v) for v in group["value"]]
        row["seeds"] = [_to_python(s) for s in group["seed"]]
        for q in CONFIRM_QUANTITIES:
            if q not in group.columns:
                row.update({f"{q}_{s}": math.nan for s in ("mean", "std", "ci_low", "ci_high")})
                continue
            values = pd.to_numeric(group[q], errors="coerce").to_numpy(float)
            mean, std, low, high = _mean_ci(values[np.isfinite(values)], level)
            row.update({f"{q}_mean": mean, f"{q}_std": std, f"{q}_ci_low": low, f"{q}_ci_high": high})
        rows[int(trial)] = row  # type: ignore[arg-type]
        keyed[int(trial)] = pd.Series(group["value"].astype(float).to_numpy(),  # type: ignore[arg-type]
                                      index=pd.MultiIndex.from_frame(group[pair].astype(object)))
    table = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    table.index.name = "trial"
    best: int | None = None
    ranked_on = ""
    if rows:
        means = table["value_mean"].astype(float)
        best, ranked_on = _pick_best(means, keyed, maximize)
        order = [t for t in means.sort_values(ascending=not maximize, kind="stable").index if t != best]
        table = table.loc[[best, *order]]
        for trial in table.index:
            joined = pd.concat([keyed[trial], keyed[best]], axis=1, join="inner")
            table.at[trial, "n_paired"] = len(joined)
            if trial == best:
                table.at[trial, "diff_vs_best"], table.at[trial, "p_value"] = 0.0, math.nan
            else:
                table.at[trial, "diff_vs_best"] = float((joined.iloc[:, 0] - joined.iloc[:, 1]).mean())
                table.at[trial, "p_value"] = paired_p_value(joined.iloc[:, 0], joined.iloc[:, 1])
        # Significant only where the paired difference favours the best: a significant difference
        # the other way (possible when failed runs left unequal seed sets) is no "better than".
        diff = table["diff_vs_best"].astype(float)
        favours_best = diff < 0 if maximize else diff > 0
        low_p = table["p_value"].astype(float) < alpha
        table["significant"] = low_p & favours_best
        table["beats_best"] = low_p & ~favours_best & (table.index != best)
        table["best"] = table.index == best
        table["rank"] = np.arange(1, len(table) + 1)
    table = table.astype({"n": "int64", "significant": bool, "best": bool, "beats_best": bool}) if rows else table
    if rows:
        table["n_paired"] = table["n_paired"].astype("int64")
        table["rank"] = table["rank"].astype("int64")
        for name in ("diff_vs_best", "p_value"):
            table[name] = table[name].astype(float)
    others = table[~table["best"]] if rows else table
    table.attrs.update({
        "direction": direction, "metric": runs.attrs.get("metric", "value"), "alpha": alpha, "level": level,
        "best_trial": best, "n_seeds": int(table["n"].max()) if rows else 0,
        "distinguishable": bool(others["significant"].any()) if rows else False, "params": params,
        "ranked_on": ranked_on,
    })
    table.attrs["summary"] = _confirmation_sentence(table)
    return table


def _percent(alpha: float) -> str:
    return f"{alpha * 100:g}%"


def _pick_best(means: pd.Series, keyed: dict[int, pd.Series], maximize: bool) -> tuple[int, str]:
    """The best configuration of a confirmation, and what it was ranked on.

    With every run complete, every configuration has the same seeds and this is the best mean.
    When runs failed, means over different seeds are not comparable (one configuration may have
    lost its hardest seeds), so: only the configurations with the most completed seeds compete (a
    configuration that fails on some seeds is the less reliable one), and they are ranked by their
    mean over the seeds they all completed; with no seed in common, by their own means.
    """
    most = max(len(values) for values in keyed.values())
    candidates = [t for t in means.index if len(keyed[t]) == most]
    seed_sets = [set(keyed[t].index) for t in candidates]
    shared = set.intersection(*seed_sets)
    if all(s == seed_sets[0] for s in seed_sets) and len(candidates) == len(means):
        score, ranked_on = means, "the mean over all seeds"
    elif shared:
        keys = sorted(shared, key=str)
        score = pd.Series({t: float(keyed[t].loc[keys].mean()) for t in candidates})
        ranked_on = (f"the mean over the {len(keys)} seed(s) that the {len(candidates)} configuration(s) with the "
                     f"most completed runs ({most}) all completed")
    else:
        score = means.loc[candidates]
        ranked_on = (f"unpaired means: the configurations with the most completed runs ({most}) share no seed")
    score = score.loc[[t for t in means.index if t in score.index]]  # ties: the table's order (earlier trial)
    return int(score.idxmax() if maximize else score.idxmin()), ranked_on


def _confirmation_sentence(table: pd.DataFrame) -> str:
    """The verdict of :func:`confirmation_stats` in one or two plain sentences."""
    attrs = table.attrs
    metric, alpha, k = attrs.get("metric", "value"), attrs.get("alpha", 0.05), attrs.get("n_seeds", 0)
    if table.empty:
        return "No confirmation run has completed yet."
    best = attrs["best_trial"]
    row = table.loc[best]
    level = f"{attrs.get('level', 0.95):.0%}"
    where = (f"trial #{best} has the best mean {metric}, {row['value_mean']:.4g}"
             + (f" ({level} CI {row['value_ci_low']:.4g} to {row['value_ci_high']:.4g})"
                if pd.notna(row["value_ci_low"]) else ""))
    seeds = f"{k} seed{'s' if k != 1 else ''}"
    if len(table) == 1:
        return f"Only one configuration was confirmed ({seeds}): {where}; there is nothing to compare it with."
    others = table[~table["best"]]
    better = [int(t) for t in others.index[others["significant"]]]
    beats = [int(t) for t in others.index[others["beats_best"]]] if "beats_best" in others else []
    same = [int(t) for t in others.index[~others["significant"] & ~others.index.isin(beats)]]
    caveat = ""
    if attrs.get("ranked_on") and attrs["ranked_on"] != "the mean over all seeds":
        caveat = f" Some runs failed, so the best was chosen by {attrs['ranked_on']}."
    if beats:
        caveat += (f" On the seeds both completed, {', '.join(f'#{t}' for t in beats)} did significantly better than "
                   f"#{best} (paired t-test): the ranking rests on unequal seed sets; re-run the failed seeds.")
    if beats and not better:
        return f"{where[0].upper()}{where[1:]} over {seeds}.{caveat}"
    if not better:
        p = others["p_value"].astype(float)
        smallest = f", smallest p = {p.min():.2g}" if p.notna().any() else ""
        return (f"The top configurations are not distinguishable at the {_percent(alpha)} level with {seeds}: "
                f"{where}, but no other configuration differs from it significantly (paired t-test over seeds"
                f"{smallest}). Any of them will do; more seeds may separate them." + caveat)
    text = (f"{where[0].upper()}{where[1:]} over {seeds} and is better than {', '.join(f'#{t}' for t in better)} "
            f"at the {_percent(alpha)} level (paired t-test over seeds).")
    if same:
        text += f" It is not distinguishable from {', '.join(f'#{t}' for t in same)} at that level with {seeds}."
    return text + caveat


def confirmation_table(storage: StudyRef, study_name: str, *, missing_ok: bool = False) -> pd.DataFrame | None:
    """The confirmation of a study, from its linked ``<name>-confirm`` study: :func:`confirmation_stats`
    over the runs of the current plan (the top-k configurations x seeds the last
    ``python -m llm_doe.confirm`` asked for), with ``search_value`` (the configuration's single
    search trial, for the winner's curse: it usually looks better there than over seeds) and
    ``failed`` (planned seeds whose run failed).

    Args:
        storage: As for :func:`load_trials`.
        study_name: The searched study (``lr_sweep``) or its confirmation (``lr_sweep-confirm``).
        missing_ok: Return None when there is no confirmation study (reports and notebooks show
            the section only when there is one).

    Raises:
        ValueError: No confirmation study (unless ``missing_ok``).
    """
    name = confirmation_name(study_name)
    if name not in study_names(storage):
        if missing_ok:
            return None
        parent = name[: -len(CONFIRM_SUFFIX)]
        raise ValueError(f"no confirmation study {name!r}: run python -m llm_doe.confirm +study=... "
                         f"(with the search's overrides) on study {parent!r} first")
    runs = load_confirmation(storage, name)
    attrs = runs.attrs.get("study_user_attrs", {})
    keys = [tuple(None if pd.isna(x) else int(x) for x in k)
            for k in zip(runs["source_trial"], runs["seed"], runs["data_seed"])]
    planned = [tuple(p) for p in attrs.get("pairs") or []] or list(dict.fromkeys(k for k in keys if None not in k[:2]))
    complete = {k for k, state in zip(keys, runs["state"]) if state == "COMPLETE"}
    tried = {k for k, state in zip(keys, runs["state"]) if state == "FAIL"}
    failed: dict[int, int] = {}
    for pair in planned:
        if pair not in complete and pair in tried:
            failed[pair[0]] = failed.get(pair[0], 0) + 1
    kept = runs[pd.Series([k in set(planned) for k in keys], index=runs.index, dtype=bool)]
    kept.attrs.update(runs.attrs)
    table = confirmation_stats(kept, direction=runs.attrs.get("direction"), alpha=float(attrs.get("alpha", 0.05)))
    # A configuration with no successful run is a finding too (it diverges, say): keep its row.
    missing = [t for t in dict.fromkeys(p[0] for p in planned) if t not in table.index]
    if missing:
        params = _confirm_params(table) or [c for c in _param_columns(runs) if c not in SEED_PARAMS]
        extra = pd.DataFrame(index=pd.Index(missing, name="trial"), columns=table.columns)
        for trial in missing:
            first = kept[kept["source_trial"] == trial].head(1)
            for c in params:
                extra.at[trial, c] = _to_python(first[c].iloc[0]) if len(first) and c in first else math.nan
            extra.at[trial, "n"], extra.at[trial, "values"], extra.at[trial, "seeds"] = 0, [], []
            extra.at[trial, "significant"], extra.at[trial, "best"] = False, False
            extra.at[trial, "beats_best"] = False
        saved = dict(table.attrs)
        table = pd.concat([table, extra]) if len(table) else extra
        table.attrs.update(saved)
        table["n"] = table["n"].astype("int64")
        table["significant"] = table["significant"].astype(bool)
        table["best"] = table["best"].astype(bool)
        table["beats_best"] = table["beats_best"].astype(bool)
        table["rank"] = pd.to_numeric(table["rank"], errors="coerce").astype("Int64")
        for c in table.columns:
            if c.endswith(("_mean", "_std", "_ci_low", "_ci_high")) or c in ("diff_vs_best", "p_value"):
                table[c] = pd.to_numeric(table[c], errors="coerce").astype(float)
    search_values = attrs.get("source_values") or {}
    after_n = table.columns.get_loc("n") + 1
    table.insert(after_n, "failed", [failed.get(int(t), 0) for t in table.index])
    table.insert(after_n + 1, "search_value", [float(search_values.get(str(t), math.nan)) for t in table.index])
    if failed:
        table.attrs["summary"] += (f" {sum(failed.values())} of {len(planned)} planned runs failed ("
                                   + ", ".join(f"#{t}: {k} of {sum(p[0] == t for p in planned)}"
                                               for t, k in failed.items())
                                   + f"); see fail_reason on the trials of {name}.")
    table.attrs.update({"study_name": name, "parent_study": attrs.get("parent_study", name[: -len(CONFIRM_SUFFIX)]),
                        "planned_seeds": list(attrs.get("seeds") or []), "top_k": attrs.get("top_k"),
                        "planned_runs": len(planned), "failed_runs": sum(failed.values()),
                        "storage": runs.attrs.get("storage")})
    return table


def confirmation_display(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`confirmation_table` as text to read: one row per configuration, best first, with the
    objective's mean, standard deviation and confidence interval, the paired test against the best,
    and each metric's mean and interval."""
    metric = table.attrs.get("metric", "value")
    level = f"{table.attrs.get('level', 0.95):.0%}"
    params = _confirm_params(table)

    def num(value: Any, digits: int = 4) -> str:
        return "-" if value is None or pd.isna(value) else f"{value:.{digits}g}"

    def interval(row: pd.Series, q: str) -> str:
        if pd.isna(row[f"{q}_ci_low"]):
            return "-"
        return f"[{num(row[f'{q}_ci_low'])}, {num(row[f'{q}_ci_high'])}]"

    rows = []
    for trial, row in table.iterrows():
        out: dict[str, Any] = {"trial": f"#{trial}" + (" (best)" if row["best"] else "")}
        out.update({p: _fmt(row[p]) for p in params})
        out["seeds"] = int(row["n"])
        if "failed" in table.columns and row["failed"]:
            out["failed"] = int(row["failed"])
        if "search_value" in table.columns:
            out["search"] = num(row["search_value"])
        out[f"{metric} mean"] = num(row["value_mean"])
        out["std"] = num(row["value_std"], 2)
        out[f"{level} CI"] = interval(row, "value")
        out["diff vs best"] = "-" if row["best"] else num(row["diff_vs_best"], 2)
        out["p vs best"] = "-" if row["best"] else num(row["p_value"], 2)
        for m in METRICS:
            if m != metric and f"{m}_mean" in table.columns and pd.notna(row[f"{m}_mean"]):
                out[m] = f"{num(row[f'{m}_mean'])} {interval(row, m)}"
        rows.append(out)
    return pd.DataFrame(rows).set_index("trial") if rows else pd.DataFrame()


def _confirm_params(table: pd.DataFrame) -> list[str]:
    """The configuration's parameters among a confirmation table's columns."""
    return [c for c in table.attrs.get("params", []) if c in table.columns]


def format_confirmation(table: pd.DataFrame | None, study_name: str | None = None) -> str:
    """The confirmation as printed by ``python -m llm_doe.confirm``: a heading, the table, the verdict."""
    if table is None:
        name = study_name or "NAME"
        return (f"No confirmation study yet: python -m llm_doe.confirm +study={name} confirm.top_k=3 "
                "confirm.seeds=5 (with the search's overrides) re-runs its best configurations with several seeds.")
    attrs = table.attrs
    head = (f"Confirmation of study {attrs.get('parent_study', '?')!r} ({attrs.get('study_name', '?')}): "
            f"{len(table)} configuration(s) x {attrs.get('n_seeds', 0)} seed(s); {attrs.get('metric', 'value')} "
            f"({attrs.get('direction')}), mean over seeds with a t-interval, paired t-test against the best.")
    shown = confirmation_display(table)
    body = shown.to_string() if not shown.empty else "(no completed run)"
    return f"{head}\n{body}\n{attrs.get('summary', '')}"


def plot_confirmation(table: pd.DataFrame, *, ax: Axes | None = None) -> Figure:
    """Each confirmed configuration's objective per seed (dots), its mean with the confidence
    interval (bar), and its single search trial (hollow diamond): the distance between diamond and
    bar is the luck the search picked it with."""
    fig, ax = _axes(ax, (1.8 + 1.3 * max(1, len(table)), 4.2))
    metric = table.attrs.get("metric", "value")
    params = _confirm_params(table)
    labels = []
    for x, (trial, row) in enumerate(table.iterrows()):
        colour = "tab:red" if row["best"] else "tab:blue"
        values = list(row["values"])
        jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(len(values))
        ax.scatter(x + jitter, values, s=14, color=colour, alpha=0.5, zorder=2)
        if pd.notna(row["value_ci_low"]):
            ax.errorbar([x], [row["value_mean"]], yerr=[[row["value_mean"] - row["value_ci_low"]],
                                                        [row["value_ci_high"] - row["value_mean"]]],
                        fmt="o", color=colour, capsize=6, lw=2, zorder=3)
        else:
            ax.scatter([x], [row["value_mean"]], color=colour, zorder=3)
        if "search_value" in table.columns and pd.notna(row["search_value"]):
            ax.scatter([x + 0.25], [row["search_value"]], marker="D", facecolors="none", edgecolors="black",
                       zorder=3, label="search trial" if x == 0 else None)
        p = "" if row["best"] or pd.isna(row["p_value"]) else f"\np={row['p_value']:.2g}"
        labels.append(f"#{trial}" + "".join(f"\n{c.rsplit('.', 1)[-1]}={_fmt(row[c])}" for c in params) + p)
    ax.set_xticks(range(len(table)), labels, fontsize="small")
    ax.set_xlim(-0.6, len(table) - 0.4)
    ax.set_ylabel(str(metric))
    level = f"{table.attrs.get('level', 0.95):.0%}"
    ax.set_title(f"{table.attrs.get('parent_study', '')}: {metric} over {table.attrs.get('n_seeds', 0)} seeds "
                 f"(mean, {level} CI)".lstrip(": "))
    if "search_value" in table.columns and table["search_value"].notna().any():
        ax.legend(fontsize="small", loc="best")
    return fig


# --------------------------------------------------------------------------------------------
# Scientific studies (roles: one sub-study per scientific value)
# --------------------------------------------------------------------------------------------


def scientific_substudies(storage: StudyRef, study_name: str) -> list[str]:
    """The sub-studies of a study with scientific parameters (``<name>[path=value,...]``), in
    the order the design enumerated them; empty for an ordinary study."""
    prefix = f"{study_name}["
    subs = [n for n in study_names(storage) if n.startswith(prefix) and n.endswith("]")]
    if not subs:
        return []
    first = load_trials(storage, subs[0]).attrs["study_user_attrs"].get("design", {})
    order = {name: i for i, name in enumerate(first.get("arms", []))}
    return sorted(subs, key=lambda n: (order.get(n, len(order)), n))


def scientific_isolation(storage: StudyRef, study_name: str) -> pd.DataFrame:
    """The playbook's isolation for a scientific study: for each scientific value, the best
    trial of its sub-study, in which the nuisance parameters were tuned anew with the same
    budget. Comparing these best trials (not all trials) is the fair comparison.

    Returns:
        One row per scientific value (or combination): the scientific parameters, ``sub_study``,
        ``trials`` (finished: COMPLETE or PRUNED), ``complete``, ``best_value``,
        ``best_trial``, and the best trial's nuisance parameters. ``attrs['caveats']`` lists
        the fixed parameters; ``attrs['metric']``/``attrs['direction']`` the objective.

    Raises:
        ValueError: The study has no scientific sub-studies.
    """
    subs = scientific_substudies(storage, study_name)
    if not subs:
        raise ValueError(f"{study_name!r} has no scientific sub-studies ({study_name}[param=value])")
    rows, attrs = [], {}
    for name in subs:
        table = load_trials(storage, name)
        attrs = table.attrs
        design = attrs["study_user_attrs"].get("design", {})
        finished = table[table["state"].isin(["COMPLETE", "PRUNED"])]
        row = {**design.get("scientific", {}), "sub_study": name, "trials": len(finished),
               "complete": int((table["state"] == "COMPLETE").sum()), "best_value": np.nan, "best_trial": None}
        if not _complete(table).empty:
            best = best_trial(table)
            row.update(best_value=best["value"], best_trial=int(best["number"]),
                       **{p: best[p] for p in attrs["space"] if p in best.index})
        rows.append(row)
    frame = pd.DataFrame(rows)
    design = attrs.get("study_user_attrs", {}).get("design", {})
    frame.attrs.update({"study_name": study_name, "metric": attrs.get("metric", "value"),
                        "scientific": list(design.get("scientific", {})),
                        "direction": attrs.get("direction"),
                        "caveats": design.get("caveats", [])})
    return frame


def plot_scientific_isolation(storage: StudyRef, study_name: str, *, ax: Axes | None = None) -> Figure:
    """The learning curve of each scientific value's best trial, labelled by the value."""
    table = scientific_isolation(storage, study_name)
    fig, ax = _axes(ax, (7.0, 4.2))
    for _, row in table.iterrows():
        if pd.isna(row["best_value"]):
            continue
        curves = load_curves(storage, row["sub_study"], params=False)
        curve = curves[curves["trial"] == row["best_trial"]].sort_values("step")
        label = ", ".join(f"{k}={_fmt(row[k])}" for k in table.attrs["scientific"])
        ax.plot(curve["step"], curve["value"], marker="o", ms=3, label=f"{label} (#{int(row['best_trial'])})")
    ax.set_xlabel("evaluation")
    ax.set_ylabel(table.attrs.get("metric", "value"))
    ax.set_title(f"{study_name}: best trial per scientific value")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
