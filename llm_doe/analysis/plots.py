"""Figures from the loaders' frames: matplotlib ``Figure`` objects, no I/O.

Every function here takes DataFrames (from :mod:`llm_doe.analysis.tables`,
:mod:`~llm_doe.analysis.checks`, :mod:`~llm_doe.analysis.confirmation` or
:mod:`~llm_doe.analysis.scientific`) and draws them; reading a store is the loaders' job, so a
figure can be redrawn from a saved frame and tested without a study. Figures are fresh
``Figure`` objects, not pyplot's: no global state, no double display in notebooks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution, json_to_distribution

from llm_doe.analysis._common import complete_trials, default_param, param_columns
from llm_doe.analysis.checks import best_trial
from llm_doe.analysis.confirmation import confirm_params
from llm_doe.analysis.tables import space_of
from llm_doe.formatting import fmt

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Line style per trial state: solid complete, dashed pruned, dotted failed.
_STATE_STYLE = {"COMPLETE": "-", "PRUNED": "--", "FAIL": ":", "RUNNING": "-.", "WAITING": "-."}


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """A fresh Figure (not pyplot's: no global state, no double display in notebooks) or the given axes."""
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _colouring(frame: pd.DataFrame, by: str) -> tuple[Any, Any, bool]:
    """(values -> colours, a ScalarMappable for a colour bar or None, is numeric).

    The colour function takes an array, so 10,000 curves are coloured in one call."""
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm, Normalize

    values = frame[by].dropna()
    space = frame.attrs.get("space") or {}
    dist = json_to_distribution(space[by]) if by in space else None
    if isinstance(dist, CategoricalDistribution) or not pd.api.types.is_numeric_dtype(values) or values.empty:
        cmap = matplotlib.colormaps["tab10"]
        levels = {v: cmap(i % 10) for i, v in enumerate(pd.unique(values))}
        return (lambda vs: [levels.get(v, "grey") for v in vs]), None, False
    low, high = float(values.min()), float(values.max())
    log = bool(getattr(dist, "log", False)) and low > 0
    if high <= low:
        high = low * 1.0001 + 1e-12
    norm = LogNorm(low, high) if log else Normalize(low, high)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="grey")  # a trial without the parameter
    mappable = ScalarMappable(norm=norm, cmap=cmap)
    return (lambda vs: cmap(norm(pd.to_numeric(pd.Series(vs), errors="coerce").to_numpy(float)))), mappable, True


def _metric_label(frame: pd.DataFrame) -> str:
    return str(frame.attrs.get("metric", "value"))


def plot_learning_curves(curves: pd.DataFrame, *, color_by: str | None = None, ax: Axes | None = None) -> Figure:
    """Each trial's validation metric per evaluation, coloured by a parameter (the learning rate).

    Line style tells the state (solid complete, dashed pruned, dotted failed), so a pruned
    trial reads as "stopped here" rather than "ended badly".

    Args:
        curves: From :func:`load_curves`.
        color_by: The parameter that colours the lines (default: ``train.learning_rate`` if
            searched, else the first parameter); on a log colour scale where the space is log.
        ax: Draw into these axes instead of a new figure.
    """
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    fig, ax = _axes(ax, (7.5, 4.5))
    color_by = color_by or default_param(curves)
    colour, mappable, numeric = _colouring(curves, color_by)
    for state, frame in curves.groupby("state", sort=True):
        frame = frame.sort_values(["trial", "step"], kind="stable")
        # One LineCollection per state, cut at trial boundaries: no per-trial Python loop.
        starts = np.flatnonzero(np.diff(frame["trial"].to_numpy())) + 1
        points = np.column_stack([frame["step"].to_numpy(float), frame["value"].to_numpy(float)])
        segments = np.split(points, starts)
        colours = colour(frame[color_by].to_numpy()[np.r_[0, starts]])
        ax.add_collection(LineCollection(segments, colors=colours, linestyles=_STATE_STYLE.get(str(state), "-"),
                                         linewidths=1.5 if len(segments) <= 200 else 0.6, alpha=0.9))
        if len(segments) <= 200:  # where each trial ended (x: pruned); noise on thousands of curves
            ends = points[np.r_[starts - 1, len(points) - 1]]
            ax.plot(ends[:, 0], ends[:, 1], ls="none", marker="x" if state == "PRUNED" else "o", ms=4,
                    color="black", alpha=0.5)
    ax.autoscale_view()
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("evaluation step")
    ax.set_ylabel(_metric_label(curves))
    ax.set_title(f"{curves.attrs.get('study_name', '')}: learning curves by {color_by}".lstrip(": "))
    states = sorted(curves["state"].unique()) if len(curves) else []
    handles = [Line2D([], [], color="black", ls=_STATE_STYLE.get(s, "-"), label=s.lower()) for s in states]
    if numeric and mappable is not None:
        fig.colorbar(mappable, ax=ax, label=color_by)
    elif not numeric:
        handles += [Line2D([], [], color=colour([v])[0], label=f"{color_by}={v}") for v in pd.unique(curves[color_by])]
    if handles:
        ax.legend(handles=handles, fontsize="small", loc="best")
    return fig


