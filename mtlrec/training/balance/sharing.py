"""Which parameters the tasks share, found from the model's structure, never from a batch.

PCGrad and GradNorm work on the parameters two or more tasks share. They are found once, when the
balancer is built, by one autograd pass per task on a probe batch: random rows built from the
model's declared inputs (every sparse id drawn inside its embedding table, dense N(0, 1); or the
model's own `probe_inputs(rows, generator)` if it defines one), forwarded in eval mode (no
dropout, batch norm uses its running statistics and updates nothing), each task's output summed
with random row weights. Labels and `where:` masks play no part, so a task with no rows in the
first batches (CVR before the first click) is seen like any other.

The rule on those per-task gradients: a parameter tensor is shared if at least one of its
elements gets a non-zero gradient from two or more tasks (so packed per-task towers or gates - one
tensor holding every task's slice - are task-specific), and within a shared layer (not an
embedding table), rows (dim 0) that exactly one task reaches are that task's slice (PLE's
task-specific experts stored next to the shared ones) and are summed, not projected.

A module that is not an mtlrec model (no FeatureEmbedding, no `probe_inputs`; the toy modules of
the unit tests) cannot be probed: it is analysed at its first step from the per-task loss
gradients (averaged over the ranks, so every rank finds the same layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mtlrec.data.spec import TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models.layers import FeatureEmbedding
from mtlrec.training.balance.base import Balancer
from mtlrec.training.distributed.collectives import average_tensors

PROBE_ROWS = 256
PROBE_SEED = 0


def task_gradients(
    losses: torch.Tensor, params: list[nn.Parameter]
) -> list[list[torch.Tensor | None]]:
    """Per-task gradients [task][param] (None where a task does not reach a parameter)."""
    out: list[list[torch.Tensor | None]] = []
    for k in range(len(losses)):
        grads = torch.autograd.grad(losses[k], params, retain_graph=True, allow_unused=True)
        out.append(list(grads))
    return out


def shared_rows(
    params: list[nn.Parameter],
    grads: list[list[torch.Tensor | None]],
    whole: frozenset[int] = frozenset(),
) -> list[torch.Tensor | None]:
    """Which parts of each parameter the tasks share, from per-task gradients.

    None: the parameter is task-specific (no element gets a non-zero gradient from two tasks).
    Else a bool mask over its rows (dim 0): False for rows only ONE task touches - the slices of
    one task inside a packed tensor - True for rows two or more tasks touch, or none. Parameters
    whose index is in `whole` (embedding tables: a row is an id, which any task may see) are
    never split.
    """
    out: list[torch.Tensor | None] = []
    for i, p in enumerate(params):
        nonzero = [torch.ne(t, 0) for t in (g[i] for g in grads) if t is not None]
        if len(nonzero) < 2 or not bool((torch.stack(nonzero).sum(0) >= 2).any()):
            out.append(None)
            continue
        if i in whole:
            out.append(torch.ones(p.shape[0], dtype=torch.bool, device=p.device))
            continue
        touched = torch.stack([nz.reshape(p.shape[0], -1).any(1) for nz in nonzero]).sum(0)
        out.append(touched != 1)
    return out


def find_shared(params: list[nn.Parameter], grads: list[list[torch.Tensor | None]]) -> list[bool]:
    """A parameter is shared if some element gets a non-zero gradient from two or more tasks."""
    return [m is not None for m in shared_rows(params, grads)]


@dataclass
class SharedLayout:
    """The model's trainable parameters and, per parameter, its shared rows (None: not shared)."""

    params: list[nn.Parameter]
    names: list[str]
    rows: list[torch.Tensor | None]


def _trainable(model: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, _ in named], [p for _, p in named]


def layout_from(model: nn.Module, grads: list[list[torch.Tensor | None]]) -> SharedLayout:
    names, params = _trainable(model)
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    whole = frozenset(i for i, p in enumerate(params) if id(p) in tables)
    return SharedLayout(params, names, shared_rows(params, grads, whole))


