"""model.hidden_init: how the hidden layers of every MLP start (mtlrec/models/layers.py).

`torch` (the default) is nn.Linear's init, whose tower pre-activations start dominated by their
random biases on census (docs/results.md "Seed study"); `glorot` (the reference code's: TF/Keras,
PaddlePaddle) is Glorot uniform weights, zero biases; `he` Kaiming normal; hidden layers only.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import compose_train
from mtlrec.data.spec import DatasetSpec, FeatureSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models import build_model
from mtlrec.models.layers import GroupedMLP, apply_hidden_init

SPEC = DatasetSpec(
    name="toy",
    features=(FeatureSpec("f", "sparse", 30), FeatureSpec("g", "sparse", 20)),
    labels=("a", "b"),
    tasks=(TaskSpec("a", "a"), TaskSpec("b", "b")),
)
MMOE = {"name": "mmoe", "num_experts": 4, "expert_dims": [64, 32], "tower_dims": [16]}


def build(**overrides) -> nn.Module:
    torch.manual_seed(0)
    model, _ = build_model({**MMOE, **overrides}, SPEC, SPEC.tasks)
    return model


def test_glorot_is_uniform_with_zero_biases_on_hidden_layers_only():
    model = build(hidden_init="glorot")
    experts, towers = model.experts, model.towers
    shared = experts.linears[0]  # one [in, 4*64] Linear for the 4 experts: fan_out 64 each
    bound = math.sqrt(6.0 / (shared.in_features + 64))
    assert shared.weight.abs().max().item() <= bound
    assert shared.weight.abs().max().item() > 0.95 * bound  # uniform over the whole range
    hidden = [shared, experts.linears[1], towers.linears[0]]
    assert all(not layer.bias.any() for layer in hidden)
    second = experts.linears[1].weight  # [4, 64, 32]
    assert second.abs().max().item() <= math.sqrt(6.0 / (64 + 32))
    out = towers.linears[1]  # the towers' output layer keeps nn.Linear's init (nonzero bias)
    assert out.bias.abs().max().item() > 0


def test_he_and_torch_options():
    he = build(hidden_init="he")
    weight = he.experts.linears[1].weight
    assert abs(weight.std().item() - math.sqrt(2.0 / 64)) < 0.02
    assert not he.towers.linears[0].bias.any()
    torch_init = build(hidden_init="torch")  # nn.Linear's default: biases uniform, not zero
    assert torch_init.towers.linears[0].bias.abs().max().item() > 0
    assert torch_init.experts.linears[0].weight.abs().max().item() <= 1 / math.sqrt(
        torch_init.experts.linears[0].in_features
    )


def test_towers_start_with_fewer_dead_and_always_on_units_than_nn_linear_default():
    """The trap's mechanism, on random non-negative expert outputs: with nn.Linear's default the
    small inputs leave the sign of each tower unit to its bias (never / always firing)."""
    torch.manual_seed(1)
    x = torch.relu(torch.randn(2, 4096, 16) * 0.05)  # small mixed-expert outputs, as on census
    counts = {}
    for how in ("torch", "glorot"):
        dead = linear = 0
        for seed in range(20):
            torch.manual_seed(seed)
            towers = GroupedMLP(2, 16, [8], out_dim=1)
            apply_hidden_init(towers, how)
            fires = (towers.linears[0](x) > 0).float().mean(1)  # [2, 8]
            dead += int((fires == 0).sum())
            linear += int((fires == 1).sum())
        counts[how] = (dead, linear)
    assert counts["torch"][0] + counts["torch"][1] > 3 * (counts["glorot"][0] + counts["glorot"][1])


def test_an_unknown_hidden_init_is_one_line():
    with pytest.raises(MtlrecError, match=r"model.hidden_init 'xavier' is unknown; use one of"):
        build(hidden_init="xavier")


def test_the_default_is_torch_and_other_parameters_start_the_same_under_any_choice():
    assert compose_train(["model=esmm"]).model.hidden_init == "torch"
    assert build().towers.linears[0].bias.abs().max().item() > 0  # nn.Linear's init: kept
    torch_model, glorot = build(), build(hidden_init="glorot")  # re-drawn after the build:
    before, after = torch_model.state_dict(), glorot.state_dict()
    for name in ("embedding.tables.0.weight", "towers.linears.1.weight", "gates.linears.0.weight"):
        assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["towers.linears.0.weight"], after["towers.linears.0.weight"])
