"""What the commands (search, confirm, final, report) share: composing the config and the
shape of an entry point.

Hydra composes ``conf/`` with the command-line overrides (Hydra's own override grammar); the
result becomes the typed :class:`~llm_doe.schema.Config` once, here. This is the one module
that imports Hydra's composition API (and :mod:`llm_doe.space` its sweep grammar), so the
schema, the training code and the analysis stay importable without it.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from llm_doe.schema import Config, ConfigError, validate

#: The config tree: ``conf/`` beside the package, or ``$LLM_DOE_CONF_DIR``.
CONF_DIR = Path(os.environ.get("LLM_DOE_CONF_DIR", Path(__file__).resolve().parent.parent / "conf"))


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore; conf/config.yaml lists it first."""
    ConfigStore.instance().store(name="base_config", node=Config)


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


def cli(argv: list[str] | None, usage: str, command: Callable[[Composed], int]) -> int:
    """The shared shape of the entry points (search, confirm, final): ``-h``, ``--cfg`` (the
    composed config, password masked), and bad input as one line with exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(usage)
        return 0
    show_cfg = "--cfg" in argv
    overrides = [a for a in argv if a != "--cfg"]
    # Heartbeats, their retry callback and the artifact store are Optuna's own "experimental"
    # APIs, used on purpose: their warnings would only bury the study's lines.
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        composed = compose_config(overrides)
        if show_cfg:
            from llm_doe.storage import masked_config

            print(OmegaConf.to_yaml(masked_config(composed.dict_config)))
            return 0
        return command(composed)
    except ConfigError as err:
        print(f"llm_doe: error: {err}", file=sys.stderr)
        return 2
