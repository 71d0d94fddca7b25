"""DeepFM's FM part is <w, x> + sum_{i<j} <v_i, v_j>: the first-order term, by hand."""

from __future__ import annotations

import torch

from models.test_zoo import SPEC, build, inputs


def test_the_fm_term_is_first_plus_second_order_by_hand():
    model, _ = build(name="shared_bottom", backbone="deepfm")
    first = model.interaction.first_order
    with torch.no_grad():
        first.weight.copy_(torch.arange(15, dtype=torch.float32).unsqueeze(0) / 10)
        first.dense.weight.fill_(-2.0)
    sparse, dense = inputs()
    x = model.embedding(sparse, dense)
    _, fm = model.interaction(x, sparse, dense)
    assert fm is not None and fm.shape == (2, sparse.shape[0])
    table = model.embedding.tables[0].weight
    for b in range(sparse.shape[0]):
        ids = sparse[b].tolist()  # fused ids: user 0-6, item 7-11, shop 12-14
        linear = sum(i / 10 for i in ids) - 2.0 * dense[b, 0].item()
        v = [table[i].detach() for i in ids]
        pairs = sum(float(v[i] @ v[j]) for i in range(3) for j in range(i + 1, 3))
        assert abs(fm[0, b].item() - (linear + pairs)) < 1e-5
        assert fm[1, b].item() == fm[0, b].item()  # the same FM term for every task (shared)
    assert len(SPEC.sparse) == 3


def test_the_first_order_term_starts_at_zero_and_learns():
    model, _ = build(name="mmoe", backbone="deepfm")
    sparse, dense = inputs()
    out = model(sparse, dense)
    first = model.interaction.first_order
    assert first(sparse, dense).abs().sum() == 0
    out["ctr"].sum().backward()
    grad = first.weight.grad
    assert grad is not None and grad[0, sparse[:, 0]].abs().sum() > 0  # the ids of the batch
    assert first.dense.weight.grad is not None and first.dense.weight.grad.abs().sum() > 0