def plot_training_loss(metrics: pd.DataFrame, *, color_by: str | None = None, ax: Axes | None = None) -> Figure:
    """Each trial's training loss against its optimizer steps, coloured by a parameter (the learning
    rate), line style by state as in :func:`plot_learning_curves`: the curve optuna-dashboard does
    not draw (it shows the validation metric), read from the trials' ``metrics.jsonl``.

    Each point is the mean training loss over the optimizer steps since the previous evaluation,
    drawn at the step of that evaluation.

    Args:
        metrics: From :func:`load_metrics`.
        color_by: As for :func:`plot_learning_curves`.
        ax: Draw into these axes instead of a new figure.
    """
    from matplotlib.lines import Line2D

    fig, ax = _axes(ax, (7.5, 4.5))
    rows = metrics.dropna(subset=["train_loss"]) if "train_loss" in metrics else metrics.iloc[:0]
    color_by = color_by or (default_param(metrics) if param_columns(metrics) else None)
    colour, mappable, numeric = _colouring(rows, color_by) if color_by else (lambda vs: ["C0"] * len(vs), None, True)
    x = "optimizer_step" if "optimizer_step" in rows else "step"
    for _, trial in rows.groupby("trial", sort=True):
        trial = trial.sort_values(x, kind="stable")
        value = trial[color_by].iloc[0] if color_by else None
        ax.plot(trial[x], trial["train_loss"], color=colour([value])[0], lw=1.5, alpha=0.9, marker=".",
                ls=_STATE_STYLE.get(str(trial["state"].iloc[0]), "-"))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step" if x == "optimizer_step" else "evaluation step")
    ax.set_ylabel("training loss")
    name = metrics.attrs.get("study_name", "")
    ax.set_title((f"{name}: " if name else "") + "training loss" + (f" by {color_by}" if color_by else ""))
    states = sorted(rows["state"].unique()) if len(rows) else []
    handles = [Line2D([], [], color="black", ls=_STATE_STYLE.get(s, "-"), label=s.lower()) for s in states]
    if color_by and numeric and mappable is not None:
        fig.colorbar(mappable, ax=ax, label=color_by)
    elif color_by and not numeric:
        handles += [Line2D([], [], color=colour([v])[0], label=f"{color_by}={v}") for v in pd.unique(rows[color_by])]
    if handles:
        ax.legend(handles=handles, fontsize="small", loc="best")
    return fig


