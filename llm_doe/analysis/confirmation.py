"""Confirmation: the best configurations of a search re-run with several seeds, and the verdict.

``python -m llm_doe.confirm`` writes the runs to the linked ``<name>-confirm`` study; this
module reads them back (:func:`confirmation_table`), summarises each configuration over its
seeds with a t-interval, tests each against the best with a paired t-test
(:func:`confirmation_stats`), and says the verdict in words. Its figure is
:func:`llm_doe.analysis.plots.plot_confirmation`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from llm_doe.analysis._common import param_columns, to_python
from llm_doe.analysis._source import StudyRef, study_names
from llm_doe.analysis.tables import load_trials
from llm_doe.formatting import fmt
from llm_doe.names import CONFIRM_SUFFIX, SEED_PARAMS, study_metrics


def confirm_quantities(runs: pd.DataFrame) -> tuple[str, ...]:
    """What a confirmation summarises per configuration: the objective, then the task's metrics."""
    return ("value", *study_metrics(runs.attrs.get("study_user_attrs") or {}))


def confirmation_name(study_name: str) -> str:
    """The linked confirmation study of ``study_name`` (``lr_sweep`` -> ``lr_sweep-confirm``)."""
    return study_name if study_name.endswith(CONFIRM_SUFFIX) else study_name + CONFIRM_SUFFIX


def load_confirmation(storage: StudyRef, study_name: str) -> pd.DataFrame:
    """One row per confirmation run, as :func:`load_trials`, with ``source_trial`` (the trial of the
    searched study whose configuration it re-runs), ``seed`` and ``data_seed``.

    Args:
        storage: As for :func:`load_trials`.
        study_name: The searched study (``lr_sweep``) or its confirmation (``lr_sweep-confirm``).
    """
    return load_trials(storage, confirmation_name(study_name), user_attrs=["source_trial", "seed", "data_seed"])


def _mean_ci(values: np.ndarray, level: float) -> tuple[float, float, float, float]:
    """Mean, sample standard deviation and the t-interval of the mean (NaN below two values)."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return (math.nan,) * 4
    mean = float(np.mean(values))
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(np.std(values, ddof=1))
    if std == 0.0:
        return mean, 0.0, mean, mean
    low, high = stats.t.interval(level, n - 1, loc=mean, scale=std / math.sqrt(n))
    return mean, std, float(low), float(high)


def paired_p_value(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided paired t-test of ``a`` against ``b`` (same seeds, same order): scipy's ``ttest_rel``.

    NaN where the test says nothing: fewer than two pairs, or identical samples. Differences
    that are all the same non-zero number (no seed-to-seed noise at all) give 0.
    """
    from scipy import stats

    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(diffs) < 2 or not np.isfinite(diffs).all():
        return math.nan
    if np.ptp(diffs) == 0.0:
        return math.nan if diffs[0] == 0.0 else 0.0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # near-constant differences: precision note
        return float(stats.ttest_rel(a, b).pvalue)


