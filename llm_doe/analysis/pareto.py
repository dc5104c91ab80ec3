"""Multi-objective studies (``study.metric: [val_loss, trainable_params]``): the Pareto front.

A study with several objectives has no single best trial: a trial is on the Pareto front when
no other trial is at least as good in every objective and better in one. These functions read
a :func:`~llm_doe.analysis.load_trials` table (its ``values_0``, ``values_1``, ... columns and
``attrs["directions"]`` / ``attrs["objectives"]``): no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from llm_doe.analysis.feasibility import feasible_mask

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def objectives(table: pd.DataFrame) -> list[str]:
    """The names of a table's objectives, in Optuna's order (``values_0``, ``values_1``, ...)."""
    names = table.attrs.get("objectives")
    if names:
        return [str(n) for n in names]
    return [str(table.attrs.get("metric", "value"))]


def is_multi_objective(table: pd.DataFrame) -> bool:
    """Whether the table's study optimised several objectives."""
    return len(table.attrs.get("directions") or ()) > 1


def _value_columns(table: pd.DataFrame) -> list[str]:
    return [f"values_{i}" for i in range(len(table.attrs.get("directions") or ()))]


def pareto_mask(table: pd.DataFrame) -> pd.Series:
    """True for the trials on the Pareto front: COMPLETE, every objective finite, feasible
    where the table says (a ``feasible`` column), and dominated by no other such trial.

    Trials with equal values are all on the front (none dominates the other), as in Optuna's
    ``study.best_trials``.
    """
    columns = _value_columns(table)
    if len(columns) < 2 or any(c not in table.columns for c in columns):
        raise ValueError("the Pareto front needs a multi-objective table from load_trials() "
                         "(values_0, values_1, ... and attrs['directions'])")
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in table.attrs["directions"]])
    values = table[columns].to_numpy(dtype=float) * signs  # every objective minimised
    ok = (table["state"] == "COMPLETE").to_numpy() & np.isfinite(values).all(axis=1)
    if "feasible" in table.columns:
        ok &= table["feasible"].map(lambda v: v is not False).to_numpy(dtype=bool)
    candidates = values[ok]
    # i is dominated when some j is <= in every objective and < in one.
    no_worse = (candidates[None, :, :] <= candidates[:, None, :]).all(axis=2)
    better = (candidates[None, :, :] < candidates[:, None, :]).any(axis=2)
    dominated = (no_worse & better).any(axis=1)
    mask = np.zeros(len(table), dtype=bool)
    mask[np.flatnonzero(ok)[~dominated]] = True
    return pd.Series(mask, index=table.index, name="pareto")


