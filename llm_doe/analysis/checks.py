"""The tuning playbook's checks on a table from :func:`~llm_doe.analysis.load_trials`.

Google's tuning playbook reads a study before trusting it: is the best trial on the edge of a
range, how many trials failed or diverged, what does each parameter do on its own (isolation),
which parameters matter. These functions take the frames only (no store, no plotting), so the
notebook, the report and the study note give the same answers.
"""

from __future__ import annotations

import math
import re
import shlex
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import FloatDistribution, IntDistribution

from llm_doe.analysis._common import complete_trials, default_param, is_maximized, param_columns, to_python
from llm_doe.analysis.feasibility import constrained, constraint_warnings, feasible_mask, infeasible_count
from llm_doe.analysis.tables import space_of
from llm_doe.formatting import fmt
from llm_doe.names import SEED_PARAMS


def competing_trials(table: pd.DataFrame) -> pd.DataFrame:
    """The trials whose values compete for the best: COMPLETE, finite and, in a constrained
    study, feasible (as Optuna's ``study.best_trial`` has it)."""
    done = complete_trials(table)
    return done[feasible_mask(done)]


def best_trial(table: pd.DataFrame) -> pd.Series:
    """The best COMPLETE (and feasible) trial's row (pruned trials stop early, so their values do
    not compete; infeasible ones broke a bound of ``study.constraints``)."""
    done = competing_trials(table)
    if done.empty:
        if constrained(table) and not complete_trials(table).empty:
            raise ValueError("no feasible COMPLETE trial: every one violates study.constraints")
        raise ValueError("no COMPLETE trial with a finite value")
    index = done["value"].idxmax() if is_maximized(table) else done["value"].idxmin()
    return done.loc[index]


def _position(value: float, dist: FloatDistribution | IntDistribution) -> float:
    low, high = float(dist.low), float(dist.high)
    if dist.log:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


def _boundary_frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """The boundary table with a boolean ``near_edge`` even when empty: pandas 3 reads an empty
    object column used as a mask as a column selection, and ``report[report["near_edge"]]``
    then loses every column."""
    frame = pd.DataFrame(rows, columns=columns)
    frame["near_edge"] = frame["near_edge"].astype(bool)
    return frame


def boundary_report(table: pd.DataFrame, *, margin: float = 0.1, top_k: int = 5) -> pd.DataFrame:
    """Is the best trial near the edge of a searched range? (Google's tuning playbook.)

    A best value in the outer ``margin`` of a range (measured on the log scale where the space
    is logarithmic) means the optimum may lie outside it: widen the range and search again
    before drawing conclusions. Categorical parameters have no edge and are left out.

    Args:
        table: From :func:`load_trials`.
        margin: The fraction of a range, at each end, that counts as "near the edge".
        top_k: Also report how many of the ``top_k`` best trials sit near an edge.

    Returns:
        One row per numeric parameter: ``param``, ``low``, ``high``, ``log``, ``best`` (the best
        trial's value), ``position`` (0 = low end, 1 = high end), ``edge`` (``low``, ``high`` or
        empty), ``near_edge``, ``top_k_near_edge`` (fraction), ``advice``.
    """
    columns = ["param", "low", "high", "log", "best", "position", "edge", "near_edge", "top_k_near_edge", "advice"]
    done = competing_trials(table)
    if done.empty:
        return _boundary_frame([], columns)
    best = best_trial(table)
    ranked = done.sort_values("value", ascending=not is_maximized(table)).head(top_k)
    rows = []
    for name, dist in space_of(table).items():
        if not isinstance(dist, (FloatDistribution, IntDistribution)) or name not in table.columns:
            continue
        if name in SEED_PARAMS:
            continue  # a seed's number is a label, not a scale: it has no edge to be near
        if pd.isna(best[name]):
            continue
        position = _position(float(best[name]), dist)
        edge = "low" if position <= margin else "high" if position >= 1 - margin else ""
        top_positions = [_position(float(v), dist) for v in ranked[name].dropna()]
        near = [p <= margin or p >= 1 - margin for p in top_positions]
        scale = " (log scale)" if dist.log else ""
        if edge:
            advice = (f"the best {name} ({fmt(best[name])}) lies in the {'lowest' if edge == 'low' else 'highest'} "
                      f"{margin:.0%} of [{fmt(dist.low)}, {fmt(dist.high)}]{scale}: the optimum may lie beyond; "
                      f"widen the range {'downward' if edge == 'low' else 'upward'} and search again")
        else:
            advice = f"the best {name} ({fmt(best[name])}) is inside [{fmt(dist.low)}, {fmt(dist.high)}]{scale}"
        rows.append({"param": name, "low": dist.low, "high": dist.high, "log": dist.log, "best": best[name],
                     "position": position, "edge": edge, "near_edge": bool(edge),
                     "top_k_near_edge": float(np.mean(near)) if near else np.nan, "advice": advice})
    return _boundary_frame(rows, columns)


