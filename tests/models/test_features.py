"""FieldEmbedding and pooling: hand-computed values for bags, sequences, attention and groups."""

from __future__ import annotations

import pytest
import torch

from mtlrec.data.spec import DatasetSpec, FeatureSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models.features import FieldEmbedding
from mtlrec.models.layers import FeatureEmbedding
from mtlrec.models.pooling import TargetAttention, masked_pool


def make_spec(features, groups=None) -> DatasetSpec:
    spec = DatasetSpec(
        name="t",
        features=tuple(features),
        labels=("y",),
        tasks=(TaskSpec("y", "y"),),
        feature_groups=groups or {},
    )
    spec.validate()
    return spec


EMB = torch.tensor(
    [[[1.0, 2.0], [3.0, -4.0], [100.0, 100.0]], [[5.0, 6.0], [0.0, 0.0], [0.0, 0.0]]]
)
MASK = torch.tensor([[True, True, False], [True, False, False]])


def test_masked_pool_modes_by_hand():
    assert masked_pool(EMB, MASK, "sum").tolist() == [[4.0, -2.0], [5.0, 6.0]]
    assert masked_pool(EMB, MASK, "mean").tolist() == [[2.0, -1.0], [5.0, 6.0]]
    assert masked_pool(EMB, MASK, "max").tolist() == [[3.0, 2.0], [5.0, 6.0]]
    w = torch.tensor([[0.5, 2.0, 9.0], [3.0, 9.0, 9.0]])
    assert masked_pool(EMB, MASK, "weighted_sum", w).tolist() == [[6.5, -7.0], [15.0, 18.0]]


def test_empty_bag_pools_to_zero_in_every_mode():
    mask = torch.zeros(1, 3, dtype=torch.bool)
    for mode in ("sum", "mean", "max"):
        assert masked_pool(EMB[:1], mask, mode).tolist() == [[0.0, 0.0]]


def test_target_attention_weights_on_a_two_item_example():
    att = TargetAttention(dim=1, hidden=())
    lin = att.unit[0]
    with torch.no_grad():  # score = [q, k, q-k, q*k] . (0, 0, 0, 1) + 0.5 = q*k + 0.5
        lin.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 1.0]]))
        lin.bias.fill_(0.5)
    q = torch.tensor([[2.0]])
    k = torch.tensor([[[1.0], [3.0], [7.0]]])
    mask = torch.tensor([[True, True, False]])
    # scores 2.5 and 6.5 (no softmax), padded position 0; v = 2.5 * 1 + 6.5 * 3 = 22
    assert att.scores(q, k, mask).tolist() == [[2.5, 6.5, 0.0]]
    assert att(q, k, mask).tolist() == [[22.0]]


def test_single_id_spec_equals_feature_embedding():
    spec = make_spec(
        [
            FeatureSpec("a", "sparse", 5),
            FeatureSpec("b", "sparse", 3, embedding_dim=2),
            FeatureSpec("c", "sparse", 4),
            FeatureSpec("x", "dense"),
        ]
    )
    sparse = torch.tensor([[0, 5, 8], [4, 7, 11]])
    dense = torch.tensor([[0.5], [-1.0]])
    for copies in (1, 3):
        torch.manual_seed(0)
        old = FeatureEmbedding(spec, 4, 0.1, copies=copies)
        torch.manual_seed(0)
        new = FieldEmbedding(spec, 4, 0.1, copies=copies)
        assert new.out_dim == old.out_dim == 4 + 2 + 4 + 1
        assert torch.equal(new(sparse, dense), old(sparse, dense))
        new.load_state_dict(old.state_dict())


def bag_spec(pooling="mean", weighted=False, groups=None):
    return make_spec(
        [
            FeatureSpec("item", "sparse", 4),
            FeatureSpec("tags", "bag", 3, max_len=3, weighted=weighted, pooling=pooling),
            FeatureSpec("x", "dense"),
        ],
        groups,
    )


def set_rows(emb: FieldEmbedding, rows):
    with torch.no_grad():
        emb.tables[0].weight.copy_(torch.tensor(rows, dtype=torch.float32))


ROWS = [[0, 0], [1, 0], [2, 0], [3, 0], [1, 1], [2, 4], [6, 8]]  # item ids 0-3, tags 4-6


