"""Weight EMA (`trainer.ema_decay`): an exponential moving average of the model's weights.

After every optimizer step `ema = decay * ema + (1 - decay) * weights` (torch.optim.swa_utils
AveragedModel with get_ema_multi_avg_fn; buffers such as batch-norm statistics averaged too, as
Lightning's WeightAveraging does). Validation, early stopping, best.pt, the final test and so
evaluate/predict/export use the averaged weights; training goes on from the raw ones, which
last.pt keeps next to the average (an exact resume continues both).

The average is a full copy of the model, updated over every parameter at every step: with
embedding tables of millions of rows that is O(vocabulary) per step. Under the row-wise
RowAdam a row untouched for a while is averaged as stored (it is brought up to date when a batch
reads it and at every epoch end).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mtlrec.errors import MtlrecError


def check_ema_decay(decay: Any) -> None:
    if decay is None:
        return
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1:
        raise MtlrecError(f"trainer.ema_decay must be in (0, 1) or null, got {decay!r}")


class WeightEma:
    def __init__(self, model: nn.Module, decay: float):
        self.model = model
        self.averaged = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True
        )

    @property
    def module(self) -> nn.Module:
        """The averaged weights as a model of the trained class (what best.pt holds)."""
        return self.averaged.module

    def update(self) -> None:
        self.averaged.update_parameters(self.model)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own ones again after."""
        own = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.module.state_dict())
        try:
            yield
        finally:
            self.model.load_state_dict(own)

    def state_dict(self) -> dict[str, Any]:
        return {k: v.detach().cpu() for k, v in self.averaged.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.averaged.load_state_dict(state)
