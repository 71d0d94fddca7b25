"""Memory of large tables: the best weights are one copy, reused, never two at once."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from mtlrec.training.trainer import Trainer


def test_keep_best_copies_into_the_previous_best_tensors():
    model = nn.Sequential(nn.Embedding(50, 4), nn.Linear(4, 1))
    holder = SimpleNamespace(model=model, best_state={})
    Trainer.keep_best(holder)  # type: ignore[arg-type]
    first = dict(holder.best_state)
    pointers = {k: v.data_ptr() for k, v in first.items()}
    assert all(pointers[k] != v.data_ptr() for k, v in model.state_dict().items())  # a copy
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not torch.equal(first["0.weight"], model[0].weight)  # the copy did not follow
    Trainer.keep_best(holder)  # type: ignore[arg-type]
    assert {k: v.data_ptr() for k, v in holder.best_state.items()} == pointers  # same buffers
    for key, value in model.state_dict().items():
        assert torch.equal(holder.best_state[key], value), key


def test_keep_best_makes_new_tensors_when_the_shapes_changed():
    holder = SimpleNamespace(model=nn.Linear(3, 1), best_state={})
    Trainer.keep_best(holder)  # type: ignore[arg-type]
    holder.model = nn.Linear(5, 1)
    Trainer.keep_best(holder)  # type: ignore[arg-type]
    assert holder.best_state["weight"].shape == (1, 5)
    assert torch.equal(holder.best_state["weight"], holder.model.weight)
