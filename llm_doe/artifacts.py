"""Per-trial files, stored through Optuna's artifact store so optuna-dashboard lists them.

Each trial gets: ``config.yaml`` (the resolved trial config), ``metrics.jsonl`` (every
evaluation, one JSON object a line: JSON Lines, which optuna-dashboard previews as a table), and what its task draws from the best evaluation (classification: ``roc.csv``
and ``roc.png``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from llm_doe.formatting import json_safe

if TYPE_CHECKING:
    from llm_doe.finetune.tasks.base import Task


def artifact_store(artifacts_dir: str | Path) -> FileSystemArtifactStore:
    """The study's artifact store (created on first use, after validation)."""
    path = Path(artifacts_dir)
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(base_path=str(path))


def metrics_jsonl(history: Sequence[Mapping[str, Any]]) -> str:
    """Every evaluation as JSON Lines (one record a line)."""
    return "".join(json.dumps(json_safe(dict(record))) + "\n" for record in history)


def read_metrics(text: str, filename: str) -> list[Any]:
    """The evaluations of a ``metrics.jsonl`` (or, from studies before it, ``metrics.json``: one list)."""
    if filename.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    history = json.loads(text)
    return history if isinstance(history, list) else []


def upload_trial_artifacts(
    store: FileSystemArtifactStore,
    trial: optuna.Trial,
    config_yaml: str,
    history: Sequence[Mapping[str, Any]],
    task: Task | None = None,
    payload: Any = None,
) -> dict[str, str]:
    """Write the trial's files to a temp dir and upload them; returns {file name: artifact id}.

    ``payload`` is the task's evaluation payload at the best evaluation (None for a failed
    trial: then only the config and the evaluations so far are stored).
    """
    ids: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="llm_doe_trial_") as tmp:
        folder = Path(tmp)
        files = {"config.yaml": config_yaml, "metrics.jsonl": metrics_jsonl(history)}
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8")
        if task is not None and payload is not None:
            task.write_artifacts(payload, folder, f"trial {trial.number}", "at best eval")
        for path in sorted(folder.iterdir()):
            ids[path.name] = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    return ids
