"""What the commands share: composing conf/ with overrides, its errors as one line, and the
entry point's -h, --cfg and exit status 2."""

from __future__ import annotations

import pytest

from llm_doe.cli import CONF_DIR, cli, compose_config
from llm_doe.schema import ConfigError


def test_compose_config_types_the_config_and_names_the_study():
    composed = compose_config(["+study=smoke", "model=tiny", "train.learning_rate=1e-3"])
    assert composed.config.study.name == "smoke" and composed.config.train.learning_rate == 1e-3
    assert composed.dict_config.model.kind == "tiny" and "hydra" not in composed.dict_config
    assert composed.overrides == ["+study=smoke", "model=tiny", "train.learning_rate=1e-3"]
    assert composed.run_dir.parts[:3] == ("studies", "smoke", "runs")  # where this run logs, per study


@pytest.mark.parametrize(("overrides", "message"), [
    ([], r"^study: no study selected: add \+study=NAME \(one of .*smoke"),
    (["+study=nope"], r"^study: unknown choice 'nope'; available: .*smoke"),
    (["+study=smoke", "model=nope"], r"^model: unknown choice 'nope'; available: .*tiny"),
    (["+study=smoke", "train.no_such_key=1"], r"train.no_such_key"),
    (["+study=smoke", "train.learning_rate=fast"], r"^train.learning_rate: "),
    (["+study=smoke", "train.learning_rate=-1"], r"learning_rate"),  # the schema's own validation
])
def test_bad_input_is_one_config_error_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        compose_config(overrides)
    assert "\n" not in str(err.value)


def test_the_config_tree_is_the_repositorys_conf():
    assert (CONF_DIR / "config.yaml").is_file() and (CONF_DIR / "study" / "smoke.yaml").is_file()


def test_cli_help_cfg_and_errors(capsys):
    ran = []
    command = lambda composed: ran.append(composed) or 0  # noqa: E731

    assert cli(["-h"], "usage: here", command) == 0
    assert capsys.readouterr().out.startswith("usage: here\n") and not ran

    assert cli(["+study=smoke", "storage.url=postgresql://me:secret@db/x", "--cfg"], "usage", command) == 0
    shown = capsys.readouterr().out
    assert "name: smoke" in shown and "secret" not in shown and "me:***@db" in shown  # the password masked
    assert not ran

    assert cli(["+study=nope"], "usage", command) == 2
    assert capsys.readouterr().err.startswith("llm_doe: error: study: unknown choice 'nope'")
    assert not ran

    assert cli(["+study=smoke", "model=tiny"], "usage", lambda composed: 7) == 7  # the command's own status


@pytest.mark.parametrize(("flags", "job", "hydra"), [
    (["--cfg", "job"], True, False), (["--cfg"], True, False), (["--cfg=hydra"], False, True),
    (["-c", "all"], True, True), (["--cfg", "hydra"], False, True),
])
def test_cfg_takes_hydras_parts(capsys, flags, job, hydra):
    """``--cfg job|hydra|all`` as Hydra spells it (space-separated too, which failed with
    "missing EQUAL"); a bare ``--cfg`` is ``job``. Passwords stay masked in every part."""
    ran = []
    args = ["+study=smoke", *flags, "storage.url=postgresql://me:secret@db/x"]
    assert cli(args, "usage", lambda composed: ran.append(composed) or 0) == 0
    shown = capsys.readouterr().out
    assert not ran and "secret" not in shown
    assert ("name: smoke" in shown) == job
    assert ("hydra:" in shown and "searchpath" in shown) == hydra


def test_cfg_with_an_unknown_part_and_help(capsys):
    assert cli(["+study=smoke", "--cfg", "jobs"], "usage", lambda composed: 0) == 2
    assert capsys.readouterr().err == "llm_doe: error: --cfg: unknown part 'jobs'; one of job, hydra, all\n"
    assert cli(["+study=smoke", "--help"], "usage: here", lambda composed: 1) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage: here\n\n== Configuration groups ==")
    assert "model: hf, minilm, smollm2, tiny, tiny_llama" in shown and "+study: " in shown and "smoke" in shown


@pytest.mark.parametrize(("override", "message"), [
    ("train.learnin_rate=1e-4", "train.learnin_rate: Key 'learnin_rate' not in 'TrainConfig'; "
                                "did you mean `train.learning_rate`?"),
    ("trian.learning_rate=1e-4", "did you mean `train.learning_rate`?"),
    ("model.hiden_size=8", "did you mean `model.hidden_size`?"),
])
def test_a_mistyped_key_suggests_the_closest_one(override, message):
    with pytest.raises(ConfigError) as err:
        compose_config(["+study=smoke", override])
    assert str(err.value).endswith(message) and "\n" not in str(err.value)


def test_an_unquoted_space_spec_says_to_quote_it():
    """Hydra reads choice(...) in an override's value as a sweep; inside a dict that used to fail
    as "tags: Unexpected type annotation: Set[str]". Quoted, the same spec composes."""
    with pytest.raises(ConfigError) as err:
        compose_config(["+study=lr_sweep", "study.space={train.learning_rate: choice(1e-4,3e-4)}"])
    assert str(err.value).startswith("study.space: ") and "quote the spec" in str(err.value)
    cfg = compose_config(["+study=lr_sweep", "study.space={train.learning_rate: 'choice(1e-4,3e-4)'}"]).config
    assert cfg.study.space["train.learning_rate"] == "choice(1e-4,3e-4)"


def test_no_suggestion_when_nothing_is_close():
    with pytest.raises(ConfigError) as err:
        compose_config(["+study=smoke", "train.zzzz=1"])
    assert "did you mean" not in str(err.value)


@pytest.mark.parametrize("module", ["search", "confirm", "final", "report"])
def test_every_command_takes_hydras_flags(capsys, module):
    import importlib

    main = importlib.import_module(f"llm_doe.{module}").main
    assert main(["+study=smoke", "--cfg", "job"]) == 0
    assert "name: smoke" in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert "== Configuration groups ==" in capsys.readouterr().out
    assert main(["+study=smoke", "train.learnin_rate=1"]) == 2
    assert "did you mean `train.learning_rate`?" in capsys.readouterr().err
