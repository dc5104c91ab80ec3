"""Benchmark: loading a large study into pandas, against Optuna's own ``trials_dataframe()``.

    python bench/load_trials.py                     # 10,000 trials x 20 intermediate values
    python bench/load_trials.py --trials 50000 --keep /tmp/big.db

Builds a SQLite store the way ``python -m llm_doe.search`` fills one (searched parameters,
intermediate values at steps 1..N, ~60 user attributes per trial: metrics, cost figures,
``config.*``), then times :func:`llm_doe.analysis.load_trials`, :func:`~llm_doe.analysis.load_curves`,
Optuna's ``load_study(...).trials_dataframe()`` (the anchor users would reach for; optuna
issues #763 and #4890 report minutes on bigger stores) and a plain-SQL read of the same rows
(the floor), and prints the times and their ratios.

Building 10,000 trials through Optuna's API costs ~45 ms each (minutes), so Optuna writes a
few template trials (its own rows, its own encodings) and the rest are cloned from them with
bulk SQL inserts, with fresh parameter values, objective values and learning curves.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution, distribution_to_json
from optuna.trial import TrialState

STUDY = "bench"
SPACE = {
    "train.learning_rate": FloatDistribution(1e-5, 1e-3, log=True),
    "train.batch_size": CategoricalDistribution([16, 32, 64]),
    "train.weight_decay": FloatDistribution(0.0, 0.1),
    "train.num_epochs": IntDistribution(1, 4),
}
CONFIG_KEYS = 45  # config.<path> user attributes per trial, as the objective records them


def _sample(rng: random.Random) -> dict[str, Any]:
    return {"train.learning_rate": 10 ** rng.uniform(-5, -3), "train.batch_size": rng.choice([16, 32, 64]),
            "train.weight_decay": rng.uniform(0.0, 0.1), "train.num_epochs": rng.randint(1, 4)}


def _attrs(rng: random.Random, state: TrialState, params: dict[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {f"config.section{i // 15}.key{i}": rng.random() for i in range(CONFIG_KEYS)}
    attrs.update({f"config.{k}": v for k, v in params.items()})
    attrs.update({"train_samples_per_second": rng.uniform(30, 60), "time_to_first_step_s": rng.random(),
                  "train_time_s": rng.uniform(10, 100), "eval_time_s": rng.uniform(1, 5),
                  "optimizer_steps": rng.randint(10, 200), "examples_seen": 1000, "peak_memory_mb": 700.0,
                  "duration_s": rng.uniform(10, 100)})
    if state == TrialState.FAIL:
        attrs["fail_reason"] = "diverged: non-finite training loss at step 3"
        return attrs
    attrs.update({"val_loss": rng.uniform(0.3, 0.7), "accuracy": rng.uniform(0.6, 0.9), "f1": rng.uniform(0.5, 0.9),
                  "roc_auc": rng.uniform(0.6, 0.95), "best_step": rng.randint(1, 20),
                  "stop_reason": "stopped_by_report" if state == TrialState.PRUNED else "completed"})
    if state == TrialState.PRUNED:
        attrs["pruned_at_step"] = 20
    return attrs


def _curve(rng: random.Random, steps: int) -> dict[int, float]:
    start, floor = rng.uniform(0.6, 0.75), rng.uniform(0.25, 0.55)
    return {s: floor + (start - floor) * math.exp(-s / 6) + rng.gauss(0, 0.005) for s in range(1, steps + 1)}


def build_store(path: Path, n_trials: int = 10_000, n_steps: int = 20, seed: int = 0) -> str:
    """A SQLite study store of ``n_trials`` trials with ``n_steps`` intermediate values each.

    Returns the storage URL; the study is named ``bench``.
    """
    rng = random.Random(seed)
    url = f"sqlite:///{path}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=url, study_name=STUDY, direction="minimize")
    study.set_user_attr("space", {k: distribution_to_json(d) for k, d in sorted(SPACE.items())})
    study.set_user_attr("metric", "val_loss")
    study.set_user_attr("provenance", {"command": "python -m llm_doe.search +study=bench"})
    templates = []
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE):
        params = _sample(rng)
        curve = _curve(rng, n_steps)
        value = None if state == TrialState.FAIL else min(curve.values())
        templates.append(optuna.trial.create_trial(
            state=state, value=value, params=params, distributions=SPACE, user_attrs=_attrs(rng, state, params),
            intermediate_values=curve))
    study.add_trials(templates)

    con = sqlite3.connect(path)
    try:
        study_id, = con.execute("SELECT study_id FROM studies WHERE study_name = ?", (STUDY,)).fetchone()
        base = con.execute("SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials "
                           "WHERE study_id = ? ORDER BY number", (study_id,)).fetchall()
        dist_json = dict(con.execute("SELECT param_name, distribution_json FROM trial_params WHERE trial_id = ?",
                                     (base[0][0],)).fetchall())
        next_id = max(row[0] for row in base) + 1
        trials, params, values, steps, attrs = [], [], [], [], []
        for i in range(len(base), n_trials):
            _, _, state_name, start, complete = base[i % len(base)]
            state = TrialState[state_name]
            trial_id = next_id + i
            trials.append((trial_id, i, study_id, state_name, start, complete))
            sampled = _sample(rng)
            for name, value in sampled.items():
                params.append((trial_id, name, SPACE[name].to_internal_repr(value), dist_json[name]))
            curve = _curve(rng, n_steps)
            steps.extend((trial_id, s, v, "FINITE") for s, v in curve.items())
            if state != TrialState.FAIL:
                values.append((trial_id, 0, min(curve.values()), "FINITE"))
            attrs.extend((trial_id, k, json.dumps(v)) for k, v in _attrs(rng, state, sampled).items())
        with con:
            con.executemany("INSERT INTO trials (trial_id, number, study_id, state, datetime_start, datetime_complete) "
                            "VALUES (?, ?, ?, ?, ?, ?)", trials)
            con.executemany("INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) "
                            "VALUES (?, ?, ?, ?)", params)
            con.executemany("INSERT INTO trial_values (trial_id, objective, value, value_type) VALUES (?, ?, ?, ?)",
                            values)
            con.executemany("INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, "
                            "intermediate_value_type) VALUES (?, ?, ?, ?)", steps)
            con.executemany("INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (?, ?, ?)", attrs)
    finally:
        con.close()
    return url


def plain_sql(path: Path) -> int:
    """The floor: fetch the rows load_trials + load_curves read, no conversion."""
    con = sqlite3.connect(path)
    try:
        n = 0
        for query in ("SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials",
                      "SELECT trial_id, objective, value, value_type FROM trial_values",
                      "SELECT trial_id, param_name, param_value, distribution_json FROM trial_params",
                      "SELECT trial_id, key, value_json FROM trial_user_attributes WHERE key IN ('val_loss', "
                      "'accuracy', 'f1', 'roc_auc', 'best_step', 'duration_s', 'pruned_at_step', 'stop_reason', "
                      "'fail_reason')",
                      "SELECT trial_id, step, intermediate_value, intermediate_value_type "
                      "FROM trial_intermediate_values"):
            n += len(con.execute(query).fetchall())
        return n
    finally:
        con.close()


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, list[float], Any]:
    """(first call, all call times, last result)."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return times[0], times, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="timed calls of each fast loader (default 3)")
    parser.add_argument("--keep", type=Path, default=None, help="build the store here and keep it")
    args = parser.parse_args(argv)

    from llm_doe.analysis import load_curves, load_trials

    with tempfile.TemporaryDirectory(prefix="llm_doe_bench_") as tmp:
        path = args.keep or Path(tmp) / "bench.db"
        if path.exists():
            path.unlink()
        started = time.perf_counter()
        url = build_store(path, args.trials, args.steps)
        print(f"built {args.trials:,} trials x {args.steps} intermediate values in "
              f"{time.perf_counter() - started:.1f}s "
              f"({path.stat().st_size / 2**20:.0f} MiB, {path})")

        _, sql_times, rows = timed(lambda: plain_sql(path), args.repeat)
        _, trials_times, trials = timed(lambda: load_trials(url, STUDY), args.repeat)
        _, curves_times, curves = timed(lambda: load_curves(url, STUDY), args.repeat)
        optuna_first, _, frame = timed(lambda: optuna.load_study(study_name=STUDY, storage=url).trials_dataframe(), 1)

        assert len(trials) == args.trials and len(curves) == args.trials * args.steps
        # Same answers as Optuna's own table.
        assert (trials["state"].to_numpy() == frame["state"].to_numpy()).all()
        assert trials["value"].equals(frame["value"].rename("value").astype(float))
        for name in SPACE:
            assert trials[name].tolist() == frame[f"params_{name}"].tolist(), name
        assert trials["val_loss"].equals(frame["user_attrs_val_loss"].rename("val_loss"))

        fast = {"plain SQL (same rows, no conversion)": sql_times, "llm_doe.load_trials": trials_times,
                "llm_doe.load_curves": curves_times}
        print(f"\n{'':40s} {'first':>8s} {'median':>8s} {'vs Optuna':>10s} {'vs SQL':>8s}")
        sql_median = statistics.median(sql_times)
        for name, times in fast.items():
            median = statistics.median(times)
            print(f"{name:40s} {times[0]:7.3f}s {median:7.3f}s {optuna_first / median:9.1f}x "
                  f"{median / sql_median:7.1f}x")
        print(f"{'optuna load_study().trials_dataframe()':40s} {optuna_first:7.3f}s {'':>8s} {1.0:9.1f}x "
              f"{optuna_first / sql_median:7.1f}x")
        print(f"\n({rows:,} SQL rows; 'vs Optuna' = Optuna's time / ours, 'vs SQL' = ours / plain SQL; "
              f"target: load_trials and load_curves <= 1 s each)")
        ok = max(statistics.median(trials_times), statistics.median(curves_times)) <= 1.0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
