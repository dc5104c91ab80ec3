"""Scientific studies: one sub-study per scientific value, compared by their best trials.

A study whose space gives parameters the ``scientific`` role runs one sub-study
(``<name>[path=value,...]``) per scientific value, each tuning the nuisance parameters anew with
the same budget (:mod:`llm_doe.design`). The playbook's fair comparison is between the sub-studies'
best trials: :func:`scientific_isolation` tabulates them, :func:`scientific_curves` loads their
learning curves for :func:`llm_doe.analysis.plots.plot_scientific_isolation`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from llm_doe.analysis._common import complete_trials
from llm_doe.analysis._source import StudyRef, study_names
from llm_doe.analysis.checks import best_trial
from llm_doe.analysis.tables import load_curves, load_trials


def scientific_substudies(storage: StudyRef, study_name: str) -> list[str]:
    """The sub-studies of a study with scientific parameters (``<name>[path=value,...]``), in
    the order the design enumerated them; empty for an ordinary study."""
    prefix = f"{study_name}["
    subs = [n for n in study_names(storage) if n.startswith(prefix) and n.endswith("]")]
    if not subs:
        return []
    first = load_trials(storage, subs[0]).attrs["study_user_attrs"].get("design", {})
    order = {name: i for i, name in enumerate(first.get("arms", []))}
    return sorted(subs, key=lambda n: (order.get(n, len(order)), n))


def scientific_isolation(storage: StudyRef, study_name: str) -> pd.DataFrame:
    """The playbook's isolation for a scientific study: for each scientific value, the best
    trial of its sub-study, in which the nuisance parameters were tuned anew with the same
    budget. Comparing these best trials (not all trials) is the fair comparison.

    Returns:
        One row per scientific value (or combination): the scientific parameters, ``sub_study``,
        ``trials`` (finished: COMPLETE or PRUNED), ``complete``, ``best_value``,
        ``best_trial``, and the best trial's nuisance parameters. ``attrs['caveats']`` lists
        the fixed parameters; ``attrs['metric']``/``attrs['direction']`` the objective.

    Raises:
        ValueError: The study has no scientific sub-studies.
    """
    subs = scientific_substudies(storage, study_name)
    if not subs:
        raise ValueError(f"{study_name!r} has no scientific sub-studies ({study_name}[param=value])")
    rows, attrs = [], {}
    for name in subs:
        table = load_trials(storage, name)
        attrs = table.attrs
        design = attrs["study_user_attrs"].get("design", {})
        finished = table[table["state"].isin(["COMPLETE", "PRUNED"])]
        row = {**design.get("scientific", {}), "sub_study": name, "trials": len(finished),
               "complete": int((table["state"] == "COMPLETE").sum()), "best_value": np.nan, "best_trial": None}
        if not complete_trials(table).empty:
            best = best_trial(table)
            row.update(best_value=best["value"], best_trial=int(best["number"]),
                       **{p: best[p] for p in attrs["space"] if p in best.index})
        rows.append(row)
    frame = pd.DataFrame(rows)
    design = attrs.get("study_user_attrs", {}).get("design", {})
    frame.attrs.update({"study_name": study_name, "metric": attrs.get("metric", "value"),
                        "scientific": list(design.get("scientific", {})),
                        "direction": attrs.get("direction"),
                        "caveats": design.get("caveats", [])})
    return frame


def scientific_curves(storage: StudyRef, study_name: str, isolation: pd.DataFrame | None = None) -> pd.DataFrame:
    """The learning curve of each scientific value's best trial, in long form, for
    :func:`~llm_doe.analysis.plots.plot_scientific_isolation`.

    Args:
        storage: As for :func:`~llm_doe.analysis.load_trials`.
        study_name: The scientific study (the name its sub-studies share).
        isolation: :func:`scientific_isolation` of the study, where already loaded (else it is).

    Returns:
        One row per evaluation of each best trial, in the sub-studies' order: the scientific
        parameters, ``sub_study``, ``trial`` (the best trial), ``step``, ``value``. A scientific
        value with no COMPLETE trial has no rows. ``attrs``: ``study_name``, ``metric``,
        ``scientific``, ``direction``, as :func:`scientific_isolation`'s.
    """
    table = scientific_isolation(storage, study_name) if isolation is None else isolation
    scientific = list(table.attrs.get("scientific", []))
    parts = []
    for _, row in table.iterrows():
        if pd.isna(row["best_value"]):
            continue
        curves = load_curves(storage, row["sub_study"], params=False)
        curve = curves[curves["trial"] == row["best_trial"]].sort_values("step")
        part = curve[["trial", "step", "value"]].reset_index(drop=True)
        part.insert(0, "sub_study", row["sub_study"])
        for name in reversed(scientific):
            part.insert(0, name, [row[name]] * len(part))
        parts.append(part)
    columns = [*scientific, "sub_study", "trial", "step", "value"]
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({c: [] for c in columns})
    frame.attrs = {"study_name": table.attrs.get("study_name", study_name),
                   "metric": table.attrs.get("metric", "value"), "scientific": scientific,
                   "direction": table.attrs.get("direction")}
    return frame
