"""What the commands (search, confirm, final, report) share: composing the config and the
shape of an entry point.

Hydra composes ``conf/`` with the command-line overrides (Hydra's own override grammar); the
result becomes the typed :class:`~llm_doe.schema.Config` once, here. This is the one module
that imports Hydra's composition API (and :mod:`llm_doe.space` its sweep grammar), so the
schema, the training code and the analysis stay importable without it.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from llm_doe.schema import Config, ConfigError, applicable
from llm_doe.space import edit_space, split_space_overrides
from llm_doe.validation import validate

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
    #: Hydra's own section of the composition (``hydra.run.dir``, ``hydra.searchpath``, ...): ``--cfg hydra``.
    hydra: DictConfig | None = None


_SWEEP_VALUE = re.compile(r"(?<![\"'\w])(choice|range|interval|glob)\(")


def _hydra_error(err: Exception, overrides: list[str]) -> ConfigError:
    """Hydra's multi-line errors, as one line that names the key or group."""
    if isinstance(err, MissingConfigException) and err.options is not None and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        hint = "; a study in the store is read with study.name=NAME" if group == "study" else ""
        return ConfigError(group or "config", f"unknown choice {name!r}; available: {', '.join(sorted(err.options))}"
                                              f"{hint}")
    cause: BaseException = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    sweep = next((o for o in overrides if _SWEEP_VALUE.search(o.split("=", 1)[-1])), None)
    if sweep is not None and "Unexpected type annotation" in str(cause):
        # Hydra reads choice(...)/range(...)/interval(...) in an override's value as a sweep, and
        # a sweep inside a dict fails with a message about ChoiceSweep's fields ("tags: Set[str]").
        key = sweep.lstrip("+~").split("=", 1)[0]
        return ConfigError(key, "Hydra reads an unquoted choice(...)/range(...)/interval(...) in an override as a "
                                "sweep: quote the spec, e.g. 'study.space={train.learning_rate: \"choice(1e-4, 3e-4)\"}'")
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return ConfigError(str(cause.full_key), str(cause).splitlines()[0] + _did_you_mean(cause, overrides))
    return ConfigError("overrides", " ".join(str(err).split()))


def _did_you_mean(err: OmegaConfBaseException, overrides: list[str]) -> str:
    """``; did you mean `train.learning_rate`?`` for a mistyped key: the closest key its
    section has (difflib), with the rest of the override's path; empty when none is close."""
    key, parent = getattr(err, "key", None), getattr(err, "parent_node", None)
    if not isinstance(key, str) or not isinstance(parent, DictConfig):
        return ""
    match = difflib.get_close_matches(key, [str(k) for k in parent if k != "hydra"], n=1)
    if not match:
        return ""
    full_key = str(err.full_key)
    prefix = full_key[: len(full_key) - len(key)]
    # The rest of the path the user wrote after the mistyped part (trian.learning_rate -> .learning_rate).
    written = next((o.lstrip("+~").split("=", 1)[0] for o in overrides
                    if o.lstrip("+~").split("=", 1)[0].startswith(full_key + ".")), full_key)
    return f"; did you mean `{prefix}{match[0]}{written[len(full_key):]}`?"


def _own_data_settings(cfg: DictConfig, overrides: list[str]) -> None:
    """A data source picked on the command line (``+study=sft_smoke data=jsonl``) keeps its own
    ``data.*`` settings: the study file's (``sft_smoke``'s sizes, made for its chat pairs) are
    replaced by the data file's (``conf/data/jsonl.yaml``), unless the command line sets them too."""
    picked = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == "data" and "=" in o]
    study = cfg.hydra.runtime.choices.get("study")
    study_file = CONF_DIR / "study" / f"{study}.yaml"
    data_file = CONF_DIR / "data" / f"{picked[-1] if picked else ''}.yaml"
    if not picked or not study_file.is_file() or not data_file.is_file():
        return
    written, source, root = (OmegaConf.load(p) for p in (study_file, data_file, CONF_DIR / "config.yaml"))
    if not (isinstance(written, DictConfig) and isinstance(source, DictConfig) and isinstance(root, DictConfig)):
        return

    def data_choice(entries: Any, key: str) -> Any:
        return next((entry[key] for entry in entries or [] if isinstance(entry, DictConfig) and key in entry), None)

    own = data_choice(written.get("defaults"), "override /data") or data_choice(root.get("defaults"), "data")
    if own == picked[-1]:
        return
    given = {o.lstrip("+").split("=", 1)[0][len("data."):] for o in overrides if o.lstrip("+").startswith("data.")}
    schema = OmegaConf.structured(Config).data
    for key in set((written.get("data") or {}).keys()) - given:
        cfg.data[key] = source[key] if key in source else schema[key]