def failure_report(table: pd.DataFrame) -> pd.Series:
    """How many trials failed, diverged or were pruned, and what fraction of the study that is.

    The playbook counts infeasible trials: a large failed or diverged fraction says the space
    reaches into settings that cannot train (too high a learning rate, too big a batch) and
    should shrink before its results are read. A trial stopped by Ctrl-C or SIGTERM, or whose
    worker died, and that was re-queued (the ``requeued`` column) is no such failure: it goes
    on as another trial, so it is counted apart and left out of the fractions.

    Returns:
        ``trials``, ``complete``, ``pruned``, ``failed`` (FAIL, re-queued ones excluded),
        ``diverged`` (failed with a ``diverged: ...`` reason), ``requeued`` (FAIL, interrupted
        and re-queued), ``running`` (running or waiting), and ``failed_fraction``,
        ``diverged_fraction``, ``pruned_fraction`` (of the trials that are not re-queued); for a
        constrained study also ``infeasible`` (finished trials that violate ``study.constraints``)
        and ``infeasible_fraction`` (of the finished trials).
    """
    n = len(table)
    requeued = table["requeued"].astype(bool) if "requeued" in table else pd.Series(False, index=table.index)
    states = table.loc[~requeued, "state"].value_counts()
    reasons = table["fail_reason"] if "fail_reason" in table else pd.Series([], dtype=object)
    diverged = int(reasons.dropna().astype(str).str.startswith("diverged").sum())
    counts: dict[str, float] = {
        "trials": n,
        "complete": int(states.get("COMPLETE", 0)),
        "pruned": int(states.get("PRUNED", 0)),
        "failed": int(states.get("FAIL", 0)),
        "diverged": diverged,
        "requeued": int(requeued.sum()),
        "running": int(states.get("RUNNING", 0) + states.get("WAITING", 0)),
    }
    counted = n - counts["requeued"]
    for name in ("failed", "diverged", "pruned"):
        counts[f"{name}_fraction"] = counts[name] / counted if counted else 0.0
    if constrained(table):  # finished trials that broke a bound of study.constraints
        infeasible, of = infeasible_count(table)
        counts["infeasible"] = infeasible
        counts["infeasible_fraction"] = infeasible / of if of else 0.0
    return pd.Series(counts, name="trials", dtype=object)


def trial_counts_text(failures: pd.Series) -> str:
    """One sentence of :func:`failure_report`'s counts (the study note and the report say it)."""
    requeued = f", {failures['requeued']} interrupted (re-queued)" if failures.get("requeued") else ""
    infeasible = f" ({failures['infeasible']} of them infeasible)" if failures.get("infeasible") else ""
    return (f"{failures['trials']} trials: {failures['complete']} complete, {failures['pruned']} pruned{infeasible}, "
            f"{failures['failed']} failed ({failures['diverged']} diverged){requeued}, {failures['running']} running.")


def isolation(table: pd.DataFrame, param: str | None = None, *, bins: int | None = None) -> pd.DataFrame:
    """The best trial for each value (or range) of one parameter: the playbook's isolation plot as a table.

    Comparing the best trial per value, rather than all trials, separates the parameter's own
    effect from the luck of the other parameters' draws.

    Args:
        table: From :func:`load_trials`.
        param: The parameter to isolate (default: ``train.learning_rate`` if searched, else the
            first parameter).
        bins: Group a numeric parameter into this many ranges (log-spaced on a log scale).
            Default: categorical and integer parameters by value, floats into 5 ranges once
            they take more than 10 values.

    Returns:
        Indexed by value (or range): ``trials`` (COMPLETE, feasible trials there), ``best_value``,
        ``best_trial``, and the best trial's other parameters.
    """
    param = param or default_param(table)
    done = competing_trials(table)
    dist = space_of(table).get(param) if table.attrs.get("space") else None
    key: pd.Series = done[param]
    numeric = isinstance(dist, (FloatDistribution, IntDistribution))
    if bins is None and isinstance(dist, FloatDistribution) and done[param].nunique() > 10:
        bins = 5
    if bins is not None and numeric and not done.empty:
        low, high = float(dist.low), float(dist.high)  # type: ignore[union-attr]
        edges = np.geomspace(low, high, bins + 1) if dist.log else np.linspace(low, high, bins + 1)  # type: ignore[union-attr]
        key = pd.cut(done[param].astype(float), edges, include_lowest=True)
    maximize = is_maximized(table)
    others = [c for c in param_columns(table) if c != param]
    rows = {}
    for value, group in done.groupby(key, observed=True, sort=True):
        best = group.loc[group["value"].idxmax() if maximize else group["value"].idxmin()]
        rows[value] = {"trials": len(group), "best_value": best["value"], "best_trial": int(best["number"]),
                       **{name: best[name] for name in others}}
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=["trials", "best_value", "best_trial", *others])
    frame.index.name = param
    return frame


