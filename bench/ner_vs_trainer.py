"""Named-entity recognition, side by side in one process: Hugging Face's token-classification
recipe (``run_ner.py``: ``Trainer``, first-sub-token labels, seqeval) against an llm_doe trial
(``+study=ner_sweep``), at the same hyperparameters on the same sentences.

    python bench/ner_vs_trainer.py                                  # the shipped UNER English EWT
    python bench/ner_vs_trainer.py --train train.txt --val dev.txt  # your CoNLL-2003 files
    python bench/ner_vs_trainer.py --train-size 64 --val-size 32 --epochs 1 --repeats 1   # a smoke run

Both sides read the same sentences (llm_doe's CoNLL reader: ``--train`` and ``--val`` files, or
with neither the shipped Universal NER English EWT, validation cut from its training file), the
same model (MiniLM-L6 by default), learning rate, batch size, weight decay, warm-up ratio,
linear schedule, gradient clipping 1.0, epochs, maximum length and training seed, and are
scored the same way: seqeval's entity-level micro F1 over each word's first sub-token, on the
validation split after every epoch.

Recipe side (as ``examples/pytorch/token-classification/run_ner.py``): ``set_seed``, then
``AutoModelForTokenClassification.from_pretrained``, a ``datasets.Dataset`` tokenised with
``is_split_into_words`` and labels aligned by ``word_ids()`` (-100 on later sub-tokens and
special tokens), ``DataCollatorForTokenClassification``, ``Trainer`` with
``eval_strategy="epoch"`` and a ``compute_metrics`` on seqeval. Precision fp32 (its default;
``--trainer-bf16`` for bf16 autocast). llm_doe side: ``llm_doe.search.main`` with
``+study=ner_sweep``, its space pinned to the one point, one trial, no pruning, its defaults
otherwise (eval batch 32, length-grouped batches, ``train.precision=auto``); ``--ours OVERRIDE``
changes any of them.

Per side: train ex/s = training examples / training time without the evaluations (the recipe's
``Trainer.train`` time minus its ``evaluate`` calls; llm_doe's ``train_samples_per_second``);
final F1 and best F1 over the epochs' evaluations. The targets (issue 18): F1 within 0.02 of the
recipe's, and at least 1.3x its training examples per second. Repeats alternate which side runs
first, so drifting load on a shared machine falls on both; a 3-step warm-up run of each side
before them (``--no-warmup`` skips it) keeps one-time costs (lazy imports, kernel selection) out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import code_state, finish, median, spread, store_overrides, table, verdict

TARGETS = {"throughput": 1.3, "f1_gap": 0.02}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", help="training CoNLL file (default: the shipped UNER English EWT)")
    p.add_argument("--val", help="validation CoNLL file (default: --val-size sentences cut from training)")
    p.add_argument("--token-column", type=int, default=0, help="the word's column in --train/--val (default 0)")
    p.add_argument("--tag-column", type=int, default=-1, help="the tag's column in --train/--val (default -1: last)")
    p.add_argument("--train-size", type=int, default=None, help="training sentences (default: all)")
    p.add_argument("--val-size", type=int, default=300, help="validation sentences (cut or capped; default 300)")
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42, help="training seed, both sides")
    p.add_argument("--threads", type=int, default=2, help="torch threads on CPU, both sides")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--trainer-bf16", action="store_true", help="TrainingArguments(bf16=True) on the recipe side")
    p.add_argument("--ours", action="append", default=[], metavar="OVERRIDE",
                   help="extra Hydra override for the llm_doe side (repeatable), e.g. train.precision=fp32")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip each side's excluded warm-up run (3 optimizer steps: lazy imports, kernel selection)")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (store, artifacts)")
    return p.parse_args()


def data_config(args: argparse.Namespace) -> Any:
    """The data config both sides read (llm_doe's CoNLL reader cuts and caps the splits)."""
    from llm_doe.schema import DataConfig

    if args.train is None:  # data=uner_en_ewt
        return DataConfig(source="uner_en_ewt", token_column=1, tag_column=2, test_size=0,
                          train_size=args.train_size, val_size=args.val_size, max_length=args.max_length)
    return DataConfig(source="conll", path=args.train, val_path=args.val, test_path=None, test_size=0,
                      token_column=args.token_column, tag_column=args.tag_column, train_size=args.train_size,
                      val_size=args.val_size, max_length=args.max_length)


def data_overrides(args: argparse.Namespace) -> list[str]:
    """The same data config as Hydra overrides (of ner_sweep's data=uner_en_ewt, or data=conll)."""
    def value(v: Any) -> str:
        return "null" if v is None else str(v)

    sizes = ["data.test_size=0", f"data.train_size={value(args.train_size)}", f"data.val_size={args.val_size}",
             f"data.max_length={args.max_length}"]
    if args.train is None:
        return sizes  # ner_sweep's data=uner_en_ewt
    return ["data=conll", f"data.path={args.train}", f"data.val_path={value(args.val)}",
            f"data.token_column={args.token_column}", f"data.tag_column={args.tag_column}", *sizes]


class RecipeSide:
    """Hugging Face's token-classification recipe, instrumented."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        import datasets
        from transformers import AutoTokenizer

        from llm_doe.finetune.conll import load_conll
        from llm_doe.finetune.model import resolve

        datasets.disable_progress_bars()
        self.args, self.workdir = args, workdir
        self.path = resolve(args.model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        splits = load_conll(data_config(args))
        self.labels = splits.label_names
        label2id = {n: i for i, n in enumerate(self.labels)}

        def dataset(part: Any) -> Any:
            ds = datasets.Dataset.from_dict({"tokens": part.words,
                                             "ner_tags": [[label2id[t] for t in tags] for tags in part.tags]})
            return ds.map(self.tokenize_and_align_labels, batched=True, remove_columns=["tokens", "ner_tags"])

        self.train_ds, self.val_ds = dataset(splits.train), dataset(splits.val)

    def tokenize_and_align_labels(self, examples: dict[str, list[Any]]) -> Any:
        """run_ner.py's, with label_all_tokens=False: the first sub-token of a word carries its label."""
        tokenized = self.tokenizer(examples["tokens"], truncation=True, max_length=self.args.max_length,
                                   is_split_into_words=True)
        labels = []
        for i, label in enumerate(examples["ner_tags"]):
            previous, ids = None, []
            for word in tokenized.word_ids(batch_index=i):
                ids.append(-100 if word is None or word == previous else label[word])
                previous = word
            labels.append(ids)
        tokenized["labels"] = labels
        return tokenized

    def compute_metrics(self, pred: Any) -> dict[str, float]:
        import numpy as np
        from seqeval.metrics import f1_score, precision_score, recall_score

        predictions = np.argmax(pred.predictions, axis=2)
        gold = [[self.labels[g] for g in row if g != -100] for row in pred.label_ids]
        guess = [[self.labels[p] for p, g in zip(prow, lrow) if g != -100]
                 for prow, lrow in zip(predictions, pred.label_ids)]
        return {"precision": precision_score(gold, guess), "recall": recall_score(gold, guess),
                "f1": f1_score(gold, guess)}

    def run(self, repeat: int, max_steps: int = -1) -> dict[str, Any]:
        from transformers import (
            AutoModelForTokenClassification,
            DataCollatorForTokenClassification,
            Trainer,
            TrainingArguments,
            set_seed,
        )

        args = self.args
        evals: list[float] = []
        f1s: list[float] = []

        class TimedTrainer(Trainer):
            def evaluate(self, *a: Any, **kw: Any) -> dict[str, float]:
                t = time.perf_counter()
                try:
                    out = super().evaluate(*a, **kw)
                    f1s.append(out["eval_f1"])
                    return out
                finally:
                    evals.append(time.perf_counter() - t)

        set_seed(args.seed)
        model = AutoModelForTokenClassification.from_pretrained(
            self.path, num_labels=len(self.labels), id2label=dict(enumerate(self.labels)),
            label2id={n: i for i, n in enumerate(self.labels)})
        targs = TrainingArguments(
            output_dir=str(self.workdir / f"recipe_r{repeat}"), per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=32, learning_rate=args.lr, weight_decay=args.weight_decay,
            num_train_epochs=args.epochs, warmup_steps=args.warmup_ratio, lr_scheduler_type="linear",
            max_grad_norm=1.0, eval_strategy="epoch", save_strategy="no", report_to="none", seed=args.seed,
            use_cpu=args.device == "cpu", disable_tqdm=True, bf16=args.trainer_bf16, max_steps=max_steps)
        trainer = TimedTrainer(model=model, args=targs, train_dataset=self.train_ds, eval_dataset=self.val_ds,
                               data_collator=DataCollatorForTokenClassification(self.tokenizer),
                               compute_metrics=self.compute_metrics)
        t = time.perf_counter()
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            trainer.train()
        train_s = time.perf_counter() - t - sum(evals)
        return {"side": "recipe", "repeat": repeat, "prec": "bf16" if args.trainer_bf16 else "fp32",
                "train ex/s": len(self.train_ds) * args.epochs / train_s, "train s": train_s, "eval s": sum(evals),
                "final f1": f1s[-1] if f1s else float("nan"), "best f1": max(f1s, default=float("nan"))}


class OursSide:
    """``python -m llm_doe.search +study=ner_sweep`` with its space pinned to the recipe's point."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        space = (f"{{train.learning_rate: 'choice({args.lr})', train.batch_size: 'choice({args.batch_size})', "
                 f"train.weight_decay: 'choice({args.weight_decay})'}}")
        self.overrides = [
            "+study=ner_sweep", f"study.space={space}", "study.n_trials=1", "pruner=none",
            f"model.name_or_path={args.model}", *data_overrides(args), f"train.num_epochs={args.epochs}",
            "train.evals_per_epoch=1", f"train.warmup_ratio={args.warmup_ratio}", f"train.seed={args.seed}",
            "train.lr_scheduler=linear", "train.max_grad_norm=1.0", f"runtime.device={args.device}",
            f"runtime.num_threads={args.threads}", "runtime.progress=false", *args.ours]

    def run(self, repeat: int, max_steps: int = -1) -> dict[str, Any]:
        import optuna

        from llm_doe.search import main

        name = f"ours_r{repeat}"
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            # A short run: 3 batches of training sentences, one epoch (the warm-up).
            budget = [f"data.train_size={3 * self.args.batch_size}", "train.num_epochs=1"] if max_steps > 0 else []
            rc = main([*self.overrides, *budget, *store_overrides(self.workdir, name)])
        if rc != 0:
            raise SystemExit(f"llm_doe.search exited with {rc}")
        trial = optuna.load_study(study_name=name, storage=f"sqlite:///{self.workdir}/{name}.db").trials[0]
        ua, f1s = trial.user_attrs, [trial.intermediate_values[k] for k in sorted(trial.intermediate_values)]
        return {"side": "llm_doe", "repeat": repeat, "prec": ua.get("train_precision", "?"),
                "train ex/s": ua["train_samples_per_second"], "train s": ua["train_time_s"],
                "eval s": ua["eval_time_s"], "final f1": f1s[-1] if f1s else float("nan"),
                "best f1": max(f1s, default=float("nan"))}


COLUMNS = ["side", "repeat", "prec", "train ex/s", "train s", "eval s", "final f1", "best f1"]


def main() -> int:
    args = parse_args()
    warnings.filterwarnings("ignore")
    import optuna
    import torch
    import transformers

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="bench_ner_vs_trainer_"))
    print(f"torch {torch.__version__} transformers {transformers.__version__}; device {args.device}; threads "
          f"{torch.get_num_threads()}; load avg {os.getloadavg()}")
    print(code_state())
    recipe, ours = RecipeSide(args, workdir), OursSide(args, workdir)
    print(f"{len(recipe.train_ds)} training / {len(recipe.val_ds)} validation sentences; tags {recipe.labels}; "
          f"lr {args.lr} batch {args.batch_size} weight decay {args.weight_decay} warm-up {args.warmup_ratio} "
          f"epochs {args.epochs} max length {args.max_length}")
    if not args.no_warmup:  # one-time costs of each side (imports, kernels, allocator growth), excluded
        recipe.run(-1, max_steps=3)
        ours.run(-1, max_steps=3)
    rows: list[dict[str, Any]] = []
    ratios, gaps = [], []
    for repeat in range(args.repeats):
        sides = [recipe, ours] if repeat % 2 == 0 else [ours, recipe]
        got = {type(side).__name__: side.run(repeat) for side in sides}
        r, o = got["RecipeSide"], got["OursSide"]
        rows += [r, o]
        ratios.append(o["train ex/s"] / r["train ex/s"])
        gaps.append(o["final f1"] - r["final f1"])
    print()
    print(table(rows, COLUMNS, "per repeat"))
    ratio, gap = median(ratios), median(gaps)
    print()
    print(f"train ex/s, llm_doe / recipe: {spread(ratios)}  (target >= {TARGETS['throughput']}: "
          f"{verdict(ratio >= TARGETS['throughput'])})")
    print(f"final F1, llm_doe - recipe: {spread(gaps)}  (target |gap| <= {TARGETS['f1_gap']}, or llm_doe above: "
          f"{verdict(gap >= -TARGETS['f1_gap'])})")
    finish(workdir, args.keep, "stores and artifacts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
