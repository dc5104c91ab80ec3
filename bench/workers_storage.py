"""Throughput of parallel workers, and what one report/tell costs on each study store.

    python bench/workers_storage.py                  # both parts
    python bench/workers_storage.py --part workers --trials 16
    python bench/workers_storage.py --part storage --ops 200

Part 1 runs the real command (`python -m llm_doe.search +study=smoke model=tiny workers=N`)
for N = 1, 2, 4 on a fresh SQLite study each and prints trials per hour and the speed-up
over one worker. On a 2-core CPU, workers share the cores (each gets cores/N threads), so
the gain comes from overlapping the non-compute parts of trials, not from more FLOPs.

Part 2 times Optuna storage operations as a trial does them (one `report` per evaluation,
one `tell` at the end) on SQLite, a throwaway PostgreSQL server (tests/pg.py; skipped when
the server binaries are missing) and a journal file. Anchor: Optuna's default SQLite settings (rollback journal, fsync on
every commit) next to llm_doe's (WAL, synchronous=NORMAL).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def bench_workers(n_trials: int, worker_counts: list[int]) -> None:
    print(f"== workers: {n_trials} tiny trials (train 200, val 100, 1 epoch, 4 evals), SQLite ==")
    print(f"{'workers':>8} {'wall s':>8} {'trials/h':>10} {'speed-up':>9}")
    base = None
    for n in worker_counts:
        with tempfile.TemporaryDirectory() as tmp:
            args = [sys.executable, "-m", "llm_doe.search", "+study=smoke", "model=tiny", f"workers={n}",
                    f"study.n_trials={n_trials}", "data.train_size=200", "data.val_size=100", "train.num_epochs=1",
                    "train.evals_per_epoch=4", "pruner=none", f"storage.url=sqlite:///{tmp}/w.db",
                    f"storage.artifacts_dir={tmp}/art", f"storage.checkpoints_dir={tmp}/ck",
                    f"hydra.run.dir={tmp}/run", "runtime.progress=false"]
            started = time.perf_counter()
            proc = subprocess.run(args, cwd=tmp, capture_output=True, text=True)
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-2000:])
                raise SystemExit(f"workers={n} failed")
            study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp}/w.db")
            done = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)))
            assert done == n_trials, done
        rate = 3600 * n_trials / wall
        base = base or rate
        print(f"{n:>8} {wall:>8.1f} {rate:>10.0f} {rate / base:>8.2f}x")


def _time_ops(storage: optuna.storages.BaseStorage, ops: int, evals: int = 20) -> tuple[float, float]:
    study = optuna.create_study(storage=storage, study_name=f"bench-{time.time_ns()}")
    report_s, tell_s = [], []
    for _ in range(max(1, ops // evals)):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        for step in range(evals):
            t0 = time.perf_counter()
            trial.report(float(step), step)
            report_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        study.tell(trial, 0.5)
        tell_s.append(time.perf_counter() - t0)
    return statistics.median(report_s) * 1e3, statistics.median(tell_s) * 1e3


def bench_storage(ops: int) -> None:
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    print(f"== storage: median ms per operation ({ops} reports, one tell per 20 reports) ==")
    print(f"{'store':>24} {'report ms':>10} {'tell ms':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        from llm_doe.schema import StorageConfig
        from llm_doe.storage import make_storage

        rows = {
            "sqlite (optuna default)": RDBStorage(f"sqlite:///{tmp}/s.db"),
            "sqlite (llm_doe: WAL)": make_storage(StorageConfig(url=f"sqlite:///{tmp}/w.db", heartbeat_interval=None)),
            "journal": JournalStorage(JournalFileBackend(f"{tmp}/j.journal")),
        }
        for name, storage in rows.items():
            report, tell = _time_ops(storage, ops)
            print(f"{name:>24} {report:>10.2f} {tell:>9.2f}")
        try:
            import pytest

            from tests.pg import postgres_server

            with postgres_server() as server:
                report, tell = _time_ops(RDBStorage(server.url), ops)
                print(f"{'postgresql':>24} {report:>10.2f} {tell:>9.2f}")
        except (ImportError, pytest.skip.Exception) as err:
            print(f"{'postgresql':>24} skipped: {err}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["workers", "storage", "all"], default="all")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--ops", type=int, default=400)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.part in ("workers", "all"):
        bench_workers(args.trials, args.workers)
    if args.part in ("storage", "all"):
        bench_storage(args.ops)


if __name__ == "__main__":
    main()
