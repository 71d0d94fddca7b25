"""Per-task losses over each task's sample space, and their weighted sum.

Binary tasks use BCE with logits, regression tasks MSE. A task with `where` only sees rows whose
`where` label is 1 (e.g. CVR on clicked rows): its loss is the mean over those rows of the batch
(0 when the batch has none). Everything stays on the device: no host sync per step.

Sample weights (dataset.sample_weight, a task's own `sample_weight` column; docs/training.md):
a task's loss is the weighted mean over its sample space, sum(w * mask * l) / sum(w * mask) per
batch (0 when that sum is 0), the Keras / TorchEasyRec convention; `counts` are then the weight
sums, so accumulated batches, epoch means and `{split}/loss` are weighted means too.

A model may add a term of its own to the loss (e.g. AITM's behavioural expectation calibrator) by
defining `extra_loss(outputs, labels) -> scalar tensor | None`; the objective adds it, unweighted
and outside task balancing, to the total.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtlrec.data.spec import DatasetSpec, TaskSpec


class Objective(nn.Module):
    weights: torch.Tensor  # [T] task weights, a registered buffer

    def __init__(
        self,
        tasks: tuple[TaskSpec, ...],
        spec: DatasetSpec,
        extra_loss: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor | None]
        | None = None,
        sample_weights: bool = True,
    ):
        super().__init__()
        self.tasks = tasks
        self.extra_loss = extra_loss
        self.names = [t.name for t in tasks]
        self.label_index = [spec.label_index(t.label) for t in tasks]
        self.where_index = [spec.label_index(t.where) if t.where else None for t in tasks]
        # trainer.sample_weights=false: every row weighs 1 whatever the dataset's weight columns
        self.weight_index = [
            spec.label_index(c) if sample_weights and (c := spec.weight_column(t)) else None
            for t in tasks
        ]
        self.register_buffer(
            "weights", torch.tensor([t.weight for t in tasks], dtype=torch.float32)
        )

    def per_task(
        self, outputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed loss [T] and number of rows [T] of each task in this batch (with sample
        weights: the weighted sum of the losses and the sum of the weights)."""
        sums, counts = [], []
        for task, li, wi, si in zip(
            self.tasks, self.label_index, self.where_index, self.weight_index, strict=True
        ):
            pred, target = outputs[task.output_name].float(), labels[:, li]
            if task.type == "binary":
                loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
            else:
                loss = (pred - target) ** 2
            mask = None if wi is None else labels[:, wi]
            if si is not None:
                mask = labels[:, si] if mask is None else mask * labels[:, si]
            if mask is None:
                sums.append(loss.sum())
                counts.append(loss.new_full((), float(loss.shape[0])))
            else:
                sums.append((loss * mask).sum())
                counts.append(mask.sum())
        return torch.stack(sums), torch.stack(counts)

    def forward(
        self, outputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weighted total loss, per-task loss sums [T], per-task row counts [T])."""
        means, extra, sums, counts = self.losses(outputs, labels)
        total = (self.weights * means).sum()
        return (total if extra is None else total + extra), sums, counts

    def losses(
        self, outputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(per-task mean losses [T], the model's extra term or None, sums [T], counts [T]).

        What a task balancer (mtlrec.training.balance) needs: it weighs the means itself.
        """
        sums, counts = self.per_task(outputs, labels)
        extra = self.extra_loss(outputs, labels) if self.extra_loss is not None else None
        return task_means(sums, counts), extra, sums, counts


def task_means(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-task means sum / count, 0 where a task has no rows (or only rows of weight 0).

    Counts are sums of sample weights, which can be below 1: never clamp them to 1.
    """
    return sums / torch.where(counts > 0, counts, torch.ones_like(counts))


def embedding_l2_penalty(model: nn.Module, sparse: torch.Tensor) -> torch.Tensor:
    """sum ||E[r]||^2 over the embedding rows r the batch uses (each row once), every table.

    trainer.embedding_l2 times this is added to the loss: rows no batch uses get no gradient
    from it, so under Adam they do not move (unlike weight decay of the whole table). A table on
    a row-wise optimizer gets a sparse gradient from it, like from its lookups.
    """
    total = sparse.new_zeros((), dtype=torch.float32)
    for module in model.modules():
        rows_of = getattr(module, "rows_used", None)  # per table: (table, row ids of the batch)
        if not callable(rows_of):
            continue
        for table, ids in rows_of(sparse):
            rows = torch.unique(ids)
            picked = (
                F.embedding(rows, table.weight, sparse=True)
                if getattr(table, "sparse", False)
                else table.weight.index_select(0, rows)
            )
            total = total + picked.float().pow(2).sum()
    return total


def clip_per_task(
    groups: list[list[tuple[nn.Parameter, Any]]], max_norm: float, eps: float = 1e-6
) -> None:
    """Clip the gradient norm of each task's network on its own (T independent models).

    `groups[k]` lists (parameter, index) pairs task k owns; `index` selects its part of a
    parameter shared side by side (e.g. a column block of a fused table), None for the whole.
    """
    for group in groups:
        grads = []
        for param, index in group:
            if param.grad is not None:
                grads.append(param.grad if index is None else param.grad[index])
        if not grads:
            continue
        squares = sum(g.float().pow(2).sum() for g in grads)
        assert isinstance(squares, torch.Tensor)  # grads is not empty
        norm = torch.sqrt(squares)
        scale = (max_norm / (norm + eps)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.to(g.dtype))