def probe_inputs(
    model: nn.Module, rows: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(sparse ids [rows, F], dense [rows, D]) the model accepts, or None if it declares none."""
    custom = getattr(model, "probe_inputs", None)
    if callable(custom):
        return custom(rows, generator)
    embedding = next((m for m in model.modules() if isinstance(m, FeatureEmbedding)), None)
    if embedding is None:
        return None
    groups = range(len(embedding.tables))
    fields = [getattr(embedding, f"fields_{j}").cpu() for j in groups]
    multi = list(getattr(embedding, "multi", []))  # bag/sequence columns: left empty (-1)
    columns = max([sum(len(f) for f in fields), *(m.cols[1] for m in multi)])
    sparse = torch.full((rows, columns), -1, dtype=torch.long)
    for j in groups:
        # the table sees sparse + delta: draw the table row, subtract the field's delta
        table: nn.Embedding = embedding.tables[j]  # type: ignore[assignment]
        table_rows = torch.randint(
            table.num_embeddings, (rows, len(fields[j])), generator=generator
        )
        sparse[:, fields[j]] = table_rows - getattr(embedding, f"delta_{j}").cpu()
    width = max([embedding.num_dense, *(m.weights[1] for m in multi if m.weights)])
    dense = torch.randn(rows, width, generator=generator)
    return sparse, dense


def structural_layout(model: nn.Module, tasks: tuple[TaskSpec, ...]) -> SharedLayout | None:
    """The shared parameters from one autograd pass per task on a probe batch (module docstring);
    None when the model cannot be probed."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    inputs = probe_inputs(model, PROBE_ROWS, generator)
    if inputs is None:
        return None
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    sparse, dense = (t.to(device) for t in inputs)
    weights = (torch.rand(sparse.shape[0], generator=generator) + 0.5).to(device)
    names, params = _trainable(model)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            outputs = model(sparse, dense)
            probes = torch.stack([(outputs[t.output_name].float() * weights).sum() for t in tasks])
            grads = task_gradients(probes, params)
    finally:
        model.train(was_training)
    return layout_from(model, grads)


def layout_from_losses(losses: torch.Tensor, model: nn.Module) -> SharedLayout:
    """Fallback for modules that cannot be probed: their first step's per-task loss gradients,
    averaged over the ranks (the same layout on every rank)."""
    _, params = _trainable(model)
    grads = task_gradients(losses, params)
    averaged = [average_tensors(list(g)) for g in grads]
    return layout_from(model, averaged)


class SharedParamsBalancer(Balancer):
    """A balancer working on the parameters shared by the tasks (PCGrad, GradNorm). It writes the
    gradients itself (torch.autograd.grad), averaged over the ranks: `writes_grads`."""

    writes_grads: ClassVar[bool] = True

    def __init__(self, tasks: tuple[TaskSpec, ...], model: nn.Module, config: Any):
        super().__init__(tasks, model, config)
        self._params: list[nn.Parameter] | None = None
        self._names: list[str] = []
        self._rows: list[torch.Tensor | None] = []
        if self.num_tasks > 1:  # one task: nothing to share, nothing to balance
            layout = structural_layout(model, tasks)
            if layout is not None:
                self._adopt(layout)

    def _adopt(self, layout: SharedLayout) -> None:
        self._params, self._names, self._rows = layout.params, layout.names, layout.rows
        self.check_layout()

    def check_layout(self) -> None:
        """One line when the model shares nothing this balancer can work on."""
        if not any(m is not None for m in self._rows):
            raise MtlrecError(self.nothing_shared())

    def nothing_shared(self) -> str:
        return (
            f"balance={self.name} needs parameters shared by the tasks, and this model shares "
            "none (e.g. model=single_task); use balance=fixed, uncertainty or dwa"
        )

    def _ensure_layout(self, losses: torch.Tensor, model: nn.Module) -> None:
        if self._params is None:  # a module that could not be probed: its first step
            self._adopt(layout_from_losses(losses, model))

    def shared_parameters(self) -> list[nn.Parameter]:
        assert self._params is not None
        return [p for p, m in zip(self._params, self._rows, strict=True) if m is not None]
