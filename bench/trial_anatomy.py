"""Where does a trial's time go? One study through the real entry point, every piece timed.

    python bench/trial_anatomy.py                          # MiniLM, the issue's setting, 2 trials
    python bench/trial_anatomy.py --ours runtime.checkpoint=false --ours train.eval_batch_size=16

Wraps (in this process only; nothing in the package changes) the functions a trial calls:
model copy, training steps (forward/backward/optimizer as one), evaluation, checkpoint writes,
artifact upload, Optuna calls (user attributes, report, should_prune), and prints, per trial,
the seconds and calls of each, the trial's own cost attributes, and what no wrapper accounts
for. It names the pieces that make up the "overhead" figure of trainer_vs_llm_doe.py.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CpuSteal, code_state, store_overrides, table

ACC: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
DEPTH = {"n": 0}


def timed(name: str, fn: Any, part_of: bool = False) -> Any:
    """Time ``fn`` under ``name``. A call inside another timed call is not counted again, unless
    ``part_of`` (an "of which" line that breaks its caller down)."""
    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        outer = DEPTH["n"] > 0
        DEPTH["n"] += 1
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            DEPTH["n"] -= 1
            dt = time.perf_counter() - t
            if not outer or part_of:
                ACC[name][0] += dt
                ACC[name][1] += 1

    return wrapper


def patch(obj: Any, attr: str, name: str, part_of: bool = False) -> None:
    if hasattr(obj, attr):
        setattr(obj, attr, timed(name, getattr(obj, attr), part_of))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--model", choices=("minilm", "tiny"), default="minilm")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ours", action="append", default=[], metavar="OVERRIDE")
    args = p.parse_args()

    import optuna
    import torch

    import llm_doe.artifacts as artifacts
    import llm_doe.finetune.checkpoint as checkpoint
    import llm_doe.finetune.loop as loop
    import llm_doe.finetune.model as model_mod
    import llm_doe.finetune.tasks.classification as classification
    import llm_doe.objective as objective
    from llm_doe.search import main as search_main

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(args.threads)
    patch(model_mod.ModelFactory, "build", "model copy (ModelFactory.build)")
    patch(loop, "evaluate", "evaluate (loop.evaluate)")
    # Checkpoints are written in a background thread: the loop pays for the snapshot (save)
    # and for waiting on the last write (wait); the write itself competes for the CPU with
    # training, so it shows in train_time_s rather than here.
    patch(checkpoint.CheckpointWriter, "save", "checkpoint snapshot (CheckpointWriter.save)")
    patch(checkpoint.CheckpointWriter, "wait", "checkpoint wait (CheckpointWriter.wait)")
    patch(classification.ClassificationTask, "collate", "collate (training and eval batches)")
    patch(objective, "upload_trial_artifacts", "artifact upload (upload_trial_artifacts)")
    patch(classification, "roc_png", "  of which: ROC png (matplotlib)", part_of=True)
    patch(optuna.artifacts, "upload_artifact", "  of which: optuna upload_artifact", part_of=True)
    patch(artifacts, "upload_artifact", "  of which: optuna upload_artifact", part_of=True)
    patch(optuna.trial.Trial, "set_user_attr", "optuna set_user_attr")
    patch(objective, "set_user_attrs", "user attributes in one write (set_user_attrs)")
    patch(objective, "suggest", "sampling (space.suggest)")
    patch(objective.OmegaConf, "to_container", "OmegaConf.to_container")
    patch(objective.OmegaConf, "to_yaml", "OmegaConf.to_yaml")
    patch(optuna.trial.Trial, "report", "optuna report")
    patch(optuna.trial.Trial, "should_prune", "optuna should_prune")
    patch(objective.Objective, "trial_config", "trial config (apply_params + to_object)")
    patch(torch.optim.AdamW, "__init__", "AdamW init")
    patch(shutil, "rmtree", "checkpoint removal (rmtree)")

    per_trial: list[dict[str, Any]] = []
    real_optimize = optuna.study.Study.optimize
    real_call = objective.Objective.__call__
    edges: dict[str, float] = {}

    def call(self: Any, trial: optuna.Trial) -> float:
        edges["enter"] = time.time()
        try:
            return real_call(self, trial)
        finally:
            edges["exit"] = time.time()

    objective.Objective.__call__ = call  # type: ignore[method-assign]

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # Optuna's own time inside the trial's duration: ask -> objective, objective -> tell.
        ACC["optuna: trial start -> objective call"] = [edges["enter"] - trial.datetime_start.timestamp(), 1]
        ACC["optuna: objective return -> trial complete"] = [trial.datetime_complete.timestamp() - edges["exit"], 1]
        snap = {k: tuple(v) for k, v in ACC.items()}
        ACC.clear()
        per_trial.append({"trial": trial, "parts": snap})

    def optimize(self: optuna.Study, *a: Any, **kw: Any) -> None:
        kw["callbacks"] = [*(kw.get("callbacks") or []), after_trial]
        return real_optimize(self, *a, **kw)

    optuna.study.Study.optimize = optimize  # type: ignore[method-assign]
    study = "lr_sweep" if args.model == "minilm" else "smoke"
    overrides = [f"+study={study}", f"study.n_trials={args.trials}", "data.train_size=400", "data.val_size=200",
                 "data.max_length=64", "train.num_epochs=1", "train.evals_per_epoch=4", "train.batch_size=16",
                 f"runtime.num_threads={args.threads}", "runtime.progress=false", "pruner=none", *args.ours]
    workdir = Path(tempfile.mkdtemp(prefix="bench_anatomy_"))
    print(code_state())
    print("overrides: " + " ".join(overrides))
    steal = CpuSteal()
    try:
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            rc = search_main([*overrides, *store_overrides(workdir, "anatomy")])
    finally:
        optuna.study.Study.optimize = real_optimize  # type: ignore[method-assign]
        objective.Objective.__call__ = real_call  # type: ignore[method-assign]
    if rc != 0:
        print(f"llm_doe.search exited with {rc}")
    print(f"contention: steal {steal.percent():.1f} %, other processes {steal.others_percent():.1f} % of the CPU")
    for item in per_trial:
        t, parts = item["trial"], item["parts"]
        ua = t.user_attrs
        wall = t.duration.total_seconds()
        rows = [{"piece": "trial (Optuna duration)", "s": wall, "calls": 1},
                {"piece": "train_time_s attr", "s": ua.get("train_time_s", float("nan")), "calls": ""},
                {"piece": "eval_time_s attr", "s": ua.get("eval_time_s", float("nan")), "calls": ""},
                {"piece": "time_to_first_step_s attr", "s": ua.get("time_to_first_step_s", float("nan")), "calls": ""},
                {"piece": "overhead = trial - train - eval", "s": wall - ua.get("train_time_s", 0) - ua.get("eval_time_s", 0),
                 "calls": ""}]
        rows += [{"piece": f"  {k}", "s": s, "calls": n} for k, (s, n) in sorted(parts.items(), key=lambda kv: -kv[1][0])]
        print()
        print(table(rows, ["piece", "s", "calls"], title=f"trial {t.number} ({t.state.name}); pieces are timed where "
                    "called (collate inside train/eval; evaluate inside eval_time_s)"))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
