"""``final.overwrite=true`` replaces an export only once the new one is whole: a failure while
moving it into place leaves the old export as it was."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from llm_doe.final import main as final
from tests.conftest import searched_lr_study


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failed_overwrite_keeps_the_old_export(tmp_path, monkeypatch):
    study = searched_lr_study(tmp_path)
    out = tmp_path / "export"
    assert final([*study["args"], f"final.output_dir={out}"]) == 0
    before = _files(out)
    assert "test_metrics.json" in before

    real_replace, calls = os.replace, []

    def fails_into_place(src, dst, *args, **kwargs):  # the disk fills, or the process dies, right there
        if Path(dst) == out and not calls:
            calls.append(src)
            raise OSError("no space left on device (simulated, moving the new export into place)")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", fails_into_place)
    with pytest.raises(OSError, match="simulated"):
        final([*study["args"], f"final.output_dir={out}", "final.overwrite=true", "final.trial=1"])
    monkeypatch.undo()
    assert calls, "the new export was never moved into place"
    assert _files(out) == before  # the old export, whole
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export")) == []  # nothing left beside

    assert final([*study["args"], f"final.output_dir={out}", "final.overwrite=true", "final.trial=1"]) == 0
    assert _files(out) != before and "test_metrics.json" in _files(out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export")) == []
