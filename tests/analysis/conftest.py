"""The studies the analysis tests read: a real tiny lr_sweep and a synthetic one with every state."""

from __future__ import annotations

from typing import Any

import matplotlib
import pytest

from llm_doe.search import main
from tests.conftest import TINY, build_synthetic, store_args

matplotlib.use("Agg")  # figures are drawn, never shown


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Any]:
    """A real lr_sweep on the tiny model: the study the notebook and report are written for."""
    tmp = tmp_path_factory.mktemp("tiny")
    args = ["+study=lr_sweep", *TINY, *store_args(tmp, "lr"), "study.n_trials=5", "train.evals_per_epoch=3"]
    assert main(args) == 0
    return {"tmp": tmp, "url": f"sqlite:///{tmp}/lr.db", "db": tmp / "lr.db", "name": "lr", "art": tmp / "art",
            "args": args}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("syn")
    url = f"sqlite:///{tmp}/syn.db"
    study = build_synthetic(url)
    return {"url": url, "db": tmp / "syn.db", "name": "syn", "study": study, "tmp": tmp}
