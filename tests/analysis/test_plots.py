"""The figures: drawn from frames only, labelled and scaled as the study's space says."""

from __future__ import annotations

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

import llm_doe as doe
from tests.conftest import SYNTHETIC_SPACE


def _png_ok(fig: Figure) -> None:
    assert doe.figure_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def test_learning_curves_one_line_per_trial_coloured_by_learning_rate(synthetic):
    curves = doe.load_curves(synthetic["url"], "syn")
    fig = doe.plot_learning_curves(curves)
    assert isinstance(fig, Figure)
    ax, colorbar = fig.axes
    lines = sum(len(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection))
    assert lines == curves["trial"].nunique()
    assert colorbar.get_ylabel() == "train.learning_rate" and colorbar.get_yscale() == "log"
    assert ax.get_ylabel() == "val_loss"
    _png_ok(fig)


def test_roc_curves_are_labelled_by_learning_rate(tiny):
    roc = doe.load_roc(tiny["url"], tiny["name"], artifacts_dir=tiny["art"])
    fig = doe.plot_roc_curves(roc)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[-1] == "chance" and len(labels) == roc["trial"].nunique() + 1
    rates = roc.groupby("trial")["train.learning_rate"].first().sort_values()
    for label, (number, rate) in zip(labels, rates.items()):
        assert label.startswith(f"learning_rate={rate:.3g}") and f"(#{number})" in label
    _png_ok(fig)


def test_objective_vs_params_uses_log_axes_where_the_space_is_log(synthetic):
    table = doe.load_trials(synthetic["url"], "syn")
    fig = doe.plot_objective_vs_params(table)
    axes = {ax.get_xlabel(): ax for ax in fig.axes if ax.get_visible()}
    assert set(axes) == set(SYNTHETIC_SPACE)
    assert axes["train.learning_rate"].get_xscale() == "log"
    assert axes["train.weight_decay"].get_xscale() == "linear"
    assert [t.get_text() for t in axes["train.batch_size"].get_xticklabels()] == ["16", "32", "auto", "None", "True"]
    _png_ok(fig)


def test_importance_bars():
    importances = pd.Series({"train.learning_rate": 0.7, "train.num_epochs": 0.3})
    fig = doe.plot_importance(importances)
    assert len(fig.axes[0].patches) == 2
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["train.num_epochs", "train.learning_rate"]
    _png_ok(fig)


def test_scientific_isolation_is_drawn_from_a_frame_alone():
    """One line per scientific value, labelled by the value and its best trial: no store needed."""
    curves = pd.DataFrame({"train.weight_decay": [0.0, 0.0, 0.1, 0.1], "sub_study": ["s[0]", "s[0]", "s[1]", "s[1]"],
                           "trial": [3, 3, 1, 1], "step": [1, 2, 1, 2], "value": [0.7, 0.5, 0.6, 0.55]})
    curves.attrs = {"study_name": "s", "metric": "val_loss", "scientific": ["train.weight_decay"]}
    fig = doe.plot_scientific_isolation(curves)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["train.weight_decay=0 (#3)",
                                                              "train.weight_decay=0.1 (#1)"]
    assert ax.get_ylabel() == "val_loss" and ax.get_title() == "s: best trial per scientific value"
    _png_ok(fig)


def test_objective_vs_params_legend_sits_outside_every_panel(synthetic):
    """Inside a panel the legend could cover the best trial's star (and its own star then looks
    like the trial's): one legend for the figure, below the panels, overlapping none."""
    table = doe.load_trials(synthetic["url"], "syn")
    fig = doe.plot_objective_vs_params(table)
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    best = int(doe.best_trial(table)["number"])
    assert [t.get_text() for t in legend.get_texts()][-1] == f"best (#{best})"
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # constrained layout places the legend when the figure is drawn
    renderer = canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:
        if ax.get_visible():
            assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_xlabel()
    _png_ok(fig)
