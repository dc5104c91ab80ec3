"""Composition: every shipped study composes and validates; bad input stops before writing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from llm_doe.cli import CONF_DIR, compose_config
from llm_doe.schema import resolved_direction
from llm_doe.search import main, prepare
from llm_doe.space import build_space
from tests.conftest import TINY, run_cli, store_args

STUDIES = sorted(p.stem for p in (CONF_DIR / "study").glob("*.yaml"))


def test_studies_are_shipped():
    assert {"smoke", "lr_sweep", "hparam_sweep"} <= set(STUDIES)


@pytest.mark.parametrize("study", STUDIES)
def test_every_study_composes_and_validates(study, tmp_path, tmp_path_factory):
    extra = []
    if study == "distill_effect":  # its teacher is lr_sweep's export: a classifier with the tweets' labels here
        from tests.test_objective import save_classifier

        extra = [f"distill.teacher={save_classifier(tmp_path_factory.mktemp('teacher'), ['negative', 'positive'])}"]
    composed = compose_config([f"+study={study}", *store_args(tmp_path, study), *extra])
    assert composed.config.study.name == study
    design, _pruner = prepare(composed)  # loads data and weights, checks the space
    assert all(arm.space for arm in design.arms)
    assert not any(tmp_path.iterdir()), "composing and checking must not write anything"


def test_study_name_defaults_to_the_file_name():
    composed = compose_config(["+study=hparam_sweep"])
    assert composed.config.study.name == "hparam_sweep"
    assert composed.config.storage.url == "sqlite:///studies/hparam_sweep.db"
    assert composed.config.storage.artifacts_dir == "studies/hparam_sweep/artifacts"
    assert str(composed.run_dir).startswith("studies/hparam_sweep/runs/")


PUBLIC_OVERRIDES = [
    "model=tiny", "model.dropout=0.2", "data=csv", "data.path=x.csv", "data.text_column=t", "data.label_column=l",
    "data.train_size=10", "data.val_size=5", "data.test_size=5", "data.max_length=32", "train.learning_rate=0.001",
    "train.batch_size=8", "train.weight_decay=0.1", "train.num_epochs=3", "train.warmup_ratio=0.2",
    "train.max_grad_norm=0.5", "train.label_smoothing=0.1", "train.evals_per_epoch=3", "train.seed=7",
    "train.precision=bf16", "train.lr_scheduler=cosine", "train.early_stopping_patience=2", "sampler=qmc",
    "sampler.seed=3", "pruner=wilcoxon", "study.n_trials=5", "study.direction=maximize", "study.metric=roc_auc",
    "storage.url=sqlite:////tmp/x.db", "storage.artifacts_dir=/tmp/x_art", "workers=2",
    "train.gradient_checkpointing=true",
]


def test_public_names_from_the_design_reach_the_typed_config_and_the_factories():
    """Each public name of DESIGN.md's contract moves a typed field away from its default, and the
    sampler and pruner names build the Optuna objects they name (not merely echoed back)."""
    from llm_doe.study import make_pruner, make_sampler

    default = compose_config(["+study=lr_sweep"]).config
    cfg = compose_config(["+study=lr_sweep", *PUBLIC_OVERRIDES]).config
    for override in PUBLIC_OVERRIDES:
        key, value = override.split("=", 1)
        if "." not in key:  # a group choice (model=tiny): its effect is checked below
            continue
        section, name = key.split(".")
        typed, before = getattr(getattr(cfg, section), name), getattr(getattr(default, section), name)
        assert typed != before, f"{key} did not change the typed config"
        assert str(typed) == value or typed == type(typed)(value), (key, typed)
    assert (cfg.model.kind, default.model.kind, cfg.data.source, default.data.source) == ("tiny", "pretrained", "csv",
                                                                                           "tweets")
    assert cfg.workers == 2 and default.workers == 1
    sampler = make_sampler(cfg.sampler, build_space(cfg.study.space))
    assert isinstance(sampler, optuna.samplers.QMCSampler)
    assert isinstance(make_pruner(cfg.pruner), optuna.pruners.WilcoxonPruner)
    assert resolved_direction(cfg) == "maximize"


def test_cfg_flag_prints_config_with_the_password_masked(capsys):
    assert main(["+study=smoke", "--cfg", "storage=postgres", "storage.url=postgresql://u:hunter2@db:5432/s"]) == 0
    out = capsys.readouterr().out
    assert "learning_rate" in out and "postgresql://u:***@db:5432/s" in out and "hunter2" not in out


def _bad_csv(tmp: Path) -> str:
    path = tmp / "bad.csv"
    path.write_bytes(b"text,label\n\xff\xfe\x00garbage,1\n")
    return str(path)


def _file_in_the_way(tmp: Path) -> str:
    (tmp / "afile").write_text("not a folder")
    return f"sqlite:///{tmp}/afile/study.db"


# (overrides, the key the one-line message must name, a fragment of what is wrong)
BAD = [
    (["+study.space.train.nope={type:float,low:0.1,high:0.2}"], "study.space.train.nope", "not a config path"),
    (["study.space={train.learning_rate:{type:float,low:0.1,high:0.01}}"], "study.space.train.learning_rate", "low must be < high"),
    (["study.space={train.learning_rate:{type:float,low:0.0,high:0.01,log:true}}"], "study.space.train.learning_rate", "low > 0"),
    (["++study.space={train.batch_size:{type:categorical,choices:[]}}"], "study.space.train.batch_size", "non-empty"),
    (["++study.space={train.batch_size:{type:float,low:0.5,high:8.5}}"], "study.space.train.batch_size", "does not fit"),
    (["train.batch_size=abc"], "train.batch_size", "abc"),
    (["train.learning_rate=-1"], "train.learning_rate", "must be > 0"),
    (["sampler=annealing"], "sampler", "unknown choice 'annealing'"),
    (["pruner=sometimes"], "pruner", "unknown choice 'sometimes'"),
    (["model=gpt9"], "model", "unknown choice 'gpt9'"),
    (["data=parquet"], "data", "unknown choice 'parquet'"),
    (["data=csv", "data.path=/nonexistent/data.csv"], "data.path", "no such file"),
    (["data=csv", "data.path={bad_csv}"], "data.path", "cannot read"),
    (["data=csv"], "data.path", "required"),
    (["storage.url=not a url"], "storage.url", "not a database URL"),
    (["storage.url=oracle://x/y"], "storage.url", "unsupported database"),
    (["storage.url={file_in_the_way}"], "storage.url", "cannot be created"),
    (["sampler=grid"], "study.space.train.learning_rate", "discrete"),
    (["study.n_trials=0"], "study.n_trials", ">= 1"),
    (["data.seed=-1"], "data.seed", "must be in [0, 2**32 - 2)"),
    (["data.test_seed=-5"], "data.test_seed", "must be null or in [0, 2**32)"),
    (["data.truncation=drop"], "data.truncation", "drop applies to chat data"),
]


@pytest.mark.parametrize(("overrides", "key", "needle"), BAD, ids=[" ".join(b[0])[:50] for b in BAD])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(overrides, key, needle, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    fill = {"bad_csv": _bad_csv(tmp_path), "file_in_the_way": _file_in_the_way(tmp_path)}
    overrides = [o.format(**fill) if "{" in o and "}" in o and "type" not in o else o for o in overrides]
    store = store_args(work)
    if any(o.startswith("storage.url") for o in overrides):
        store = [a for a in store if not a.startswith("storage.url")]
    code = main(["+study=smoke", *TINY, *store, *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("llm_doe: error: ") and key in err and needle in err, err
    assert list(work.iterdir()) == [], "bad input must not create a study, database or artifact"


def test_bad_input_exit_status_from_the_real_command(tmp_path):
    proc = run_cli(["+study=smoke", "sampler=annealing", *store_args(tmp_path)], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "sampler: unknown choice 'annealing'" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_no_study_selected_is_a_clear_error(capsys, tmp_path):
    assert main([f"hydra.run.dir={tmp_path}/run"]) == 2
    assert "+study=NAME" in capsys.readouterr().err


@pytest.mark.parametrize("overrides", [["+study=smoke", "data=csv", "data.path=missing.csv"],
                                       ["+study=sft_smoke", "data=jsonl", "data.path=missing.jsonl"]],
                         ids=["csv", "jsonl"])
def test_a_missing_data_file_is_reported_before_torch_is_imported(tmp_path, overrides):
    """Issue 22 A10: the one line comes before the training stack's 20-40 s import, not after it."""
    script = ("import sys\nfrom llm_doe.search import main\ncode = main(sys.argv[1:])\n"
              "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')\nsys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", script, *overrides, *store_args(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"llm_doe: error: data.path: {overrides[-1].split('=')[1]}: no such file"
    assert proc.stdout.strip() == "torch not loaded"
    assert list(tmp_path.iterdir()) == []
