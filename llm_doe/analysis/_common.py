"""Small helpers on the frames the loaders return, shared by the checks, plots and confirmation.

They read a table and its ``.attrs`` (search space, direction) only: no I/O, no plotting.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

#: The parameter the checks and plots pick when none is named, where the study searched it.
_PREFERRED_PARAM = "train.learning_rate"


def to_python(value: Any) -> Any:
    """A numpy scalar as the plain Python value (YAML, Hydra overrides and f-strings want those)."""
    return value.item() if isinstance(value, np.generic) else value


def param_columns(table: pd.DataFrame) -> list[str]:
    """The searched parameters (from ``.attrs["space"]``) that the table has columns for."""
    space = table.attrs.get("space") or {}
    return [c for c in space if c in table.columns]


def is_maximized(table: pd.DataFrame) -> bool:
    """Whether the table's single objective is maximised (the checks need one direction)."""
    direction = table.attrs.get("direction")
    if len(table.attrs.get("directions") or ()) > 1:
        raise ValueError("a multi-objective study has no single best trial: see pareto_front(trials) and "
                         "plot_pareto(trials)")
    if direction not in ("minimize", "maximize"):
        raise ValueError("the checks need a single-objective table from load_trials() (direction in .attrs)")
    return direction == "maximize"


def complete_trials(table: pd.DataFrame) -> pd.DataFrame:
    """The COMPLETE trials with a finite value (every value, for several objectives): the ones
    whose values compete."""
    columns = ["value"] if "value" in table.columns else [c for c in table.columns if c.startswith("values_")]
    ok = table["state"] == "COMPLETE"
    for column in columns:
        ok &= np.isfinite(table[column].astype(float))
    return table[ok]


def default_param(table: pd.DataFrame) -> str:
    """The parameter to isolate or colour by when none is given: the learning rate, else the first."""
    params = param_columns(table)
    if not params:
        raise ValueError("the table has no searched parameter")
    return _PREFERRED_PARAM if _PREFERRED_PARAM in params else params[0]
