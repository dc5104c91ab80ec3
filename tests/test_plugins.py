"""Plugins: every task and PEFT method declared once (llm_doe/plugins.py), and nothing else
comparing their names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from llm_doe.plugins import TaskSpec, peft_method, peft_method_names, task_names, task_spec
from llm_doe.schema import ConfigError
from tests.conftest import REPO

PACKAGE = REPO / "llm_doe"
#: Where a name may be compared: the tasks' own modules and the registry.
ALLOWED = (PACKAGE / "finetune" / "tasks", PACKAGE / "plugins.py")


def _literals(node: ast.AST) -> list[str]:
    """The string literals of a comparison operand, including those of a tuple, list or set."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for elt in node.elts for s in _literals(elt)]
    return []


def name_comparisons(path: Path) -> list[tuple[int, str]]:
    """(line, source) of every comparison with a task's or a PEFT method's name as a literal.
    "none" is also a pruner's name: it counts where the comparison speaks of a method."""
    tasks, methods = set(task_names()), set(peft_method_names())
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            text = ast.unparse(node)
            literals = [s for operand in (node.left, *node.comparators) for s in _literals(operand)]
            if any(s in tasks or (s in methods and (s != "none" or "method" in text)) for s in literals):
                found.append((node.lineno, text))
    return sorted(found)


def test_no_module_outside_the_tasks_and_the_registry_compares_a_task_or_method_name():
    assert {"classification", "causal_lm"} <= set(task_names())
    assert {"none", "lora", "prefix"} <= set(peft_method_names())
    offenders = [f"{path.relative_to(REPO)}:{line}: {text}" for path in sorted(PACKAGE.rglob("*.py"))
                 if not any(path == a or a in path.parents for a in ALLOWED)
                 for line, text in name_comparisons(path)]
    assert not offenders, "compare names through the declarations (llm_doe.plugins):\n" + "\n".join(offenders)


def test_the_check_finds_each_form_of_comparison(tmp_path):
    """The check above is only as good as its matcher: each form it must catch, caught."""
    sample = tmp_path / "sample.py"
    sample.write_text('if cfg.task.name == "classification": pass\n'
                      'if task in ("causal_lm", "x"): pass\n'
                      'if cfg.peft.method == "none": pass\n'
                      'if pruner == "none": pass\n'
                      'if method not in {"lora", "ia3"}: pass\n', encoding="utf-8")
    assert [text for _, text in name_comparisons(sample)] == [
        "cfg.task.name == 'classification'", "task in ('causal_lm', 'x')", "cfg.peft.method == 'none'",
        "method not in {'lora', 'ia3'}"]


def test_declarations_load_without_torch():
    """Config validation reads metric names and directions before anything heavy loads."""
    code = ("import sys; from llm_doe.plugins import task_spec, peft_method; "
            "assert task_spec('classification').metrics['accuracy'] == 'maximize'; "
            "assert not peft_method('prefix').mergeable and peft_method('lora').targets; "
            "import llm_doe.validation, llm_doe.schema; "
            "assert 'torch' not in sys.modules and 'peft' not in sys.modules, 'torch or peft loaded'")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_task_declaration_checks_its_metrics():
    with pytest.raises(ValueError, match="start with val_loss"):
        TaskSpec(name="x", metrics={"accuracy": "maximize"})
    with pytest.raises(ValueError, match="minimize or maximize"):
        TaskSpec(name="x", metrics={"val_loss": "down"})
    spec = TaskSpec(name="x", metrics={"val_loss": "minimize", "hits": "maximize"})
    assert spec.test_metrics == ("hits", "test_loss") and spec.direction("hits") == "maximize"


def test_unknown_names_and_bad_targets_are_config_errors():
    with pytest.raises(ConfigError) as err:
        task_spec("ner2")
    assert err.value.key == "task.name" and "classification" in err.value.message
    with pytest.raises(ConfigError) as err:
        peft_method("dora")
    assert err.value.key == "peft.method" and "lora" in err.value.message
    with pytest.raises(ConfigError) as err:
        task_spec("mine", "no_such_module_here.MyTask")
    assert err.value.key == "task.target" and "cannot import" in err.value.message
    with pytest.raises(ConfigError) as err:
        task_spec("mine", "llm_doe.plugins.TaskSpec")  # a class, but no Task with a spec
    assert err.value.key == "task.target" and "spec = TaskSpec" in err.value.message


def _import_edges() -> dict[str, set[str]]:
    """Each llm_doe module and the llm_doe modules it imports at its top level (TYPE_CHECKING
    blocks included: a loop there is a loop for the type checker and for readers)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            for stmt in node.body if isinstance(node, ast.If) else [node]:
                if isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.module.startswith("llm_doe"):
                    for alias in stmt.names:
                        sub = f"{stmt.module}.{alias.name}"
                        edges[module].add(sub if sub in modules else stmt.module)
                elif isinstance(stmt, ast.Import):
                    edges[module].update(a.name for a in stmt.names if a.name.startswith("llm_doe"))
    return edges


def test_no_import_loop_in_the_package():
    """schema -> tasks -> schema was one; the declarations (plugins) import nothing of llm_doe
    but its error, and load the built-in ones by name."""
    edges = _import_edges()
    state: dict[str, int] = {}
    loops = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(edges.get(module, ())):
            if state.get(nxt) == 1:
                loops.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt in edges and nxt not in state:
                visit(nxt, [*path, nxt])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not loops, "import loops:\n" + "\n".join(loops)
