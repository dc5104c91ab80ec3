"""Study rows -> tidy pandas tables: one row per trial, curves in long form, artifacts, ROC curves.

The loaders take a study reference (``storage, study_name``) and return DataFrames whose
``.attrs`` carry the study's name, direction(s), metric, search space and user attributes, so
the checks (:mod:`llm_doe.analysis.checks`) and plots (:mod:`llm_doe.analysis.plots`) need
nothing but the frame. Where the rows come from (SQL or Optuna's API) is
:mod:`llm_doe.analysis._source`'s business.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, IntDistribution, json_to_distribution

from llm_doe.analysis._common import param_columns
from llm_doe.analysis._source import Raw, StudyRef, artifact_rows, curve_rows, read_raw
from llm_doe.analysis.feasibility import PREFIX as CONSTRAINT_PREFIX
from llm_doe.analysis.pareto import pareto_mask
from llm_doe.finetune.tasks import PREDICTED_CLASSES  # plain data: no torch
from llm_doe.names import ALL_METRICS, study_metrics

_TEXT_ATTRS = ("stop_reason", "fail_reason", "train_precision")
#: "precision": what a trial computed in, before train_precision (read for older stores).
_BASE_ATTRS = (*ALL_METRICS, PREDICTED_CLASSES, "best_step", "duration_s", "pruned_at_step", "requeued", *_TEXT_ATTRS,
               "precision")
#: How a trial stopped by Ctrl-C/SIGTERM and re-queued was marked before it carried ``requeued``.
_REQUEUED_REASON = "interrupted "


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


def _space_json(raw: Raw) -> dict[str, str]:
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


def _attrs(raw: Raw) -> dict[str, Any]:
    direction = raw.directions[0] if len(raw.directions) == 1 else None
    return {"study_name": raw.study_name, "storage": raw.source, "directions": list(raw.directions),
            "direction": direction, "metric": raw.study_attrs.get("metric", "value"),
            "objectives": list(raw.study_attrs.get("objectives") or [raw.study_attrs.get("metric", "value")]),
            "space": _space_json(raw),
            "study_user_attrs": raw.study_attrs}


def _param_names(raw: Raw) -> list[str]:
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


def _trials_frame(raw: Raw, extra_attrs: Sequence[str]) -> pd.DataFrame:
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
    for name in study_metrics(raw.study_attrs):
        out[name] = pd.to_numeric(_column(keys, raw.attrs.get(name, {})), errors="coerce").astype(float)
    if len(raw.directions) > 1:  # each objective under its name too (a cost one is no task metric)
        for i, name in enumerate(raw.study_attrs.get("objectives") or []):
            out.setdefault(name, out[f"values_{i}"])
    if raw.attrs.get(PREDICTED_CLASSES):  # classifiers: 1 = a constant predictor (study_warnings)
        out[PREDICTED_CLASSES] = _steps(_column(keys, raw.attrs[PREDICTED_CLASSES]))
    out["best_step"] = _steps(_column(keys, raw.attrs.get("best_step", {})))
    start, complete = _datetimes(base["datetime_start"]), _datetimes(base["datetime_complete"])
    measured = _column(keys, raw.attrs.get("duration_s", {}))
    out["duration_s"] = pd.to_numeric(measured, errors="coerce").fillna((complete - start).dt.total_seconds())
    pruned_at = _column(keys, raw.attrs.get("pruned_at_step", {}))
    out["pruned_at_step"] = _steps(pd.to_numeric(pruned_at, errors="coerce").fillna(_column(keys, raw.last_step)))
    for name in _TEXT_ATTRS:
        out[name] = _column(keys, raw.attrs.get(name, {})).astype(object)
    # Trials written before train_precision recorded what they computed in as "precision" (text);
    # a number there is a task's metric (a token classifier's entity-level precision).
    older = {k: v for k, v in raw.attrs.get("precision", {}).items() if isinstance(v, str)}
    if older:
        out["train_precision"] = out["train_precision"].fillna(_column(keys, older))
    out["requeued"] = _requeued(out["number"], out["state"], _column(keys, raw.attrs.get("requeued", {})),
                                out["fail_reason"], raw.retried)
    if raw.constraints or raw.study_attrs.get("constraints"):
        out.update(_constraint_columns(keys, raw.constraints))
    for name in extra_attrs:
        if name not in out:
            out[name] = _column(keys, raw.attrs.get(name, {}))
    out["datetime_start"], out["datetime_complete"] = start, complete
    frame = pd.DataFrame(out)
    frame.attrs.update(_attrs(raw))
    if len(raw.directions) > 1:  # no single best: which trials no other one beats in every objective
        frame["pareto"] = pareto_mask(frame)
    return frame


def _constraint_columns(keys: pd.Series, constraints: Mapping[Any, Mapping[str, float]]) -> dict[str, pd.Series]:
    """A constrained study's ``feasible``, ``violated`` and ``constraint.<name>`` columns
    (see :mod:`llm_doe.analysis.feasibility`); NA for trials with no constraint values."""
    names = sorted({name for values in constraints.values() for name in values})
    feasible = [None if k not in constraints else all(v <= 0 for v in constraints[k].values()) for k in keys]
    violated = [None if k not in constraints else ", ".join(n for n, v in constraints[k].items() if v > 0) or None
                for k in keys]
    out = {"feasible": pd.Series(feasible, index=keys.index, dtype="boolean"),
           "violated": pd.Series(violated, index=keys.index, dtype=object)}
    for name in names:
        out[f"{CONSTRAINT_PREFIX}{name}"] = pd.Series([constraints.get(k, {}).get(name, np.nan) for k in keys],
                                                      index=keys.index, dtype=float)
    return out


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
    it is no failure), ``datetime_start``, ``datetime_complete``; a study with
    ``study.constraints`` also ``feasible``, ``violated`` (the violated constraints' names) and
    ``constraint.<name>`` (Optuna's constraint values, > 0 when violated). The study's name, direction(s),
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
        extra = [] if user_attrs is False else [str(k) for k in user_attrs]
        keys = [*_BASE_ATTRS, *extra]
    raw = read_raw(storage, study_name, keys)
    if user_attrs is True:
        extra = sorted(raw.attrs)
    return _trials_frame(raw, extra)


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
    curves, raw = curve_rows(storage, study_name)
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
    """The artifacts uploaded to each trial (``config.yaml``, ``metrics.jsonl``, ``roc.csv``, ``roc.png``).

    Returns:
        Columns ``trial`` (number), ``trial_id`` (Optuna's id, as in dashboard URLs),
        ``filename``, ``artifact_id``, ``mimetype``, ``encoding``: what
        ``optuna.artifacts.get_all_artifact_meta`` lists, for every trial at once.
    """
    rows = artifact_rows(storage, study_name)
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


def _trial_csvs(storage: StudyRef, study_name: str | None, trials: pd.DataFrame, filename: str,
                artifacts_dir: Any, numbers: Iterable[int] | None) -> Iterator[tuple[int, pd.DataFrame]]:
    """(trial number, frame) for each trial's CSV artifact called ``filename`` (its latest)."""
    def read(handle: Any) -> pd.DataFrame:
        return pd.read_csv(handle, keep_default_na=False) if filename != "roc.csv" else pd.read_csv(handle)

    yield from _trial_files(storage, study_name, trials, (filename,), artifacts_dir, numbers, lambda handle, _: read(handle))


def _trial_files(storage: StudyRef, study_name: str | None, trials: pd.DataFrame, filenames: Sequence[str],
                 artifacts_dir: Any, numbers: Iterable[int] | None,
                 read: Any) -> Iterator[tuple[int, pd.DataFrame]]:
    """(trial number, ``read(handle, filename)``) for each trial's artifact named by the first of
    ``filenames`` it has (its latest upload)."""
    metas = load_artifacts(storage, study_name)
    metas = metas[metas["filename"].isin(list(filenames))]
    rank = metas["filename"].map({name: i for i, name in enumerate(filenames)})
    metas = metas[rank == rank.groupby(metas["trial"]).transform("min")].drop_duplicates("trial", keep="last")
    if numbers is not None:
        metas = metas[metas["trial"].isin(list(numbers))]
    store = _artifact_store(artifacts_dir, trials.attrs, metas["artifact_id"].iloc[0] if len(metas) else None)
    for number, artifact_id, filename in zip(metas["trial"], metas["artifact_id"], metas["filename"]):
        try:
            with store.open_reader(artifact_id) as handle:
                frame = read(handle, filename)
        except _MISSING_ARTIFACT:
            raise FileNotFoundError(f"trial {number}'s {filename} (artifact {artifact_id}) is missing from the "
                                    "study's artifact store") from None
        yield int(number), frame


def load_metrics(storage: StudyRef, study_name: str | None = None, *,
                 artifacts_dir: str | os.PathLike[str] | Any | None = None,
                 numbers: Iterable[int] | None = None) -> pd.DataFrame:
    """Every trial's evaluations as its ``metrics.jsonl`` artifact records them, in long form:
    what Optuna's intermediate values leave out, above all the training loss.

    Args:
        storage: As for :func:`load_trials`.
        study_name: As for :func:`load_trials`.
        artifacts_dir: As for :func:`load_roc`.
        numbers: Only these trials (default: every trial that uploaded its evaluations).

    Returns:
        One row per evaluation: ``trial``, ``step`` (the evaluation index), ``optimizer_step``,
        ``epoch``, ``examples_seen``, ``train_loss`` (the mean training loss since the previous
        evaluation), ``learning_rate``, the task's metrics (``val_loss``, ...), then ``state``,
        ``value`` and one column per parameter; ``attrs`` as for :func:`load_trials`.
    """
    from llm_doe.artifacts import read_metrics

    def read(handle: Any, filename: str) -> pd.DataFrame:
        return pd.DataFrame(read_metrics(handle.read().decode("utf-8"), filename))

    trials = load_trials(storage, study_name)
    by_number = trials.set_index("number")
    parts = [rows.assign(trial=number) for number, rows in
             _trial_files(storage, study_name, trials, ("metrics.jsonl", "metrics.json"), artifacts_dir, numbers, read)
             if len(rows)]
    columns = ["trial", "step", "optimizer_step", "epoch", "examples_seen", "train_loss", "learning_rate"]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({c: [] for c in columns})
    out = out[[c for c in columns if c in out] + [c for c in out if c not in columns]]
    out = out.astype({"trial": "int64"}).sort_values(["trial", "step"], kind="stable").reset_index(drop=True)
    out["state"] = out["trial"].map(by_number["state"]).astype(str)
    out["value"] = out["trial"].map(by_number["value"]) if "value" in by_number else np.nan
    for name in param_columns(trials):
        out[name] = out["trial"].map(by_number[name])
    out.attrs.update(trials.attrs)
    return out


def load_generations(storage: StudyRef, study_name: str | None = None, *,
                     artifacts_dir: str | os.PathLike[str] | Any | None = None,
                     numbers: Iterable[int] | None = None) -> pd.DataFrame:
    """Each SFT trial's sample generations (its ``generations.csv`` artifact), in long form.

    Args:
        storage: As for :func:`load_trials`.
        study_name: As for :func:`load_trials`.
        artifacts_dir: As for :func:`load_roc`.
        numbers: Only these trials (default: every trial that has generations).

    Returns:
        Columns ``trial``, ``prompt``, ``reference``, ``generated``, ``state``, ``value``;
        ``attrs`` as for :func:`load_trials`. Every trial answers the same prompts, so
        ``frame.pivot(index="prompt", columns="trial", values="generated")`` sets them side by side.
    """
    trials = load_trials(storage, study_name)
    by_number = trials.set_index("number")
    parts = [rows.assign(trial=number)
             for number, rows in _trial_csvs(storage, study_name, trials, "generations.csv", artifacts_dir, numbers)]
    columns = ["trial", "prompt", "reference", "generated"]
    out = pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame({c: [] for c in columns})
    out = out.astype({"trial": "int64"})
    out["state"] = out["trial"].map(by_number["state"]).astype(str)
    out["value"] = out["trial"].map(by_number["value"]) if "value" in by_number else np.nan
    out.attrs.update(trials.attrs)
    return out


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
    trials = load_trials(storage, study_name)
    by_number = trials.set_index("number")
    params = list(trials.attrs["space"]) + [c for c in param_columns(trials) if c not in trials.attrs["space"]]
    parts = []
    for number, points in _trial_csvs(storage, study_name, trials, "roc.csv", artifacts_dir, numbers):
        points.insert(0, "trial", number)
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


def space_of(table: pd.DataFrame) -> dict[str, BaseDistribution]:
    """The searched space of a table from :func:`load_trials` (parameter -> Optuna distribution)."""
    space = table.attrs.get("space")
    if space is None:
        raise ValueError("this table carries no search space in .attrs: pass one from load_trials() or space=")
    return {name: json_to_distribution(text) for name, text in space.items()}
