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


@pytest.fixture(scope="module")
def stored_smoke(tmp_path_factory):
    """A tiny smoke study of 2 trials in a real SQLite store, searched with sizes of its own."""
    from llm_doe.search import main
    from tests.conftest import TINY, store_args

    tmp = tmp_path_factory.mktemp("stored")
    assert main(["+study=smoke", *TINY, *store_args(tmp, "own"), "study.n_trials=2", "pruner=none"]) == 0
    return tmp


def _where(tmp) -> list[str]:
    return [f"storage.url=sqlite:///{tmp}/own.db", f"hydra.run.dir={tmp}/run2"]


def test_report_final_and_confirm_read_the_studys_config_from_the_store(stored_smoke, capsys):
    """Issue 22 A2: study.name=NAME (no +study, no repeated overrides) takes the config the search
    recorded: its model, data sizes and space, with the storage the user gives."""
    from llm_doe import confirm, final, report

    for main in (report.main, final.main, confirm.main):
        assert main(["study.name=own", *_where(stored_smoke), "runtime.num_threads=1", "--cfg", "job"]) == 0
        shown = capsys.readouterr().out
        assert "kind: tiny" in shown and "train_size: 160" in shown and "val_size: 64" in shown, shown
        assert f"url: sqlite:///{stored_smoke}/own.db" in shown and f"{stored_smoke}/art" in shown
    out = stored_smoke / "report.html"
    assert report.main(["study.name=own", *_where(stored_smoke), "--out", str(out)]) == 0
    assert "Its config" in out.read_text()
    assert final.main(["study.name=own", *_where(stored_smoke), f"final.output_dir={stored_smoke}/final",
                       "runtime.progress=false", "runtime.num_threads=1"]) == 0
    assert (stored_smoke / "final" / "test_metrics.json").is_file()


@pytest.mark.parametrize("module", ["report", "final", "confirm"])
def test_a_studys_own_setting_is_refused_and_an_unknown_study_lists_the_store(stored_smoke, capsys, module):
    import importlib

    main = importlib.import_module(f"llm_doe.{module}").main
    assert main(["study.name=own", *_where(stored_smoke), "data.train_size=100"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm_doe: error: data.train_size: is the study's own setting, read from the store: only ")
    assert err.count("\n") == 1
    assert main(["study.name=nope", *_where(stored_smoke)]) == 2
    held = f"llm_doe: error: study.name: no study 'nope' in sqlite:///{stored_smoke}/own.db; it holds: own\n"
    assert capsys.readouterr().err == held
    assert main(["study.name=nope", f"hydra.run.dir={stored_smoke}/run2"]) == 2  # the default store, studies/nope.db
    assert capsys.readouterr().err.startswith("llm_doe: error: study.name: no study 'nope': no store at ")
    assert main(["+study=tavora"]) == 2
    assert "a study in the store is read with study.name=NAME" in capsys.readouterr().err



def test_reading_a_study_by_name_never_writes_to_a_file_that_is_no_study_store(tmp_path, capsys):
    """report/final/confirm study.name=NAME open the store read-only: a SQLite file of someone
    else's keeps its bytes (no Optuna tables, no WAL switch) and the answer is one line."""
    import hashlib
    import sqlite3

    from llm_doe import report

    foreign = tmp_path / "people.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE people (name TEXT)")
    before = hashlib.sha256(foreign.read_bytes()).hexdigest()
    assert report.main(["study.name=x", f"storage.url=sqlite:///{foreign}", f"hydra.run.dir={tmp_path}/run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm_doe: error: ") and err.count("\n") == 1
    assert hashlib.sha256(foreign.read_bytes()).hexdigest() == before
    with sqlite3.connect(foreign) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["people"]


def test_a_study_recorded_with_a_warm_start_or_an_older_top_k_is_read_by_name(stored_smoke, tmp_path, capsys):
    """How the search started (warm_start, enqueue) is not the study's to repeat: a store written
    when warm_start.top_k defaulted to 3 (and no study_name) is still read with study.name=."""
    import sqlite3

    import optuna

    from llm_doe import report

    with sqlite3.connect(stored_smoke / "own.db") as source, sqlite3.connect(tmp_path / "old.db") as copy:
        source.backup(copy)  # the WAL's pages too
    url = f"sqlite:///{tmp_path}/old.db"
    study = optuna.load_study(study_name="own", storage=url)
    config = dict(study.user_attrs["config"])
    config["study"] = {**config["study"], "warm_start": {"study_name": None, "storage": None, "top_k": 3},
                       "enqueue": [{"train.learning_rate": 1e-3}]}
    study.set_user_attr("config", config)
    assert report.main(["study.name=own", f"storage.url={url}", f"hydra.run.dir={tmp_path}/run",
                        "--out", str(tmp_path / "r.html")]) == 0, capsys.readouterr().err
    assert (tmp_path / "r.html").is_file()


def test_a_sub_studys_name_finds_its_studys_store_and_may_hold_a_slash(tmp_path, capsys, monkeypatch):
    """confirm/final/report study.name='NAME[key=value]' read the sub-study from NAME's default
    store (studies/NAME.db), and a scientific value with a slash is a name they accept."""
    import optuna

    from llm_doe import report

    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    url = "sqlite:///studies/sci.db"
    for value in ("org/a", "org/b"):
        sub = optuna.create_study(study_name=f"sci[model.name_or_path={value}]", storage=url)
        sub.set_user_attr("config", {"study": {"name": "sci"}})
    assert report.main(["study.name='sci[model.name_or_path=org/a]'", "--cfg", "job"]) == 0, capsys.readouterr().err
    assert "url: sqlite:///studies/sci.db" in capsys.readouterr().out
    assert report.main(["study.name='sci[model.name_or_path=../../../x]'", "--cfg", "job"]) == 2
    assert "would name paths outside studies/" in capsys.readouterr().err


OWN_CHAT = 60


@pytest.fixture(scope="module")
def own_chat_study(tmp_path_factory):
    """Issue 22 A3: a 60-line JSONL of one's own, searched with sft_smoke and no size override."""
    import json

    from llm_doe.search import main
    from tests.conftest import store_args

    tmp = tmp_path_factory.mktemp("own_chat")
    path = tmp / "mine.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"What is {i} plus {i}?", "response": f"{i} plus {i} is {2 * i}."})
                            + "\n" for i in range(OWN_CHAT)))
    args = ["+study=sft_smoke", "data=jsonl", f"data.path={path}"]
    runtime = ["study.n_trials=1", "runtime.progress=false", "runtime.num_threads=1", "task.sample_prompts=1",
               "task.sample_max_new_tokens=4", *store_args(tmp, "mine")]
    assert main([*args, *runtime]) == 0
    return {"tmp": tmp, "args": args}


