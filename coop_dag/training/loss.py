"""Batches and the weighted loss of the embedded trainer.

The objective is the weighted token mean over the training set, ``sum_rows w * sum_tokens ce /
sum_rows w * n_tokens`` -- exactly the token mean of a set where each row appears ``w`` times.
Each optimizer step estimates it without bias: ``sum_{rows in step} w * sum_tokens ce / C`` with
the constant ``C = rows per step * mean_rows(w * n_tokens)`` (:func:`loss_normaliser`; why a
constant: `coop_dag.training.train`'s docstring). Logits are only computed where a label is
(:func:`weighted_loss_terms`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

IGNORE_INDEX = -100


class TitoCollator:
    """Pads ``TitoSFTDataset`` items (``pad_mode=no_padding``) to the longest in the batch:
    ``input_ids`` with the pad id, ``labels`` with -100, an ``attention_mask``; ``weight`` is
    stacked to shape ``(batch,)``."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad = int(pad_token_id)

    def __call__(self, items: Sequence[dict]) -> dict:
        import torch

        width = max(int(it["input_ids"].shape[0]) for it in items)
        ids = torch.full((len(items), width), self.pad, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, it in enumerate(items):
            n = int(it["input_ids"].shape[0])
            ids[i, :n] = it["input_ids"]
            labels[i, :n] = it["labels"]
            mask[i, :n] = 1
        weight = torch.cat([it["weight"].reshape(-1)[:1] for it in items]).float()
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "weight": weight}


def weighted_token_count(batch: dict):
    """``sum_rows w * (number of trained next-token targets)`` of a collated batch."""
    targets = batch["labels"][:, 1:] != IGNORE_INDEX
    return (targets.sum(dim=1).float() * batch["weight"].float()).sum()


def loss_normaliser(dataset: Any, rows_per_step: int) -> float:
    """``C = rows_per_step * mean_rows(w * trained targets)`` over ``dataset`` (a
    ``TitoSFTDataset``): dividing a step's ``sum w * ce`` by it estimates the training set's
    weighted token-mean loss without bias."""
    total = 0.0
    for i in range(len(dataset)):
        item = dataset[i]
        targets = int((item["labels"][1:] != IGNORE_INDEX).sum())
        total += float(item["weight"].reshape(-1)[0]) * targets
    mean = total / max(1, len(dataset))
    return max(mean, 1e-12) * rows_per_step


def step_loss(model: Any, batch: dict, normaliser: float, *, slice_logits: bool = True):
    """``(loss, trained targets)`` of one (micro-)batch: ``sum w * ce / normaliser``."""
    num, _, n = weighted_loss_terms(model, batch, slice_logits=slice_logits)
    return num / normaliser, n


def weighted_loss_terms(model: Any, batch: dict, *, slice_logits: bool = True):
    """``(sum of w * ce over trained tokens, weighted token count, trained tokens)`` of a
    batch. Logits are computed only at positions whose next token is trained when the model
    supports ``logits_to_keep`` with a boolean mask."""
    import torch
    import torch.nn.functional as F

    labels = batch["labels"]
    weight = batch["weight"].float()
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    targets = labels[:, 1:][keep[:, :-1]]
    row_w = weight[:, None].expand_as(labels)[keep]
    if slice_logits:
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            logits_to_keep=keep,
            use_cache=False,
        )
        logits = out.logits.reshape(-1, out.logits.shape[-1])
    else:
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        )
        logits = out.logits[keep]
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    return (ce * row_w).sum(), row_w.sum(), int(targets.numel())


def supports_logits_mask(model: Any) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def evaluate_loss(
    model: Any, dataset: Any, collator: TitoCollator, batch_size: int = 1, slice_logits=True
) -> float | None:
    """Weighted token-mean loss of ``model`` over ``dataset`` (None when it has no row)."""
    import torch

    if dataset is None or len(dataset) == 0:
        return None
    was_training = model.training
    model.eval()
    num = torch.zeros((), dtype=torch.float64)
    den = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            stop = min(len(dataset), start + batch_size)
            batch = collator([dataset[i] for i in range(start, stop)])
            s, w, _ = weighted_loss_terms(model, batch, slice_logits=slice_logits)
            num += s.double()
            den += w.double()
    if was_training:
        model.train()
    return float(num / den) if den > 0 else None