def test_mean_and_max_over_a_padded_bag():
    spec = bag_spec()
    assert spec.layout.sparse == {"item": (0, 1), "tags": (1, 4)}
    sparse = torch.tensor([[1, 4, 6, -1], [2, -1, -1, -1]])
    dense = torch.tensor([[9.0], [8.0]])
    emb = FieldEmbedding(spec, 2)
    set_rows(emb, ROWS)
    # row 0: item 1 -> [1, 0]; tags rows 4, 6 -> mean [3.5, 4.5]; row 1: empty bag -> 0
    assert emb(sparse, dense).tolist() == [[1, 0, 3.5, 4.5, 9.0], [2, 0, 0, 0, 8.0]]
    emb_max = FieldEmbedding(bag_spec("max"), 2)
    set_rows(emb_max, ROWS)
    assert emb_max(sparse, dense)[0].tolist() == [1, 0, 6, 8, 9.0]


def test_weighted_sum_reads_the_weight_columns_after_the_dense_ones():
    spec = bag_spec("weighted_sum", weighted=True)
    assert spec.layout.weights == {"tags": (1, 4)} and spec.layout.dense_width == 4
    sparse = torch.tensor([[3, 5, 6, -1]])
    dense = torch.tensor([[7.0, 0.5, 2.0, 0.0]])
    emb = FieldEmbedding(spec, 2)
    set_rows(emb, ROWS)
    # 0.5 * [2, 4] + 2 * [6, 8] = [13, 18]; only the real dense column is output
    assert emb(sparse, dense).tolist() == [[3, 0, 13, 18, 7.0]]
    assert emb.out_dim == 5


def test_feature_groups_sum_field_vectors():
    spec = bag_spec(groups={"item_side": ["item", "tags"]})
    emb = FieldEmbedding(spec, 2)
    set_rows(emb, ROWS)
    out = emb(torch.tensor([[1, 4, 6, -1]]), torch.tensor([[9.0]]))
    assert out.tolist() == [[4.5, 4.5, 9.0]] and emb.out_dim == 3


def test_sequence_shares_rows_and_attends_to_its_target():
    spec = make_spec(
        [
            FeatureSpec("item", "sparse", 4),
            FeatureSpec("user", "sparse", 2),
            FeatureSpec(
                "history",
                "sequence",
                4,
                max_len=2,
                shares_vocab_with="item",
                pooling="target_attention",
                target="item",
            ),
        ]
    )
    assert spec.vocab_offsets == {"item": 0, "user": 4, "history": 0}
    assert spec.total_vocab == 6
    emb = FieldEmbedding(spec, 1, attention_hidden=())
    assert emb.tables[0].weight.shape == (6, 1)  # no rows of its own
    with torch.no_grad():
        emb.tables[0].weight.copy_(torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0], [20.0]]))
        lin = emb.attention["history"].unit[0]
        lin.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 1.0]]))
        lin.bias.fill_(0.0)
    # candidate item 2 (q = 2) over history items 1, 3: scores 2, 6 -> 2*1 + 6*3 = 20
    out = emb(torch.tensor([[2, 5, 1, 3]]), torch.zeros(1, 0))
    assert out.tolist() == [[2.0, 20.0, 20.0]]
    out = emb(torch.tensor([[2, 5, 3, -1]]), torch.zeros(1, 0))
    assert out.tolist() == [[2.0, 20.0, 18.0]]


def test_copies_pool_each_copy_on_its_own():
    spec = bag_spec("sum")
    emb = FieldEmbedding(spec, 2, copies=2)
    out = emb(torch.tensor([[1, 4, 6, -1]]), torch.tensor([[9.0]]))
    assert out.shape == (2, 1, 5)
    w = emb.tables[0].weight.detach()
    assert torch.allclose(out[1, 0, 2:4], w[4, 2:] + w[6, 2:])
    assert torch.allclose(out[0, 0, 2:4], w[4, :2] + w[6, :2])


def test_a_group_of_mixed_sizes_is_one_line():
    spec = make_spec(
        [FeatureSpec("a", "sparse", 3), FeatureSpec("b", "sparse", 3, embedding_dim=3)],
        {"g": ["a", "b"]},
    )
    with pytest.raises(MtlrecError, match=r"feature_groups.g: fields \['a', 'b'\] have different"):
        FieldEmbedding(spec, 2)


def test_backward_reaches_bag_rows_only_where_not_padded():
    emb = FieldEmbedding(bag_spec("mean"), 2)
    out = emb(torch.tensor([[1, 4, -1, -1]]), torch.tensor([[0.0]]))
    out.sum().backward()
    grad = emb.tables[0].weight.grad
    assert grad[4].tolist() == [1.0, 1.0] and grad[0].abs().sum() == 0 and grad[5].abs().sum() == 0


