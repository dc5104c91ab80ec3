"""Every private Optuna accessor of llm_doe.optuna_compat, exercised against real stores.

An Optuna upgrade that renames or moves one of them fails here, by name, instead of somewhere
in a study run (or, worse, silently in a fallback path).
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from llm_doe import optuna_compat as compat
from llm_doe.schema import StorageConfig
from llm_doe.storage import make_storage


def _study(tmp_path: Path, kind: str) -> optuna.Study:
    if kind == "journal":
        storage = make_storage(StorageConfig(kind="journal", journal_path=str(tmp_path / "s.journal")))
    else:
        storage = make_storage(StorageConfig(url=f"sqlite:///{tmp_path}/s.db", heartbeat_interval=None))
    return optuna.create_study(storage=storage, study_name="compat")


@pytest.fixture(params=["sqlite", "journal"])
def study(request: pytest.FixtureRequest, tmp_path: Path) -> optuna.Study:
    return _study(tmp_path, request.param)


def test_study_storage_is_the_store_the_study_writes(study):
    storage = compat.study_storage(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    trial = study.ask()
    assert storage.get_trial(compat.trial_id(trial)).number == trial.number


def test_rdb_backend_unwraps_optunas_cache(study):
    storage = compat.study_storage(study)
    backend = compat.rdb_backend(storage)
    if isinstance(storage, optuna.storages.JournalStorage):
        assert backend is None
    else:
        # create_study wraps the RDBStorage in its private cache: the unwrapping must still work.
        assert type(storage) is not optuna.storages.RDBStorage, "Optuna no longer wraps RDB storages"
        assert isinstance(backend, optuna.storages.RDBStorage)
        assert backend.engine.name == "sqlite"
        assert compat.rdb_backend(backend) is backend


def test_trial_id_matches_the_public_lookup(study):
    storage = compat.study_storage(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    for _ in range(3):
        trial = study.ask()
        expected = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        assert compat.trial_id(trial) == expected
        frozen = study.get_trials(deepcopy=False)[trial.number]
        assert compat.trial_id(frozen) == expected


def test_cached_frozen_trial_is_what_user_attrs_reads(study):
    trial = study.ask()
    cached = compat.cached_frozen_trial(trial)
    assert isinstance(cached, optuna.trial.FrozenTrial), "Optuna's Trial lost _cached_frozen_trial"
    assert cached.number == trial.number
    cached.user_attrs["seen"] = 1
    assert trial.user_attrs["seen"] == 1  # Trial.user_attrs reads the cache we update after a bulk write


def test_rdb_models_session_and_state_row(tmp_path):
    study = _study(tmp_path, "sqlite")
    trial = study.ask()
    backend = compat.rdb_backend(compat.study_storage(study))
    assert backend is not None
    models = compat.rdb_models()
    for name in ("TrialModel", "TrialUserAttributeModel"):
        assert hasattr(models, name), f"optuna.storages._rdb.models.{name} moved"
    model = models.TrialUserAttributeModel
    assert {"trial_id", "key", "value_json"} <= set(model.__table__.columns.keys())
    with compat.rdb_session(backend) as session:
        assert compat.trial_state_row(session, compat.trial_id(trial)) == optuna.trial.TrialState.RUNNING
        session.add(model(trial_id=compat.trial_id(trial), key="written", value_json="2"))
    # The session committed on exit: the public API sees the row.
    assert study.get_trials(deepcopy=False)[0].user_attrs["written"] == 2


def test_rdb_reader_names_are_storage_methods():
    for name in compat.rdb_reader_names():
        assert callable(getattr(optuna.storages.RDBStorage, name, None)), name
    assert {"_get_trials", "get_all_trials", "get_trial"} <= set(compat.rdb_reader_names())
