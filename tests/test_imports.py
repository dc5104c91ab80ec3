"""Import edges: what importing a part of the package may load.

The training code (``llm_doe.finetune``) must run without Optuna and Hydra, the schema without
Hydra, and ``import llm_doe`` must stay light; each check runs in a fresh interpreter, where
``sys.modules`` shows what an import really pulled in.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


def _run(code: str) -> None:
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_finetune_imports_neither_optuna_nor_hydra():
    _run("import llm_doe.finetune, llm_doe.finetune.loop, llm_doe.finetune.data, llm_doe.finetune.model, sys; "
         "assert 'optuna' not in sys.modules and 'hydra' not in sys.modules, "
         "sorted(m for m in sys.modules if m.split('.')[0] in ('optuna', 'hydra'))")


@pytest.mark.parametrize("module", ["llm_doe.finetune.chat", "llm_doe.finetune.peft", "llm_doe.finetune.smollm2",
                                    "llm_doe.finetune.metrics"])
def test_other_finetune_modules_too(module):
    _run(f"import {module}, sys; assert 'optuna' not in sys.modules and 'hydra' not in sys.modules")


def test_schema_imports_no_hydra():
    _run("import llm_doe.schema, llm_doe.formatting, sys; assert 'hydra' not in sys.modules")


def test_the_package_loads_no_torch_and_its_analysis_api_on_first_use():
    _run("import sys, llm_doe as doe; "
         "assert 'optuna' not in sys.modules and 'llm_doe.analysis' not in sys.modules; "
         "from llm_doe import load_trials; import llm_doe.analysis as a; "
         "assert load_trials is a.load_trials and doe.METRICS is a.METRICS; "
         "assert 'torch' not in sys.modules and 'hydra' not in sys.modules")


def test_star_import_and_unknown_names():
    _run("from llm_doe import *; import llm_doe; load_trials, study_names, METRICS\n"
         "try:\n    llm_doe.no_such_name\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit(1)")