def test_target_attention_with_copies_attends_per_copy():
    spec = make_spec(
        [
            FeatureSpec("item", "sparse", 5),
            FeatureSpec(
                "hist", "sequence", 5, max_len=3, shares_vocab_with="item",
                pooling="target_attention", target="item",
            ),
        ]
    )  # fmt: skip
    torch.manual_seed(0)
    emb = FieldEmbedding(spec, 2, init_std=1.0, copies=2, attention_hidden=(4,))
    sparse = torch.tensor([[1, 2, 3, -1], [4, 0, -1, -1]])
    out = emb(sparse, torch.zeros(2, 0))
    assert out.shape == (2, 2, 4)
    w = emb.tables[0].weight.detach()
    att = emb.attention["hist"]
    mask = sparse[:, 1:] >= 0
    for c in range(2):
        rows = w[:, 2 * c : 2 * c + 2]
        q, k = rows[sparse[:, 0]], rows[sparse[:, 1:].clamp(min=0)]
        assert torch.allclose(out[c, :, :2], q)
        assert torch.allclose(out[c, :, 2:], att(q, k, mask), atol=1e-6)


def test_an_old_spec_without_the_new_keys_loads_with_todays_layout():
    old = {
        "name": "old",
        "features": [
            {"name": "a", "kind": "sparse", "vocab_size": 3, "oov_id": 0, "embedding_dim": None},
            {"name": "b", "kind": "sparse", "vocab_size": 4, "oov_id": None, "embedding_dim": None},
            {"name": "x", "kind": "dense", "vocab_size": 0, "oov_id": None, "embedding_dim": None},
        ],
        "labels": ["y"],
        "tasks": [{"name": "y", "label": "y"}],
        "version": 1,
    }
    spec = DatasetSpec.from_dict(old)
    assert spec.field_offsets == [0, 3] and spec.total_vocab == 7
    assert spec.layout.sparse_width == 2 and spec.layout.dense_width == 1
    assert spec.multi == () and spec.feature_groups == {}
    assert spec.parquet_columns == ["a", "b", "x", "y"]


def din_reference(att: TargetAttention, q, k, mask):
    """DIN's formula as first written: the unit over [q, k, q - k, q * k] at every position."""
    qe = q.unsqueeze(1).expand_as(k)
    a = att.unit(torch.cat([qe, k, qe - k, qe * k], dim=-1)).squeeze(-1) * mask.to(k.dtype)
    return (a.unsqueeze(-1) * k).sum(1)


@pytest.mark.parametrize("hidden", [(6, 3), (6,)])  # by layers; written out
def test_target_attention_equals_the_formula_it_restructures(hidden):
    torch.manual_seed(0)
    att = TargetAttention(dim=4, hidden=hidden)
    q = torch.randn(5, 4, requires_grad=True)
    k = torch.randn(5, 7, 4, requires_grad=True)
    mask = torch.arange(7) < torch.tensor([[7], [1], [0], [4], [2]])  # an empty history too
    new, old = att(q, k, mask), din_reference(att, q, k, mask)
    assert torch.allclose(new, old, atol=1e-6) and new[2].tolist() == [0.0] * 4
    written_out = type(new.grad_fn).__name__ == "_AttendPositionsBackward"
    assert written_out == (len(hidden) == 1)  # only the unit FieldEmbedding builds
    # the masked scores (every position, the non-CPU path) pool to the same vectors
    assert torch.allclose((att.scores(q, k, mask).unsqueeze(-1) * k).sum(1), old, atol=1e-6)
    grads = torch.autograd.grad(new.square().sum(), [q, k, *att.parameters()])
    reference = torch.autograd.grad(old.square().sum(), [q, k, *att.parameters()])
    for g, r in zip(grads, reference, strict=True):
        assert torch.allclose(g, r, atol=1e-5)
    assert grads[1][1, 1:].abs().sum() == 0  # padded positions get no gradient


