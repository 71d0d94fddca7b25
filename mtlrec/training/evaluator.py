"""Whole-split evaluation and prediction of a model: no optimizer, no balancer, no DDP wrapper.

`Evaluator(model, spec, loss_tasks, targets, device).evaluate(split, "val")` returns the split's
metrics (mtlrec.training.metrics), `{split}/loss` (the weighted objective) and each task's
`{split}/{task}_loss`; `predict(split)` returns every output's predictions. Under data
parallelism each rank predicts a block of whole eval batches and the rows are gathered in order,
so metrics equal a single process's. When TorchRec shards the tables over the ranks, every lookup
is a collective: every rank then makes the same number of forwards (the most batches any rank's
block holds), a rank with fewer batches padding with one-row forwards whose outputs it discards,
and the rows are looked up through the sharded tables (no rank gathers a table).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mtlrec.data.loader import Batch, SplitTensors
from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.layers import gate_statistics
from mtlrec.models.torchrec_embedding import lookups_in_lockstep
from mtlrec.training import distributed
from mtlrec.training.calibration import ECE_BINS
from mtlrec.training.metrics import EvalTarget, split_metrics
from mtlrec.training.objective import Objective, task_means

RowsDone = Callable[[int, int], None]  # (rows done, rows in total) of this rank's block


class Evaluator:
    def __init__(
        self,
        model: MultiTaskModel,
        spec: DatasetSpec,
        loss_tasks: tuple[TaskSpec, ...],
        targets: list[EvalTarget],
        device: torch.device,
        eval_batch_size: int = 8192,
        precision: str = "fp32",
        forward: Any = None,
        objective: Objective | None = None,
        group_column: int | None = None,
        ece_bins: int = ECE_BINS,
        weighted: bool = False,
        sample_weights: bool = True,
    ):
        self.model, self.spec, self.loss_tasks, self.targets = model, spec, loss_tasks, targets
        self.device, self.eval_batch_size, self.precision = device, eval_batch_size, precision
        self.forward = forward if forward is not None else model  # e.g. a torch.compile'd model
        self.group_column = group_column  # metrics.gauc_by: the sparse column grouping GAUC
        self.ece_bins = ece_bins  # metrics.ece_bins
        self.weighted = weighted  # metrics.weighted: sample-weighted metrics
        # split name -> {target: equal-mass reliability bins} of its last evaluation
        self.reliability: dict[str, dict[str, dict[str, list[float]]]] = {}
        # metric key -> why it is null (an AUC of one class), warned once per run: metrics.json
        self.undefined: dict[str, str] = {}
        self.objective = objective or Objective(
            loss_tasks, spec, getattr(model, "extra_loss", None), sample_weights
        ).to(device)

    def autocast(self) -> torch.autocast:
        """trainer.precision=bf16: matmuls in bfloat16 (losses and metrics stay float32)."""
        return torch.autocast(
            self.device.type,
            dtype=torch.float16 if self.precision == "fp16" else torch.bfloat16,
            enabled=self.precision in ("bf16", "fp16"),
        )

    @torch.no_grad()
    def predict(
        self,
        split: SplitTensors,
        task_weights: torch.Tensor | None = None,
        on_rows: RowsDone | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Predictions of every output over a split (probabilities for binary outputs), and aux:
        `loss` (task-weighted sum of per-task mean losses), `task_losses`, `gates` (mean gates).
        `on_rows(done, total)` is called after each eval batch with this rank's rows so far (a
        progress bar); it gets host integers only, so it adds no device sync."""
        self.model.eval()
        n, bs = len(split), self.eval_batch_size
        # Data parallel: this rank predicts rows [lo, hi) (whole eval batches), then all ranks
        # gather every row in order; one process: lo, hi = 0, n.
        lo, hi = distributed.eval_block(n, bs)
        starts = list(range(lo, hi, bs))
        forwards = len(starts)
        if lookups_in_lockstep(self.model):  # each sharded lookup is a collective of all ranks
            forwards = distributed.lockstep_batches(n, bs)
        outputs = {
            name: torch.empty(hi - lo, device=self.device) for name in self.model.output_types
        }
        gate_sum = None
        loss_sums = torch.zeros(len(self.loss_tasks), device=self.device)
        counts = torch.zeros(len(self.loss_tasks), device=self.device)
        for start in starts:
            batch = split.slice(start, min(start + bs, hi))
            out, labels = self._forward(batch)
            _, sums, cnts = self.objective(out, labels)
            loss_sums += sums
            counts += cnts
            for name, kind in self.model.output_types.items():
                value = out[name].float()
                outputs[name][start - lo : start - lo + len(labels)] = (
                    torch.sigmoid(value) if kind == "binary" else value
                )
            if "gates" in out:
                g = out["gates"].float().sum(0)
                gate_sum = g if gate_sum is None else gate_sum + g
            if on_rows is not None:
                on_rows(min(start + bs, hi) - lo, hi - lo)
        for _ in range(forwards - len(starts)):  # padding: the lookups' collectives, no rows
            self._forward(split.slice(0, 1))
        outputs = distributed.gather_rows(outputs, n)
        distributed.all_reduce_sum(loss_sums)
        distributed.all_reduce_sum(counts)
        gate_sum = distributed.sum_optional(gate_sum)
        weights = self.objective.weights if task_weights is None else task_weights.to(self.device)
        per_task = task_means(loss_sums, counts)
        aux: dict[str, Any] = {
            "loss": float((weights * per_task).sum().item()),
            "task_losses": per_task.tolist(),
        }
        if gate_sum is not None:
            aux["gates"] = (gate_sum / n).cpu().numpy()  # mean gate weight [tasks, experts]
        return {k: v.cpu().numpy() for k, v in outputs.items()}, aux

    def _forward(self, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The model's outputs for one eval batch, and its labels (on the device)."""
        sparse, dense, labels = (
            t.to(self.device, non_blocking=True) for t in (batch.sparse, batch.dense, batch.labels)
        )
        with self.autocast():
            return self.forward(sparse, dense), labels

    def evaluate(
        self,
        split: SplitTensors,
        name: str,
        task_weights: torch.Tensor | None = None,
        on_rows: RowsDone | None = None,
    ) -> dict[str, float]:
        """`{name}/...` metrics of a whole split; `task_weights` weigh `{name}/loss` (default:
        the tasks' own weights; the trainer passes its balancer's current weights)."""
        predictions, aux = self.predict(split, task_weights, on_rows)
        groups = None
        if self.group_column is not None:  # every rank holds the whole split: no gather needed
            groups = split.sparse[:, self.group_column].cpu().numpy()
        metrics = split_metrics(
            name,
            predictions,
            split.labels.cpu().numpy(),
            self.targets,
            self.spec,
            self.loss_tasks,
            groups,
            self.undefined,
            self.ece_bins,
            self.reliability.setdefault(name, {}),
            self.weighted,
        )
        metrics[f"{name}/loss"] = aux["loss"]
        for task, value in zip(self.loss_tasks, aux["task_losses"], strict=True):
            metrics[f"{name}/{task.name}_loss"] = float(value)
        if "gates" in aux:
            for k, task in enumerate(self.loss_tasks):
                for e, w in enumerate(aux["gates"][k]):
                    metrics[f"gate/{task.name}/expert_{e}"] = float(w)
            # expert collapse: entropy of each task's mean gate, mean use of each expert
            metrics.update(gate_statistics(aux["gates"], [t.name for t in self.loss_tasks]))
        return metrics


def strip_gates(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith("gate/")}


def group_column(spec: DatasetSpec, field: str | None) -> int | None:
    """The `sparse` column of metrics.gauc_by's field (single-id fields come first)."""
    if field is None:
        return None
    names = [f.name for f in spec.sparse]
    if field not in names:
        raise MtlrecError(
            f"metrics.gauc_by={field!r}: not a single-id field of dataset '{spec.name}'; "
            f"use one of {names}"
        )
    return names.index(field)
