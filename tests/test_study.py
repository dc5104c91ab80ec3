"""The Optuna write side: the pruner's warm-up as users configure it, on real Optuna studies."""

from __future__ import annotations

import optuna
import pytest

from llm_doe.schema import ConfigError, PrunerConfig
from llm_doe.study import make_pruner


def _first_pruned_eval(cfg: PrunerConfig, evals: int = 6) -> int | None:
    """The evaluation (1, 2, ...) at which a trial that is worse than every earlier trial at
    every evaluation is first pruned, with the pruner ``make_pruner`` builds; None: never."""
    study = optuna.create_study(pruner=make_pruner(cfg), storage=optuna.storages.InMemoryStorage())
    for offset in (0.0, 0.1, 0.2):  # good finished trials: the reference at every evaluation
        trial = study.ask()
        for step in range(1, evals + 1):
            trial.report(1.0 + offset - 0.01 * step, step)
        study.tell(trial, 1.0 + offset)
    trial = study.ask()
    for step in range(1, evals + 1):
        trial.report(100.0 + step, step)  # far worse, and getting worse
        if trial.should_prune():
            return step
    return None


@pytest.mark.parametrize("name", ["median", "percentile"])
@pytest.mark.parametrize("warmup", [0, 1, 2])
def test_n_warmup_steps_protects_exactly_the_first_n_evaluations(name, warmup):
    cfg = PrunerConfig(name=name, n_startup_trials=1, n_warmup_steps=warmup, interval_steps=1, percentile=50.0)
    assert _first_pruned_eval(cfg) == warmup + 1


@pytest.mark.parametrize("warmup", [1, 2])
def test_interval_steps_counts_from_the_first_evaluation_after_the_warm_up(warmup):
    cfg = PrunerConfig(name="median", n_startup_trials=1, n_warmup_steps=warmup, interval_steps=2)
    study = optuna.create_study(pruner=make_pruner(cfg), storage=optuna.storages.InMemoryStorage())
    reference = study.ask()
    for step in range(1, 8):
        reference.report(1.0, step)
    study.tell(reference, 1.0)
    looked_at = []
    for step in range(1, 8):  # a fresh bad trial per step, reporting every evaluation up to it
        trial = study.ask()
        for s in range(1, step + 1):
            trial.report(100.0, s)
        if trial.should_prune():
            looked_at.append(step)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert looked_at == [s for s in (warmup + 1, warmup + 3, warmup + 5) if s <= 7]


@pytest.mark.parametrize("startup", [2, 3])
def test_wilcoxon_n_startup_steps_protects_exactly_the_first_n_evaluations(startup):
    cfg = PrunerConfig(name="wilcoxon", n_startup_steps=startup, p_threshold=0.99)
    assert _first_pruned_eval(cfg) == startup + 1


def test_a_negative_warm_up_is_a_config_error():
    with pytest.raises(ConfigError, match="pruner.n_warmup_steps"):
        make_pruner(PrunerConfig(name="median", n_warmup_steps=-1))


def test_a_study_recorded_before_task_and_peft_existed_compares_them_to_their_defaults():
    """Its config has no task or peft section: it ran classification with full fine-tuning, so a
    resume with peft=lora is another experiment, while the defaults resume it."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from llm_doe.cli import compose_config
    from llm_doe.experiment import experiment_diffs

    old = compose_config(["+study=smoke"])
    recorded = OmegaConf.to_container(old.dict_config, resolve=True)
    del recorded["task"], recorded["peft"]
    stored = SimpleNamespace(study_name="smoke", user_attrs={"config": recorded, "metric": "val_loss"},
                             directions=[optuna.study.StudyDirection.MINIMIZE])
    assert experiment_diffs(old.dict_config, old.config, stored) == []
    lora = compose_config(["+study=smoke", "peft=lora"])
    keys = [k for k, _, _ in experiment_diffs(lora.dict_config, lora.config, stored)]
    assert "peft.method" in keys