def plot_roc_curves(roc: pd.DataFrame, *, label_by: str | None = None, ax: Axes | None = None) -> Figure:
    """The trials' ROC curves overlaid, labelled and coloured by a parameter (the learning rate).

    The seed document's figure: binary classifiers fine-tuned with different learning rates,
    each at its best evaluation; a curve hugging the top-left corner separates the classes
    best, the diagonal is chance.

    Args:
        roc: From :func:`load_roc`.
        label_by: The parameter in each label and colour (default as :func:`plot_learning_curves`).
        ax: Draw into these axes instead of a new figure.
    """
    fig, ax = _axes(ax, (6.0, 5.5))
    label_by = label_by or default_param(roc)
    colour, _, _ = _colouring(roc, label_by)
    order = roc.groupby("trial", sort=True)[label_by].first().sort_values(kind="stable")
    for number, value in order.items():
        trial = roc[roc["trial"] == number]
        auc = trial["auc"].iloc[0]
        ax.plot(trial["fpr"], trial["tpr"], color=colour([value])[0], lw=1.8,
                label=f"{label_by.rsplit('.', 1)[-1]}={fmt(value)}  AUC {auc:.3f}  (#{number})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC at each trial's best evaluation, by {label_by}")
    ax.legend(fontsize="x-small", loc="lower right")
    return fig


def plot_objective_vs_params(table: pd.DataFrame, *, params: Sequence[str] | None = None) -> Figure:
    """The objective of every COMPLETE trial against each parameter, on a log axis where the space is log.

    Pruned trials are drawn hollow at their last reported value (they stopped early, so they
    are shown, not ranked); the best trial is starred.
    """
    from matplotlib.figure import Figure

    params = list(params or param_columns(table))
    space = space_of(table)
    ncols = min(3, max(1, len(params)))
    nrows = max(1, math.ceil(len(params) / ncols))
    fig = Figure(figsize=(4.6 * ncols, 3.8 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    done = complete_trials(table)
    pruned = table[(table["state"] == "PRUNED") & np.isfinite(table["value"].astype(float))]
    best = best_trial(table) if not done.empty else None
    for ax, name in zip(axes, params):
        dist = space.get(name)
        if isinstance(dist, CategoricalDistribution):
            positions = {c: i for i, c in enumerate(dist.choices)}
            x = done[name].map(positions)
            xp = pruned[name].map(positions)
            ax.set_xticks(range(len(dist.choices)), [str(c) for c in dist.choices])
        else:
            x, xp = done[name].astype(float), pruned[name].astype(float)
            if getattr(dist, "log", False):
                ax.set_xscale("log")
        ax.scatter(x, done["value"], s=30, color="tab:blue", label="complete", zorder=2)
        if not pruned.empty:
            ax.scatter(xp, pruned["value"], s=30, facecolors="none", edgecolors="tab:grey", label="pruned", zorder=2)
        if best is not None and not pd.isna(best[name]):
            bx = positions[best[name]] if isinstance(dist, CategoricalDistribution) else float(best[name])
            ax.scatter([bx], [best["value"]], marker="*", s=220, color="tab:red",
                       label=f"best (#{int(best['number'])})", zorder=3)
        if isinstance(dist, (FloatDistribution, IntDistribution)):
            # The searched range's ends, so a best trial on an edge shows as one.
            for end in (dist.low, dist.high):
                ax.axvline(end, color="tab:grey", ls=":", lw=1)
        ax.set_xlabel(name)
        ax.set_ylabel(_metric_label(table))
    for ax in axes[len(params):]:
        ax.set_visible(False)
    # One legend for all panels, below them: inside an axes it can sit on the best trial's
    # star, and its own red star then cannot be told from the trial's.
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), fontsize="small", frameon=False)
    fig.suptitle(f"{table.attrs.get('study_name', '')}: objective vs parameters".lstrip(": "))
    return fig


