"""``python -m llm_doe.report``: a self-contained HTML report of a tiny study, resolved like the search."""

from __future__ import annotations

import base64
import html
import re
import subprocess
import sys
from html.parser import HTMLParser
from typing import Any

import optuna
import pytest

from llm_doe.report import main as report
from llm_doe.search import main as search
from tests.conftest import TINY, store_args


class _Page(HTMLParser):
    """Collects headings, image sources and every URL-bearing attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.images: list[str] = []
        self.urls: list[str] = []
        self._in_heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        self.urls += [v or "" for k, v in attrs if k in ("src", "href")]
        self._in_heading = tag == "h2"

    def handle_data(self, data: str) -> None:
        if self._in_heading:
            self.headings.append(data.strip())
            self._in_heading = False


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("report")
    args = ["+study=lr_sweep", *TINY, *store_args(tmp, "lr"), "study.n_trials=4"]
    assert search(args) == 0
    return {"tmp": tmp, "args": args, "url": f"sqlite:///{tmp}/lr.db"}


def test_report_is_self_contained_with_every_section(study, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert report(study["args"]) == 0  # the search's own overrides, unchanged
    path = tmp_path / "studies" / "lr" / "report.html"  # studies/<name>/report.html
    assert f"wrote {path.relative_to(tmp_path)}" in capsys.readouterr().out
    text = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    assert page.headings == ["Warnings", "Best trial", "Learning curves", "Training loss", "ROC curves",
                             "Objective against each parameter", "Best trial per value of train.learning_rate",
                             "Parameter importance", "Boundary check", "Failures", "Trials"]
    # Self-contained: four figures embedded as PNG, nothing to fetch; no importance plot for one
    # parameter (1.0 by definition), one line saying why. The training loss over optimizer steps
    # (issue 22 A9: it was only in metrics.jsonl) is one of them.
    assert len(page.images) == 4
    loss = text.split("<h2>Training loss</h2>", 1)[1].split("<h2>", 1)[0]
    assert '<img alt="Training loss of every trial' in loss and "against the optimizer step" in loss
    assert "with one, its importance is 1.0 by definition" in text
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(u.startswith("data:") for u in page.urls)
    assert "<script" not in text and "<link" not in text

    study_ = optuna.load_study(study_name="lr", storage=study["url"])
    best = study_.best_trial
    plain = html.unescape(text)
    assert f"Trial #{best.number}: val_loss = {best.value:.4g}" in re.sub(r"<[^>]+>", "", plain)
    assert f"learning_rate: {best.params['train.learning_rate']!r}" in plain  # the best config (YAML)
    assert f"study.name=lr_trial{best.number}" in plain and repr(best.params["train.learning_rate"]) in plain
    trials_table = plain.split("<h2>Trials</h2>", 1)[1]
    rows = re.findall(r"<tr><td>(\d+)</td><td class=text>(\w+)</td>", trials_table)
    assert rows == [(str(t.number), t.state.name) for t in study_.trials]
    boundary = plain.split("<h2>Boundary check</h2>", 1)[1].split("<h2>", 1)[0]
    assert "train.learning_rate" in boundary and "log scale" in boundary


def test_report_warns_about_an_edge_and_failures(tmp_path, monkeypatch):
    """A study whose best trial sits on the top of its range, with a diverged trial."""
    from tests.conftest import build_synthetic

    monkeypatch.chdir(tmp_path)
    build_synthetic(f"sqlite:///{tmp_path}/syn.db")
    out = tmp_path / "r.html"
    assert report(["+study=smoke", "study.name=syn", f"storage.url=sqlite:///{tmp_path}/syn.db",
                   f"storage.artifacts_dir={tmp_path}/none", "--out", str(out)]) == 0
    text = html.unescape(out.read_text(encoding="utf-8"))
    warnings = text.split("<h2>Warnings</h2>", 1)[1].split("<h2>", 1)[0]
    assert "2 of 9 trials failed (22%), 1 of them diverged" in warnings
    assert "widen the range upward" in warnings and "train.learning_rate" in warnings
    assert "<h2>ROC curves</h2>" not in text  # no trial uploaded a roc.csv: no section


def test_a_missing_artifacts_folder_is_said_not_crashed_on(tmp_path):
    import shutil

    from llm_doe.report import render_report

    assert search(["+study=smoke", *TINY, *store_args(tmp_path, "gone"), "study.n_trials=1"]) == 0
    shutil.rmtree(tmp_path / "art")  # the trials uploaded roc.csv, then their folder went away
    text = html.unescape(render_report(f"sqlite:///{tmp_path}/gone.db", "gone", artifacts_dir=tmp_path / "art"))
    assert "<h2>ROC curves</h2>" in text and "ROC curves unavailable" in text
    assert "<h2>Training loss</h2>" in text and "The training loss unavailable" in text


def test_missing_store_or_study_is_a_one_line_error(study, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert report(["+study=lr_sweep", f"storage.url=sqlite:///{tmp_path}/none.db"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llm_doe: error: storage.url: no study store at") and "\n" not in err
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "studies").exists()
    assert report(["+study=smoke", f"storage.url={study['url']}"]) == 2
    assert "study.name: no study 'smoke'" in capsys.readouterr().err


def test_command_line_entry_point(study, tmp_path):
    out = tmp_path / "cli.html"
    proc = subprocess.run([sys.executable, "-m", "llm_doe.report", *study["args"], "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {out}"
    assert out.read_text(encoding="utf-8").count("data:image/png;base64,") == 4  # no importance: one parameter


def test_report_reads_a_journal_store(tmp_path, monkeypatch):
    """storage=journal (a log file, no database) resolves and reports like an RDB store."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from tests.conftest import build_synthetic

    monkeypatch.chdir(tmp_path)
    journal = tmp_path / "syn.journal"
    build_synthetic(JournalStorage(JournalFileBackend(str(journal))))
    assert report(["+study=smoke", "study.name=syn", "storage=journal", f"storage.journal_path={journal}"]) == 0
    text = (tmp_path / "studies" / "syn" / "report.html").read_text(encoding="utf-8")
    assert "2 of 9 trials failed" in html.unescape(text)


