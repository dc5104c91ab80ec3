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


def test_system_attribute_readers_match_what_optuna_writes(study):
    """The keys Optuna keeps its bookkeeping under, read back from what it really wrote."""
    import warnings

    study.enqueue_trial({"x": 0.25})
    (waiting,) = study.get_trials(deepcopy=False)
    assert compat.enqueued_params(waiting) == {"x": 0.25} and waiting.params == {}
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.set_constraint("memory.max", 2.5)
    study.tell(trial, 1.0)
    done = study.get_trials(deepcopy=False)[0]
    entries = {k: v for key, value in done.system_attrs.items()
               for k, v in compat.constraint_entries(key, value).items()}
    assert entries == done.constraints == {"memory.max": 2.5}
    assert compat.constraint_entries(compat.CONSTRAINTS_KEY, [1.0, -2.0]) == {"0": 1.0, "1": -2.0}  # Optuna < 4
    retry = optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, params={}, distributions={},
                                      system_attrs={compat.FAILED_TRIAL_KEY: 0, compat.RETRY_HISTORY_KEY: [0]})
    study.add_trial(retry)
    retry = study.get_trials(deepcopy=False)[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        public = optuna.storages.RetryFailedTrialCallback
        assert compat.retried_trial_number(retry) == public.retried_trial_number(retry) == 0
        assert compat.retry_history(retry) == public.retry_history(retry) == [0]
        assert compat.retried_trial_number(done) is None and compat.retry_history(done) == []


def test_grid_search_space_is_what_the_grid_sampler_recorded(tmp_path):
    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"x": [1, 2]}, seed=0),
                                storage=f"sqlite:///{tmp_path}/g.db")
    trial = study.ask()
    frozen = study.get_trials(deepcopy=False)[trial.number]
    assert compat.grid_search_space(frozen) == {"x": [1, 2]}
    plain = optuna.create_study().ask()
    assert compat.grid_search_space(plain.study.get_trials(deepcopy=False)[0]) is None


def test_no_module_but_the_compat_one_reads_optunas_system_attributes():
    package = Path(compat.__file__).parent
    readers = [str(p.relative_to(package)) for p in sorted(package.rglob("*.py"))
               if p.name != "optuna_compat.py" and "system_attrs" in p.read_text(encoding="utf-8")]
    assert not readers, f"read Optuna's system attributes through llm_doe.optuna_compat: {readers}"