def param_importances(table: pd.DataFrame, *, evaluator: optuna.importance.BaseImportanceEvaluator | None = None
                      ) -> pd.Series:
    """Which parameters matter, by one of Optuna's importance evaluators over the COMPLETE trials.

    The table's trials are handed to Optuna in memory (no second read of the store), so the
    numbers are Optuna's own: PED-ANOVA by default, or ``FanovaImportanceEvaluator()`` /
    ``MeanDecreaseImpurityImportanceEvaluator()``.

    Returns:
        Importance per parameter, largest first (empty with fewer than two COMPLETE trials).
    """
    space = space_of(table)
    done = complete_trials(table).dropna(subset=[p for p in space if p in table.columns])
    if len(done) < 2 or not space:
        return pd.Series(dtype=float, name="importance")
    names = [p for p in space if p in done.columns]
    distributions = {n: space[n] for n in names}
    trials = []
    for values, value in zip(done[names].astype(object).to_numpy().tolist(), done["value"].astype(float).tolist()):
        params = {n: int(v) if isinstance(space[n], IntDistribution) else to_python(v) for n, v in zip(names, values)}
        trials.append(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created in memory" line
    try:
        study = optuna.create_study(direction="maximize" if is_maximized(table) else "minimize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.add_trials(trials)
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return pd.Series(importances, name="importance", dtype=float).sort_values(ascending=False)


def study_warnings(table: pd.DataFrame, *, margin: float = 0.1) -> list[str]:
    """The review's warnings in words: best trials on a range edge, failed or diverged trials,
    infeasible trials (and which constraint they broke), trials that ran in different precisions."""
    notes = []
    failures = failure_report(table)
    if failures["failed"]:
        counted = failures["trials"] - failures["requeued"]  # a re-queued trial goes on as another
        notes.append(f"{failures['failed']} of {counted} trials failed ({failures['failed_fraction']:.0%})"
                     + (f", {failures['diverged']} of them diverged" if failures["diverged"] else "")
                     + ": see fail_reason; a space that cannot train should shrink"
                     + (f" ({failures['requeued']} interrupted and re-queued trial(s) not counted)"
                        if failures["requeued"] else ""))
    notes += constraint_warnings(table)
    if "predicted_classes" in table:
        # A trial that predicts one class for every validation example learned nothing, however its
        # loss compares: count them as the playbook counts infeasible trials.
        finished = table[table["state"].isin(["COMPLETE", "PRUNED"])]
        constant = finished.loc[finished["predicted_classes"] == 1, "number"].tolist()
        if constant:
            shown = ", ".join(f"#{n}" for n in constant[:10]) + (", ..." if len(constant) > 10 else "")
            notes.append(f"{len(constant)} of {len(finished)} finished trials learned nothing ({shown}): each "
                         "predicts one class for every validation example (a constant predictor, accuracy = "
                         "the majority share); their learning rate or schedule does not train")
    if table.attrs.get("direction") and not competing_trials(table).empty:
        for advice in boundary_report(table, margin=margin).query("near_edge")["advice"]:
            notes.append(advice)
    if complete_trials(table).empty:
        notes.append("no trial completed: nothing to compare yet")
    if "train_precision" in table:
        # train.precision=auto follows the machine: workers on different hardware may differ,
        # and trials written before trials recorded it have none (fp32 on CPU, bf16 on GPU).
        ran = table.loc[table["state"].isin(["COMPLETE", "PRUNED"]), "train_precision"]
        counts = ran.fillna("not recorded").value_counts()
        if len(counts) > 1 and ran.notna().any():
            listed = ", ".join(f"{name}: {n}" for name, n in counts.sort_index().items())
            notes.append(f"trials ran in different precisions ({listed}): their values may not compare; "
                         "pin train.precision to one of them")
    return notes


def _set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        node = tree.get(part)
        if not isinstance(node, dict):
            node = tree[part] = {}
        tree = node
    tree[parts[-1]] = value


def best_config(table: pd.DataFrame, number: int | None = None, *, as_yaml: bool = False,
                full: bool = False) -> dict[str, Any] | str:
    """The resolved config of the best trial (or trial ``number``): the study's config with that
    trial's parameters applied, as the trial ran it (YAML text with ``as_yaml``). Keys that do not
    apply to its choices (a pretrained model's in-code sizes, LoRA settings without PEFT) are left
    out, as in the trial's ``config.yaml``; ``full=True`` keeps every key."""
    import copy

    from llm_doe.schema import applicable

    row = best_trial(table) if number is None else table.set_index("number").loc[number].rename(number)
    config = copy.deepcopy(table.attrs.get("study_user_attrs", {}).get("config") or {})
    for name in param_columns(table):
        if not pd.isna(row[name]):
            _set_path(config, name, to_python(row[name]))
    if not full:
        config = applicable(config)
    if as_yaml:
        import yaml

        return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    return config


def _choice_literal(value: Any) -> str:
    """A value in Hydra's override grammar, exact (floats by repr, so they round-trip)."""
    value = to_python(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def _search_overrides(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The study's own command (from its provenance), as its head (``python -m llm_doe.search``)
    and its overrides, so a suggested command keeps every setting the user gave (a
    ``hydra.searchpath``, ``model=...``) and passes the same-experiment check."""
    command = (table.attrs.get("study_user_attrs", {}).get("provenance") or {}).get("command")
    if command:
        args = shlex.split(command)
        head_end = args.index("llm_doe.search") + 1 if "llm_doe.search" in args else 0
        return args[:head_end], [a for a in args[head_end:] if a != "--cfg"]
    return ["python", "-m", "llm_doe.search"], [f"+study={table.attrs.get('study_name', 'study')}"]


def rerun_command(table: pd.DataFrame, number: int | None = None) -> str:
    """The exact command that reruns the best trial (or trial ``number``) as a one-trial study.

    It repeats the study's own command (from its provenance) with the search space narrowed to
    that trial's values, a new ``study.name`` and ``study.n_trials=1``: same data, seeds and
    settings, so the rerun reproduces the trial (on the same hardware and versions).
    """
    row = best_trial(table) if number is None else table.set_index("number").loc[number].rename(number)
    trial_number = int(row["number"]) if "number" in row.index else int(row.name)
    name = table.attrs.get("study_name", "study")
    head, overrides = _search_overrides(table)
    keep = [a for a in overrides if not re.match(r"^\+{0,2}study\.(name|n_trials|enqueue|warm_start)[.=]", a)]
    space = ",".join(f'{p}:"choice({_choice_literal(row[p])})"' for p in param_columns(table)
                     if not pd.isna(row[p]))
    # The study's warm start (from its file) has no place in a one-point rerun: its points lie
    # outside the narrowed space.
    recorded = (table.attrs.get("study_user_attrs", {}).get("config") or {}).get("study") or {}
    warm = ["study.enqueue=[]"] if recorded.get("enqueue") else []
    recorded_warm = recorded.get("warm_start") or {}
    if recorded_warm.get("study_name"):  # all of it: a store or count without a study is refused
        warm += [f"study.warm_start.{key}=null" for key in ("study_name", "storage", "top_k")
                 if recorded_warm.get(key) is not None]
    return shlex.join([*head, *keep, f"study.name={name}_trial{trial_number}", "study.n_trials=1",
                       f"study.space={{{space}}}", *warm])


def confirm_command(table: pd.DataFrame, *, top_k: int = 3, seeds: int = 5) -> str:
    """The command that confirms the study's best configurations with several seeds: the
    search's own command (every override kept, so ``python -m llm_doe.confirm`` finds the same
    experiment) run by ``llm_doe.confirm``, with ``confirm.top_k`` and ``confirm.seeds`` unless
    the search's command already set them."""
    head, overrides = _search_overrides(table)
    head = [*head[:-1], "llm_doe.confirm"] if head else ["python", "-m", "llm_doe.confirm"]
    given = {a.lstrip("+").split("=", 1)[0] for a in overrides}
    extra = [f"{key}={value}" for key, value in (("confirm.top_k", top_k), ("confirm.seeds", seeds))
             if key not in given]
    return shlex.join([*head, *overrides, *extra])
