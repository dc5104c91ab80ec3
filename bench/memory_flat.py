"""Is memory flat over a study? 20 trials in one process through the real entry point.

    python bench/memory_flat.py                      # tiny model (+study=smoke), 20 trials, ~1 min
    python bench/memory_flat.py --model minilm       # MiniLM (+study=lr_sweep, 200 train / 100 val)
    python bench/memory_flat.py --n-trials 40 --pruner none
    python bench/memory_flat.py --model smollm2 --n-trials 10   # LoRA trials on SmolLM2 (+study=lora_sft)

Runs ``llm_doe.search.main`` in this process (the same objective, loop, storage writes and
artifact uploads as a user's study) and, after every trial (an Optuna callback added to the
study's ``optimize``), records:
  peak RSS    ``resource.getrusage(RUSAGE_SELF).ru_maxrss``: the process's high-water mark
  RSS         current resident set (/proc/self/statm)
  py objects  ``len(gc.get_objects())`` without forcing a collection (cycles awaiting the
              collector count too): a leak of Python objects shows here first
  CUDA        ``torch.cuda.memory_allocated`` before and after each trial, and the trial's
              ``peak_memory_mb`` attribute (max allocated during the trial), on a GPU
Target (the issue's): peak RSS after trial 20 within 5 % of after trial 2 (CPU); on CUDA,
allocated memory back at its baseline after every trial. For LoRA (the "Tune an LLM" issue):
the same ratio after trial 10, each trial wrapping the shared base model in a new adapter and
unwrapping it afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import code_state, finish, rss_now_mb, rss_peak_mb, store_overrides, table, verdict

TARGET = 1.05  # peak RSS after the last trial / after trial 2


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("tiny", "minilm", "tiny_llama", "smollm2"), default="tiny",
                   help="tiny: +study=smoke; minilm: +study=lr_sweep; tiny_llama: +study=sft_smoke (LoRA); "
                        "smollm2: +study=lora_sft (LoRA trials on SmolLM2-135M, each a new adapter)")
    p.add_argument("--n-trials", type=int, default=20)
    p.add_argument("--train-size", type=int, default=None, help="default: 200 (smollm2: 32)")
    p.add_argument("--val-size", type=int, default=None, help="default: 100 (smollm2: 16)")
    p.add_argument("--pruner", default=None, help="default: the study's (median); none = every trial runs fully")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto", help="runtime.device (auto = cuda if present)")
    p.add_argument("--extra", action="append", default=[], metavar="OVERRIDE", help="extra Hydra override (repeatable)")
    p.add_argument("--keep", action="store_true")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    import optuna
    import torch

    from llm_doe.search import main as search_main

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(args.threads)
    cuda = (torch.cuda.is_available() and args.device in ("auto", "cuda")) or args.device.startswith("cuda")
    study_name = {"tiny": "smoke", "minilm": "lr_sweep", "tiny_llama": "sft_smoke", "smollm2": "lora_sft"}[args.model]
    overrides = [f"+study={study_name}", f"study.n_trials={args.n_trials}", f"runtime.num_threads={args.threads}",
                 f"runtime.device={args.device}", "runtime.progress=false",
                 f"data.train_size={args.train_size or (32 if args.model == 'smollm2' else 200)}",
                 f"data.val_size={args.val_size or (16 if args.model == 'smollm2' else 100)}"]
    if args.model in ("minilm", "smollm2"):
        overrides += ["train.num_epochs=1", "train.evals_per_epoch=2"]
    if args.model == "smollm2":  # a short trial: the figure is memory growth across trials, not quality
        overrides += ["data.max_length=64", "task.sample_prompts=2", "task.sample_max_new_tokens=8"]
    if args.pruner:
        overrides.append(f"pruner={args.pruner}")
    overrides += args.extra
    workdir = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    print(code_state())
    print("overrides: " + " ".join(overrides))
    print(f"before the study: peak RSS {rss_peak_mb():.1f} MB, RSS {rss_now_mb():.1f} MB")

    rows: list[dict[str, Any]] = []
    mark: dict[str, float] = {}

    def cuda_mb() -> float:
        return torch.cuda.memory_allocated() / 2**20 if cuda else float("nan")

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        gc_objects = len(gc.get_objects())
        rows.append({
            "trial": trial.number + 1, "state": trial.state.name,
            "peak RSS MB": rss_peak_mb(), "RSS MB": rss_now_mb(), "py objects": gc_objects,
            "cuda before MB": mark["cuda"], "cuda after MB": cuda_mb(),
            "peak_memory_mb": trial.user_attrs.get("peak_memory_mb", float("nan")),
            "trial s": trial.duration.total_seconds() if trial.duration else float("nan"),
        })
        mark["cuda"] = cuda_mb()

    real_optimize = optuna.study.Study.optimize

    def optimize(self: optuna.Study, *a: Any, **kw: Any) -> None:
        kw["callbacks"] = [*(kw.get("callbacks") or []), after_trial]
        mark.setdefault("cuda", cuda_mb())
        return real_optimize(self, *a, **kw)

    optuna.study.Study.optimize = optimize  # type: ignore[method-assign]
    t = time.perf_counter()
    try:
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            rc = search_main([*overrides, *store_overrides(workdir, "memory")])
    finally:
        optuna.study.Study.optimize = real_optimize  # type: ignore[method-assign]
    wall = time.perf_counter() - t
    if rc != 0:
        print(f"llm_doe.search exited with {rc}")
    columns = ["trial", "state", "peak RSS MB", "RSS MB", "py objects", "trial s"]
    if cuda:
        columns[4:4] = ["cuda before MB", "cuda after MB", "peak_memory_mb"]
    print()
    print(table(rows, columns, title=f"after each trial ({len(rows)} trials, {wall:.1f} s)"))
    if len(rows) < 2:
        print("fewer than 2 trials: no ratio")
        return 1
    first, last = rows[1], rows[-1]
    ratio = last["peak RSS MB"] / first["peak RSS MB"]
    rss_ratio = last["RSS MB"] / first["RSS MB"]
    print(f"\npeak RSS after trial {last['trial']} / after trial 2: {last['peak RSS MB']:.1f} / {first['peak RSS MB']:.1f} MB"
          f" = {ratio:.4f}   target <= {TARGET}   {verdict(ratio <= TARGET)}")
    print(f"(info) current RSS after trial {last['trial']} / after trial 2: {last['RSS MB']:.1f} / {first['RSS MB']:.1f} MB"
          f" = {rss_ratio:.4f}; Python objects {first['py objects']} -> {last['py objects']}")
    if cuda:
        base = rows[0]["cuda before MB"]
        worst = max(abs(r["cuda after MB"] - base) for r in rows)
        print(f"CUDA allocated: baseline {base:.1f} MB, largest difference after a trial {worst:.1f} MB   "
              f"target: back to baseline (<= 1 MB)   {verdict(worst <= 1.0)}")
    finish(workdir, args.keep, "store")
    return 0


if __name__ == "__main__":
    sys.exit(main())
