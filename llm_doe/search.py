"""``python -m llm_doe.search +study=NAME [overrides...]``: compose, validate, run.

A thin entry point. Hydra composes ``conf/`` with the command-line overrides (Hydra's own
override grammar); the result becomes the typed :class:`~llm_doe.schema.Config` once, here.
Every check runs before anything is written: on bad input the command prints one line,
``llm_doe: error: <key or file>: <what is wrong>``, and exits with status 2.

``study.n_trials`` is the study's total: the same command again resumes a crashed or
interrupted study up to that total, and a finished study runs nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from llm_doe.schema import Config, ConfigError, register_configs, resolved_direction, validate

CONF_DIR = Path(os.environ.get("LLM_DOE_CONF_DIR", Path(__file__).resolve().parent.parent / "conf"))
USAGE = """usage: python -m llm_doe.search +study=NAME [key=value ...] [--cfg]

Runs (or resumes, to study.n_trials) the Optuna study NAME from conf/study/NAME.yaml.
  --cfg       print the composed config and exit
  -h, --help  this help
Examples:
  python -m llm_doe.search +study=smoke
  python -m llm_doe.search +study=lr_sweep study.n_trials=12 pruner=hyperband
"""

log = logging.getLogger("llm_doe")


@dataclass
class Composed:
    """The composed config, before and after typing, and where this run logs."""

    dict_config: DictConfig
    config: Config
    run_dir: Path
    overrides: list[str]


def _hydra_error(err: Exception) -> ConfigError:
    """Hydra's multi-line errors, as one line that names the key or group."""
    if isinstance(err, MissingConfigException) and err.options is not None and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        return ConfigError(group or "config", f"unknown choice {name!r}; available: {', '.join(sorted(err.options))}")
    cause: BaseException = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return ConfigError(str(cause.full_key), str(cause).splitlines()[0])
    return ConfigError("overrides", " ".join(str(err).split()))


def compose_config(overrides: list[str]) -> Composed:
    """Compose conf/ + overrides into the typed config. Raises ConfigError on bad input."""
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="llm_doe"):
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise _hydra_error(err) from None
    choices = cfg.hydra.runtime.choices
    if cfg.study.name is None:
        cfg.study.name = choices.get("study") or None
    if cfg.study.name is None:
        raise ConfigError("study", "no study selected: add +study=NAME (one of "
                          f"{', '.join(sorted(p.stem for p in (CONF_DIR / 'study').glob('*.yaml')))})")
    run_dir = Path(str(cfg.hydra.run.dir))
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        typed: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or "config"
        reason = "is required (no value given)" if "Missing mandatory value" in str(err) else str(err).splitlines()[0]
        raise ConfigError(key, reason) from None
    validate(typed)
    return Composed(cfg, typed, run_dir, overrides)


