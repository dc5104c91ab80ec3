"""Side by side, in one process: Hugging Face ``Trainer.hyperparameter_search(backend="optuna")``
against an llm_doe trial, on the same model, data, sizes, batch size and threads.

    python bench/trainer_vs_llm_doe.py                 # 3 repeats, the issue's setting
    python bench/trainer_vs_llm_doe.py --repeats 5 --trials 2

The setting (the issue's): the packaged MiniLM-L6, 400 training / 200 validation tweets (the
split ``+study=lr_sweep data.train_size=400 data.val_size=200`` composes), max length 64 with
dynamic padding, batch 16, 1 epoch, 4 evaluations, 2 torch threads, no checkpoints, no pruning.

Each repeat runs both sides, alternating which goes first (A B, B A, A B, ...), so drifting
load on this shared machine falls on both; the ratios are taken within a repeat and the
summary gives their median and min-max over repeats.

Per trial, on both sides:
  train ex/s       examples / training time (evaluation excluded)
  eval s           time spent in the validation passes (4 of them)
  first step s     trial start (Optuna's ``datetime_start``; for llm_doe the start of the
                   objective call, a few ms later) -> end of the first optimizer step
  trial s          Optuna's trial duration (``datetime_complete - datetime_start``): everything
                   a trial costs, sampling, model copy, training, evaluation, storage writes,
                   artifacts, garbage collection
  overhead s       trial s - train s - eval s (llm_doe: also from its own duration_s attr,
                   which stops before the artifact upload: "overhead(attr) s")
  steal %          CPU time the hypervisor gave to other machines while that side ran: the
                   contention on this shared host behind the spread; others %: CPU time used by
                   other processes on this machine meanwhile (both % of all CPU time, 2 cores = 100)
One-time process costs are excluded from both sides and printed separately: reading the
weights and the tokenizer, tokenising, and one warm-up trial per side (lazy imports such as
matplotlib and sklearn, oneDNN kernel selection, the allocator's first growth, SQLite engine).

Trainer side: a ``model_init`` that deep-copies a MiniLM loaded once and re-initialises its
new classification head from the seed (what llm_doe does; ``--trainer-model-init disk`` reads
the weights from disk every trial instead, as most Trainer scripts do), a ``datasets.Dataset``
tokenised once without padding, ``DataCollatorWithPadding``, ``per_device_eval_batch_size=8``
(the issue's measurement), evaluation every ~1/4 epoch (``eval_steps = ceil(steps / 4)`` plus
Trainer's own evaluation at the last step: 4 evaluations, as on our side), ``compute_metrics``
giving the same accuracy/F1/ROC-AUC, Optuna's in-memory storage (Trainer's default), ``NopPruner``.
llm_doe side: ``llm_doe.search.main`` with ``+study=lr_sweep`` and overrides for the setting
above, into a temp SQLite store, with its own defaults otherwise (eval batch 32, batches
grouped by length, checkpoints every runtime.checkpoint_every_s = 30 s: none in a 10 s trial);
pass ``--ours OVERRIDE`` to change any of them. Precision: each side's default. Trainer's is
fp32 (``--trainer-bf16`` turns on its ``bf16=True``); llm_doe's is ``train.precision=auto``:
bf16 autocast where the device computes bf16 natively (CPUs with AVX512-BF16 or AMX, bf16
GPUs), fp32 elsewhere (``--ours train.precision=fp32`` compares fp32 with fp32). The ``prec``
column says what each trial ran in. Trainer uses its default optimizer (``adamw_torch_fused``
with torch >= 2.8), llm_doe its loop's fused AdamW.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CpuSteal, code_state, finish, median, spread, store_overrides, table, verdict, wait_for_quiet

TARGETS = {
    "throughput": 1.3,   # ours train ex/s / Trainer's  >=
    "wall": 1.5,         # Trainer trial s / ours       >=
    "eval": 2.0,         # Trainer eval s / ours        >=
    "overhead": 0.1,     # ours overhead s              <=
}
LR_SPACE = (1e-5, 1e-3)  # lr_sweep's space, log scale


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="repeats, each running both sides (default 3)")
    p.add_argument("--trials", type=int, default=1, help="trials per side per repeat (default 1)")
    p.add_argument("--threads", type=int, default=2, help="torch threads, both sides (default 2)")
    p.add_argument("--train-size", type=int, default=400)
    p.add_argument("--val-size", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--evals", type=int, default=4, help="evaluations per epoch (default 4)")
    p.add_argument("--trainer-eval-batch-size", type=int, default=8)
    p.add_argument("--trainer-bf16", action="store_true",
                   help="TrainingArguments(bf16=True): Trainer under bf16 autocast too (its default is fp32)")
    p.add_argument("--trainer-model-init", choices=("copy", "disk"), default="copy",
                   help="copy: deep-copy a template loaded once (as llm_doe); disk: from_pretrained every trial")
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--seed", type=int, default=0, help="sampler seed, both sides")
    p.add_argument("--ours", action="append", default=[], metavar="OVERRIDE",
                   help="extra Hydra override for the llm_doe side (repeatable), e.g. train.eval_batch_size=8")
    p.add_argument("--no-warmup", action="store_true", help="skip the excluded warm-up trial of each side")
    p.add_argument("--ablate", action="append", default=[], choices=("fused-adamw", "bf16-eval"),
                   help="measure a loop change without editing the package (our side only; repeatable): "
                        "fused-adamw = torch.optim.AdamW(fused=True) on CPU too, as Trainer's default optim "
                        "adamw_torch_fused; bf16-eval = validation passes under bf16 autocast (training stays fp32)")
    p.add_argument("--max-others", type=float, default=10.0,
                   help="discard and re-run a side whose run saw other processes use more than this %% of the CPU "
                        "(default 10; 100 = keep everything)")
    p.add_argument("--retries", type=int, default=3, help="re-runs of a side discarded by --max-others (default 3)")
    p.add_argument("--quiet-wait", type=float, default=300.0,
                   help="before each side, wait up to this many seconds for other processes to leave the CPU "
                        "(default 300; 0 = never wait)")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (stores, artifacts)")
    return p.parse_args()


# ----------------------------------------------------------------------------- shared set-up

# ----------------------------------------------------------------------------- Trainer side

class TrainerSide:
    """Hugging Face Trainer.hyperparameter_search(backend="optuna"), instrumented."""

    def __init__(self, args: argparse.Namespace, cfg: Any, workdir: Path) -> None:
        import datasets
        import numpy as np
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from llm_doe.finetune.data import load_splits
        from llm_doe.finetune.model import resolve

        hf_logging.set_verbosity_error()
        datasets.disable_progress_bars()
        self.args, self.workdir = args, workdir
        self.one_time: dict[str, float] = {}
        self.path = resolve(args.model)

        t = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.one_time["tokenizer load s"] = time.perf_counter() - t

        splits = load_splits(cfg.data)
        self.num_labels = splits.num_labels
        t = time.perf_counter()

        def tok(batch: dict[str, list[Any]]) -> dict[str, Any]:
            return self.tokenizer(batch["text"], truncation=True, max_length=args.max_length)

        def dataset(split: Any) -> Any:
            ds = datasets.Dataset.from_dict({"text": split.texts, "label": split.labels.tolist()})
            return ds.map(tok, batched=True, remove_columns=["text"])

        self.train_ds, self.val_ds = dataset(splits.train), dataset(splits.val)
        self.one_time["tokenise s"] = time.perf_counter() - t

        t = time.perf_counter()
        self.template, info = AutoModelForSequenceClassification.from_pretrained(
            self.path, num_labels=self.num_labels, output_loading_info=True)
        fresh = sorted({k.rsplit(".", 1)[0] for k in info.get("missing_keys", [])})
        self.fresh = [n for n in fresh if not any(n.startswith(o + ".") for o in fresh)]
        self.one_time["model load s"] = time.perf_counter() - t
        self.np, self.torch = np, torch

    def model_init(self) -> Any:
        """Trainer seeds (``args.seed``) right before calling this, as llm_doe seeds before its copy."""
        from transformers import AutoModelForSequenceClassification

        if self.args.trainer_model_init == "disk":
            return AutoModelForSequenceClassification.from_pretrained(self.path, num_labels=self.num_labels)
        model = copy.deepcopy(self.template)
        for name in self.fresh:
            for sub in model.get_submodule(name).modules():
                model._init_weights(sub)
        model.train()
        return model

    def compute_metrics(self, pred: Any) -> dict[str, float]:
        from llm_doe.finetune.metrics import classification_metrics

        logits = self.np.asarray(pred.predictions, dtype=self.np.float64)
        probs = self.np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        return classification_metrics(self.np.asarray(pred.label_ids), probs)

    def run(self, repeat: int) -> tuple[list[dict[str, Any]], float]:
        """One hyperparameter_search of ``--trials`` trials. Returns per-trial rows and the search's wall time."""
        import optuna
        from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

        args = self.args
        steps_per_epoch = math.ceil(len(self.train_ds) / args.batch_size)
        timing: dict[str, Any] = {}

        class Timer(TrainerCallback):
            def on_train_begin(self, a, state, control, **kw):
                timing.update(train_begin=time.perf_counter(), first_step_wall=None, evals=[], steps=0)

            def on_step_end(self, a, state, control, **kw):
                timing["steps"] += 1
                if timing["first_step_wall"] is None:
                    timing["first_step_wall"] = time.time()

            def on_train_end(self, a, state, control, **kw):
                timing["train_end"] = time.perf_counter()

        class TimedTrainer(Trainer):
            def evaluate(self, *a: Any, **kw: Any) -> dict[str, float]:
                t = time.perf_counter()
                try:
                    return super().evaluate(*a, **kw)
                finally:
                    timing.setdefault("evals", []).append(time.perf_counter() - t)

        per_trial: list[dict[str, Any]] = []

        class Collect:
            """Optuna callback: snapshot the Trainer timings of the trial that just ended."""

            def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                per_trial.append({"number": trial.number, **copy.deepcopy(timing)})

        targs = TrainingArguments(
            output_dir=str(self.workdir / f"trainer_r{repeat}"),
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.trainer_eval_batch_size,
            num_train_epochs=args.epochs,
            eval_strategy="steps",
            # Trainer evaluates every eval_steps and once more at the last step, so
            # ceil(total / evals) gives `evals` evaluations per epoch (25 steps: 7, 14, 21, 25).
            eval_steps=max(1, math.ceil(steps_per_epoch * args.epochs / (args.evals * args.epochs))),
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            seed=42,
            # Match llm_doe's defaults (conf/train/default.yaml) so both sides do the same work.
            weight_decay=0.01,
            warmup_steps=0.1,
            max_grad_norm=1.0,
            lr_scheduler_type="linear",
            bf16=args.trainer_bf16,  # bf16 autocast in training and evaluation (opt-in in Trainer)
        )
        t_setup = time.perf_counter()
        trainer = TimedTrainer(
            model_init=self.model_init, args=targs, train_dataset=self.train_ds, eval_dataset=self.val_ds,
            data_collator=DataCollatorWithPadding(self.tokenizer), compute_metrics=self.compute_metrics,
            callbacks=[Timer()],
        )

        # run_hp_search_optuna builds its own study and drops it; keep a handle on it to read
        # the trials' start/complete times and attach our callback (study.optimize is called
        # with its own arguments, so wrap the study's optimize to add the callback).
        captured: dict[str, optuna.Study] = {}
        real_create = optuna.create_study

        def create_study(*a: Any, **kw: Any) -> optuna.Study:
            study = real_create(*a, **kw)
            real_optimize = study.optimize

            def optimize(*oa: Any, **okw: Any) -> None:
                okw["callbacks"] = [*(okw.get("callbacks") or []), Collect()]
                return real_optimize(*oa, **okw)

            study.optimize = optimize  # type: ignore[method-assign]
            captured["study"] = study
            return study

        def hp_space(trial: optuna.Trial) -> dict[str, float]:
            return {"learning_rate": trial.suggest_float("learning_rate", *LR_SPACE, log=True)}

        optuna.create_study = create_study  # type: ignore[assignment]
        try:
            # Trainer prints each log dict (PrinterCallback, tqdm being off): keep the tables readable.
            with contextlib.redirect_stdout(open(os.devnull, "w")):
                trainer.hyperparameter_search(
                    hp_space=hp_space, compute_objective=lambda m: m["eval_loss"], n_trials=args.trials,
                    direction="minimize", backend="optuna", sampler=optuna.samplers.TPESampler(seed=args.seed),
                    pruner=optuna.pruners.NopPruner(), study_name=f"trainer_r{repeat}",
                )
        finally:
            optuna.create_study = real_create  # type: ignore[assignment]
        search_s = time.perf_counter() - t_setup
        study = captured["study"]
        rows = []
        for snap, trial in zip(per_trial, study.trials):
            evals = snap.get("evals", [])
            # Evaluations inside train() happen between train_begin and train_end; any
            # evaluation after train() (none here: there are in-loop evals) would be outside.
            eval_s = sum(evals)
            train_s = snap["train_end"] - snap["train_begin"] - eval_s
            wall = (trial.datetime_complete - trial.datetime_start).total_seconds()
            examples = min(snap["steps"] * args.batch_size, len(self.train_ds) * args.epochs)
            rows.append({
                "side": "Trainer", "repeat": repeat, "trial": trial.number, "state": trial.state.name,
                "prec": "bf16" if args.trainer_bf16 else "fp32",
                "train ex/s": examples / train_s, "train s": train_s, "eval s": eval_s, "evals": len(evals),
                "first step s": snap["first_step_wall"] - trial.datetime_start.timestamp(),
                "trial s": wall, "overhead s": wall - train_s - eval_s, "steps": snap["steps"],
            })
        del trainer
        return rows, search_s