def test_report_of_a_scientific_study(tmp_path):
    from llm_doe.report import main as report_main
    from llm_doe.search import main as search_main
    from tests.conftest import TINY, store_args

    space = ("++study.space={train.weight_decay:{role:scientific,type:categorical,choices:[0.0,0.1]},"
             "train.learning_rate:{type:float,low:1.0e-4,high:3.0e-3,log:true},train.warmup_ratio:{role:fixed}}")
    args = ["+study=smoke", *TINY, *store_args(tmp_path, "wd"), space, "study.n_trials=4"]
    assert search_main(args) == 0
    out = tmp_path / "wd.html"
    assert report_main([*args, "--out", str(out)]) == 0
    text = out.read_text()
    assert "Scientific study <code>wd</code>" in text
    assert "wd[train.weight_decay=0.0]" in text and "wd[train.weight_decay=0.1]" in text
    assert "train.warmup_ratio is fixed at" in text
    assert text.count("data:image/png;base64,") == 1


def test_interrupted_and_requeued_trials_are_shown_apart_from_failures(tmp_path):
    """Trials stopped by Ctrl-C (or a dead worker) went on as other trials: the report counts them
    apart, and its failure warning counts only the genuine failure, of the trials that count."""
    from llm_doe.report import render_report
    from tests.conftest import build_interrupted

    url = f"sqlite:///{tmp_path}/i.db"
    build_interrupted(url)
    page = html.unescape(render_report(url, "i"))
    assert "5 complete, 0 pruned, 1 failed (0 diverged), 3 interrupted (re-queued), 1 running." in page
    assert "1 of 7 trials failed (14%)" in page and "4 of 10" not in page
    assert re.search(r"<td class=text>requeued</td><td>3</td>", page)


def test_a_conditional_space_is_searched_recorded_and_reported(tmp_path):
    # momentum only on the sgd trials: the run, the study's notes, the boundary check and the
    # report all take trials whose params lack it.
    from llm_doe.report import main as report_main
    from llm_doe.search import main as search_main
    from tests.conftest import TINY, store_args

    space = ("++study.space={train.optimizer:{type:categorical,choices:[adamw,sgd]},"
             "train.learning_rate:{type:float,low:1.0e-4,high:3.0e-2,log:true},"
             "train.momentum:{type:float,low:0.0,high:0.95,when:{train.optimizer:sgd}}}")
    args = ["+study=smoke", *TINY, *store_args(tmp_path, "opt"), space, "study.n_trials=6", "data.train_size=32",
            "data.val_size=16", "pruner=none"]
    assert search_main(args) == 0
    study = optuna.load_study(study_name="opt", storage=f"sqlite:///{tmp_path}/opt.db")
    kinds = {t.params["train.optimizer"] for t in study.trials}
    assert kinds == {"adamw", "sgd"}  # random sampler, seed 0: both drawn
    for t in study.trials:
        assert ("train.momentum" in t.params) == (t.params["train.optimizer"] == "sgd")
    assert "when train.optimizer in ['sgd']" in study.user_attrs["space:train.momentum"]
    assert all(t.user_attrs["config.train.optimizer"] == t.params["train.optimizer"] for t in study.trials)
    out = tmp_path / "opt.html"
    assert report_main([*args, "--out", str(out)]) == 0
    assert "train.momentum" in out.read_text()
