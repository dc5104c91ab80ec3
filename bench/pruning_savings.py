"""Does pruning pay? ``lr_sweep`` with its own pruner vs ``pruner=none``, same sampler seed.

    python bench/pruning_savings.py                                   # lr_sweep as shipped (MiniLM, ~20 min)
    python bench/pruning_savings.py --train-size 400 --val-size 200   # a few minutes on 2 CPU cores
    python bench/pruning_savings.py --model tiny                      # a quick run on the tiny model
    python bench/pruning_savings.py --sampler random                  # same trials on both sides

Both runs go through the real entry point (``llm_doe.search.main``) into their own temp SQLite
store. Printed: every trial of both runs (params, state, evaluations, optimizer steps), total
optimizer steps (the sum of the ``optimizer_steps`` user attribute) of each run, the saving in
%, the best value of each run and their relative difference, against the issue's targets
(saving >= 40 %, best value within 1 %).

Same trials: a seeded sampler proposes the same parameters in both runs only if what it has
seen is the same. TPE (lr_sweep's sampler) models the finished trials: after its
``n_startup_trials`` random trials it splits them into a "good" and a "bad" group by rank (a
pruned trial ranks by its last intermediate value, below every complete one) and proposes from
the good group's parameters. Once a trial is pruned the two runs' histories differ, so their
later proposals may differ (they agree whenever the split comes out the same). ``--sampler
random`` or ``--sampler qmc`` (scrambled Sobol) draws parameters independently of the results,
so with the same seed both runs evaluate exactly the same learning rates and the comparison
isolates the pruner: the saving and the best-value gap are then the pruner's alone. The default
stays the study's own sampler, because that is what a user runs; the printout says whether the
trials matched.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CpuSteal, code_state, finish, store_overrides, table, verdict

SAVING_TARGET = 40.0   # % fewer optimizer steps with the pruner
BEST_TARGET = 1.0      # % relative difference of the best values


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default="lr_sweep", help="the study (+study=NAME), default lr_sweep")
    p.add_argument("--model", choices=("study", "minilm", "tiny"), default="study",
                   help="study: the study's model (MiniLM for lr_sweep)")
    p.add_argument("--n-trials", type=int, default=None, help="default: the study's (8 for lr_sweep)")
    p.add_argument("--train-size", type=int, default=None, help="default: the study's (1000)")
    p.add_argument("--val-size", type=int, default=None, help="default: the study's (400)")
    p.add_argument("--epochs", type=int, default=None, help="default: the study's (2)")
    p.add_argument("--evals-per-epoch", type=int, default=None, help="default: the study's (4)")
    p.add_argument("--sampler", default=None, help="tpe|random|qmc|...; default: the study's (tpe)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed, both runs (default 0)")
    p.add_argument("--pruner", default=None, help="the pruned run's pruner; default: the study's (median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--extra", action="append", default=[], metavar="OVERRIDE",
                   help="extra Hydra override for both runs (repeatable)")
    p.add_argument("--keep", action="store_true", help="keep the temp folder")
    return p.parse_args()


def overrides(args: argparse.Namespace) -> list[str]:
    out = [f"+study={args.study}", f"sampler.seed={args.seed}", f"runtime.num_threads={args.threads}",
           "runtime.progress=false"]
    if args.model != "study":
        out.append(f"model={args.model}")
    if args.sampler:
        out.append(f"sampler={args.sampler}")  # value overrides (sampler.seed) apply after the group choice
    for flag, key in (("n_trials", "study.n_trials"), ("train_size", "data.train_size"), ("val_size", "data.val_size"),
                      ("epochs", "train.num_epochs"), ("evals_per_epoch", "train.evals_per_epoch")):
        value = getattr(args, flag)
        if value is not None:
            out.append(f"{key}={value}")
    return out + args.extra


def run_study(base: list[str], pruner: str | None, workdir: Path, name: str) -> tuple[Any, float, float]:
    import optuna

    from llm_doe.search import main

    extra = [] if pruner is None else [f"pruner={pruner}"]
    steal = CpuSteal()
    t = time.perf_counter()
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        rc = main([*base, *extra, *store_overrides(workdir, name)])
    wall = time.perf_counter() - t
    if rc != 0:
        raise SystemExit(f"llm_doe.search {' '.join(base + extra)} exited with {rc}")
    return (optuna.load_study(study_name=name, storage=f"sqlite:///{workdir}/{name}.db"), wall,
            f"{steal.percent():.1f}/{steal.others_percent():.1f}")


def main() -> int:
    args = parse_args()
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(args.threads)
    from llm_doe.cli import compose_config
    from llm_doe.schema import resolved_direction

    base = overrides(args)
    cfg = compose_config(base).config
    pruner = args.pruner or cfg.pruner.name
    if pruner == "none":
        raise SystemExit("the study's pruner is none: pass --pruner NAME")
    maximize = resolved_direction(cfg) == "maximize"
    print(code_state())
    print(f"study {args.study}: model {cfg.model.name_or_path}, {cfg.study.n_trials} trials, train {cfg.data.train_size} / "
          f"val {cfg.data.val_size}, {cfg.train.num_epochs} epoch(s) x {cfg.train.evals_per_epoch} evals, batch "
          f"{cfg.train.batch_size}, sampler {cfg.sampler.name} (seed {cfg.sampler.seed}), pruner {pruner} "
          f"(n_startup_trials {cfg.pruner.n_startup_trials}, n_warmup_steps {cfg.pruner.n_warmup_steps}) vs none; "
          f"threads {args.threads}")
    print("overrides: " + " ".join(base))

    workdir = Path(tempfile.mkdtemp(prefix="bench_pruning_"))
    runs = {}
    for label, prn in ((pruner, None if args.pruner is None else args.pruner), ("none", "none")):
        study, wall, steal = run_study(base, prn, workdir, f"run_{label}")
        runs[label] = (study, wall, steal)

    rows = []
    summary = {}
    for label, (study, wall, steal) in runs.items():
        steps = 0
        for t in study.trials:
            ua = t.user_attrs
            steps += int(ua.get("optimizer_steps") or 0)
            rows.append({"run": f"pruner={label}", "trial": t.number,
                         **{k.split(".")[-1]: v for k, v in t.params.items()}, "state": t.state.name,
                         "evals": len(t.intermediate_values), "optimizer steps": ua.get("optimizer_steps", 0),
                         "value": t.value if t.value is not None else float("nan"),
                         "last val_loss": t.intermediate_values[t.last_step] if t.last_step is not None else float("nan"),
                         "trial s": t.duration.total_seconds() if t.duration else float("nan")})
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = study.best_trial if complete else None
        summary[label] = {"run": f"pruner={label}", "trials": len(study.trials),
                          "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
                          "failed": sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials),
                          "optimizer steps": steps, "best value": best.value if best else float("nan"),
                          "best trial": best.number if best else "-",
                          "best params": " ".join(f"{k.split('.')[-1]}={v:.4g}" for k, v in best.params.items()) if best else "-",
                          "wall s": wall, "trials s": sum(t.duration.total_seconds() for t in study.trials if t.duration),
                          "steal/others %": steal}
    param_cols = sorted({k for r in rows for k in r} - {"run", "trial", "state", "evals", "optimizer steps", "value",
                                                        "last val_loss", "trial s"})
    print()
    print(table(rows, ["run", "trial", *param_cols, "state", "evals", "optimizer steps", "value", "last val_loss",
                       "trial s"], title="trials"))
    print()
    print(table(list(summary.values()), ["run", "trials", "pruned", "failed", "optimizer steps", "best value",
                                         "best trial", "best params", "wall s", "trials s", "steal/others %"],
                title="runs (steal/others %: CPU time the hypervisor gave other machines / other processes here used)"))

    pruned_study, none_study = runs[pruner][0], runs["none"][0]
    same = [a.params == b.params for a, b in zip(pruned_study.trials, none_study.trials)]
    n_same = next((i for i, s in enumerate(same) if not s), len(same))
    print(f"\nsame trials: {'all ' + str(len(same)) if all(same) else f'the first {n_same} of {len(same)}'} "
          f"propose the same parameters in both runs"
          + ("" if all(same) else " (the sampler learns from pruned trials differently; --sampler random|qmc makes them match)"))
    s_p, s_n = summary[pruner]["optimizer steps"], summary["none"]["optimizer steps"]
    saving = 100.0 * (1 - s_p / s_n) if s_n else float("nan")
    b_p, b_n = summary[pruner]["best value"], summary["none"]["best value"]
    rel = 100.0 * abs(b_p - b_n) / abs(b_n) if b_n and math.isfinite(b_n) else float("nan")
    w_p, w_n = summary[pruner]["wall s"], summary["none"]["wall s"]
    print("\ntargets")
    print(f"  optimizer steps: pruner={pruner} {s_p} vs none {s_n}: saving {saving:.1f} %   target >= {SAVING_TARGET:.0f} %   "
          f"{verdict(saving >= SAVING_TARGET)}")
    print(f"  best {cfg.study.metric}: pruner={pruner} {b_p:.5f} vs none {b_n:.5f}: relative difference {rel:.2f} %   "
          f"target <= {BEST_TARGET:.0f} %   {verdict(rel <= BEST_TARGET)}"
          + (" (the pruned run found the better value)" if (b_p > b_n if maximize else b_p < b_n) else ""))
    print(f"  (info) wall time: pruner={pruner} {w_p:.1f} s vs none {w_n:.1f} s: saving {100 * (1 - w_p / w_n):.1f} %")
    finish(workdir, args.keep, "stores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
