"""How numbers are shown and how values become JSON, the same in every command and note.

A neutral home (it imports nothing of the package, and only numpy) so the runner's log lines, the dashboard
note, the report, confirm's and final's records share one formatter and one JSON sanitiser
instead of near-copies.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from typing import Any

import numpy as np


def fmt(value: Any, digits: int = 3) -> str:
    """A value as text: floats (numpy's too) to ``digits`` significant digits, the rest as ``str``.

    Three digits for tables and notes (a reader compares, not copies); the progress and summary
    log lines use four. A float whose integer part has more digits than that (a peak memory in MB,
    a token count) shows its integer part, ``8500`` rather than ``8.5e+03``, below ten million.
    """
    if isinstance(value, np.generic):  # a numpy scalar: its Python value
        value = value.item()
    if isinstance(value, float):
        text = f"{value:.{digits}g}"
        if "e+" in text and abs(value) < 1e7:  # 8.5e+03, or 999.7 rounded up to 1e+03
            return f"{value:.0f}"
        return text
    return str(value)


def shell_lines(command: str) -> str:
    """A shell command as the same command over several lines: the program and its ``-m`` module
    on the first, each further argument on its own, joined by backslash-newlines (a page shows
    it without running off the edge; pasted into a shell it runs unchanged)."""
    args = shlex.split(command)
    head = 3 if len(args) >= 3 and args[1] == "-m" else 1
    lines = [shlex.join(args[:head])] + [shlex.quote(arg) for arg in args[head:]]
    return " \\\n    ".join(lines)


def json_safe(value: Any) -> Any:
    """``value`` as JSON can hold it: NaN and infinities -> None (JSON has neither), numpy
    scalars -> Python, mapping keys -> str, tuples -> lists; recursively. For study attributes
    and the files a trial or an export writes."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