# ----------------------------------------------------------------------------- llm_doe side

class OursSide:
    """``python -m llm_doe.search +study=lr_sweep ...`` in this process, into a temp store."""

    def __init__(self, args: argparse.Namespace, cfg: Any, workdir: Path) -> None:
        from llm_doe.finetune.data import encoded_splits
        from llm_doe.finetune.model import load_tokenizer, model_factory

        self.args, self.workdir = args, workdir
        self.one_time: dict[str, float] = {}
        # The entry point's prepare() loads these into per-process caches; load them here, timed,
        # so the search pays nothing for them (as on the Trainer side).
        t = time.perf_counter()
        tokenizer, key = load_tokenizer(cfg.model)
        self.one_time["tokenizer load s"] = time.perf_counter() - t
        t = time.perf_counter()
        _, _, splits = encoded_splits(cfg.data, tokenizer, key)
        self.one_time["tokenise s"] = time.perf_counter() - t
        t = time.perf_counter()
        model_factory(cfg.model, splits.num_labels)
        self.one_time["model load s"] = time.perf_counter() - t
        self.overrides = [
            "+study=lr_sweep", f"model.name_or_path={args.model}", f"study.n_trials={args.trials}",
            f"data.train_size={args.train_size}", f"data.val_size={args.val_size}", f"data.max_length={args.max_length}",
            f"train.num_epochs={args.epochs}", f"train.evals_per_epoch={args.evals}", f"train.batch_size={args.batch_size}",
            f"runtime.num_threads={args.threads}", "runtime.progress=false", "pruner=none", "sampler=tpe",
            f"sampler.seed={args.seed}", *args.ours,
        ]

    def run(self, repeat: int) -> tuple[list[dict[str, Any]], float]:
        import dataclasses

        import optuna
        import torch

        import llm_doe.finetune.loop as loop
        from llm_doe.search import main

        name = f"ours_r{repeat}"
        real_adamw, real_evaluate = torch.optim.AdamW, loop.evaluate
        if "bf16-eval" in self.args.ablate:
            def evaluate_bf16(model: Any, task: Any, data: Any, batch_size: int, pad_id: int, rt: Any) -> Any:
                return real_evaluate(model, task, data, batch_size, pad_id,
                                     dataclasses.replace(rt, dtype=torch.bfloat16))

            loop.evaluate = evaluate_bf16
        if "fused-adamw" in self.args.ablate:
            class FusedAdamW(real_adamw):  # type: ignore[misc, valid-type]
                def __init__(self, params: Any, *a: Any, **kw: Any) -> None:
                    kw["fused"], kw["foreach"] = True, None
                    super().__init__(params, *a, **kw)

            torch.optim.AdamW = FusedAdamW  # type: ignore[misc]
        t = time.perf_counter()
        try:
            with contextlib.redirect_stdout(open(os.devnull, "w")):
                rc = main([*self.overrides, *store_overrides(self.workdir, name)])
        finally:
            torch.optim.AdamW, loop.evaluate = real_adamw, real_evaluate  # type: ignore[misc]
        search_s = time.perf_counter() - t
        if rc != 0:
            raise SystemExit(f"llm_doe.search exited with {rc}")
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{self.workdir}/{name}.db")
        rows = []
        for trial in study.trials:
            ua = trial.user_attrs
            wall = (trial.datetime_complete - trial.datetime_start).total_seconds()
            train_s, eval_s = ua["train_time_s"], ua["eval_time_s"]
            rows.append({
                "side": "llm_doe", "repeat": repeat, "trial": trial.number, "state": trial.state.name,
                "prec": ua.get("train_precision", ua.get("precision", "fp32")),
                "train ex/s": ua["train_samples_per_second"], "train s": train_s, "eval s": eval_s,
                "evals": len(trial.intermediate_values), "first step s": ua["time_to_first_step_s"],
                "trial s": wall, "overhead s": wall - train_s - eval_s,
                "overhead(attr) s": ua["duration_s"] - train_s - eval_s, "steps": ua["optimizer_steps"],
            })
        return rows, search_s


