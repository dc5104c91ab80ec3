"""``python -m llm_doe.report +study=NAME [overrides...] [--out PATH]``: a study report to share.

Writes ``studies/<name>/report.html``: one self-contained file (figures embedded as PNG, no
scripts, no links to fetch) with the trials table, learning curves, ROC curves by learning
rate, objective against each parameter, parameter importance, the boundary and failure checks,
and the best trial's config with the command that reruns it. It resolves the study exactly as
``python -m llm_doe.search`` does (same composition, same overrides, same storage), so the
command that ran a study, with ``search`` replaced by ``report``, reports on it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import os
import sys
from pathlib import Path
from typing import Any, cast

import pandas as pd

from llm_doe import analysis
from llm_doe.formatting import fmt, shell_lines
from llm_doe.notes import ONE_PARAMETER
from llm_doe.schema import ConfigError
from llm_doe.storage import store_of

USAGE = """usage: python -m llm_doe.report study.name=NAME [storage.* ...] [--out PATH] [--cfg job|hydra|all]
       python -m llm_doe.report +study=FILE [the search's overrides ...]

Writes studies/NAME/report.html (self-contained HTML) for study NAME of the store
(storage.*: the search's; the study's config comes from the store).
  --out PATH  write the report here instead
  --cfg PART  print the composed config (job), Hydra's settings (hydra) or both (all)
  -h, --help  this help and the config groups
"""

#: ROC curves drawn at most (the best trials): a figure of hundreds of curves shows nothing.
MAX_ROC_CURVES = 12
#: Trials whose sample generations are set side by side (the best complete ones).
MAX_GENERATION_TRIALS = 3
#: Rows of the trials table at most (the first trials by number); the rest are counted.
MAX_TABLE_ROWS = 1000

_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2rem; }
.meta { color: #666; font-size: 0.9rem; }
.warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: 0.5rem 1rem; }
.ok { background: #eef8ee; border-left: 4px solid #3a3; padding: 0.5rem 1rem; }
table { border-collapse: collapse; font-size: 0.82rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 0.2rem 0.45rem; text-align: right; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; }
pre { background: #f6f6f6; padding: 0.7rem; overflow-x: auto; font-size: 0.82rem; white-space: pre-wrap;
      overflow-wrap: anywhere; }
img { max-width: 100%; } figure { margin: 1rem 0; } figcaption { color: #555; font-size: 0.88rem; }
.scroll { max-height: 32rem; overflow: auto; } .wide { overflow-x: auto; }
"""


def _img(fig: Any, caption: str) -> str:
    data = base64.b64encode(analysis.figure_png(fig)).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _table(frame: pd.DataFrame, index: bool = False) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else f"{value:.4g}"
        if value is None or value is pd.NA or (not isinstance(value, str) and pd.isna(value)):
            return ""
        return str(value)

    frame = frame.reset_index() if index else frame
    head = "".join(f'<th class="text">{html.escape(str(c))}</th>' for c in frame.columns)
    rows = []
    for values in frame.itertuples(index=False):
        cells = "".join(f'<td{" class=text" if isinstance(v, str) else ""}>{html.escape(cell(v))}</td>'
                        for v in values)
        rows.append(f"<tr>{cells}</tr>")
    # In its own sideways scroller: a table wider than the page (one column per parameter) scrolls
    # there instead of widening the whole page.
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _generations_section(storage: Any, name: str, trials: Any, artifacts_dir: Any) -> str:
    """The best complete trials' answers to the same validation prompts, side by side."""
    title = "Sample generations of the best trials"
    if artifacts_dir is None:
        return _section(title, "<p>No artifacts folder given.</p>")
    numbers = analysis.ranked_trials(trials)["number"].head(MAX_GENERATION_TRIALS).tolist()
    try:
        rows = analysis.load_generations(storage, name, artifacts_dir=artifacts_dir, numbers=numbers)
    except (FileNotFoundError, OSError) as err:
        return _section(title, _unavailable("Sample generations", err))
    if rows.empty:
        return _section(title, "<p>No trial has sample generations.</p>")
    side = rows.pivot_table(index=["prompt", "reference"], columns="trial", values="generated", aggfunc="first")
    side = side[[n for n in numbers if n in side.columns]]
    side.columns = [f"trial #{n}" for n in side.columns]
    return _section(title, _table(side.reset_index()) + "<p class=\"meta\">Greedy answers of each trial's trained "
                           "model to the same validation prompts, best trial first.</p>")


def _importance(trials: Any, params: list[str]) -> str:
    """The importance plot, or one line on why there is none (one parameter: 1.0 by definition)."""
    if len(params) < 2:
        return f"<p>{html.escape(ONE_PARAMETER if params else 'No searched parameter.')}</p>"
    importances = analysis.param_importances(trials)
    if not len(importances):
        return "<p>Needs at least two complete trials.</p>"
    return _img(analysis.plot_importance(importances), "Optuna's default importance evaluator (PED-ANOVA).")


def _section(title: str, body: str) -> str:
    return f"<h2>{html.escape(title)}</h2>\n{body}\n"


def _unavailable(what: str, err: Exception) -> str:
    return f'<p class="warn">{html.escape(what)} unavailable: {html.escape(str(err))}</p>'


def render_report(storage: analysis.StudyRef, study_name: str | None = None, *,
                  artifacts_dir: str | os.PathLike[str] | None = None) -> str:
    """The report's HTML for a study (see the module docstring for what it holds).

    Args:
        storage: As for :func:`llm_doe.analysis.load_trials`.
        study_name: The study.
        artifacts_dir: The study's ``storage.artifacts_dir`` (for the ROC curves); without it
            the report says they are unavailable.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    trials = analysis.load_trials(storage, study_name)
    attrs = trials.attrs
    name, metric = attrs["study_name"], attrs.get("metric", "value")
    params = list(attrs["space"])
    parts: list[str] = []

    failures = analysis.failure_report(trials)
    multi = analysis.is_multi_objective(trials)
    parts.append(_goal(trials, params, failures))
    parts.append(_warnings_section(trials))

    if multi:
        parts.append(_pareto_section(trials))
        best = None
    else:
        best_html, best = _best_section(trials, params, metric)
        parts.append(best_html)

    confirmation = _confirmation_section(storage, name)
    if confirmation:
        parts.append(confirmation)

    parts.append(_curves_section(storage, name, trials))
    files = set(analysis.load_artifacts(storage, name)["filename"])
    if files & {"metrics.jsonl", "metrics.json"}:
        parts.append(_training_loss_section(storage, name, trials, artifacts_dir))

    # The sections drawn from the trials' files, by the files a task uploads (its write_artifacts):
    # any task that writes roc.csv gets ROC curves, generations.csv sample generations, and
    # a task that writes neither no such section.
    if "generations.csv" in files:
        parts.append(_generations_section(storage, name, trials, artifacts_dir))
    if "roc.csv" in files:
        parts.append(_roc_section(storage, name, trials, artifacts_dir))

    if best is not None:
        parts.append(_section("Objective against each parameter", _img(
            analysis.plot_objective_vs_params(trials),
            f"{metric} of complete trials (hollow: pruned, at their last value); dotted lines: the searched range.")))
        isolated = analysis.isolation(trials)
        parts.append(_section(f"Best trial per value of {isolated.index.name}", _table(isolated, index=True)))

    if multi:
        parts.append(_importance_per_objective(trials))
    else:
        parts.append(_section("Parameter importance", _importance(trials, params)))
        boundary = analysis.boundary_report(trials)
        parts.append(_section("Boundary check", _table(boundary) if len(boundary) else
                              "<p>No numeric parameter with a complete trial to check.</p>"))
    parts.append(_section("Failures", _table(failures.to_frame("count"), index=True)))
    if analysis.constrained(trials):
        parts.append(_section("Constraints", _table(analysis.constraint_report(trials), index=True)
                              + '<p class="meta">study.constraints: finished trials that violate a bound are '
                                "infeasible and never the best trial; worst: the most violating value recorded.</p>"))

    shown = trials.head(MAX_TABLE_ROWS).drop(columns=["datetime_start", "datetime_complete"])
    more = f"<p>First {MAX_TABLE_ROWS} of {len(trials)} trials.</p>" if len(trials) > MAX_TABLE_ROWS else ""
    parts.append(_section("Trials", more + f'<div class="scroll">{_table(shown)}</div>'))

    created = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(name)}: study report</title><style>{_STYLE}</style></head><body>\n"
            f"<h1>Study <code>{html.escape(name)}</code></h1>\n"
            f"<p class=\"meta\">store {html.escape(str(attrs['storage']))} · written {created} by llm_doe.report</p>\n"
            + "\n".join(parts) + "</body></html>\n")


def _goal(trials: pd.DataFrame, params: list[str], failures: pd.Series) -> str:
    """The report's first paragraph: what the study optimises, over what, and its trial counts."""
    attrs = trials.attrs
    if analysis.is_multi_objective(trials):
        goal = "the trade-off between " + " and ".join(
            f"{html.escape(d)} <code>{html.escape(m)}</code>"
            for m, d in zip(analysis.objectives(trials), attrs["directions"]))
    else:
        goal = (f"{html.escape(str(attrs.get('direction') or 'optimise'))} "
                f"<code>{html.escape(attrs.get('metric', 'value'))}</code>")
    classes = attrs.get("study_user_attrs", {}).get("classes")
    return (f"<p><b>Goal:</b> {goal} "
            f"by searching {', '.join(f'<code>{html.escape(p)}</code>' for p in params) or 'nothing'}.<br>"
            + (f"<b>Classes</b> (id: name): {html.escape(str(classes))}.<br>" if classes else "")
            + f"{html.escape(analysis.trial_counts_text(failures))}</p>")


def _warnings_section(trials: pd.DataFrame) -> str:
    warnings = analysis.study_warnings(trials)
    if not warnings:
        return _section("Warnings", '<p class="ok">No failed trials; no best value on the edge of a searched '
                                    "range.</p>")
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return _section("Warnings", f'<div class="warn"><ul>{items}</ul></div>')


def _curves_section(storage: analysis.StudyRef, name: str, trials: pd.DataFrame) -> str:
    curves = analysis.load_curves(storage, name)
    if not curves.empty:
        return _section("Learning curves", _img(
            analysis.plot_learning_curves(curves),
            f"{trials.attrs.get('metric', 'value')} at each evaluation; colour: {analysis.default_param(trials)}; "
            "dashed: pruned."))
    if analysis.is_multi_objective(trials):
        return _section("Learning curves", "<p>Optuna keeps no intermediate values of a multi-objective study: "
                                           "each trial's evaluations are in its <code>metrics.jsonl</code>.</p>")
    return _section("Learning curves", "<p>No trial reported an intermediate value.</p>")


def _best_section(trials: pd.DataFrame, params: list[str], metric: str) -> tuple[str, pd.Series | None]:
    """The best trial's section: its values, how to rerun it, its config; and the trial itself
    (None without a COMPLETE trial with a finite value)."""
    try:
        best = analysis.best_trial(trials)
    except ValueError as err:
        return _section("Best trial", _unavailable("The best trial", err)), None
    metrics = ", ".join(f"{m} {best[m]:.4g}" for m in analysis.study_metrics(trials.attrs["study_user_attrs"])
                        if m != metric and m in best.index and pd.notna(best[m]))
    summary = (f"<p>Trial <b>#{int(best['number'])}</b>: <code>{html.escape(metric)}</code> = "
               f"<b>{best['value']:.4g}</b> ({html.escape(metrics)}); "
               + ", ".join(f"<code>{html.escape(p)}</code> = {html.escape(fmt(best[p]))}"
                           for p in params if p in best.index) + ".</p>")
    command = f"<p>Rerun it (a one-trial study with the same config and seeds):</p><pre>" \
              f"{html.escape(shell_lines(analysis.rerun_command(trials)))}</pre>"
    config = f"<details open><summary>Its config</summary><pre>" \
             f"{html.escape(str(analysis.best_config(trials, as_yaml=True)))}</pre></details>"
    return _section("Best trial", summary + command + config), best


def _pareto_section(trials: pd.DataFrame) -> str:
    """A multi-objective study's answer: the trials no other beats in every objective, a table
    and the plane of the first two objectives, and how to take one further."""
    title = "Pareto front"
    front = analysis.pareto_front(trials)
    if front.empty:
        return _section(title, "<p>No trial has completed yet.</p>")
    names = analysis.objectives(trials)
    intro = (f"<p>{len(front)} trial(s) that no other trial beats in every objective "
             f"({', '.join(html.escape(n) for n in names)}): each buys its quality with its cost. Pick one for "
             "<code>python -m llm_doe.final final.trial=N</code> or <code>python -m llm_doe.confirm "
             "confirm.trials=[N,...]</code>.</p>")
    figure = _img(analysis.plot_pareto(trials), f"{names[0]} against {names[1]}: red on the front, grey dominated.")
    first = int(front["number"].iloc[0])
    command = (f"<p>Rerun trial #{first} (best {html.escape(names[0])} on the front):</p>"
               f"<pre>{html.escape(shell_lines(analysis.rerun_command(trials, first)))}</pre>")
    return _section(title, intro + _table(front) + figure + command)


def _importance_per_objective(trials: pd.DataFrame) -> str:
    """Optuna's importance of each parameter for each objective (PED-ANOVA), one column each."""
    columns = {name: analysis.param_importances(analysis.objective_view(trials, name))
               for name in analysis.objectives(trials)}
    table = pd.DataFrame(columns)
    if table.empty:
        return _section("Parameter importance", "<p>Needs at least two complete trials.</p>")
    return _section("Parameter importance per objective", _table(table, index=True)
                    + "<p class=\"meta\">Optuna's default importance evaluator (PED-ANOVA), one objective at a "
                      "time.</p>")


#: Trials whose training loss is drawn at most (the best ones): hundreds of lines show nothing.
MAX_LOSS_CURVES = 50


def _training_loss_section(storage: analysis.StudyRef, name: str, trials: pd.DataFrame,
                           artifacts_dir: str | os.PathLike[str] | None) -> str:
    """Each trial's training loss over its optimizer steps (its ``metrics.jsonl``): what the
    learning curves (the validation metric, Optuna's intermediate values) leave out."""
    try:
        done = analysis.ranked_trials(trials)
        numbers = None if len(trials) <= MAX_LOSS_CURVES else done["number"].head(MAX_LOSS_CURVES).tolist()
        metrics = analysis.load_metrics(storage, name, artifacts_dir=artifacts_dir, numbers=numbers)
    except (FileNotFoundError, OSError) as err:
        return _section("Training loss", _unavailable("The training loss", err))
    if "train_loss" not in metrics or metrics["train_loss"].isna().all():
        return _section("Training loss", "<p>No trial recorded a training loss.</p>")
    scope = "every trial" if numbers is None else f"the {len(numbers)} best trials"
    colour = f"; colour: {analysis.default_param(trials)}" if analysis.param_columns(trials) else ""
    return _section("Training loss", _img(
        analysis.plot_training_loss(metrics),
        f"Training loss of {scope} (mean since the previous evaluation) against the optimizer step{colour}; "
        "dashed: pruned."))


def _roc_section(storage: analysis.StudyRef, name: str, trials: pd.DataFrame,
                 artifacts_dir: str | os.PathLike[str] | None) -> str:
    """The ROC curves of the best complete trials (all of them in a small study)."""
    if artifacts_dir is None:
        return _section("ROC curves", "<p>No artifacts folder given.</p>")
    try:
        done = analysis.ranked_trials(trials)
        numbers = None if len(trials) <= MAX_ROC_CURVES else done["number"].head(MAX_ROC_CURVES).tolist()
        roc = analysis.load_roc(storage, name, artifacts_dir=artifacts_dir, numbers=numbers)
    except (FileNotFoundError, OSError) as err:
        return _section("ROC curves", _unavailable("ROC curves", err))
    scope = "every trial" if numbers is None else f"the {len(numbers)} best complete trials"
    return _section("ROC curves", _img(
        analysis.plot_roc_curves(roc),
        f"ROC of {scope} at its best evaluation, labelled by {analysis.default_param(trials)}.")
        if not roc.empty else "<p>No trial has a ROC curve.</p>")


def _confirmation_section(storage: analysis.StudyRef, name: str) -> str:
    """The confirmation with several seeds (``python -m llm_doe.confirm``), when the study has one:
    the verdict, the mean and confidence interval per configuration, and the figure. Empty when
    there is no ``<name>-confirm`` study."""
    try:
        table = analysis.confirmation_table(storage, name, missing_ok=True)
    except Exception as err:
        return _section("Confirmation", _unavailable("The confirmation", err))
    if table is None:
        return ""
    if table.empty:
        return _section("Confirmation", f"<p>{html.escape(table.attrs['summary'])}</p>")
    css = "ok" if table.attrs.get("distinguishable") or len(table) == 1 else "warn"
    intro = (f"<p>The {len(table)} best configurations re-run with {table.attrs['n_seeds']} seeds each (study "
             f"<code>{html.escape(str(table.attrs.get('study_name')))}</code>): mean over seeds with a 95% "
             "confidence interval, and a paired t-test (seed by seed) of each against the best. "
             "<i>search</i> is the configuration's single search trial.</p>")
    verdict = f'<p class="{css}">{html.escape(table.attrs["summary"])}</p>'
    figure = _img(analysis.plot_confirmation(table),
                  "Objective per seed (dots), mean with its 95% CI (bar), the search trial (diamond).")
    return _section("Confirmation", intro + verdict + _table(analysis.confirmation_display(table), index=True)
                    + figure)


def render_scientific_report(storage: analysis.StudyRef, study_name: str) -> str:
    """The report of a study with scientific parameters: the best trial per scientific value
    (each from its own sub-study, nuisance parameters tuned anew with the same budget), their
    curves, the caveats, and each sub-study's warnings. Each sub-study has its own full report
    (``study.name='<study>[param=value]'``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    table = analysis.scientific_isolation(storage, study_name)
    attrs = table.attrs
    parts = [f"<p><b>Question:</b> how does {', '.join(f'<code>{html.escape(p)}</code>' for p in attrs['scientific'])}"
             f" affect <code>{html.escape(attrs['metric'])}</code>? Each value had its own sub-study with "
             f"{int(table['trials'].max()) if len(table) else 0} finished trials tuning the nuisance parameters.</p>"]
    caveats = attrs.get("caveats") or []
    parts.append(_section("Caveats", '<div class="warn"><ul>' + "".join(f"<li>{html.escape(c)}</li>" for c in caveats)
                          + "</ul></div>" if caveats else "<p>No parameter was held fixed.</p>"))
    parts.append(_section("Best trial per scientific value", _table(table)))
    curves = analysis.scientific_curves(storage, study_name, table)
    parts.append(_section("Learning curves", _img(analysis.plot_scientific_isolation(curves),
                                                  "The best trial of each scientific value.")))
    warnings = []
    for name in table["sub_study"]:
        warnings += [f"{name}: {w}" for w in analysis.study_warnings(analysis.load_trials(storage, name))]
    parts.append(_section("Warnings", '<div class="warn"><ul>' + "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
                          + "</ul></div>" if warnings else '<p class="ok">No sub-study has failed trials or a best '
                                                           "value on the edge of a nuisance range.</p>"))
    created = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(study_name)}: scientific study report</title><style>{_STYLE}</style></head><body>\n"
            f"<h1>Scientific study <code>{html.escape(study_name)}</code></h1>\n"
            f"<p class=\"meta\">written {created} by llm_doe.report</p>\n" + "\n".join(parts) + "</body></html>\n")


def build_report(storage: analysis.StudyRef, study_name: str | None, out: str | os.PathLike[str], *,
                 artifacts_dir: str | os.PathLike[str] | None = None) -> Path:
    """Render the report (of a study, or of a scientific study's sub-studies) and write it to
    ``out`` (folders created). Returns the path."""
    path = Path(out)
    if study_name is not None and study_name not in analysis.study_names(storage) \
            and analysis.scientific_substudies(storage, study_name):
        text = render_scientific_report(storage, study_name)
    else:
        text = render_report(storage, study_name, artifacts_dir=artifacts_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 = bad input or no such study, nothing written)."""
    from llm_doe.cli import Composed, cli

    argv = list(sys.argv[1:] if argv is None else argv)
    out: str | None = None
    overrides: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--out":
            out = next(args, None)
            if out is None:
                print("llm_doe: error: --out: needs a path", file=sys.stderr)
                return 2
        elif arg.startswith("--out="):
            out = arg.split("=", 1)[1]
        else:
            overrides.append(arg)

    def write(composed: Composed) -> int:
        cfg = composed.config
        store = store_of(cfg.storage)
        try:
            names = analysis.study_names(store)
        except ValueError as err:  # not an Optuna store
            raise ConfigError("storage", str(err)) from None
        if cfg.study.name not in names and not analysis.scientific_substudies(store, cast(str, cfg.study.name)):
            raise ConfigError("study.name", f"no study {cfg.study.name!r} in the store; it holds: "
                                            f"{', '.join(sorted(names)) or 'no study'}")
        path = Path(out) if out else Path("studies") / str(cfg.study.name) / "report.html"
        build_report(store, cfg.study.name, path, artifacts_dir=cfg.storage.artifacts_dir)
        print(f"wrote {path}")
        return 0

    # The commands' shared shape: --help, --cfg job|hydra|all, bad input as one line and status 2.
    return cli(overrides, USAGE, write, from_store=())


if __name__ == "__main__":
    sys.exit(main())
