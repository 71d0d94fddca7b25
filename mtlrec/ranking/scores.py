"""A run's task predictions on its val and test splits, with the labels and group ids fusion needs.

The predictions come from the run's checkpoint (best.pt unless told otherwise), scored over the
whole split exactly as `mtlrec evaluate` scores it; nothing is read from the training process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError
from mtlrec.inference.evaluate import split_file
from mtlrec.inference.loading import load_run
from mtlrec.models.base import MultiTaskModel
from mtlrec.ranking.record import file_sha256
from mtlrec.training.checkpoint import model_from_checkpoint
from mtlrec.training.evaluator import Evaluator
from mtlrec.training.trainer import group_column


@dataclass
class SplitScores:
    """One split: the fused tasks' probabilities [N, T], every label column, group ids."""

    probs: torch.Tensor  # float64 [N, T], columns in RunScores.tasks order
    labels: dict[str, np.ndarray]  # label column -> float64 [N]
    groups: np.ndarray | None  # [N] group id per row (--group-by), else None

    def __len__(self) -> int:
        return self.probs.shape[0]


@dataclass
class RunScores:
    run_dir: Path
    checkpoint: str
    checkpoint_sha256: str
    model_name: str
    spec: DatasetSpec
    tasks: list[str]  # the fused model outputs, in column order
    splits: dict[str, SplitScores]  # "val", "test"


def fused_outputs(model: MultiTaskModel, spec: DatasetSpec, asked: list[str] | None) -> list[str]:
    """The binary outputs to fuse: `asked` (--tasks), else those named after the dataset's tasks
    (ESMM's ctr and cvr, not the product ctcvr), else every binary output."""
    binary = [n for n, kind in model.output_types.items() if kind == "binary"]
    if asked:
        unknown = [t for t in asked if t not in binary]
        if unknown:
            raise MtlrecError(
                f"--tasks {','.join(asked)}: {unknown} not binary outputs of the model; "
                f"use some of {binary}"
            )
        chosen = list(dict.fromkeys(asked))
    else:
        named = [t.name for t in spec.tasks if t.name in binary]
        chosen = named if len(named) >= 2 else binary
    if len(chosen) < 2:
        raise MtlrecError(
            f"fusion needs at least 2 binary task outputs; the model has {binary or 'none'}"
        )
    return chosen


def load_scores(
    run_dir: str | Path,
    checkpoint: str,
    tasks: list[str] | None,
    group_by: str | None,
    splits: tuple[str, ...] = ("val", "test"),
) -> RunScores:
    """Score the run's val and test splits with its checkpoint."""
    from mtlrec.data.loader import load_split

    payload, ckpt = load_run(run_dir, checkpoint)
    model, spec, loss_tasks = model_from_checkpoint(payload)
    chosen = fused_outputs(model, spec, tasks)
    column = group_column(spec, group_by) if group_by else None
    config = payload["config"]
    dataset = config.get("dataset") or {}
    trainer_cfg = config.get("trainer") or {}
    evaluator = Evaluator(
        model,
        spec,
        loss_tasks,
        [],
        torch.device("cpu"),
        int(trainer_cfg.get("eval_batch_size", 8192)),
    )
    out = {}
    for name in splits:
        tensors = load_split(
            split_file(spec, payload, name, None),  # checks the data is the run's
            spec,
            loss_tasks,
            dataset.get("funnel_violations", "error"),
        )
        predictions, _ = evaluator.predict(tensors)
        probs = torch.from_numpy(np.stack([predictions[t] for t in chosen], axis=1)).double()
        labels = tensors.labels.numpy().astype(np.float64)
        out[name] = SplitScores(
            probs,
            {label: labels[:, i] for i, label in enumerate(spec.labels)},
            None if column is None else tensors.sparse[:, column].numpy(),
        )
    return RunScores(
        Path(run_dir),
        ckpt.name,
        file_sha256(ckpt),
        str(payload.get("model_name")),
        spec,
        chosen,
        out,
    )