def _setup_logging(run_dir: Path | None) -> None:
    """Trial lines to stdout (through tqdm, so bars stay intact) and everything to run_dir."""
    from tqdm.auto import tqdm

    class TqdmHandler(logging.StreamHandler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                tqdm.write(self.format(record), file=sys.stdout)
            except Exception:  # pragma: no cover - logging must never kill a study
                self.handleError(record)

    log.handlers.clear()
    log.setLevel(logging.DEBUG)
    log.propagate = False
    console = TqdmHandler()
    console.setLevel(logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)
    if run_dir is not None:
        file_handler = logging.FileHandler(run_dir / "search.log", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(file_handler)
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class ProgressCallback:
    """A study progress bar and one line per finished trial."""

    def __init__(self, study: optuna.Study, total: int, metric: str, enabled: bool) -> None:
        from tqdm.auto import tqdm

        from llm_doe.study import count_finished

        self.total, self.metric = total, metric
        self.bar = tqdm(total=total, initial=count_finished(study), desc=f"study {study.study_name}",
                        unit="trial", disable=None if enabled else True, dynamic_ncols=True)
        self.failures = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        from llm_doe.study import count_finished

        state = trial.state.name
        if trial.state == optuna.trial.TrialState.FAIL:
            self.failures += 1
            value = f"reason={trial.user_attrs.get('fail_reason', '?')}"
        elif trial.state == optuna.trial.TrialState.PRUNED:
            value = f"pruned at eval {trial.last_step} ({self.metric}={_fmt(trial.intermediate_values.get(trial.last_step))})"
        else:
            value = f"{self.metric}={_fmt(trial.value)}"
        try:
            best = f"best {_fmt(study.best_value)} (#{study.best_trial.number})"
        except ValueError:
            best = "best -"
        params = " ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
        duration = trial.duration.total_seconds() if trial.duration else float("nan")
        done = count_finished(study)
        self.bar.n = done
        self.bar.refresh()
        log.info("[%d/%d] trial %d %s %s | %s | %.1fs | %s", done, self.total, trial.number, state, value,
                 params, duration, best)

    def close(self) -> None:
        self.bar.close()


class FailureLimit:
    """Stop the study after ``max_failures`` failed trials in this run."""

    def __init__(self, max_failures: int) -> None:
        self.max_failures = max_failures
        self.failures = 0
        self.tripped = False

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.FAIL:
            self.failures += 1
            if self.failures >= self.max_failures:
                self.tripped = True
                study.stop()


def prepare(composed: Composed) -> tuple[Any, Any, Any]:
    """Every check and every load that can fail on user input, before anything is written.

    Returns the search space, the sampler and the pruner.
    """
    from llm_doe.finetune.data import encoded_splits
    from llm_doe.finetune.model import load_tokenizer, model_factory
    from llm_doe.space import build_space, check_space
    from llm_doe.study import check_resume, check_storage, check_writable, make_pruner, make_sampler

    cfg = composed.config
    space = build_space(cfg.study.space)
    if not space:
        raise ConfigError("study.space", "is empty: nothing to search (pick a study with +study=NAME)")
    check_space(composed.dict_config, space)
    check_storage(cfg.storage)
    check_writable(cfg.storage.artifacts_dir, "storage.artifacts_dir")
    check_writable(composed.run_dir, "hydra.run.dir")
    sampler = make_sampler(cfg.sampler, space)
    pruner = make_pruner(cfg.pruner)
    # Data and weights load now: a missing file or model stops the run here, and the first
    # trial finds them cached.
    tokenizer, tok_key = load_tokenizer(cfg.model)
    _, _, splits = encoded_splits(cfg.data, tokenizer, tok_key)
    model_factory(cfg.model, splits.num_labels)
    check_resume(cfg, space)
    return space, sampler, pruner


def run(composed: Composed) -> int:
    """Open (or resume) the study and optimise it to ``study.n_trials``. Returns the exit code."""
    import torch

    from llm_doe.artifacts import artifact_store
    from llm_doe.objective import Objective, TrialFailed
    from llm_doe.study import count_finished, make_storage, open_study

    cfg = composed.config
    space, sampler, pruner = prepare(composed)

    composed.run_dir.mkdir(parents=True, exist_ok=True)
    (composed.run_dir / ".hydra").mkdir(exist_ok=True)
    (composed.run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(composed.dict_config, resolve=True))
    (composed.run_dir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(composed.overrides))
    _setup_logging(composed.run_dir)
    if cfg.runtime.num_threads is not None:
        torch.set_num_threads(cfg.runtime.num_threads)

    resolved = OmegaConf.to_container(composed.dict_config, resolve=True)
    study = open_study(cfg, make_storage(cfg.storage), sampler, pruner, space, resolved, composed.overrides)
    done = count_finished(study)
    if done >= cfg.study.n_trials:
        log.info("study %s already has %d/%d finished trials in %s: nothing to run (raise study.n_trials to "
                 "run more)", cfg.study.name, done, cfg.study.n_trials, cfg.storage.url)
        return 0
    log.info("study %s: %d/%d trials finished, %s %s, sampler=%s pruner=%s, store %s, logs %s",
             cfg.study.name, done, cfg.study.n_trials, resolved_direction(cfg), cfg.study.metric, cfg.sampler.name,
             cfg.pruner.name, cfg.storage.url, composed.run_dir)

    objective = Objective(composed.dict_config, space, artifact_store(cfg.storage.artifacts_dir),
                          progress=cfg.runtime.progress)
    progress = ProgressCallback(study, cfg.study.n_trials, cfg.study.metric, cfg.runtime.progress)
    failures = FailureLimit(cfg.study.max_failures)
    total = optuna.study.MaxTrialsCallback(cfg.study.n_trials, states=(optuna.trial.TrialState.COMPLETE,
                                                                       optuna.trial.TrialState.PRUNED))
    started = time.perf_counter()
    try:
        study.optimize(objective, callbacks=[progress, failures, total], catch=(TrialFailed,),
                       timeout=cfg.study.timeout, gc_after_trial=False)
    except KeyboardInterrupt:
        progress.close()
        log.error("interrupted: the running trial is marked FAIL; run the same command to resume to %d trials",
                  cfg.study.n_trials)
        return 130
    progress.close()
    done = count_finished(study)
    log.info("study %s: %d/%d trials finished in %.1fs", cfg.study.name, done, cfg.study.n_trials,
             time.perf_counter() - started)
    try:
        best = study.best_trial
        log.info("best trial #%d: %s=%s with %s", best.number, cfg.study.metric, _fmt(best.value),
                 " ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()))
    except ValueError:
        log.info("no trial completed")
    if failures.tripped:
        log.error("stopped: %d trials failed in this run (study.max_failures=%d); see fail_reason on the trials "
                  "and %s", failures.failures, cfg.study.max_failures, composed.run_dir / "search.log")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status (2 = bad input, nothing written)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(USAGE)
        return 0
    show_cfg = "--cfg" in argv
    overrides = [a for a in argv if a != "--cfg"]
    try:
        composed = compose_config(overrides)
        if show_cfg:
            print(OmegaConf.to_yaml(composed.dict_config, resolve=True))
            return 0
        return run(composed)
    except ConfigError as err:
        print(f"llm_doe: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
