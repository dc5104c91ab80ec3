"""Every use of Optuna's private API, in one place.

Optuna's public API lacks a few things this project needs: the storage behind a study, a
trial's row id, a bulk attribute write. Each accessor below reaches into Optuna's internals
for one of them and names, next to it, the public API it stands in for (or that there is
none); so do the readers of the system attributes Optuna keeps its own bookkeeping under
(retries, enqueued parameters, grid points, constraints). Nothing else in the package touches an
Optuna name that starts with ``_`` or reads a system attribute, so an Optuna
upgrade that moves one breaks here, and ``tests/test_optuna_compat.py`` says which.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from types import ModuleType
from typing import TYPE_CHECKING, Any

import optuna

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def study_storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study reads and writes (``study._storage``).

    No public accessor: ``optuna.Study`` keeps the storage it was created or loaded with
    private. ``optuna.Trial.storage`` is public for a running trial; a study has none.
    """
    return study._storage


def rdb_backend(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage | None:
    """The RDBStorage behind ``storage``, or None for other storages (journal, in-memory).

    ``optuna.create_study``/``load_study`` wrap an RDBStorage in the private
    ``optuna.storages._CachedStorage``, whose ``_backend`` is the RDBStorage (and its public
    ``engine``). No public API unwraps it.
    """
    if isinstance(storage, optuna.storages.RDBStorage):
        return storage
    backend = getattr(storage, "_backend", None)  # optuna wraps RDB storages in a cache
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The storage's id of a trial (``trial._trial_id``; the trials table's primary key).

    Public stand-in, one storage read per call:
    ``storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)``.
    """
    return trial._trial_id


def cached_frozen_trial(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """The FrozenTrial a running ``optuna.Trial`` keeps of itself (``trial._cached_frozen_trial``).

    ``Trial.set_user_attr`` updates it after its own write, so ``trial.user_attrs`` sees the
    value; a write that bypasses the setter must do the same. No public API: ``Trial.user_attrs``
    reads it. None if an Optuna version has no such cache.
    """
    return getattr(trial, "_cached_frozen_trial", None)


def rdb_models() -> ModuleType:
    """Optuna's SQLAlchemy models of an RDB store (``optuna.storages._rdb.models``:
    ``TrialModel``, ``TrialUserAttributeModel``, ...).

    No public API: the schema is Optuna's own. Used for one multi-row upsert of trial user
    attributes, which Optuna lacks (optuna/optuna#5665, a bulk ``set_user_attrs``, was closed
    unmerged). Raises ImportError where the module moved: callers fall back to the public setter.
    """
    from optuna.storages._rdb import models

    return models


def rdb_session(storage: optuna.storages.RDBStorage) -> AbstractContextManager[Session]:
    """A session of ``storage`` that commits on exit and rolls back on error, as RDBStorage's own
    writes use (``optuna.storages._rdb.storage._create_scoped_session``, integrity errors ignored).

    No public API: RDBStorage exposes ``engine`` and ``scoped_session`` but not its transaction
    helper. Raises ImportError where it moved.
    """
    from optuna.storages._rdb.storage import _create_scoped_session

    return _create_scoped_session(storage.scoped_session, True)


def trial_state_row(session: Session, trial_id: int) -> optuna.trial.TrialState:
    """A trial's state read in ``session`` (``TrialModel.find_or_raise_by_id(...).state``), so
    the check that it still runs and the write share one transaction.

    Public stand-in outside a transaction: ``storage.get_trial(trial_id).state``.
    """
    return rdb_models().TrialModel.find_or_raise_by_id(trial_id, session).state


# Optuna's system attributes: the keys it writes its own bookkeeping under. -----------------

#: Where ``RetryFailedTrialCallback`` (and ``RetryHeartbeatStaleTrialCallback``) records the trial a
#: re-queued trial retries, and the chain of them.
FAILED_TRIAL_KEY = "failed_trial"
RETRY_HISTORY_KEY = "retry_history"
#: Where ``Study.enqueue_trial`` keeps the parameters a waiting trial was enqueued with.
FIXED_PARAMS_KEY = "fixed_params"
#: Where ``trial.set_constraint`` stores each constraint (``constraints:<name>``; Optuna < 4 stored
#: one list under ``constraints``): ``optuna.study._constrained_optimization._CONSTRAINTS_KEY``.
CONSTRAINTS_KEY = "constraints"


def retried_trial_number(trial: optuna.trial.FrozenTrial) -> int | None:
    """The first trial of the retry chain ``trial`` belongs to, or None if it retries none.

    Public (experimental, it warns on each call):
    ``optuna.storages.RetryFailedTrialCallback.retried_trial_number(trial)``.
    """
    origin = trial.system_attrs.get(FAILED_TRIAL_KEY)
    return None if origin is None else int(origin)


def retry_history(trial: optuna.trial.FrozenTrial) -> list[int]:
    """The trials ``trial`` retries, oldest first (empty if none).

    Public (experimental): ``optuna.storages.RetryFailedTrialCallback.retry_history(trial)``.
    """
    return list(trial.system_attrs.get(RETRY_HISTORY_KEY) or ())


def enqueued_params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The parameters a trial was enqueued with (``Study.enqueue_trial``), before it suggests
    them: a waiting trial has no ``params`` yet. No public API."""
    return dict(trial.system_attrs.get(FIXED_PARAMS_KEY) or {})


def grid_search_space(trial: optuna.trial.FrozenTrial) -> dict[str, Any] | None:
    """The search space of the grid a ``GridSampler`` assigned ``trial`` a point of (it records
    ``grid_id`` and ``search_space`` before the parameters are suggested), or None when no grid
    point was assigned yet. No public API."""
    if "grid_id" not in trial.system_attrs:
        return None
    return trial.system_attrs.get("search_space")


def constraint_entries(key: str, value: Any) -> dict[str, float]:
    """One system attribute's constraint values by name, as ``FrozenTrial.constraints`` names
    them (``constraints:<name>``; the old list under ``constraints`` by position); none for any
    other key. Public for a trial object: ``FrozenTrial.constraints``; a store read in bulk has
    only the rows."""
    if key == CONSTRAINTS_KEY:
        return {str(i): v for i, v in enumerate(value or ())}
    if key.startswith(f"{CONSTRAINTS_KEY}:"):
        return {key[len(CONSTRAINTS_KEY) + 1:]: value}
    return {}