def test_a_small_jsonl_of_ones_own_works_without_sizes(own_chat_study):
    """The study's sizes for its chat pairs (64/32/64) do not carry over to data=jsonl: a tenth of
    the 60 conversations each for validation and test, the rest to train."""
    from tests.conftest import load

    cfg = compose_config(own_chat_study["args"]).config
    assert (cfg.data.train_size, cfg.data.val_size, cfg.data.test_size, cfg.data.max_length) == (None, None, None, 256)
    trial = load(own_chat_study["tmp"], "mine").trials[0]
    assert trial.state.name == "COMPLETE"
    assert trial.user_attrs["examples_seen"] == OWN_CHAT - 6 - 6, trial.user_attrs  # one epoch
    # lora_sft's sizes (128/64, max_length 128) do not carry over either; a size given on the command line does.
    lora = compose_config(["+study=lora_sft", "data=jsonl", "data.path=x.jsonl", "data.val_size=8"]).config.data
    assert (lora.train_size, lora.val_size, lora.test_size, lora.max_length) == (None, 8, None, 256)
    same = compose_config(["+study=sft_smoke", "data=chat_pairs"]).config.data  # the study's own source: its sizes
    assert (same.train_size, same.val_size, same.test_size) == (64, 32, 64)


CLASSIFICATION_ONLY = ("text_column", "label_column", "labels", "label_names", "encoding", "drop_duplicates")


def test_keys_that_do_not_apply_are_not_shown(own_chat_study, capsys):
    """Issue 22 A8: a jsonl trial's config.yaml, the study's config attribute (the dashboard), the
    best config (report, notebook) and --cfg job list no classification columns; --cfg job shows
    no in-code sizes for a pretrained model."""
    import optuna
    import yaml
    from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta

    from llm_doe import analysis
    from llm_doe.search import main
    from tests.conftest import load

    tmp = own_chat_study["tmp"]
    study = load(tmp, "mine")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp}/mine.db")
    meta = next(m for m in get_all_artifact_meta(study.trials[0], storage=storage) if m.filename == "config.yaml")
    download_artifact(artifact_store=FileSystemArtifactStore(str(tmp / "art")), artifact_id=meta.artifact_id,
                      file_path=str(tmp / "config.yaml"))
    trial_config = yaml.safe_load((tmp / "config.yaml").read_text())
    table = analysis.load_trials(f"sqlite:///{tmp}/mine.db", "mine")
    shown = {"trial config.yaml": trial_config["data"], "study config attribute": study.user_attrs["config"]["data"],
             "best_config": analysis.best_config(table)["data"],
             "trial attributes": {k.split(".")[2]: v for k, v in study.trials[0].user_attrs.items()
                                  if k.startswith("config.data.")}}
    assert main([*own_chat_study["args"], "--cfg", "job"]) == 0
    shown["--cfg job"] = yaml.safe_load(capsys.readouterr().out)["data"]
    for where, data in shown.items():
        assert data["source"] == "jsonl" and data["path"].endswith("mine.jsonl"), where
        assert not set(CLASSIFICATION_ONLY) & set(data), (where, data)
    assert main(["+study=lr_sweep", "--cfg", "job"]) == 0
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model["kind"] == "pretrained" and "hidden_size" not in model and "num_layers" not in model


def test_the_studys_own_data_source_named_again_keeps_the_studys_sizes():
    lr = compose_config(["+study=lr_sweep", "data=tweets"]).config.data  # tweets: the default, lr_sweep's own
    assert (lr.train_size, lr.val_size) == (1000, 400)
