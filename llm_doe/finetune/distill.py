"""Knowledge distillation: a teacher classifier's logits on the training texts, computed once per
study and cached on disk, and the checks a teacher must pass before anything is written.

The teacher reads each text with its own tokenizer (its folder's), truncated to
``data.max_length`` tokens, so its outputs do not depend on the student's tokenizer; they are
cached per text in one file per teacher and length (``distill.cache_dir``/``<key>.npz``). The key
says which teacher (a folder by its absolute path and its files' sizes and times, a hub id by
name) and which length; the texts themselves are keyed by their hash, so the augmented copies of
a trial get theirs computed once and kept too, and a second trial, a second worker or a resumed
study read them back instead of running the teacher again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from llm_doe.schema import ConfigError

log = logging.getLogger("llm_doe")

#: The files of a saved tokenizer (one is enough).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model")
#: Texts the teachers of this process have forwarded (the tests count them: once per study).
_FORWARDED = [0]
#: key file -> {text hash: logits}: what this process holds of each cache file.
_MEMORY: dict[str, dict[bytes, np.ndarray]] = {}


def forwarded_examples() -> int:
    """How many texts teachers have forwarded in this process."""
    return _FORWARDED[0]


def clear_memory() -> None:
    """Forget the in-process copies of the cache files (the disk cache stays)."""
    _MEMORY.clear()


def _resolved(teacher: str) -> str:
    from llm_doe.finetune.model import resolve

    return resolve(teacher)


def teacher_identity(teacher: str) -> str:
    """What the cache key says of a teacher: a folder's absolute path and its files' sizes and
    modification times (a re-export is another teacher), or a hub id."""
    path = Path(_resolved(teacher))
    if not path.is_dir():
        return str(teacher)
    files = sorted(p for p in path.iterdir() if p.is_file())
    return str(path.resolve()) + "|" + "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def check_teacher(teacher: str, label_names: Sequence[str]) -> None:
    """Refuse (ConfigError on ``distill.teacher``) a teacher that cannot be loaded, has no
    tokenizer, or does not classify into the data's labels (same number; the same names in the
    same order when it names its labels)."""
    from transformers import AutoConfig, AutoTokenizer

    where = _resolved(teacher)
    if not Path(where).is_dir() and (where.count("/") != 1 or where.startswith((".", "/", "~"))):
        raise ConfigError("distill.teacher", f"{teacher!r}: no such folder (a hub id is namespace/name; a teacher "
                                             "folder is what `python -m llm_doe.final +study=NAME` exported)")
    try:
        config = AutoConfig.from_pretrained(where)
    except Exception as err:
        raise ConfigError("distill.teacher", f"cannot load {teacher!r}: {str(err).splitlines()[0]}") from None
    folder = Path(where)
    if folder.is_dir() and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError("distill.teacher", f"{teacher!r} has no tokenizer to read the texts with (none of "
                                             f"{', '.join(TOKENIZER_FILES)}): export it with its tokenizer")
    try:
        AutoTokenizer.from_pretrained(where)
    except Exception as err:
        raise ConfigError("distill.teacher", f"{teacher!r} has no tokenizer to read the texts with: "
                                             f"{str(err).splitlines()[0]}") from None
    names = [str(config.id2label[i]) for i in sorted(config.id2label)]
    if len(names) != len(label_names):
        raise ConfigError("distill.teacher", f"{teacher!r} predicts {len(names)} labels ({', '.join(names)}), the data "
                                             f"has {len(label_names)} ({', '.join(map(str, label_names))}): a teacher "
                                             "needs the same label set")
    generic = names == [f"LABEL_{i}" for i in range(len(names))]
    if not generic and names != [str(n) for n in label_names]:
        raise ConfigError("distill.teacher", f"{teacher!r} names its labels {names}, the data {list(label_names)}: a "
                                             "teacher needs the same labels in the same order")


def _key_file(teacher: str, max_length: int, cache_dir: str | os.PathLike[str]) -> Path:
    digest = hashlib.sha256(f"{teacher_identity(teacher)}|max_length={max_length}|keys=hex".encode()).hexdigest()[:20]
    return Path(cache_dir) / f"teacher-{digest}.npz"


def _text_hash(text: str) -> bytes:
    # Hex, not the raw digest: numpy's fixed-width bytes drop trailing NULs, so a digest ending
    # in one would never be found again.
    return hashlib.sha1(text.encode("utf-8")).hexdigest().encode("ascii")


def _load(path: Path) -> dict[bytes, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        with np.load(path) as stored:
            return {bytes(k): row for k, row in zip(stored["keys"], stored["logits"])}
    except (OSError, ValueError, KeyError):  # a torn or foreign file: recompute
        log.warning("teacher cache %s is unreadable; recomputing it", path)
        return {}


def _save(path: Path, table: dict[bytes, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = np.array(list(table), dtype="S40")
    logits = np.stack(list(table.values())).astype(np.float32)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        np.savez(handle, keys=keys, logits=logits)
    os.replace(handle.name, path)  # atomic: a reader sees the old file or the new one


@torch.inference_mode()
def _forward(teacher: str, texts: list[str], max_length: int, device: torch.device, batch_size: int = 64
             ) -> np.ndarray:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    where = _resolved(teacher)
    tokenizer = AutoTokenizer.from_pretrained(where)
    model = AutoModelForSequenceClassification.from_pretrained(where).to(device).eval()
    order = np.argsort([-len(t) for t in texts], kind="stable")  # long first: little padding
    out = np.empty((len(texts), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        index = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in index], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt").to(device)
        out[index] = model(**batch).logits.float().cpu().numpy()
    _FORWARDED[0] += len(texts)
    del model
    return out


def teacher_logits(teacher: str, texts: Sequence[str], max_length: int, cache_dir: str | os.PathLike[str],
                   device: torch.device) -> np.ndarray:
    """The teacher's logits for each text, shape (len(texts), labels): from this process's
    memory, else the cache file, else the teacher (only the texts neither holds, then saved)."""
    path = _key_file(teacher, max_length, cache_dir)
    table = _MEMORY.setdefault(str(path), {})
    hashes = [_text_hash(t) for t in texts]
    if any(h not in table for h in hashes):
        table.update(_load(path))
    missing = list(dict.fromkeys(h for h in hashes if h not in table))
    if missing:
        first = {h: t for h, t in zip(hashes, texts)}
        log.info("teacher %s: computing its outputs on %d training texts (cached in %s)", teacher, len(missing), path)
        rows = _forward(teacher, [first[h] for h in missing], max_length, device)
        table.update(zip(missing, rows))
        _save(path, {**_load(path), **table})  # another worker may have added its texts meanwhile
    return np.stack([table[h] for h in hashes])


def hinton_loss(student: torch.Tensor, teacher: torch.Tensor, hard: torch.Tensor, alpha: float,
                temperature: float) -> torch.Tensor:
    """``(1 - alpha) x hard + alpha x T^2 x KL(teacher_T || student_T)``, the KL averaged over the
    examples (Hinton et al., 2015): T^2 keeps the soft term's gradients on the hard term's scale."""
    if alpha == 0.0:
        return hard  # exactly the plain loss
    t = temperature
    log_student = torch.log_softmax(student.float() / t, dim=-1)
    log_teacher = torch.log_softmax(teacher.float() / t, dim=-1)
    kl = torch.nn.functional.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
    return (1.0 - alpha) * hard + alpha * (t * t) * kl
