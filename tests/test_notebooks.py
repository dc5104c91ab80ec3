"""Every notebook in notebooks/ runs, cell by cell, against a study made by a tiny run (papermill,
as users run them: parameters injected after the cell tagged ``parameters``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

import llm_doe as doe
from llm_doe.search import main
from tests.conftest import REPO, TINY, store_args

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


# The study each notebook is written for (its parameter defaults) and what the test runs it on.
DEFAULTS = {"scientific_study.ipynb": "weight_decay_effect", "sft_study.ipynb": "lora_sft",
            "pareto_study.ipynb": "lora_tradeoff"}
SFT_SPACE = ("++study.space={train.learning_rate:{type:float,low:1.0e-4,high:3.0e-3,log:true},"
             "peft.r:{type:categorical,choices:[2,4]}}")
#: The study of the test's tiny run each notebook reads.
RUNS_ON = {"scientific_study.ipynb": "wd", "sft_study.ipynb": "sft", "pareto_study.ipynb": "mo"}
SCIENTIFIC = ("++study.space={train.weight_decay:{role:scientific,type:categorical,choices:[0.0,0.1]},"
              "train.learning_rate:{type:float,low:1.0e-4,high:3.0e-3,log:true}}")


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("nb")
    # lr_sweep where the notebook's defaults look for it, from tmp as the repository root.
    lr = tmp / "studies" / "lr_sweep"
    assert main(["+study=lr_sweep", *TINY, *store_args(tmp, "lr_sweep"), f"storage.url=sqlite:///{lr}.db",
                 f"storage.artifacts_dir={lr}/artifacts", "study.n_trials=3"]) == 0
    assert main(["+study=lr_sweep", *TINY, *store_args(tmp, "wd"), SCIENTIFIC, "study.n_trials=4"]) == 0
    assert main(["+study=sft_smoke", *store_args(tmp, "sft"), "study.n_trials=3", "data.train_size=32",
                 "data.val_size=16", "data.test_size=16", "data.max_length=64", "runtime.progress=false",
                 "runtime.num_threads=1", SFT_SPACE]) == 0
    # Two objectives: validation loss against trainable parameters (pareto_study.ipynb).
    assert main(["+study=sft_smoke", *store_args(tmp, "mo"), "study.n_trials=3", "data.train_size=32",
                 "data.val_size=16", "data.test_size=16", "data.max_length=64", "runtime.progress=false",
                 "runtime.num_threads=1", SFT_SPACE, "study.metric=[val_loss,trainable_params]"]) == 0
    studies = {name: {"storage": f"sqlite:///{tmp}/{name}.db", "study_name": name, "artifacts_dir": str(tmp / "art"),
                      "tmp": tmp} for name in ("wd", "sft", "mo")}
    studies["lr"] = {"storage": f"sqlite:///{lr}.db", "study_name": "lr_sweep", "artifacts_dir": str(lr / "artifacts"),
                     "tmp": tmp}
    return studies


def test_there_are_notebooks():
    assert "compare_trials.ipynb" in [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_clean_with_a_parameters_cell(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "outputs must not be committed"
    first = code[0]
    assert "parameters" in first.metadata.get("tags", [])
    namespace: dict[str, Any] = {}
    exec(first.source, namespace)
    name = DEFAULTS.get(path.name, "lr_sweep")
    # Relative to the folder papermill runs in, the repository root in the README's commands.
    assert namespace["storage"] == f"sqlite:///studies/{name}.db" and namespace["study_name"] == name
    if "artifacts_dir" in namespace:
        assert namespace["artifacts_dir"] == f"studies/{name}/artifacts"
    assert "Relative paths are from the folder papermill runs in" in first.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_against_a_tiny_study(path: Path, studies, kernel, tmp_path):
    import papermill

    study = studies[RUNS_ON.get(path.name, "lr")]
    out = tmp_path / path.name
    # Raises PapermillExecutionError on the first cell error.
    papermill.execute_notebook(str(path), str(out), kernel_name=kernel, cwd=str(path.parent), progress_bar=False,
                               parameters={k: study[k] for k in ("storage", "study_name", "artifacts_dir")
                                           if path.name != "scientific_study.ipynb" or k != "artifacts_dir"},
                               execution_timeout=300)
    nb = nbformat.read(out, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    # No red box (a TqdmWarning from Optuna's tqdm.auto without ipywidgets, a log line): nothing on stderr.
    assert not [o.get("text") for c in code for o in c.outputs if o.get("name") == "stderr"]
    if path.name == "compare_trials.ipynb":
        images = [c for c in code if any("image/png" in o.get("data", {}) for o in c.outputs)]
        # learning curves, training loss (issue 22 A9), ROC by learning rate, objective vs params, importance
        assert len(images) == 5
        text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for c in code
                         for o in c.outputs)
        assert "train.learning_rate" in text and "python -m llm_doe.search" in text
        assert f"study.name={study['study_name']}_trial" in text  # the rerun command
        trials = doe.load_trials(study["storage"], study["study_name"])
        assert doe.confirm_command(trials) in text  # the confirm command: the search's overrides kept
        for advice in doe.boundary_report(trials)["advice"]:
            assert advice in text  # the whole sentence, not cut to "..."
    if path.name == "pareto_study.ipynb":
        images = [c for c in code if any("image/png" in o.get("data", {}) for o in c.outputs)]
        assert len(images) == 1  # the Pareto plot
        text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for c in code
                         for o in c.outputs)
        assert "pareto" in text and "trainable_params" in text and f"study.name={study['study_name']}_trial" in text

    if path.name == "sft_study.ipynb":
        images = [c for c in code if any("image/png" in o.get("data", {}) for o in c.outputs)]
        assert len(images) == 4  # loss, perplexity and training-loss curves, objective against learning rate and rank
        text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for c in code
                         for o in c.outputs)
        assert "peft.r" in text and "perplexity" in text and "trainable_params" in text
        assert "generated" in text or "reference" in text  # the generations side by side
        assert "roc" not in text.lower()

    if path.name == "scientific_study.ipynb":
        images = [c for c in code if any("image/png" in o.get("data", {}) for o in c.outputs)]
        assert len(images) == 1  # the best trial's curve per scientific value
        text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for c in code
                         for o in c.outputs)
        assert "wd[train.weight_decay=0.0]" in text and "wd[train.weight_decay=0.1]" in text


@pytest.mark.parametrize("where", ["repository root", "notebooks/ (as JupyterLab runs it)", "nbconvert"])
def test_notebook_defaults_work_from_the_repository_root_and_from_notebooks(studies, kernel, where):
    """``papermill notebooks/compare_trials.ipynb out.ipynb`` from the repository root, with the
    parameter cell's defaults (``studies/lr_sweep.db``): the command as a user types it. And the
    same defaults in a kernel started in notebooks/, as JupyterLab and ``jupyter nbconvert
    --execute`` start it."""
    root = studies["lr"]["tmp"]  # holds studies/lr_sweep.db and studies/lr_sweep/artifacts
    (root / "notebooks").mkdir(exist_ok=True)
    (root / "pyproject.toml").touch()  # what marks a repository root
    shutil.copy(REPO / "notebooks" / "compare_trials.ipynb", root / "notebooks")
    if where == "nbconvert":  # the README's command; nbconvert runs the kernel in notebooks/
        command = ["-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "notebooks/compare_trials.ipynb",
                   f"--ExecutePreprocessor.kernel_name={kernel}", "--output", "out.ipynb"]
    else:
        command = ["-m", "papermill", "notebooks/compare_trials.ipynb", "out.ipynb", "-k", kernel,
                   "--no-progress-bar", *(["--cwd", "notebooks"] if where.startswith("notebooks") else [])]
    run = subprocess.run([sys.executable, *command], cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    nb = nbformat.read(root / ("notebooks/out.ipynb" if where == "nbconvert" else "out.ipynb"), as_version=4)
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for c in nb.cells
                     if c.cell_type == "code" for o in c.outputs)
    assert "study.name=lr_sweep_trial" in text  # it read the study the defaults name


#: The command each notebook names when its study does not exist yet.
STUDY_COMMANDS = {"compare_trials.ipynb": "python -m llm_doe.search +study=lr_sweep",
                  "sft_study.ipynb": "python -m llm_doe.search +study=lora_sft",
                  "scientific_study.ipynb": "python -m llm_doe.search +study=weight_decay_effect",
                  "pareto_study.ipynb": "python -m llm_doe.search +study=lora_tradeoff"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_a_notebook_run_before_its_study_says_what_to_run_first(path: Path, kernel, tmp_path):
    """Issue 22 A6: ``jupyter nbconvert --execute`` on a fresh clone (no study yet) ends with one
    line naming the command that makes the study, not a traceback; nothing is written."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "pyproject.toml").touch()  # the repository root the notebook moves to
    shutil.copy(path, tmp_path / "notebooks")
    run = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                          f"notebooks/{path.name}", f"--ExecutePreprocessor.kernel_name={kernel}", "--output", "out"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "Error" not in run.stderr, run.stderr[-3000:]
    nb = nbformat.read(tmp_path / "notebooks" / "out.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error" or o.get("name") == "stderr"]
    (line,) = [o.text.strip() for o in outputs if o.get("name") == "stdout"]
    assert line.startswith("No study ") and f"run `{STUDY_COMMANDS[path.name]}` first" in line, line
    assert not (tmp_path / "studies").exists()


def test_require_study_lets_the_cells_run_again_once_the_study_exists(studies, tmp_path):
    """In JupyterLab: a missing study skips the cells below; pointing the parameters at a study
    that exists and running the check again runs them."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        shell.run_cell(f"import llm_doe as doe\nstorage = 'sqlite:///{tmp_path}/none.db'\nstudy_name = 'lr_sweep'")
        assert shell.run_cell("doe.require_study(storage, study_name, run='make it')").result is False
        assert shell.run_cell("1 + 1").result is None  # skipped
        shell.run_cell(f"storage = {studies['lr']['storage']!r}")  # a parameters cell still runs
        assert shell.run_cell("doe.require_study(storage, study_name, run='make it')").result is True
        assert shell.run_cell("1 + 1").result == 2
        shell.run_cell(f"storage, study_name = {studies['wd']['storage']!r}, 'wd'")  # scientific: sub-studies only
        assert shell.run_cell("doe.require_study(storage, study_name, run='make it')").result is True
    finally:
        InteractiveShell.clear_instance()