def plot_importance(importances: pd.Series, *, ax: Axes | None = None) -> Figure:
    """Parameter importances (from :func:`param_importances`) as horizontal bars, largest on top."""
    fig, ax = _axes(ax, (6.0, 0.5 + 0.45 * max(1, len(importances))))
    ordered = importances.sort_values()
    ax.barh([str(i) for i in ordered.index], ordered.to_numpy(float), color="tab:blue")
    for y, value in enumerate(ordered.to_numpy(float)):
        ax.text(value, y, f" {value:.2f}", va="center", fontsize="small")
    ax.set_xlim(0, max(1.0, float(ordered.max()) * 1.15) if len(ordered) else 1.0)
    ax.set_xlabel("importance")
    ax.set_title("parameter importance" if len(ordered) else "parameter importance (needs 2+ complete trials)")
    return fig


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """A Figure as PNG bytes (for reports and notes)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def plot_confirmation(table: pd.DataFrame, *, ax: Axes | None = None) -> Figure:
    """Each confirmed configuration's objective per seed (dots), its mean with the confidence
    interval (bar), and its single search trial (hollow diamond): the distance between diamond and
    bar is the luck the search picked it with."""
    fig, ax = _axes(ax, (1.8 + 1.3 * max(1, len(table)), 4.2))
    metric = table.attrs.get("metric", "value")
    params = confirm_params(table)
    labels = []
    for x, (trial, row) in enumerate(table.iterrows()):
        colour = "tab:red" if row["best"] else "tab:blue"
        values = list(row["values"])
        jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(len(values))
        ax.scatter(x + jitter, values, s=14, color=colour, alpha=0.5, zorder=2)
        if pd.notna(row["value_ci_low"]):
            ax.errorbar([x], [row["value_mean"]], yerr=[[row["value_mean"] - row["value_ci_low"]],
                                                        [row["value_ci_high"] - row["value_mean"]]],
                        fmt="o", color=colour, capsize=6, lw=2, zorder=3)
        else:
            ax.scatter([x], [row["value_mean"]], color=colour, zorder=3)
        if "search_value" in table.columns and pd.notna(row["search_value"]):
            ax.scatter([x + 0.25], [row["search_value"]], marker="D", facecolors="none", edgecolors="black",
                       zorder=3, label="search trial" if x == 0 else None)
        p = "" if row["best"] or pd.isna(row["p_value"]) else f"\np={row['p_value']:.2g}"
        labels.append(f"#{trial}" + "".join(f"\n{c.rsplit('.', 1)[-1]}={fmt(row[c])}" for c in params) + p)
    ax.set_xticks(range(len(table)), labels, fontsize="small")
    ax.set_xlim(-0.6, len(table) - 0.4)
    ax.set_ylabel(str(metric))
    level = f"{table.attrs.get('level', 0.95):.0%}"
    ax.set_title(f"{table.attrs.get('parent_study', '')}: {metric} over {table.attrs.get('n_seeds', 0)} seeds "
                 f"(mean, {level} CI)".lstrip(": "))
    if "search_value" in table.columns and table["search_value"].notna().any():
        ax.legend(fontsize="small", loc="best")
    return fig


def plot_scientific_isolation(curves: pd.DataFrame, *, ax: Axes | None = None) -> Figure:
    """The learning curve of each scientific value's best trial, labelled by the value.

    Args:
        curves: From :func:`~llm_doe.analysis.scientific_curves`: one curve per scientific
            value, with the scientific parameters, ``sub_study`` and ``trial`` on every row.
        ax: Draw into these axes instead of a new figure.
    """
    fig, ax = _axes(ax, (7.0, 4.2))
    scientific = curves.attrs.get("scientific", [])
    for _, curve in curves.groupby("sub_study", sort=False):
        first = curve.iloc[0]
        label = ", ".join(f"{k}={fmt(first[k])}" for k in scientific)
        ax.plot(curve["step"], curve["value"], marker="o", ms=3, label=f"{label} (#{int(first['trial'])})")
    ax.set_xlabel("evaluation")
    ax.set_ylabel(curves.attrs.get("metric", "value"))
    ax.set_title(f"{curves.attrs.get('study_name', '')}: best trial per scientific value")
    ax.legend(fontsize=8)  # the figure's constrained layout fits it (tight_layout() here warned in notebooks)
    return fig