@pytest.mark.parametrize("in_row_order", [True, False])
def test_the_written_out_attention_equals_the_units_layers_with_autograd(in_row_order):
    """_AttendPositions (forward and backward by hand, sparse row sums) against the same unit's
    layers through autograd: outputs and every gradient, float64; positions in row order (as
    FieldEmbedding gives them with copies=1) or interleaved (copies > 1), empty rows, PReLU's
    kink at 0, a slope that is not the default, and a second backward of a retained graph."""
    torch.manual_seed(0)
    att = TargetAttention(dim=3, hidden=(5,)).double()
    with torch.no_grad():
        att.unit[0].bias[0] = 0.0
        att.unit[1].weight.fill_(-0.3)
    rows = torch.tensor([0, 0, 0, 2, 2, 3, 5, 5, 5, 5])  # rows 1 and 4 have no position
    if not in_row_order:
        rows = rows[torch.tensor([3, 0, 6, 1, 5, 7, 2, 4, 8, 9])]
    q = torch.randn(6, 3, dtype=torch.float64)
    k = torch.randn(10, 3, dtype=torch.float64)
    q[rows[4]] = 0.0
    k[4] = 0.0  # the first layer's unit 0 is exactly 0 there: PReLU's kink
    q.requires_grad_(True)
    k.requires_grad_(True)
    new = att.pool_positions(q, k, rows)
    assert type(new.grad_fn).__name__ == "_AttendPositionsBackward"  # the written-out path ran
    old = att._pool_positions_by_layers(q, k, rows)
    assert torch.allclose(new, old, atol=1e-12) and new[[1, 4]].abs().sum() == 0
    inputs = [q, k, *att.parameters()]
    grad = torch.randn(6, 3, dtype=torch.float64)
    first = torch.autograd.grad(new, inputs, grad, retain_graph=True)
    again = torch.autograd.grad(new, inputs, grad)  # saved tensors were not written to
    reference = torch.autograd.grad(old, inputs, grad)
    for g, g2, r in zip(first, again, reference, strict=True):
        assert g.shape == r.shape and torch.allclose(g, r, atol=1e-12) and torch.equal(g, g2)
    assert att.unit[1].weight.item() == -0.3 and first[2].abs().sum() > 0
    with torch.no_grad():  # evaluation takes the same path, without saving for a backward
        assert torch.allclose(att.pool_positions(q, k, rows), old, atol=1e-12)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # keeps autocast's casts: the layers
        assert type(att.pool_positions(q, k, rows).grad_fn).__name__ == "IndexAddBackward0"


def history_spec(max_len: int) -> DatasetSpec:
    return make_spec(
        [
            FeatureSpec("item", "sparse", 6),
            FeatureSpec(
                "hist", "sequence", 6, max_len=max_len, shares_vocab_with="item",
                pooling="target_attention", target="item",
            ),
        ]
    )  # fmt: skip


@pytest.mark.parametrize("copies", [1, 2])
def test_attention_on_the_unpadded_positions_only_equals_attention_over_every_position(copies):
    """FieldEmbedding on CPU looks up only the unpadded positions (pool_positions): outputs and
    every gradient equal the masked scores over all positions (the path other devices take)."""
    torch.manual_seed(0)
    emb = FieldEmbedding(history_spec(4), 2, init_std=1.0, copies=copies, attention_hidden=(3,))
    sparse = torch.tensor([[1, 2, 3, 5, 4], [4, -1, -1, -1, -1], [2, 5, -1, -1, -1]])
    out = emb(sparse, torch.zeros(3, 0))
    table, att = emb.tables[0].weight, emb.attention["hist"]
    mask = sparse[:, 1:] >= 0
    c, d = copies, 2
    q = table[sparse[:, 0]].view(3 * c, d)
    k = table[sparse[:, 1:].clamp(min=0)].view(3, 4, c, d).transpose(1, 2).reshape(3 * c, 4, d)
    mc = mask.repeat_interleave(c, dim=0)
    pooled = (att.scores(q, k, mc).unsqueeze(-1) * k).sum(1).view(3, c * d)
    assert out.shape == ((3, 2 * d) if c == 1 else (c, 3, 2 * d))
    expected = pooled if c == 1 else pooled.view(3, c, d).transpose(0, 1)
    assert torch.allclose(out[..., d:], expected, atol=1e-6)
    assert out[..., 1, d:].abs().sum() == 0  # an empty history pools to 0
    params = [table, *att.parameters()]
    grads = torch.autograd.grad(out.square().sum(), params)
    single = table[sparse[:, 0]].square().sum()  # the item field's part of out
    reference = torch.autograd.grad(single + expected.square().sum(), params)
    for g, r in zip(grads, reference, strict=True):
        assert torch.allclose(g, r, atol=1e-5)
    assert grads[0][0].abs().sum() == 0  # no history reads row 0 (the padding's stand-in)


def test_a_batch_without_any_history_attends_to_nothing():
    emb = FieldEmbedding(history_spec(2), 2, init_std=1.0)
    out = emb(torch.tensor([[1, -1, -1], [3, -1, -1]]), torch.zeros(2, 0))
    assert out[:, 2:].tolist() == [[0.0, 0.0], [0.0, 0.0]]
    out.sum().backward()
    assert emb.attention["hist"].unit[0].weight.grad.abs().sum() == 0
