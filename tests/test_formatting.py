"""llm_doe.formatting: the one number formatter and the one JSON sanitiser."""

from __future__ import annotations

import json
import math
import shlex
import subprocess

import numpy as np

from llm_doe.formatting import fmt, json_safe, shell_lines


def test_fmt_rounds_floats_and_numpy_scalars_and_leaves_the_rest():
    assert fmt(0.000123456) == "0.000123"
    assert fmt(0.000123456, 4) == "0.0001235"
    assert fmt(np.float32(0.5)) == "0.5"
    assert fmt(np.int64(3)) == "3"
    assert fmt(16) == "16" and fmt("cosine") == "cosine" and fmt(None) == "None" and fmt(True) == "True"


def test_fmt_shows_large_floats_without_an_exponent():
    assert fmt(8000.0) == "8000" and fmt(8537.4) == "8537" and fmt(np.float64(-1234.5), 4) == "-1234"
    assert fmt(999.4) == "999" and fmt(123.456, 4) == "123.5"  # within the digits: significant digits
    assert fmt(999.7) == "1000" and fmt(9999.7, 4) == "10000" and fmt(99.96) == "100"  # rounded up a digit
    assert fmt(9999999.4) == "9999999" and fmt(1e7) == "1e+07"
    assert fmt(3.2e9) == "3.2e+09" and fmt(math.inf) == "inf" and fmt(math.nan) == "nan"


def test_json_safe_turns_what_json_cannot_hold_into_what_it_can():
    value = {"loss": float("nan"), 1: [np.float64(0.25), (np.int64(2), math.inf)], "ok": "x"}
    safe = json_safe(value)
    assert safe == {"loss": None, "1": [0.25, [2, None]], "ok": "x"}
    assert type(safe["1"][0]) is float and type(safe["1"][1][0]) is int
    assert json.loads(json.dumps(safe, allow_nan=False)) == safe


def test_shell_lines_wraps_a_command_that_bash_runs_unchanged():
    command = shlex.join(["python", "-m", "llm_doe.search", "+study=lr_sweep", "model=tiny",
                          'study.space={train.learning_rate:"choice(0.000712)"}', "storage.url=sqlite:///a b.db"])
    text = shell_lines(command)
    assert text.splitlines()[0] == "python -m llm_doe.search \\"
    assert max(len(line) for line in text.splitlines()) < 70 and len(text.splitlines()) == 5
    # bash reads the wrapped lines as the same arguments
    out = subprocess.run(["bash", "-c", f"set -- {text}\nprintf '%s\\0' \"$@\""], capture_output=True, text=True,
                         check=True).stdout
    assert out.split("\0")[:-1] == shlex.split(command)


def _bash_words(text: str) -> list[str]:
    out = subprocess.run(["bash", "-c", f"set -- {text}\nprintf '%s\\0' \"$@\""], capture_output=True, text=True,
                         check=True).stdout
    return out.split("\0")[:-1]


def test_shell_lines_cuts_an_argument_longer_than_a_line_and_bash_reads_it_unchanged():
    """Issue 22 A9: a rerun command's ``study.space={...}`` of seven parameters (or a long path) was
    one line of 250 characters that ran off the dashboard note and the report: it is cut over
    lines of at most 100 characters, one entry a line, and bash still reads the same arguments."""
    space = ",".join(f'train.param_number_{i}:"choice({0.000123456789 * i})"' for i in range(7))
    command = shlex.join(["python", "-m", "llm_doe.search", "+study=hparam_sweep", f"study.space={{{space}}}",
                          "storage.url=sqlite:///" + "/very_long_folder_name" * 8 + "/s.db",
                          'odd=a "quoted" $HOME `x` \\ back,' + "y" * 120])
    text = shell_lines(command)
    assert max(len(line) for line in text.splitlines()) <= 100, text
    assert any(line.startswith("train.param_number_3:") for line in text.splitlines())  # cut after a comma
    assert _bash_words(text) == shlex.split(command)
    short = shlex.join(["python", "-m", "llm_doe.search", "bang=" + "!" * 120])  # never double-quoted
    assert _bash_words(shell_lines(short)) == shlex.split(short)