def compose_config(overrides: list[str]) -> Composed:
    """Compose conf/ + overrides into the typed config. Raises ConfigError on bad input."""
    register_configs()
    hydra_overrides, space_edits = split_space_overrides(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="llm_doe"):
            cfg = compose(config_name="config", overrides=hydra_overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise _hydra_error(err, overrides) from None
    if space_edits:
        cfg.study.space = edit_space(cfg.study.space, space_edits)
    _own_data_settings(cfg, overrides)
    choices = cfg.hydra.runtime.choices
    if cfg.study.name is None:
        cfg.study.name = choices.get("study") or None
    if cfg.study.name is None:
        raise ConfigError("study", "no study selected: add +study=NAME (one of "
                          f"{', '.join(sorted(p.stem for p in (CONF_DIR / 'study').glob('*.yaml')))})")
    run_dir = Path(str(cfg.hydra.run.dir))
    hydra_section = OmegaConf.create({"hydra": OmegaConf.to_container(cfg.hydra, resolve=False)})
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        typed: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or "config"
        reason = "is required (no value given)" if "Missing mandatory value" in str(err) else str(err).splitlines()[0]
        raise ConfigError(key, reason) from None
    validate(typed)
    return Composed(cfg, typed, run_dir, overrides, hydra_section)


#: What ``report``, ``final`` and ``confirm`` let the command line change of a study they read
#: from the store (with the command's own group, ``final.*`` / ``confirm.*``): where and how
#: they run, never what the study measured.
FREE_KEYS = ("study.name", "runtime", "storage", "workers", "hydra")


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def selects_study(overrides: list[str]) -> bool:
    """Whether the overrides pick a study file (``+study=NAME``)."""
    return any(_key(o) == "study" for o in overrides)


def compose_from_store(overrides: list[str], own: tuple[str, ...] = ()) -> Composed:
    """The config of study ``study.name`` as its search recorded it in the store (the study's
    ``config`` attribute), with only what may change taken from ``overrides``: ``runtime.*``,
    ``storage.*`` (where the store is), ``workers``, the runtime keys of
    :data:`llm_doe.experiment.RUNTIME_KEYS` and the command's ``own`` groups (``final``). Any
    other key is the study's own: refused (ConfigError), as is a study the store lacks."""
    import optuna

    from llm_doe.experiment import RUNTIME_KEYS
    from llm_doe.storage import open_store, sqlite_path, storage_label, store_exists

    free = (*FREE_KEYS, *RUNTIME_KEYS, *own)
    for override in overrides:
        key = _key(override)
        if not any(key == f or key.startswith(f + ".") for f in free):
            allowed = ", ".join(f"{f}.*" for f in (*own, "runtime", "storage"))
            raise ConfigError(key, f"is the study's own setting, read from the store: only {allowed} may be given "
                                   "with study.name=NAME (or give +study=FILE and the search's overrides)")
    if not any(_key(o) == "study.name" for o in overrides):
        raise ConfigError("study", "no study selected: add study.name=NAME (a study in the store) or +study=FILE "
                                   f"(one of {', '.join(sorted(p.stem for p in (CONF_DIR / 'study').glob('*.yaml')))})")
    composed = compose_config(overrides)
    cfg = composed.config
    name, storage = str(cfg.study.name), cfg.storage
    base = name.split("[", 1)[0]
    if base != name and not any(_key(o).split(".")[0] == "storage" for o in overrides):
        # A sub-study ("NAME[key=value]") lives in its study's store: the defaults follow NAME.
        probe = OmegaConf.create(OmegaConf.to_container(composed.dict_config, resolve=False))
        probe.study.name = base
        storage = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), probe)).storage  # type: ignore[union-attr]
    where = storage_label(storage)
    if not store_exists(storage):
        # The default store is studies/NAME.db: the stores beside it name the studies there.
        db = sqlite_path(storage.url) if storage.kind == "rdb" else None
        others = sorted(p.name for p in db.parent.glob("*.db")) if db is not None and db.parent.is_dir() else []
        beside = f"; stores in {db.parent}/: {', '.join(others)}" if db is not None and others else ""
        raise ConfigError("study.name", f"no study {name!r}: no store at {where}{beside} (or give the storage.* "
                                        "the search ran with)")
    # Read-only: a file that is no study store is refused untouched, and nothing is written here.
    _, summaries = open_store(storage, lambda store: optuna.get_all_study_summaries(store, include_best_trial=False),
                              read_only=True)
    found = {s.study_name: s for s in summaries}
    # A designed study's sub-studies ("NAME[...]") each record the study's config.
    study = found.get(name) or next((found[n] for n in sorted(found) if n.startswith(f"{name}[")), None)
    if study is None:
        held = ", ".join(sorted(found)) or "no study"
        raise ConfigError("study.name", f"no study {name!r} in {where}; it holds: {held}")
    stored = study.user_attrs.get("config")
    if not isinstance(stored, dict) or not stored:
        raise ConfigError("study.name", f"study {name!r} recorded no config (an older version wrote it): give "
                                        "+study=FILE and the search's overrides")
    given = OmegaConf.to_container(composed.dict_config, resolve=True)
    assert isinstance(given, dict)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), stored)
        assert isinstance(merged, DictConfig)
        # How the search was started (a warm start, enqueued points) is not the study's to repeat:
        # a store written before warm_start.top_k defaulted to null records top_k: 3 alone.
        defaults = OmegaConf.structured(Config)
        merged.study.warm_start = defaults.study.warm_start
        merged.study.enqueue = defaults.study.enqueue
        for override in overrides:
            key = _key(override)
            if key != "hydra" and not key.startswith("hydra."):
                OmegaConf.update(merged, key, OmegaConf.select(OmegaConf.create(given), key), merge=False)
        for key in ("kind", "url", "journal_path"):  # the store is where it was found (a stored URL is masked)
            merged.storage[key] = getattr(storage, key)
        typed: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        reason = str(err).splitlines()[0]
        raise ConfigError(str(getattr(err, "full_key", "") or "study.name"),
                          f"the config study {name!r} recorded does not fit this version: {reason}") from None
    validate(typed)
    return Composed(merged, typed, composed.run_dir, overrides, composed.hydra)


