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
    assert capsys.readouterr().out == "usage: here\n" and not ran

    assert cli(["+study=smoke", "storage.url=postgresql://me:secret@db/x", "--cfg"], "usage", command) == 0
    shown = capsys.readouterr().out
    assert "name: smoke" in shown and "secret" not in shown and "me:***@db" in shown  # the password masked
    assert not ran

    assert cli(["+study=nope"], "usage", command) == 2
    assert capsys.readouterr().err.startswith("llm_doe: error: study: unknown choice 'nope'")
    assert not ran

    assert cli(["+study=smoke", "model=tiny"], "usage", lambda composed: 7) == 7  # the command's own status
