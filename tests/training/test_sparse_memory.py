"""Memory of large tables: the best weights are one copy, reused, never two at once."""

from __future__ import annotations

import torch
from torch import nn

from mtlrec.training.checkpoint import keep_weights


def test_keep_best_copies_into_the_previous_best_tensors():
    model = nn.Sequential(nn.Embedding(50, 4), nn.Linear(4, 1))
    kept = keep_weights({}, model.state_dict())
    first = dict(kept)
    pointers = {k: v.data_ptr() for k, v in first.items()}
    assert all(pointers[k] != v.data_ptr() for k, v in model.state_dict().items())  # a copy
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not torch.equal(first["0.weight"], model[0].weight)  # the copy did not follow
    kept = keep_weights(kept, model.state_dict())
    assert {k: v.data_ptr() for k, v in kept.items()} == pointers  # same buffers
    for key, value in model.state_dict().items():
        assert torch.equal(kept[key], value), key


def test_keep_best_makes_new_tensors_when_the_shapes_changed():
    kept = keep_weights({}, nn.Linear(3, 1).state_dict())
    model = nn.Linear(5, 1)
    kept = keep_weights(kept, model.state_dict())
    assert kept["weight"].shape == (1, 5)
    assert torch.equal(kept["weight"], model.weight)
