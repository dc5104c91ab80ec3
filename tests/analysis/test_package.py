"""The analysis package as a whole: light to import, everything public re-exported, and its
modules depending on each other's public names only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import llm_doe
from llm_doe import analysis
from tests.conftest import REPO

PACKAGE = Path(analysis.__file__).parent


def test_importing_the_package_does_not_load_torch():
    code = "import sys, llm_doe; print('torch' in sys.modules, 'hydra' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(REPO), timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_every_public_name_is_re_exported():
    """``llm_doe.X`` and ``llm_doe.analysis.X`` keep working whatever module now holds X."""
    for name in llm_doe.__all__:
        assert getattr(llm_doe, name) is getattr(analysis, name), name
    for name in analysis.__all__:
        assert getattr(analysis, name) is not None, name
    for name in ("StudyRef", "rdb_backend", "trial_counts_text", "CONFIRM_SUFFIX", "SEED_PARAMS", "METRICS"):
        assert name in analysis.__all__, name  # used as analysis.X by the commands


def test_no_module_imports_another_modules_private_names():
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llm_doe"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"
