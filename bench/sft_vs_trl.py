"""Side by side, in one process: TRL's ``SFTTrainer`` with ``peft_config=LoraConfig(...)`` against
an llm_doe LoRA SFT trial, on the same model, data, batch, max length and evaluation schedule.

    python bench/sft_vs_trl.py                    # 3 repeats, matched, then each side's defaults
    python bench/sft_vs_trl.py --mode matched     # only the matched comparison

The setting (the "Tune an LLM" issue's): SmolLM2-135M-Instruct (the converted packaged
checkpoint), 128 training / 32 validation chatterbot conversations (the split
``+study=lora_sft data.train_size=128 data.val_size=32`` composes, fed to both sides), batch 8,
max length 128, 1 epoch, 4 evaluations, LoRA r=8, alpha=16, dropout 0.05 on q/k/v/o_proj,
learning rate 2e-4, no pruning, no checkpoints.

TRL has no ``model_init`` (trl #484), so a TRL "trial" is what a search script around it does
per trial: deep-copy the base model loaded once, build an ``SFTTrainer`` with the LoRA config
(it wraps the copy with ``get_peft_model``) and ``train()`` it with its evaluations. The
dataset is tokenised once by the first trainer and reused (an ``input_ids`` column makes TRL
skip its tokenisation): like our tokenising, a one-time cost excluded on both sides, as are
reading the weights and one warm-up trial per side.

Modes (each repeat runs both sides, alternating which goes first):
  defaults  each side as shipped. TRL: conversational ``messages`` dataset, loss on every token
            (``assistant_only_loss=False``), padding to the longest in a random batch,
            ``gradient_checkpointing=True``, ``bf16=True`` (autocast; on a CPU without
            AVX512-BF16/AMX that is emulated), eval batch 8, no warmup. llm_doe: loss on the
            answers only (``task.loss_on=completion``), length-grouped batches,
            ``train.precision=auto`` (bf16 only where native), eval batch 32, 10 % warmup, and
            greedy sample generations after training (counted in its eval time).
  matched   both fp32, no gradient checkpointing, the same eval batch (32), warmup (10 %),
            weight decay (0), schedule (linear), clipping (1.0) and loss tokens (TRL
            ``assistant_only_loss=True`` needs a template with generation markers; SmolLM2's
            has none, so both sides take the loss on every token: ours ``task.loss_on=all``).

Per trial:
  train tok/s   real (non-pad) tokens through the model in training / training time
                (evaluation excluded). TRL: the tokens of its processed dataset (one epoch);
                ours: the ``train_tokens_per_second`` attribute.
  eval s        time in the validation passes (ours: plus its sample generations, which
                ``gen s`` gives apart: the ``finish_time_s`` attribute)
  trial s       the whole trial: TRL from the model copy to the end of ``train()``; ours
                Optuna's trial duration
  overhead s    trial s - train s - eval s (target for ours <= 0.2 s)
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
from _common import CpuSteal, code_state, finish, median, spread, store_overrides, table, verdict

TARGETS = {"throughput": 1.3, "wall": 1.5, "overhead": 0.2}
LR = 2e-4


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("defaults", "matched", "both"), default="both",
                   help="both = matched first, then defaults")
    p.add_argument("--trl-fp32", action="store_true",
                   help="defaults mode: TRL with bf16=False (on a CPU without native bf16, TRL's default bf16=True "
                        "autocast is emulated and many times slower; a user there would turn it off)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch threads, both sides (default 2)")
    p.add_argument("--train-size", type=int, default=128)
    p.add_argument("--val-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--evals", type=int, default=4, help="evaluations in the (single) epoch")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--model", default="smollm2", help="model=NAME config group (smollm2 | tiny_llama)")
    p.add_argument("--ours", action="append", default=[], metavar="OVERRIDE", help="extra override for our side")
    p.add_argument("--no-warmup", action="store_true", help="skip the excluded warm-up trial of each side")
    p.add_argument("--keep", action="store_true")
    return p.parse_args()


def compose(args: argparse.Namespace, matched: bool) -> tuple[Any, list[str]]:
    from llm_doe.cli import compose_config

    overrides = [
        "+study=lora_sft", f"model={args.model}", "study.n_trials=1", "pruner=none", "sampler=random",
        # lora_sft's space pinned to one point (a quoted value: Hydra would read choice(...) as a sweep).
        f"study.space={{train.learning_rate: 'choice({LR})', peft.r: 'choice({args.rank})', "
        "peft.alpha_ratio: 'choice(2)', peft.dropout: 'choice(0.05)'}",
        f"data.train_size={args.train_size}", f"data.val_size={args.val_size}", f"data.max_length={args.max_length}",
        f"train.batch_size={args.batch_size}", "train.num_epochs=1", f"train.evals_per_epoch={args.evals}",
        "peft.alpha=null", "peft.target_modules=attention",
        f"runtime.num_threads={args.threads}", "runtime.progress=false", "runtime.checkpoint=false",
    ]
    if matched:
        overrides += ["train.precision=fp32", "task.loss_on=all"]
    overrides += args.ours
    return compose_config(overrides).config, overrides


class TRLSide:
    def __init__(self, args: argparse.Namespace, cfg: Any, workdir: Path, matched: bool) -> None:
        import datasets
        from transformers.utils import logging as hf_logging

        from llm_doe.finetune.model import causal_lm_factory, load_tokenizer
        from llm_doe.finetune.tasks.causal_lm import chat_splits

        hf_logging.set_verbosity_error()
        datasets.disable_progress_bars()
        self.args, self.cfg, self.workdir, self.matched = args, cfg, workdir, matched
        self.tokenizer, _ = load_tokenizer(cfg.model)
        splits = chat_splits(cfg.data)
        self.train_ds = datasets.Dataset.from_dict({"messages": splits.train})
        self.val_ds = datasets.Dataset.from_dict({"messages": splits.val})
        self.processed: tuple[Any, Any] | None = None
        t = time.perf_counter()
        # The base model as our side holds it (SmolLM2: the converted checkpoint, read once).
        self.template = causal_lm_factory(cfg.model).template
        self.load_s = time.perf_counter() - t

    def config(self, repeat: int) -> Any:
        from trl import SFTConfig

        steps = math.ceil(len(self.train_ds) / self.args.batch_size)
        kw: dict[str, Any] = dict(
            output_dir=str(self.workdir / f"trl_r{repeat}"), per_device_train_batch_size=self.args.batch_size,
            num_train_epochs=1, learning_rate=LR, eval_strategy="steps",
            eval_steps=max(1, math.ceil(steps / self.args.evals)), save_strategy="no", report_to="none",
            use_cpu=True, disable_tqdm=True, seed=self.cfg.train.seed, max_length=self.args.max_length,
            logging_strategy="no", dataloader_num_workers=0,
        )
        if self.args.trl_fp32:
            kw.update(bf16=False)
        if self.matched:
            kw.update(bf16=False, gradient_checkpointing=False, per_device_eval_batch_size=self.cfg.train.eval_batch_size,
                      warmup_steps=self.cfg.train.warmup_ratio, weight_decay=self.cfg.train.weight_decay,
                      lr_scheduler_type="linear", max_grad_norm=self.cfg.train.max_grad_norm)
        return SFTConfig(**kw)

    def run(self, repeat: int) -> dict[str, Any]:
        import torch
        from peft import LoraConfig
        from transformers import TrainerCallback
        from trl import SFTTrainer

        timing: dict[str, Any] = {"evals": [], "steps": 0}

        class Timer(TrainerCallback):
            def on_train_begin(self, a, state, control, **kw):
                timing["train_begin"] = time.perf_counter()

            def on_step_end(self, a, state, control, **kw):
                timing["steps"] += 1

            def on_train_end(self, a, state, control, **kw):
                timing["train_end"] = time.perf_counter()

        class TimedSFTTrainer(SFTTrainer):
            def evaluate(self, *a: Any, **kw: Any) -> dict[str, float]:
                t = time.perf_counter()
                try:
                    return super().evaluate(*a, **kw)
                finally:
                    timing["evals"].append(time.perf_counter() - t)

        lora = LoraConfig(r=self.args.rank, lora_alpha=2 * self.args.rank, lora_dropout=0.05,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
        train_ds, val_ds = self.processed or (self.train_ds, self.val_ds)
        start = time.perf_counter()
        torch.manual_seed(self.cfg.train.seed)
        model = copy.deepcopy(self.template)
        sft_config = self.config(repeat)
        trainer = TimedSFTTrainer(model=model, args=sft_config, train_dataset=train_ds, eval_dataset=val_ds,
                                  processing_class=self.tokenizer, peft_config=lora, callbacks=[Timer()])
        if self.processed is None:
            self.processed = (trainer.train_dataset, trainer.eval_dataset)
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            out = trainer.train()
        wall = time.perf_counter() - start
        eval_s = sum(timing["evals"])
        train_s = timing["train_end"] - timing["train_begin"] - eval_s
        tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
        evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
        del trainer, model
        gc.collect()
        return {"side": "TRL", "prec": "bf16" if sft_config.bf16 else "fp32", "train tok/s": tokens / train_s,
                "train s": train_s, "eval s": eval_s, "evals": len(evals), "trial s": wall,
                "overhead s": wall - train_s - eval_s, "steps": timing["steps"], "val loss": evals[-1] if evals else None,
                "train loss": out.training_loss}


class OursSide:
    def __init__(self, args: argparse.Namespace, overrides: list[str], workdir: Path) -> None:
        self.args, self.overrides, self.workdir = args, overrides, workdir

    def run(self, repeat: int) -> dict[str, Any]:
        import optuna

        from llm_doe.search import main

        name = f"ours_r{repeat}"
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            rc = main([*self.overrides, *store_overrides(self.workdir, name)])
        if rc != 0:
            raise SystemExit(f"llm_doe.search exited with {rc}")
        trial = optuna.load_study(study_name=name, storage=f"sqlite:///{self.workdir}/{name}.db").trials[-1]
        ua = trial.user_attrs
        wall = (trial.datetime_complete - trial.datetime_start).total_seconds()
        train_s, eval_s = ua["train_time_s"], ua["eval_time_s"]
        return {"side": "llm_doe", "prec": ua.get("train_precision", ua.get("precision", "fp32")), "train tok/s": ua["train_tokens_per_second"],
                "train s": train_s, "eval s": eval_s, "gen s": ua.get("finish_time_s"),
                "evals": len(trial.intermediate_values), "trial s": wall,
                "overhead s": wall - train_s - eval_s, "steps": ua["optimizer_steps"], "val loss": trial.value,
                "train loss": ua.get("train_loss")}


COLUMNS = ["side", "repeat", "prec", "train tok/s", "train s", "eval s", "gen s", "evals", "trial s", "overhead s", "steps",
           "val loss", "others %"]


def compare(args: argparse.Namespace, matched: bool, workdir: Path) -> list[tuple[str, str, str, bool]]:
    label = "matched" if matched else "defaults" + (" (TRL bf16=False)" if args.trl_fp32 else "")
    print(f"\n=== {label} ===")
    cfg, overrides = compose(args, matched)
    trl_side = TRLSide(args, cfg, workdir, matched)
    ours = OursSide(args, overrides, workdir)
    print(f"base model read once for TRL in {trl_side.load_s:.1f} s (excluded); our overrides: {' '.join(overrides)}")
    if not args.no_warmup:
        for side in (trl_side, ours):
            t = time.perf_counter()
            side.run(99 + int(matched) * 1000)
            print(f"warm-up trial ({type(side).__name__}, excluded): {time.perf_counter() - t:.1f} s")
    rows: list[dict[str, Any]] = []
    ratios: list[dict[str, float]] = []
    for r in range(args.repeats):
        order = [trl_side, ours] if r % 2 == 0 else [ours, trl_side]
        got = {}
        for side in order:
            gc.collect()
            probe = CpuSteal()
            row = side.run(r + int(matched) * 1000)
            row.update(repeat=r, **{"others %": probe.others_percent()})
            got[row["side"]] = row
            rows.append(row)
        hf, us = got["TRL"], got["llm_doe"]
        ratios.append({"throughput": us["train tok/s"] / hf["train tok/s"], "wall": hf["trial s"] / us["trial s"],
                       "overhead": us["overhead s"]})
        print(table([hf, us], COLUMNS, title=f"\nrepeat {r + 1}/{args.repeats}"))
    print("\nsummary: median [min-max] over repeats")
    print(table([{"side": s, **{k: spread(x[k] for x in rows if x["side"] == s) for k in
                                ("train tok/s", "train s", "eval s", "trial s", "overhead s", "val loss")}}
                 for s in ("TRL", "llm_doe")], ["side", "train tok/s", "train s", "eval s", "trial s", "overhead s",
                                                "val loss"]))
    thr = median(x["throughput"] for x in ratios)
    wall = median(x["wall"] for x in ratios)
    ov = median(x["overhead"] for x in ratios)
    return [
        (f"{label}: training tokens/s ours/TRL", spread(x["throughput"] for x in ratios), f">= {TARGETS['throughput']}x",
         thr >= TARGETS["throughput"]),
        (f"{label}: trial wall time TRL/ours", spread(x["wall"] for x in ratios), f">= {TARGETS['wall']}x",
         wall >= TARGETS["wall"]),
        (f"{label}: our overhead per trial (s)", spread(x["overhead"] for x in ratios), f"<= {TARGETS['overhead']} s",
         ov <= TARGETS["overhead"]),
    ]


def main() -> int:
    args = parse_args()
    warnings.filterwarnings("ignore")
    import optuna
    import peft
    import torch
    import transformers
    import trl

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="bench_sft_vs_trl_"))
    print(f"torch {torch.__version__} transformers {transformers.__version__} trl {trl.__version__} "
          f"peft {peft.__version__} optuna {optuna.__version__}; threads {torch.get_num_threads()}; "
          f"cpu affinity {len(os.sched_getaffinity(0))} of {os.cpu_count()}; load avg {os.getloadavg()}")
    print(code_state())
    print(f"setting: model={args.model}, train {args.train_size} / val {args.val_size} conversations, batch "
          f"{args.batch_size}, max length {args.max_length}, 1 epoch, {args.evals} evals, LoRA r={args.rank} "
          f"alpha={2 * args.rank} dropout 0.05 on q/k/v/o, lr {LR}, {args.repeats} repeats")
    verdicts = []
    modes = ["matched", "defaults"] if args.mode == "both" else [args.mode]
    for mode in modes:
        verdicts += compare(args, mode == "matched", workdir)
    print("\ntargets (ratios within each repeat; median [min-max] over repeats; verdict on the median)")
    for name, value, target, ok in verdicts:
        print(f"  {name:<100} {value:<22} target {target:<8} {verdict(ok)}")
    finish(workdir, args.keep, "stores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
