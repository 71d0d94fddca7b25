"""model.tower_output_init (MMoE): how the towers' output weights start (mtlrec/models/layers.py).

`torch` (the model's default) is nn.Linear's symmetric draw: a tower of 8 ReLU units gets output
weights of one sign at 2/2^8 of the seeds, a convex (or concave) tower that Adam does not leave
(census seed 7, docs/results.md "Seed study"). `balanced` (the census preset's) keeps the draw's
magnitudes and alternates the signs, drawing nothing else.
"""

from __future__ import annotations

import pytest
import torch

from conftest import compose_train
from mtlrec.data.spec import DatasetSpec, FeatureSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models import build_model
from mtlrec.models.layers import GroupedMLP, init_tower_output

SPEC = DatasetSpec(
    name="toy",
    features=(FeatureSpec("f", "sparse", 30), FeatureSpec("g", "sparse", 20)),
    labels=("a", "b"),
    tasks=(TaskSpec("a", "a"), TaskSpec("b", "b")),
)
MMOE = {"name": "mmoe", "num_experts": 4, "expert_dims": [16], "tower_dims": [8]}


def build(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model, _ = build_model({**MMOE, **overrides}, SPEC, SPEC.tasks)
    return model


def test_balanced_alternates_the_signs_of_the_draw_and_draws_nothing_else():
    drawn, balanced = build(), build(tower_output_init="balanced")
    before, after = drawn.state_dict(), balanced.state_dict()
    name = "towers.linears.1.weight"  # [tasks, 8 hidden units, 1 output]
    assert torch.equal(after[name].abs(), before[name].abs())  # the same magnitudes
    signs = torch.sign(after[name][:, :, 0])
    assert signs.tolist() == [[-1.0, 1.0] * 4] * 2
    for key in before.keys() - {name}:  # every other parameter exactly as with torch
        assert torch.equal(before[key], after[key]), key


def test_the_torch_draw_gives_some_seeds_a_tower_of_one_sign_and_balanced_none():
    """The trap's precondition: over 100 seeds nn.Linear's draw makes towers [8] whose output
    weights share one sign (2 / 256 of the towers); balanced never does."""

    def one_signed(how: str) -> int:
        count = 0
        for seed in range(100):
            torch.manual_seed(seed)
            towers = GroupedMLP(2, 16, [8], out_dim=1)  # MMoE's towers: 2 tasks, hidden [8]
            init_tower_output(towers, how)
            positive = (towers.linears[1].weight[:, :, 0] > 0).sum(-1)
            count += int(((positive == 0) | (positive == 8)).sum())
        return count

    assert one_signed("torch") >= 1  # seed 22: task 2 draws 8 negative weights
    assert one_signed("balanced") == 0


def test_the_census_preset_balances_and_the_model_default_is_the_reference_draw():
    assert compose_train(["experiment=census_mmoe"]).model.tower_output_init == "balanced"
    assert compose_train(["model=mmoe"]).model.tower_output_init == "torch"


def test_an_unknown_tower_output_init_is_one_line():
    with pytest.raises(
        MtlrecError,
        match=r"^model.tower_output_init 'zero' is unknown; use one of \['torch', 'balanced'\]$",
    ):
        build(tower_output_init="zero")
