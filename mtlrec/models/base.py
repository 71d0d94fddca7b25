"""What every model provides: outputs named after tasks, and the tasks it is trained on."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from mtlrec.data.spec import DatasetSpec, FunnelSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models.layers import CommonConfig


class MultiTaskModel(nn.Module):
    """Maps (sparse ids [B, F], dense [B, D]) to a dict of named outputs, each [B].

    Binary outputs are logits (apply a sigmoid for probabilities), regression outputs are values.
    Keys not in `output_types` are auxiliary (e.g. MoE gate weights) and never trained on.
    """

    Config: ClassVar[type[CommonConfig]] = CommonConfig
    # False for models whose loss tasks come from the funnel (ESMM & co.), not dataset.tasks.
    trains_dataset_tasks: ClassVar[bool] = True
    output_types: dict[str, str]

    @classmethod
    def loss_tasks(
        cls, spec: DatasetSpec, selected: tuple[TaskSpec, ...], cfg: Any
    ) -> tuple[TaskSpec, ...]:
        """The tasks whose losses train the model; by default the dataset's (selected) tasks."""
        if not selected:
            raise MtlrecError(
                f"dataset '{spec.name}' defines no tasks; list them in its spec or dataset.tasks"
            )
        return selected

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def shared_trunk_last_layer(self) -> nn.Parameter | None:
        """The weight of the last layer of the shared trunk (GradNorm's W), or None where the
        tasks share nothing (single_task, division, a one-task model).

        Every model names it explicitly (docs/models.md lists each one): the layer is a property
        of the architecture, not of the order in which parameters happen to be registered.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must name its shared trunk's last layer "
            "(define shared_trunk_last_layer; see docs/extending.md)"
        )


def require_funnel(spec: DatasetSpec, model: str) -> FunnelSpec:
    if spec.funnel is None:
        raise MtlrecError(
            f"model={model} needs a dataset with click and conversion labels (a funnel); dataset "
            f"'{spec.name}' has none. Use model=mmoe, shared_bottom or single_task on it."
        )
    return spec.funnel
