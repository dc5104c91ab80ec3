"""Per-trial files, stored through Optuna's artifact store so optuna-dashboard lists them.

Each trial gets: ``config.yaml`` (the resolved trial config), ``metrics.json`` (every
evaluation), and for the best evaluation ``roc.csv`` and ``roc.png``.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from llm_doe.finetune.metrics import roc_points


def artifact_store(artifacts_dir: str | Path) -> FileSystemArtifactStore:
    """The study's artifact store (created on first use, after validation)."""
    path = Path(artifacts_dir)
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(base_path=str(path))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _roc_png(points: Mapping[str, Sequence[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot(points["fpr"], points["tpr"], lw=2)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def upload_trial_artifacts(
    store: FileSystemArtifactStore,
    trial: optuna.Trial,
    config_yaml: str,
    history: Sequence[Mapping[str, Any]],
    best_labels: np.ndarray | None = None,
    best_probs: np.ndarray | None = None,
) -> dict[str, str]:
    """Write the trial's files to a temp dir and upload them; returns {file name: artifact id}."""
    ids: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="llm_doe_trial_") as tmp:
        folder = Path(tmp)
        files = {"config.yaml": config_yaml, "metrics.json": json.dumps(_json_safe(list(history)), indent=1)}
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8")
        if best_probs is not None and best_labels is not None and best_probs.size and len(np.unique(best_labels)) > 1:
            points = roc_points(best_labels, best_probs)
            with open(folder / "roc.csv", "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["fpr", "tpr", "threshold"])
                writer.writerows(zip(points["fpr"], points["tpr"], points["threshold"]))
            _roc_png(points, folder / "roc.png", f"trial {trial.number}: ROC at best eval")
        for path in sorted(folder.iterdir()):
            ids[path.name] = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    return ids