#: ``--cfg PART``: what Hydra prints for each part.
CFG_PARTS = ("job", "hydra", "all")


def split_flags(argv: list[str]) -> tuple[bool, str | None, list[str]]:
    """Hydra's own flags among the arguments, as Hydra spells them: ``--help`` / ``-h``,
    ``--cfg job|hydra|all`` / ``-c PART`` / ``--cfg=PART`` (a bare ``--cfg``: ``job``).

    Returns (help asked, the config part to print or None, the overrides). Raises ConfigError
    for a part Hydra does not know."""
    show_help, part, rest = False, None, []
    args = iter(range(len(argv)))
    for i in args:
        arg = argv[i]
        if arg in ("-h", "--help"):
            show_help = True
        elif arg in ("--cfg", "-c") or arg.startswith("--cfg="):
            given = arg.split("=", 1)[1] if "=" in arg else None
            if given is None and i + 1 < len(argv) and "=" not in argv[i + 1] and not argv[i + 1].startswith("-"):
                given = argv[i + 1]
                next(args, None)
            part = given or "job"
            if part not in CFG_PARTS:
                raise ConfigError("--cfg", f"unknown part {part!r}; one of {', '.join(CFG_PARTS)}")
        else:
            rest.append(arg)
    return show_help, part, rest


def config_groups() -> str:
    """Hydra's help section: each config group of conf/ with its options."""
    lines = ["== Configuration groups ==", "Compose your configuration from those groups (group=option)", ""]
    for group in sorted(p for p in CONF_DIR.iterdir() if p.is_dir()):
        options = sorted(f.stem for f in group.glob("*.yaml"))
        prefix = "+" if group.name == "study" else ""
        lines.append(f"{prefix}{group.name}: {', '.join(options)}")
    lines += ["", "== Config ==", "Override anything in the config (foo.bar=value); --cfg job prints it composed,",
              "--cfg hydra Hydra's own settings, --cfg all both."]
    return "\n".join(lines)


def show_config(composed: Composed, part: str) -> str:
    """The composed config as ``--cfg`` prints it (passwords masked, the job's keys that do not apply
    left out: :func:`~llm_doe.schema.applicable`): the job's, Hydra's or both."""
    from llm_doe.storage import mask_overrides, masked_config

    shown = []
    if part in ("hydra", "all") and composed.hydra is not None:
        text = OmegaConf.to_yaml(composed.hydra)
        for raw, masked in zip(composed.overrides, mask_overrides(composed.overrides)):
            if raw != masked:  # hydra.overrides and hydra.job.override_dirname repeat them
                text = text.replace(raw.split("=", 1)[1], masked.split("=", 1)[1])
        shown.append(text)
    if part in ("job", "all"):
        searched = edit_space(composed.config.study.space, [])  # one entry per parameter
        shown.append(OmegaConf.to_yaml(OmegaConf.create(applicable(masked_config(composed.dict_config), searched))))
    return "".join(shown)


def cli(argv: list[str] | None, usage: str, command: Callable[[Composed], int],
        from_store: tuple[str, ...] | None = None) -> int:
    """The shared shape of the entry points (search, confirm, final, report): Hydra's ``--help`` and
    ``--cfg job|hydra|all`` (the composed config, password masked), and bad input as one line
    with exit status 2.

    ``from_store``: the command reads a study the search wrote; without ``+study=FILE`` its config
    is the one the study recorded (:func:`compose_from_store`, these groups free to change)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Heartbeats, their retry callback and the artifact store are Optuna's own "experimental"
    # APIs, used on purpose: their warnings would only bury the study's lines.
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        show_help, part, overrides = split_flags(argv)
        if show_help:
            print(usage.rstrip("\n") + "\n\n" + config_groups())
            return 0
        if from_store is not None and not selects_study(overrides):
            composed = compose_from_store(overrides, from_store)
        else:
            composed = compose_config(overrides)
        if part is not None:
            print(show_config(composed, part))
            return 0
        return command(composed)
    except ConfigError as err:
        print(f"llm_doe: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C while starting up (loading data and weights), or a second one while shutting down
        # after the first was handled: one line, no traceback, the status of a Ctrl-C.
        print("llm_doe: interrupted (SIGINT): stopped before finishing; what the store holds is kept: run the "
              "same command to resume", file=sys.stderr)
        return 128 + 2
