"""Batches: which examples train together, where evaluations fall, and dynamic padding."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def batch_order(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, group_by_length: bool) -> list[np.ndarray]:
    """Shuffled batches; with grouping, examples of similar length share a batch (less padding).

    Grouping sorts within seeded random mega-batches of 50 batches and then shuffles the batch
    order, so the order stays random across batches (as transformers' LengthGroupedSampler).
    """
    perm = rng.permutation(len(lengths))
    if group_by_length:
        mega = batch_size * 50
        chunks = [perm[i:i + mega] for i in range(0, len(perm), mega)]
        perm = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in chunks])
    batches = [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def eval_points(steps_per_epoch: int, evals_per_epoch: int) -> list[int]:
    """The optimizer step (within an epoch, 1-based) of each of the epoch's evaluations.

    One entry per evaluation index, so index k of a run always means the same fraction of
    training, k / (evals_per_epoch * num_epochs), within one optimizer step, whatever the
    batch size. When an epoch has fewer steps than evaluations, several indices share a step
    (the list repeats it): the loop evaluates once there and reports that evaluation for each
    index, rather than dropping indices and shifting the later ones to earlier training.
    """
    return [max(1, round(steps_per_epoch * k / evals_per_epoch)) for k in range(1, evals_per_epoch + 1)]


def pad(rows: Sequence[np.ndarray], index: np.ndarray, lengths: np.ndarray, value: int) -> torch.Tensor:
    """``rows[index]`` padded with ``value`` to the longest of them (dynamic padding)."""
    width = int(lengths[index].max())
    out = np.full((len(index), width), value, dtype=np.int64)
    for row, i in enumerate(index):
        seq = rows[i]
        out[row, : len(seq)] = seq
    return torch.from_numpy(out)


def attention_mask(index: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
    """1 on real tokens, 0 on padding: from lengths, not pad ids (a pad id can be a real token)."""
    width = int(lengths[index].max())
    return torch.from_numpy(np.arange(width)[None, :] < lengths[index][:, None])


def labelled_batch(input_ids: Sequence[np.ndarray], labels: Sequence[np.ndarray], lengths: np.ndarray,
                   index: np.ndarray, pad_id: int, ignore_index: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Examples ``index`` of a split labelled per token (SFT, tagging), padded to their longest:
    ids with ``pad_id``, labels with ``ignore_index`` (no loss on padding), the mask from lengths."""
    batch = to_device({"input_ids": pad(input_ids, index, lengths, pad_id),
                       "attention_mask": attention_mask(index, lengths),
                       "labels": pad(labels, index, lengths, ignore_index)}, device)
    batch["attention_mask"] = batch["attention_mask"].long()
    return batch


def to_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Host tensors to ``device``; on CUDA through pinned memory, without blocking."""
    non_blocking = device.type == "cuda"
    if non_blocking:
        tensors = {k: v.pin_memory() for k, v in tensors.items()}
    return {k: v.to(device, non_blocking=non_blocking) for k, v in tensors.items()}
