"""What a review notebook does before it reads a study: check that the study exists.

A notebook run before its study (``jupyter nbconvert --execute notebooks/compare_trials.ipynb`` on a
fresh clone) would otherwise stop in a traceback in its first loader cell. :func:`require_study` says
in one line what to run first and, in IPython, leaves the notebook's remaining cells unrun (each
becomes empty), so the run ends on that line with success instead of an error.
"""

from __future__ import annotations

import ast
from typing import Any

from llm_doe.analysis._source import StudyRef, study_names

#: Marks the input transformer :func:`require_study` installs (so a later call can remove it).
_SKIPPER = "_llm_doe_skip_cells"


def _settings_only(source: str) -> bool:
    """Whether a cell only imports and assigns constants (the parameters cell): safe to run and
    needed to point the notebook at another study."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return False
    return all(isinstance(node, (ast.Import, ast.ImportFrom)) or
               (isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Constant))
               for node in body)


def _skip_cells(lines: list[str]) -> list[str]:
    """IPython input transformer: every cell but the parameters and the one calling
    :func:`require_study` runs as an empty cell."""
    source = "".join(lines)
    return lines if "require_study(" in source or _settings_only(source) else []


setattr(_skip_cells, _SKIPPER, True)


def _ipython() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - the notebook extras install IPython
        return None
    return get_ipython()


def require_study(storage: StudyRef, study_name: str, run: str) -> bool:
    """Whether ``storage`` holds ``study_name``. When it does not (no store yet, or no such study),
    print one line naming the command that makes it (``run``) and, in IPython, skip the rest of
    the notebook: each later cell runs empty, but for a parameters cell and this call, so setting
    other parameters and running this cell again picks up the study.

    Returns:
        True when the study exists (the notebook goes on), else False.
    """
    shell = _ipython()
    if shell is not None:  # a call after a missing study: cells run again, unless it is still missing
        shell.input_transformers_post[:] = [t for t in shell.input_transformers_post if not getattr(t, _SKIPPER, False)]
    try:
        names = study_names(storage)
    except (FileNotFoundError, ValueError) as err:
        where = str(err).splitlines()[0]
    else:
        if study_name in names or any(n.startswith(f"{study_name}[") for n in names):  # or its scientific sub-studies
            return True
        where = f"{storage} holds {', '.join(sorted(names)) or 'no study'}"
    print(f"No study {study_name!r} to review ({where}): run `{run}` first, from the repository root; or "
          "point this notebook at another study (papermill -p storage URL -p study_name NAME). "
          "The cells below are not run.")
    if shell is not None:
        shell.input_transformers_post.append(_skip_cells)
    return False