def pareto_front(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials on the Pareto front, ordered by the first objective (best first).

    Args:
        trials: From :func:`~llm_doe.analysis.load_trials` on a multi-objective study.

    Returns:
        One row per trial on the front: ``number``, one column per objective under its metric
        name (``val_loss``, ``trainable_params``), then the searched parameters. ``attrs`` as
        the table's.
    """
    mask = trials["pareto"] if "pareto" in trials.columns else pareto_mask(trials)
    names = objectives(trials)
    front = trials[mask.astype(bool)]
    out = pd.DataFrame({"number": front["number"]})
    for i, name in enumerate(names):
        column = front[f"values_{i}"].astype(float)
        # Counts (trainable_params, optimizer_steps) stay whole numbers.
        out[name] = column.astype("Int64") if len(column) and (column % 1 == 0).all() else column
    space = trials.attrs.get("space") or {}
    for param in space:
        if param in front.columns:
            out[param] = front[param]
    ascending = (trials.attrs.get("directions") or ["minimize"])[0] != "maximize"
    out = out.sort_values([names[0], "number"], ascending=[ascending, True], kind="stable").reset_index(drop=True)
    out.attrs.update(trials.attrs)
    return out


def pareto_text(trials: pd.DataFrame) -> list[str]:
    """The front in words, one line per trial: what the report and the study note list."""
    from llm_doe.formatting import fmt

    front = pareto_front(trials)
    names = objectives(trials)
    params = [p for p in (trials.attrs.get("space") or {}) if p in front.columns]
    return [f"#{int(row['number'])}: " + ", ".join(f"{n} {fmt(row[n], 4)}" for n in names)
            + (" with " + " ".join(f"{p}={fmt(row[p], 4)}" for p in params) if params else "")
            for _, row in front.iterrows()]


def plot_pareto(trials: pd.DataFrame, *, x: str | None = None, y: str | None = None,
                ax: Axes | None = None) -> Figure:
    """Every COMPLETE trial in the plane of two objectives, the Pareto front joined as a step line.

    Args:
        trials: From :func:`~llm_doe.analysis.load_trials` on a multi-objective study.
        x: The objective on the x axis; default the second (the cost).
        y: The objective on the y axis; default the first (the quality).
        ax: Axes to draw on; default a fresh figure.

    Returns:
        The figure: grey dots for dominated trials, red ones (labelled by trial number) on the front.
    """
    names = objectives(trials)
    if not is_multi_objective(trials):
        raise ValueError("plot_pareto needs a multi-objective table from load_trials()")
    x = x or names[1]
    y = y or names[0]
    for name in (x, y):
        if name not in names:
            raise ValueError(f"{name!r} is not an objective of this study ({', '.join(names)})")
    xi, yi = names.index(x), names.index(y)
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.0, 4.0), layout="constrained")
        ax = fig.add_subplot()
    fig = ax.figure  # type: ignore[assignment]  # a SubFigure only when the caller drew into one
    mask = trials["pareto"] if "pareto" in trials.columns else pareto_mask(trials)
    done = trials[(trials["state"] == "COMPLETE")]
    xs, ys = f"values_{xi}", f"values_{yi}"
    rest = done[~mask.loc[done.index].astype(bool)]
    ax.scatter(rest[xs], rest[ys], color="0.6", s=25, label="dominated")
    front = done[mask.loc[done.index].astype(bool)].sort_values(xs)
    # Two minimised objectives: the front as the staircase that bounds what it dominates.
    staircase = len(names) == 2 and all(d == "minimize" for d in trials.attrs["directions"])
    ax.plot(front[xs], front[ys], color="tab:red", marker="o", drawstyle="steps-post" if staircase else "default",
            linestyle="-" if len(names) == 2 else "none", label="Pareto front")
    for _, row in front.iterrows():
        ax.annotate(f"#{int(row['number'])}", (row[xs], row[ys]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    ax.set_xlabel(f"{x} ({trials.attrs['directions'][xi]})")
    ax.set_ylabel(f"{y} ({trials.attrs['directions'][yi]})")
    values = done[xs].to_numpy(dtype=float)
    if values.size and np.nanmin(values) > 0 and np.nanmax(values) / np.nanmin(values) > 20:
        ax.set_xscale("log")  # parameter counts span orders of magnitude
    ax.legend(loc="best", fontsize=8)
    ax.set_title(f"{trials.attrs.get('study_name', '')}: {y} against {x}")
    return fig


def objective_view(trials: pd.DataFrame, objective: str | int = 0) -> pd.DataFrame:
    """The table as a single-objective one on one of its objectives (``value`` = that objective,
    ``attrs["direction"]`` its direction): what the single-objective checks and plots read, e.g.
    ``param_importances(objective_view(trials, "val_loss"))``. A single-objective table is
    returned as it is."""
    if not is_multi_objective(trials):
        return trials
    names = objectives(trials)
    index = names.index(objective) if isinstance(objective, str) else int(objective)
    view = trials.drop(columns=["pareto"], errors="ignore").copy()
    view["value"] = view[f"values_{index}"]
    view.attrs.update(trials.attrs)
    view.attrs.update(direction=trials.attrs["directions"][index], directions=[trials.attrs["directions"][index]],
                      metric=names[index], objectives=[names[index]])
    return view


def ranked_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The COMPLETE trials best first: by value for one objective, feasible trials of a
    constrained study before infeasible ones (which are never the best trial); for several, the
    Pareto front (feasible only) first, each part by the first objective (the quality metric)."""
    done = trials[trials["state"] == "COMPLETE"].assign(_infeasible=lambda t: ~feasible_mask(t))
    if not is_multi_objective(trials):
        return done.sort_values(["_infeasible", "value"], ascending=[True, trials.attrs.get("direction") != "maximize"],
                                kind="stable").drop(columns="_infeasible")
    ascending = trials.attrs["directions"][0] != "maximize"
    front = done["pareto"] if "pareto" in done.columns else pareto_mask(trials).loc[done.index]
    return done.assign(_off=~front.astype(bool)).sort_values(
        ["_off", "_infeasible", "values_0"], ascending=[True, True, ascending], kind="stable",
    ).drop(columns=["_off", "_infeasible"])
