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


#: Characters a shell treats specially inside double quotes: escaped with a backslash there.
_DOUBLE_QUOTED_SPECIAL = frozenset('\\"$`')


def _wrapped_word(arg: str, width: int) -> str:
    """One shell word too long for a line, as several: double-quoted, cut by backslash-newlines,
    which the shell removes inside double quotes, so it reads the same word. Cut after a comma
    where one is near (``study.space={a:"choice(1)",b:...}`` one entry a line), else at the width;
    continuation lines start at the margin (an indent would become part of the word). A word with
    ``!`` stays single-quoted on one line (an interactive bash expands ``!`` inside double quotes)."""
    if "!" in arg:
        return shlex.quote(arg)
    units = ['"'] + [f"\\{c}" if c in _DOUBLE_QUOTED_SPECIAL else c for c in arg] + ['"']
    lines, line, last_comma = [], "", -1
    for unit in units:
        if len(line) + len(unit) > width - 1:  # room for the backslash
            cut = last_comma if last_comma > 0 else len(line)
            lines.append(line[:cut])
            line, last_comma = line[cut:], -1
        line += unit
        if unit == ",":
            last_comma = len(line)
    lines.append(line)
    return "\\\n".join(lines)


def shell_lines(command: str, width: int = 100) -> str:
    """A shell command as the same command over several lines: the program and its ``-m`` module
    on the first, each further argument on its own, joined by backslash-newlines, and an argument
    longer than ``width`` cut over several lines too (a page shows it without running off the
    edge; pasted into a shell it runs unchanged)."""
    args = shlex.split(command)
    head = 3 if len(args) >= 3 and args[1] == "-m" else 1
    lines = [shlex.join(args[:head])]
    for arg in args[head:]:
        quoted = shlex.quote(arg)
        lines.append(quoted if len(quoted) + 6 <= width else _wrapped_word(arg, width - 4))
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
