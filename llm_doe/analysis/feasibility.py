"""Constrained studies (``study.constraints``): which trials are feasible, and which bound failed.

:func:`~llm_doe.analysis.load_trials` gives a constrained study's table the columns ``feasible``
(True, False, or NA for a trial with no constraint values: failed, running), ``violated`` (the
violated constraints' names, ``"peak_memory_mb.max"``) and ``constraint.<name>`` (Optuna's
constraint value: > 0 by how much a bound was exceeded, <= 0 the slack). The functions here
read those columns only; a table without them is an unconstrained study.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from llm_doe.formatting import fmt

#: Prefix of the per-constraint columns of a constrained study's table.
PREFIX = "constraint."
_FINISHED = ("COMPLETE", "PRUNED")


def constrained(table: pd.DataFrame) -> bool:
    """Whether the table is a constrained study's (it has a ``feasible`` column)."""
    return "feasible" in table.columns


def feasible_mask(table: pd.DataFrame) -> pd.Series:
    """True for the trials that may compete: feasible, or of an unconstrained study."""
    if not constrained(table):
        return pd.Series(True, index=table.index)
    return table["feasible"].fillna(True).astype(bool)


def _bounds(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    bounds = table.attrs.get("study_user_attrs", {}).get("constraints")
    return bounds if isinstance(bounds, dict) else {}


def _bound_text(name: str, bounds: dict[str, dict[str, float]]) -> str:
    attr, _, side = name.rpartition(".")
    bound = (bounds.get(attr) or {}).get(side)
    if bound is None:
        return "<= 0 (Optuna's constraint value)"
    return f"{'<=' if side == 'max' else '>='} {fmt(bound)}"


def constraint_report(table: pd.DataFrame) -> pd.DataFrame:
    """Per constraint: its bound, how many finished trials violate it (and what fraction of the
    finished trials that carry it), and the worst value recorded. Empty for an unconstrained study.

    Returns:
        Indexed by constraint (``peak_memory_mb.max``): ``attribute``, ``bound`` (``<= 8000``),
        ``violated``, ``of``, ``fraction``, ``worst`` (the attribute's most violating value).
    """
    columns = ["attribute", "bound", "violated", "of", "fraction", "worst"]
    names = [c[len(PREFIX):] for c in table.columns if c.startswith(PREFIX)]
    bounds = _bounds(table)
    rows = {}
    finished = table[table["state"].isin(_FINISHED)]
    for name in names:
        values = finished[PREFIX + name].astype(float).dropna()
        attr, _, side = name.rpartition(".")
        bound = (bounds.get(attr) or {}).get(side)
        worst: Any = np.nan
        if len(values) and bound is not None:
            worst = bound + values.max() if side == "max" else bound - values.max()
        rows[name] = {"attribute": attr or name, "bound": _bound_text(name, bounds), "violated": int((values > 0).sum()),
                      "of": len(values), "fraction": float((values > 0).mean()) if len(values) else 0.0, "worst": worst}
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    frame.index.name = "constraint"
    return frame


def infeasible_count(table: pd.DataFrame) -> tuple[int, int]:
    """(infeasible, finished with constraint values): the playbook's infeasible trials."""
    if not constrained(table):
        return 0, 0
    finished = table[table["state"].isin(_FINISHED) & table["feasible"].notna()]
    return int((~finished["feasible"].astype(bool)).sum()), len(finished)


def constraint_warnings(table: pd.DataFrame) -> list[str]:
    """The constrained study's lines for :func:`~llm_doe.analysis.study_warnings`: the
    infeasible fraction and which constraint failed, or that no trial is feasible."""
    bad, of = infeasible_count(table)
    if not bad:
        return []
    report = constraint_report(table)
    failed = [f"{row.attribute} {row.bound} ({row.violated} trial{'s' if row.violated > 1 else ''}, worst "
              f"{fmt(row.worst)})" for _, row in report[report["violated"] > 0].iterrows()]
    lines = [f"{bad} of {of} finished trials are infeasible ({bad / of:.0%}): they violate " + "; ".join(failed)
             + "; they are never the best trial"]
    done = table[(table["state"] == "COMPLETE") & table["feasible"].notna()]
    if len(done) and not done["feasible"].astype(bool).any():
        lines.append("no COMPLETE trial is feasible: relax study.constraints (in a new study) or search a space "
                     "that fits them")
    return lines