def confirmation_stats(runs: pd.DataFrame, *, direction: str | None = None, alpha: float = 0.05,
                       level: float = 0.95) -> pd.DataFrame:
    """Per configuration: mean, standard deviation and confidence interval of the objective and the
    metrics over seeds, and a paired t-test of each configuration against the best one.

    A single search trial is one draw of the seed's luck; the top of a search is where lucky draws
    gather. Re-running each configuration with the same K seeds makes the comparison paired (seed
    by seed), which removes the variance the seeds share, and says whether the winner is a winner.
    The best configuration is the one with the best mean objective, so its tests against the others
    are post hoc: read a p-value near ``alpha`` as "maybe", and with many configurations expect an
    occasional false "significant".

    Args:
        runs: From :func:`load_confirmation` (or any frame with ``source_trial``, ``seed``,
            ``state``, ``value``, the metric columns and ``number``). COMPLETE runs count; a
            (configuration, seed) pair run twice counts once (its latest run).
        direction: ``minimize`` or ``maximize``; default: ``runs.attrs["direction"]``.
        alpha: Significance level of the tests.
        level: Confidence level of the intervals.

    Returns:
        Indexed by ``trial`` (the source trial), best first: the configuration's parameters,
        ``n`` (seeds with a result), ``values`` and ``seeds`` (the objective per seed),
        ``<q>_mean``, ``<q>_std``, ``<q>_ci_low``, ``<q>_ci_high`` for ``q`` in ``value``,
        ``val_loss``, ``accuracy``, ``f1``, ``roc_auc``; ``n_paired``, ``diff_vs_best`` (mean
        paired difference of the objective), ``p_value``, ``significant``, ``best``, ``rank``.
        ``.attrs`` holds ``summary`` (the verdict in words), ``best_trial``, ``distinguishable``,
        ``n_seeds``, ``alpha``, ``level``, ``direction``, ``metric``.
    """
    direction = direction or runs.attrs.get("direction") or "minimize"
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be minimize or maximize, got {direction!r}")
    maximize = direction == "maximize"
    done, pair = _completed_runs(runs)
    params = [c for c in param_columns(runs) if c not in SEED_PARAMS] if runs.attrs.get("space") else []
    columns = [*params, "n", "values", "seeds"]
    quantities = confirm_quantities(runs)
    for q in quantities:
        columns += [f"{q}_mean", f"{q}_std", f"{q}_ci_low", f"{q}_ci_high"]
    columns += ["n_paired", "diff_vs_best", "p_value", "significant", "beats_best", "best", "rank"]
    rows, keyed = _summaries(done, params, pair, level, quantities)
    table = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    table.index.name = "trial"
    best: int | None = None
    ranked_on = ""
    if rows:
        table, best, ranked_on = _rank_against_best(table, keyed, maximize, alpha)
    others = table[~table["best"]] if rows else table
    table.attrs.update({
        "direction": direction, "metric": runs.attrs.get("metric", "value"), "alpha": alpha, "level": level,
        "best_trial": best, "n_seeds": int(table["n"].max()) if rows else 0,
        "distinguishable": bool(others["significant"].any()) if rows else False, "params": params,
        "metrics": list(quantities[1:]),
        "ranked_on": ranked_on,
    })
    table.attrs["summary"] = _confirmation_sentence(table)
    return table


