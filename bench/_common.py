"""Shared helpers for the benchmarks in bench/ (not part of the package).

Run the scripts from the repository root (``python bench/NAME.py``): this module sits next to
them and is imported as ``_common``.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Optuna's ExperimentalWarning and transformers' notices would bury the tables.
warnings.filterwarnings("ignore", category=Warning, module=r"(optuna|transformers|llm_doe|torch|accelerate)")
warnings.filterwarnings("ignore", message=".*experimental.*")
if str(REPO) not in sys.path:  # run from anywhere without `pip install -e .`
    sys.path.insert(0, str(REPO))


def store_overrides(tmp: Path, name: str) -> list[str]:
    """Everything a run writes goes under ``tmp`` (store, artifacts, checkpoints, Hydra run dir)."""
    from llm_doe.schema import StorageConfig

    out = [f"study.name={name}", f"storage.url=sqlite:///{tmp}/{name}.db", f"storage.artifacts_dir={tmp}/{name}_art",
           f"hydra.run.dir={tmp}/{name}_run"]
    fields = getattr(StorageConfig, "__dataclass_fields__", {})
    if "checkpoints_dir" in fields:  # only in versions that checkpoint trials
        out.append(f"storage.checkpoints_dir={tmp}/{name}_ckpt")
    if "journal_path" in fields:
        out.append(f"storage.journal_path={tmp}/{name}.journal")
    return out


def code_state() -> str:
    """Which code was measured: git commit, and a hash of uncommitted changes to llm_doe/ and conf/."""
    import hashlib
    import subprocess

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    diff = git("diff", "HEAD", "--", "llm_doe", "conf")
    if not diff:
        return f"code: {head} (clean)"
    return f"code: {head} + uncommitted changes to llm_doe/ conf/ (diff sha1 {hashlib.sha1(diff.encode()).hexdigest()[:10]})"


def finish(workdir: Path, keep: bool, what: str) -> None:
    """Keep the run's temp folder (``--keep``: say where ``what`` is) or delete it."""
    import shutil

    if keep:
        print(f"\n{what} kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def rss_now_mb() -> float:
    """Current resident set size of this process (Linux /proc/self/statm)."""
    with open("/proc/self/statm") as fh:
        resident_pages = int(fh.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_peak_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def spread(values: Iterable[float]) -> str:
    """``median [min-max]`` of finite values."""
    vals = [v for v in values if v is not None and v == v]
    if not vals:
        return "n/a"
    med = statistics.median(vals)
    return f"{_num(med)} [{_num(min(vals))}-{_num(max(vals))}]"


def median(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None and v == v]
    return statistics.median(vals) if vals else float("nan")


def _num(x: float) -> str:
    if x != x:
        return "nan"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> str:
    """A plain fixed-width text table."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return _num(v)
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(v.rjust(w) for v, w in zip(row, widths)))
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


class CpuSteal:
    """How contended an interval was on this shared machine: ``percent()`` is the CPU time the
    hypervisor gave to other machines (``steal`` in /proc/stat), ``others_percent()`` the CPU
    time other processes on this machine used, both as % of all CPU time in the interval."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float, float]:
        ours = sum(os.times()[:4])  # this process and its waited-for children, seconds
        try:
            with open("/proc/stat") as fh:
                fields = [int(x) for x in fh.readline().split()[1:]]
        except OSError:
            return (0.0, 0.0, 0.0, ours)
        tick = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        steal = fields[7] if len(fields) > 7 else 0
        total = sum(fields[:8])
        return total / tick, (total - idle - steal) / tick, steal / tick, ours

    def percent(self) -> float:
        total, _, steal, _ = (a - b for a, b in zip(self._read(), self.start))
        return 100.0 * steal / total if total > 0 else float("nan")

    def others_percent(self) -> float:
        total, busy, _, ours = (a - b for a, b in zip(self._read(), self.start))
        return max(0.0, 100.0 * (busy - ours) / total) if total > 0 else float("nan")


def wait_for_quiet(max_wait_s: float, threshold_percent: float = 15.0, window_s: float = 1.0) -> float:
    """Wait (up to ``max_wait_s``) until other processes on this machine use less than
    ``threshold_percent`` of the CPU over ``window_s``: on a machine shared with other people's
    test runs, a timing taken next to a busy neighbour says little. Returns the seconds waited."""
    import time

    start = time.perf_counter()
    while True:
        probe = CpuSteal()
        time.sleep(window_s)
        if probe.others_percent() < threshold_percent or time.perf_counter() - start >= max_wait_s:
            return time.perf_counter() - start - window_s