# ----------------------------------------------------------------------------- main

COLUMNS = ["side", "repeat", "trial", "state", "prec", "train ex/s", "train s", "eval s", "evals", "first step s", "trial s",
           "overhead s", "overhead(attr) s", "steps", "steal %", "others %"]


def main() -> int:
    args = parse_args()
    warnings.filterwarnings("ignore")
    import optuna
    import torch
    import transformers

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="bench_trainer_vs_llm_doe_"))
    print(f"torch {torch.__version__} transformers {transformers.__version__} optuna {optuna.__version__}; "
          f"threads {torch.get_num_threads()}; cpu count {os.cpu_count()}; load avg {os.getloadavg()}")
    print(code_state())
    print(f"setting: {args.model}, train {args.train_size} / val {args.val_size}, batch {args.batch_size}, "
          f"max length {args.max_length}, {args.epochs} epoch(s), {args.evals} evals/epoch, "
          f"{args.trials} trial(s) per side per repeat, {args.repeats} repeats; Trainer eval batch "
          f"{args.trainer_eval_batch_size}, Trainer precision {'bf16' if args.trainer_bf16 else 'fp32'}, "
          f"model_init={args.trainer_model_init}; ours extra overrides {args.ours}"
          + (f"; ablations (ours) {args.ablate}" if args.ablate else ""))

    # The config the llm_doe search composes: its data section gives both sides the same texts.
    from llm_doe.cli import compose_config

    cfg = compose_config(["+study=lr_sweep", f"model.name_or_path={args.model}", f"data.train_size={args.train_size}",
                          f"data.val_size={args.val_size}", f"data.max_length={args.max_length}"]).config
    from llm_doe.finetune.data import load_splits

    t = time.perf_counter()
    splits = load_splits(cfg.data)
    data_s = time.perf_counter() - t
    print(f"data: {len(splits.train)} train / {len(splits.val)} val texts (read+split {data_s:.2f} s, shared)")

    trainer_side = TrainerSide(args, cfg, workdir)
    ours_side = OursSide(args, cfg, workdir)
    warm: dict[str, float] = {}
    if not args.no_warmup:
        for label, side in (("Trainer", trainer_side), ("llm_doe", ours_side)):
            t = time.perf_counter()
            side.run(99)
            warm[label] = time.perf_counter() - t
    print(table([{"side": "Trainer", **trainer_side.one_time}, {"side": "llm_doe", **ours_side.one_time}],
                ["side", "tokenizer load s", "tokenise s", "model load s"],
                title="\none-time process costs (excluded from the per-trial figures)"))
    print("warm-up trial (excluded): " + (", ".join(f"{k} {v:.1f} s" for k, v in warm.items()) or "skipped"))

    all_rows: list[dict[str, Any]] = []
    searches: list[dict[str, Any]] = []
    per_repeat: list[dict[str, float]] = []
    discarded: list[dict[str, Any]] = []
    for r in range(args.repeats):
        order = [("Trainer", trainer_side), ("llm_doe", ours_side)]
        if r % 2:
            order.reverse()
        rows: list[dict[str, Any]] = []
        for label, side in order:
            for attempt in range(args.retries + 1):
                gc.collect()
                waited = wait_for_quiet(args.quiet_wait) if args.quiet_wait > 0 else 0.0
                if waited > 1:
                    print(f"(waited {waited:.0f} s for other processes to leave the CPU)")
                steal = CpuSteal()
                side_rows, search_s = side.run(r * 10 + attempt)
                for row in side_rows:
                    row["repeat"] = r
                    row["steal %"], row["others %"] = steal.percent(), steal.others_percent()
                others = steal.others_percent()
                if others <= args.max_others or attempt == args.retries:
                    break
                discarded += [{**row, "note": f"discarded (others {others:.0f} %)"} for row in side_rows]
                print(f"(discarded {label} run of repeat {r + 1}: other processes used {others:.0f} % of the CPU; "
                      f"re-running)")
            rows += side_rows
            trial_sum = sum(x["trial s"] for x in side_rows)
            searches.append({"side": label, "repeat": r, "search s": search_s, "trials s": trial_sum,
                             "setup+teardown s": search_s - trial_sum})
        rows.sort(key=lambda x: (x["side"] != "Trainer", x["trial"]))
        all_rows += rows
        print()
        print(table(rows, COLUMNS, title=f"repeat {r + 1}/{args.repeats} (order: {' then '.join(o[0] for o in order)})"))
        hf = [x for x in rows if x["side"] == "Trainer"]
        us = [x for x in rows if x["side"] == "llm_doe"]

        def m(rs: list[dict[str, Any]], key: str) -> float:
            return median(x[key] for x in rs)

        ratios = {
            "throughput": m(us, "train ex/s") / m(hf, "train ex/s"),
            "wall": m(hf, "trial s") / m(us, "trial s"),
            "eval": m(hf, "eval s") / m(us, "eval s"),
            "overhead": m(us, "overhead s"),
            "first_step": m(hf, "first step s") / m(us, "first step s"),
        }
        per_repeat.append(ratios)
        print(f"ratios: throughput x{ratios['throughput']:.2f}, trial wall time Trainer/ours x{ratios['wall']:.2f}, "
              f"eval time Trainer/ours x{ratios['eval']:.2f}, our overhead {ratios['overhead']:.3f} s, "
              f"first step Trainer/ours x{ratios['first_step']:.2f}")

    if discarded:
        print()
        print(table(discarded, COLUMNS + ["note"], title="runs discarded for contention (not in the figures below)"))
    print()
    print(table(searches, ["side", "repeat", "search s", "trials s", "setup+teardown s"],
                title="per-search costs outside trials (Trainer: construct Trainer + study; "
                      "llm_doe: compose, validate, open store, provenance) - paid once per search, not per trial"))

    print("\nsummary over repeats: median [min-max] of per-trial figures")
    summary = []
    for side in ("Trainer", "llm_doe"):
        rs = [x for x in all_rows if x["side"] == side]
        summary.append({"side": side, "trials": len(rs), **{k: spread(x[k] for x in rs if k in x) for k in
                        ("train ex/s", "train s", "eval s", "first step s", "trial s", "overhead s", "overhead(attr) s")}})
    print(table(summary, ["side", "trials", "train ex/s", "train s", "eval s", "first step s", "trial s", "overhead s",
                          "overhead(attr) s"]))

    def agg(key: str) -> tuple[float, str]:
        vals = [r[key] for r in per_repeat]
        return median(vals), spread(vals)

    print("\ntargets (ratios within each repeat; median [min-max] over repeats; verdict on the median)")
    thr, thr_s = agg("throughput")
    wall, wall_s = agg("wall")
    ev, ev_s = agg("eval")
    ov, ov_s = agg("overhead")
    _fs, fs_s = agg("first_step")
    lines = [
        ("training throughput ours/Trainer", thr_s, f">= {TARGETS['throughput']}x", thr >= TARGETS["throughput"]),
        ("trial wall time Trainer/ours", wall_s, f">= {TARGETS['wall']}x", wall >= TARGETS["wall"]),
        ("evaluation time Trainer/ours", ev_s, f">= {TARGETS['eval']}x", ev >= TARGETS["eval"]),
        ("our per-trial overhead (s)", ov_s, f"<= {TARGETS['overhead']} s", ov <= TARGETS["overhead"]),
    ]
    for name, value, target, ok in lines:
        print(f"  {name:<36} {value:<24} target {target:<10} {verdict(ok)}")
    print(f"  {'first step Trainer/ours (info)':<36} {fs_s:<24}")
    finish(workdir, args.keep, "stores and artifacts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
