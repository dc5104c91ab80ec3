"""A user's own task, from the README's worked example as written: a module and a task yaml in a
folder of the user's, found through hydra.searchpath; no edit to llm_doe."""

from __future__ import annotations

import re
from pathlib import Path

import llm_doe as doe
from llm_doe.final import main as final
from llm_doe.report import render_report
from llm_doe.search import main
from tests.conftest import REPO, TINY, load, run_cli, store_args

README_PATH = REPO / "README.md"


def readme_files(folder: Path) -> dict[str, Path]:
    """The README's example files (code blocks whose first line is ``# <path>``), written under ``folder``."""
    text = README_PATH.read_text(encoding="utf-8")
    written = {}
    for block in re.findall(r"```(?:python|yaml)\n(.*?)```", text, flags=re.S):
        first = block.splitlines()[0]
        if first in ("# my_tasks.py", "# conf/task/mcc.yaml"):
            path = folder / first[2:]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block, encoding="utf-8")
            written[first[2:]] = path
    assert sorted(written) == ["conf/task/mcc.yaml", "my_tasks.py"], "the README's example files moved"
    return written


def test_a_task_of_your_own_runs_a_study_on_its_own_metric(tmp_path, monkeypatch):
    """The README's MCC task: its metric is the study's objective (maximised, its declared
    direction), every trial records it, and the report, the analysis and final's card show it."""
    readme_files(tmp_path)
    args = ["+study=smoke", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "task=mcc", "study.metric=mcc",
            *TINY, *store_args(tmp_path, "mine")]
    proc = run_cli([*args, "study.n_trials=2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(tmp_path, "mine")
    assert study.direction.name == "MAXIMIZE" and study.metric_names == ["mcc"]
    assert study.user_attrs["task"] == "mcc" and study.user_attrs["metric_directions"]["mcc"] == "maximize"
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert done and all(t.value == t.user_attrs["mcc"] for t in done)
    assert -1.0 <= done[0].value <= 1.0 and "accuracy" in done[0].user_attrs  # the classifier's metrics beside it
    url = f"sqlite:///{tmp_path}/mine.db"
    table = doe.load_trials(url, "mine")
    assert "mcc" in table and table["mcc"].notna().sum() == len(done)
    assert "mcc" in render_report(url, "mine", artifacts_dir=tmp_path / "art")
    monkeypatch.syspath_prepend(str(tmp_path))  # what running from the user's folder gives
    assert final([*args, f"final.output_dir={tmp_path / 'export'}"]) == 0
    card = (tmp_path / "export" / "README.md").read_text(encoding="utf-8")
    assert "pipeline_tag: text-classification" in card and re.search(r"^\| mcc \| -?[\d.]+ \|$", card, re.M)


def test_a_target_that_does_not_import_is_one_line_and_exit_2(tmp_path, capsys):
    readme_files(tmp_path)
    args = ["+study=smoke", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", *TINY, *store_args(tmp_path, "bad")]
    assert main([*args, "task=mcc", "task.target=my_tasks_nowhere.MCCTask"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llm_doe: error: task.target: cannot import 'my_tasks_nowhere.MCCTask'")
    assert len(err.splitlines()) == 1 and not (tmp_path / "bad.db").exists()