def _completed_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The COMPLETE runs with a value, one per (configuration, seed) pair (its latest run), and
    the columns that make a pair (``seed``, and ``data_seed`` where the runs vary it)."""
    value = pd.to_numeric(runs["value"], errors="coerce")
    done = runs[(runs["state"] == "COMPLETE") & np.isfinite(value) & runs["source_trial"].notna()].copy()
    pair = ["seed"] + (["data_seed"] if "data_seed" in done.columns and done["data_seed"].notna().any() else [])
    if "number" in done.columns:
        done = done.sort_values("number", kind="stable")
    done = done.drop_duplicates(["source_trial", *pair], keep="last")
    done["source_trial"] = done["source_trial"].astype(int)
    return done, pair


def _summaries(done: pd.DataFrame, params: list[str], pair: list[str], level: float, quantities: tuple[str, ...]
               ) -> tuple[dict[int, dict[str, Any]], dict[int, pd.Series]]:
    """Per configuration: its row of the table (parameters, seeds, mean/std/interval of each
    quantity) and its objective keyed by seed pair (for the paired tests)."""
    rows: dict[int, dict[str, Any]] = {}
    keyed: dict[int, pd.Series] = {}
    for trial, group in done.groupby("source_trial", sort=True):
        group = group.sort_values(pair, kind="stable")
        row: dict[str, Any] = {p: to_python(group[p].iloc[0]) for p in params}
        row["n"] = len(group)
        row["values"] = [float(v) for v in group["value"]]
        row["seeds"] = [to_python(s) for s in group["seed"]]
        for q in quantities:
            if q not in group.columns:
                row.update({f"{q}_{s}": math.nan for s in ("mean", "std", "ci_low", "ci_high")})
                continue
            values = pd.to_numeric(group[q], errors="coerce").to_numpy(float)
            mean, std, low, high = _mean_ci(values[np.isfinite(values)], level)
            row.update({f"{q}_mean": mean, f"{q}_std": std, f"{q}_ci_low": low, f"{q}_ci_high": high})
        rows[int(trial)] = row
        keyed[int(trial)] = pd.Series(group["value"].astype(float).to_numpy(),
                                      index=pd.MultiIndex.from_frame(group[pair].astype(object)))
    return rows, keyed


def _rank_against_best(table: pd.DataFrame, keyed: dict[int, pd.Series], maximize: bool, alpha: float
                       ) -> tuple[pd.DataFrame, int, str]:
    """Order a non-empty table best first and test every configuration against the best, seed by
    seed; returns the table, the best configuration and what it was ranked on."""
    means = table["value_mean"].astype(float)
    best, ranked_on = _pick_best(means, keyed, maximize)
    order = [t for t in means.sort_values(ascending=not maximize, kind="stable").index if t != best]
    table = table.loc[[best, *order]]
    for trial in table.index:
        joined = pd.concat([keyed[trial], keyed[best]], axis=1, join="inner")
        table.at[trial, "n_paired"] = len(joined)
        if trial == best:
            table.at[trial, "diff_vs_best"], table.at[trial, "p_value"] = 0.0, math.nan
        else:
            table.at[trial, "diff_vs_best"] = float((joined.iloc[:, 0] - joined.iloc[:, 1]).mean())
            table.at[trial, "p_value"] = paired_p_value(joined.iloc[:, 0], joined.iloc[:, 1])
    # Significant only where the paired difference favours the best: a significant difference
    # the other way (possible when failed runs left unequal seed sets) is no "better than".
    diff = table["diff_vs_best"].astype(float)
    favours_best = diff < 0 if maximize else diff > 0
    low_p = table["p_value"].astype(float) < alpha
    table["significant"] = low_p & favours_best
    table["beats_best"] = low_p & ~favours_best & (table.index != best)
    table["best"] = table.index == best
    table["rank"] = np.arange(1, len(table) + 1)
    table = table.astype({"n": "int64", "significant": bool, "best": bool, "beats_best": bool})
    table["n_paired"] = table["n_paired"].astype("int64")
    table["rank"] = table["rank"].astype("int64")
    for name in ("diff_vs_best", "p_value"):
        table[name] = table[name].astype(float)
    return table, best, ranked_on

def _percent(alpha: float) -> str:
    return f"{alpha * 100:g}%"


def _pick_best(means: pd.Series, keyed: dict[int, pd.Series], maximize: bool) -> tuple[int, str]:
    """The best configuration of a confirmation, and what it was ranked on.

    With every run complete, every configuration has the same seeds and this is the best mean.
    When runs failed, means over different seeds are not comparable (one configuration may have
    lost its hardest seeds), so: only the configurations with the most completed seeds compete (a
    configuration that fails on some seeds is the less reliable one), and they are ranked by their
    mean over the seeds they all completed; with no seed in common, by their own means.
    """
    most = max(len(values) for values in keyed.values())
    candidates = [t for t in means.index if len(keyed[t]) == most]
    seed_sets = [set(keyed[t].index) for t in candidates]
    shared = set.intersection(*seed_sets)
    if all(s == seed_sets[0] for s in seed_sets) and len(candidates) == len(means):
        score, ranked_on = means, "the mean over all seeds"
    elif shared:
        keys = sorted(shared, key=str)
        score = pd.Series({t: float(keyed[t].loc[keys].mean()) for t in candidates})
        ranked_on = (f"the mean over the {len(keys)} seed(s) that the {len(candidates)} configuration(s) with the "
                     f"most completed runs ({most}) all completed")
    else:
        score = means.loc[candidates]
        ranked_on = (f"unpaired means: the configurations with the most completed runs ({most}) share no seed")
    score = score.loc[[t for t in means.index if t in score.index]]  # ties: the table's order (earlier trial)
    return int(score.idxmax() if maximize else score.idxmin()), ranked_on


def _confirmation_sentence(table: pd.DataFrame) -> str:
    """The verdict of :func:`confirmation_stats` in one or two plain sentences."""
    attrs = table.attrs
    metric, alpha, k = attrs.get("metric", "value"), attrs.get("alpha", 0.05), attrs.get("n_seeds", 0)
    if table.empty:
        return "No confirmation run has completed yet."
    best = attrs["best_trial"]
    row = table.loc[best]
    level = f"{attrs.get('level', 0.95):.0%}"
    where = (f"trial #{best} has the best mean {metric}, {row['value_mean']:.4g}"
             + (f" ({level} CI {row['value_ci_low']:.4g} to {row['value_ci_high']:.4g})"
                if pd.notna(row["value_ci_low"]) else ""))
    seeds = f"{k} seed{'s' if k != 1 else ''}"
    if len(table) == 1:
        return f"Only one configuration was confirmed ({seeds}): {where}; there is nothing to compare it with."
    others = table[~table["best"]]
    better = [int(t) for t in others.index[others["significant"]]]
    beats = [int(t) for t in others.index[others["beats_best"]]] if "beats_best" in others else []
    same = [int(t) for t in others.index[~others["significant"] & ~others.index.isin(beats)]]
    caveat = ""
    if attrs.get("ranked_on") and attrs["ranked_on"] != "the mean over all seeds":
        caveat = f" Some runs failed, so the best was chosen by {attrs['ranked_on']}."
    if beats:
        caveat += (f" On the seeds both completed, {', '.join(f'#{t}' for t in beats)} did significantly better than "
                   f"#{best} (paired t-test): the ranking rests on unequal seed sets; re-run the failed seeds.")
    if beats and not better:
        return f"{where[0].upper()}{where[1:]} over {seeds}.{caveat}"
    if not better:
        p = others["p_value"].astype(float)
        smallest = f", smallest p = {p.min():.2g}" if p.notna().any() else ""
        return (f"The top configurations are not distinguishable at the {_percent(alpha)} level with {seeds}: "
                f"{where}, but no other configuration differs from it significantly (paired t-test over seeds"
                f"{smallest}). Any of them will do; more seeds may separate them." + caveat)
    text = (f"{where[0].upper()}{where[1:]} over {seeds} and is better than {', '.join(f'#{t}' for t in better)} "
            f"at the {_percent(alpha)} level (paired t-test over seeds).")
    if same:
        text += f" It is not distinguishable from {', '.join(f'#{t}' for t in same)} at that level with {seeds}."
    return text + caveat


def confirmation_table(storage: StudyRef, study_name: str, *, missing_ok: bool = False) -> pd.DataFrame | None:
    """The confirmation of a study, from its linked ``<name>-confirm`` study: :func:`confirmation_stats`
    over the runs of the current plan (the top-k configurations x seeds the last
    ``python -m llm_doe.confirm`` asked for), with ``search_value`` (the configuration's single
    search trial, for the winner's curse: it usually looks better there than over seeds) and
    ``failed`` (planned seeds whose run failed).

    Args:
        storage: As for :func:`load_trials`.
        study_name: The searched study (``lr_sweep``) or its confirmation (``lr_sweep-confirm``).
        missing_ok: Return None when there is no confirmation study (reports and notebooks show
            the section only when there is one).

    Raises:
        ValueError: No confirmation study (unless ``missing_ok``).
    """
    name = confirmation_name(study_name)
    if name not in study_names(storage):
        if missing_ok:
            return None
        parent = name[: -len(CONFIRM_SUFFIX)]
        raise ValueError(f"no confirmation study {name!r}: run python -m llm_doe.confirm +study=... "
                         f"(with the search's overrides) on study {parent!r} first")
    runs = load_confirmation(storage, name)
    attrs = runs.attrs.get("study_user_attrs", {})
    keys = [tuple(None if pd.isna(x) else int(x) for x in k)
            for k in zip(runs["source_trial"], runs["seed"], runs["data_seed"])]
    planned = [tuple(p) for p in attrs.get("pairs") or []] or list(dict.fromkeys(k for k in keys if None not in k[:2]))
    complete = {k for k, state in zip(keys, runs["state"]) if state == "COMPLETE"}
    tried = {k for k, state in zip(keys, runs["state"]) if state == "FAIL"}
    failed: dict[int, int] = {}
    for pair in planned:
        if pair not in complete and pair in tried:
            failed[pair[0]] = failed.get(pair[0], 0) + 1
    kept = runs[pd.Series([k in set(planned) for k in keys], index=runs.index, dtype=bool)]
    kept.attrs.update(runs.attrs)
    table = confirmation_stats(kept, direction=runs.attrs.get("direction"), alpha=float(attrs.get("alpha", 0.05)))
    # A configuration with no successful run is a finding too (it diverges, say): keep its row.
    missing = [t for t in dict.fromkeys(p[0] for p in planned) if t not in table.index]
    if missing:
        params = confirm_params(table) or [c for c in param_columns(runs) if c not in SEED_PARAMS]
        extra = pd.DataFrame(index=pd.Index(missing, name="trial"), columns=table.columns)
        for trial in missing:
            first = kept[kept["source_trial"] == trial].head(1)
            for c in params:
                extra.at[trial, c] = to_python(first[c].iloc[0]) if len(first) and c in first else math.nan
            extra.at[trial, "n"], extra.at[trial, "values"], extra.at[trial, "seeds"] = 0, [], []
            extra.at[trial, "significant"], extra.at[trial, "best"] = False, False
            extra.at[trial, "beats_best"] = False
        saved = dict(table.attrs)
        table = pd.concat([table, extra]) if len(table) else extra
        table.attrs.update(saved)
        table["n"] = table["n"].astype("int64")
        table["significant"] = table["significant"].astype(bool)
        table["best"] = table["best"].astype(bool)
        table["beats_best"] = table["beats_best"].astype(bool)
        table["rank"] = pd.to_numeric(table["rank"], errors="coerce").astype("Int64")
        for c in table.columns:
            if c.endswith(("_mean", "_std", "_ci_low", "_ci_high")) or c in ("diff_vs_best", "p_value"):
                table[c] = pd.to_numeric(table[c], errors="coerce").astype(float)
    search_values = attrs.get("source_values") or {}
    after_n = table.columns.get_loc("n") + 1
    table.insert(after_n, "failed", [failed.get(int(t), 0) for t in table.index])
    table.insert(after_n + 1, "search_value", [float(search_values.get(str(t), math.nan)) for t in table.index])
    if failed:
        table.attrs["summary"] += (f" {sum(failed.values())} of {len(planned)} planned runs failed ("
                                   + ", ".join(f"#{t}: {k} of {sum(p[0] == t for p in planned)}"
                                               for t, k in failed.items())
                                   + f"); see fail_reason on the trials of {name}.")
    table.attrs.update({"study_name": name, "parent_study": attrs.get("parent_study", name[: -len(CONFIRM_SUFFIX)]),
                        "planned_seeds": list(attrs.get("seeds") or []), "top_k": attrs.get("top_k"),
                        "planned_runs": len(planned), "failed_runs": sum(failed.values()),
                        "storage": runs.attrs.get("storage")})
    return table


def confirmation_display(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`confirmation_table` as text to read: one row per configuration, best first, with the
    objective's mean, standard deviation and confidence interval, the paired test against the best,
    and each metric's mean and interval."""
    metric = table.attrs.get("metric", "value")
    level = f"{table.attrs.get('level', 0.95):.0%}"
    params = confirm_params(table)

    def num(value: Any, digits: int = 4) -> str:
        return "-" if value is None or pd.isna(value) else f"{value:.{digits}g}"

    def interval(row: pd.Series, q: str) -> str:
        if pd.isna(row[f"{q}_ci_low"]):
            return "-"
        return f"[{num(row[f'{q}_ci_low'])}, {num(row[f'{q}_ci_high'])}]"

    rows = []
    for trial, row in table.iterrows():
        out: dict[str, Any] = {"trial": f"#{trial}" + (" (best)" if row["best"] else "")}
        out.update({p: fmt(row[p]) for p in params})
        out["seeds"] = int(row["n"])
        if "failed" in table.columns and row["failed"]:
            out["failed"] = int(row["failed"])
        if "search_value" in table.columns:
            out["search"] = num(row["search_value"])
        out[f"{metric} mean"] = num(row["value_mean"])
        out["std"] = num(row["value_std"], 2)
        out[f"{level} CI"] = interval(row, "value")
        out["diff vs best"] = "-" if row["best"] else num(row["diff_vs_best"], 2)
        out["p vs best"] = "-" if row["best"] else num(row["p_value"], 2)
        for m in table.attrs.get("metrics") or study_metrics({}):
            if m != metric and f"{m}_mean" in table.columns and pd.notna(row[f"{m}_mean"]):
                out[m] = f"{num(row[f'{m}_mean'])} {interval(row, m)}"
        rows.append(out)
    return pd.DataFrame(rows).set_index("trial") if rows else pd.DataFrame()


def confirm_params(table: pd.DataFrame) -> list[str]:
    """The configuration's parameters among a confirmation table's columns."""
    return [c for c in table.attrs.get("params", []) if c in table.columns]


def format_confirmation(table: pd.DataFrame | None, study_name: str | None = None, *,
                        command: str | None = None) -> str:
    """The confirmation as printed by ``python -m llm_doe.confirm``: a heading, the table, the verdict.

    With no confirmation yet (``table`` None) it says how to run one: ``command`` when given
    (:func:`~llm_doe.analysis.confirm_command` of the search's trials: the search's own
    overrides kept), else a template to complete with them."""
    if table is None:
        if command:
            return f"No confirmation study yet: {command} re-runs its best configurations with several seeds."
        name = study_name or "NAME"
        return (f"No confirmation study yet: python -m llm_doe.confirm +study={name} confirm.top_k=3 "
                "confirm.seeds=5 (with the search's overrides) re-runs its best configurations with several seeds.")
    attrs = table.attrs
    head = (f"Confirmation of study {attrs.get('parent_study', '?')!r} ({attrs.get('study_name', '?')}): "
            f"{len(table)} configuration(s) x {attrs.get('n_seeds', 0)} seed(s); {attrs.get('metric', 'value')} "
            f"({attrs.get('direction')}), mean over seeds with a t-interval, paired t-test against the best.")
    shown = confirmation_display(table)
    body = shown.to_string() if not shown.empty else "(no completed run)"
    return f"{head}\n{body}\n{attrs.get('summary', '')}"
