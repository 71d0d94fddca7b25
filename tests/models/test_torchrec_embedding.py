"""trainer.embedding_backend=torchrec: the TorchRec embedding layer gives the native layer's
vectors for the same table weights (single ids, bags of every pooling, a target-attention sequence
sharing its target's rows, a field with its own embedding size, feature groups, copies), through
the sharded module of a one-rank process group with the fused optimizer in place."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("torchrec", reason="needs TorchRec (bash scripts/install_torchrec.sh)")

from helpers.torchrec import shard_settings  # noqa: E402
from mtlrec.data.spec import FeatureSpec  # noqa: E402
from mtlrec.models.features import FieldEmbedding  # noqa: E402
from mtlrec.models.torchrec_embedding import TorchRecFieldEmbedding  # noqa: E402
from mtlrec.training.torchrec_backend import (  # noqa: E402
    ShardedTables,
    ensure_process_group,
    shard_layer,
)
from tests.models.test_features import make_spec  # noqa: E402


def rich_spec(groups=None):
    return make_spec(
        [
            FeatureSpec("item", "sparse", 5),
            FeatureSpec("user", "sparse", 3, embedding_dim=8),
            FeatureSpec("tags", "bag", 4, max_len=3, pooling="mean"),
            FeatureSpec("maxtags", "bag", 4, max_len=2, pooling="max"),
            FeatureSpec("wtags", "bag", 3, max_len=2, pooling="weighted_sum", weighted=True),
            FeatureSpec(
                "history",
                "sequence",
                5,
                max_len=3,
                shares_vocab_with="item",
                pooling="target_attention",
                target="item",
            ),
            FeatureSpec("x", "dense"),
        ],
        groups,
    )


def batch(spec, rows=6, seed=0):
    """A batch in the loader's layout: ids offset into the fused vocabulary, -1 padding."""
    g = torch.Generator().manual_seed(seed)
    at = spec.vocab_offsets
    cols = []
    for f in spec.sparse:
        cols.append(at[f.name] + torch.randint(0, f.vocab_size, (rows, 1), generator=g))
    for f in spec.multi:
        ids = at[f.name] + torch.randint(0, f.vocab_size, (rows, f.max_len), generator=g)
        pad = torch.rand(rows, f.max_len, generator=g) < 0.3
        cols.append(torch.where(pad, -1, ids))
    sparse = torch.cat(cols, 1)
    dense = torch.rand(rows, spec.layout.dense_width, generator=g)
    return sparse, dense


def shard(native: FieldEmbedding, sharding: str = "table_wise", **cfg) -> ShardedTables:
    ensure_process_group(torch.device("cpu"))
    layer = TorchRecFieldEmbedding.from_native(copy.deepcopy(native))
    return shard_layer(layer, shard_settings(sharding=sharding, **cfg), torch.device("cpu"))


def sharded(native: FieldEmbedding, sharding: str = "table_wise") -> TorchRecFieldEmbedding:
    return shard(native, sharding).layer


def sharding_types(layer) -> set[str]:
    plan = layer.lookup.plan.plan  # DistributedModelParallel's ShardingPlan
    return {spec.sharding_type for params in plan.values() for spec in params.values()}


# data_parallel: the replicated tables, fed one id per bag on the CPU (FBGEMM's DENSE kernel
# there sums every bag, so a bag of several ids came back as one row)
@pytest.mark.parametrize("sharding", ["table_wise", "data_parallel"])
@pytest.mark.parametrize("copies", [1, 2])
def test_forward_equals_the_native_layer_for_the_same_weights(copies, sharding):
    torch.manual_seed(0)
    spec = rich_spec()
    native = FieldEmbedding(spec, 4, init_std=0.5, copies=copies)
    layer = sharded(native, sharding)
    assert sharding_types(layer) == {sharding}
    sparse, dense = batch(spec)
    expected = native(sparse, dense)
    got = layer(sparse, dense)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_feature_groups_and_the_ordinary_state_dict_round_trip():
    torch.manual_seed(1)
    spec = rich_spec(groups={"g": ["item", "tags"]})
    native = FieldEmbedding(spec, 4, init_std=0.5)
    layer = sharded(native)
    state = layer.state_dict()
    assert set(state) == set(native.state_dict())
    for key, value in native.state_dict().items():
        assert torch.equal(state[key], value), key
    # loading other weights writes into the shards: the forward follows
    other = FieldEmbedding(spec, 4, init_std=0.5)
    layer.load_state_dict(other.state_dict())
    sparse, dense = batch(spec, seed=3)
    torch.testing.assert_close(layer(sparse, dense), other(sparse, dense), rtol=0, atol=1e-6)


def test_the_fused_rowwise_adagrad_step_updates_the_looked_up_rows_once():
    spec = make_spec(
        [FeatureSpec("item", "sparse", 4), FeatureSpec("tags", "bag", 3, max_len=2, pooling="mean")]
    )
    native = FieldEmbedding(spec, 4)
    with torch.no_grad():
        native.tables[0].weight.copy_(torch.arange(28.0).view(7, 4))
    layer = sharded(native)
    # item 1 reads row 1; the bag reads its tag 0 (fused row 4) twice
    out = layer(torch.tensor([[1, 4, 4]]), torch.zeros(1, 0))  # fused ids: tags start at 4
    out.sum().backward()  # item row 1 gets 1s, tag row 4 gets 1/2 + 1/2 (mean over 2 values)
    after = layer.state_dict()["tables.0.weight"]
    start = torch.arange(28.0).view(7, 4)
    # rowwise adagrad: w -= lr * g / sqrt(mean(g^2) + eps); g = 1 everywhere here -> w - 0.1
    expected = start.clone()
    expected[1] -= 0.1
    expected[4] -= 0.1
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-5)


def test_auto_replicates_small_tables_on_the_cpu():
    """The planner's choice among table_wise, column_wise and data_parallel: tables of a few
    dozen rows are cheapest replicated."""
    layer = sharded(FieldEmbedding(rich_spec(), 4), "auto")
    assert sharding_types(layer) == {"data_parallel"}
    assert layer.collections.single_id_bags == {0, 1}  # both tables (embedding sizes 4 and 8)


@pytest.mark.parametrize("optimizer", ["rowwise_adagrad", "adagrad", "sgd"])
def test_a_replicated_table_trains_as_the_fused_one(optimizer):
    """data_parallel: the backward leaves the gradient (DDP's average over the ranks) and the
    replicated tables' torch optimizer steps it; two steps move the rows exactly as FBGEMM's
    fused optimizer moves a table_wise table's."""
    torch.manual_seed(2)
    spec = rich_spec()
    native = FieldEmbedding(spec, 4, init_std=0.5)
    fused = shard(native, "table_wise", embedding_optimizer=optimizer)
    replica = shard(native, "data_parallel", embedding_optimizer=optimizer)
    assert fused.replicated is None and replica.replicated is not None
    for tables in (fused, replica):
        for seed in (1, 2):
            sparse, dense = batch(spec, seed=seed)
            out = tables.layer(sparse, dense)
            scale = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
            (out * scale).sum().backward()
            if tables.replicated is not None:
                tables.replicated.step()
                tables.replicated.zero_grad()
    before = native.state_dict()
    after = fused.layer.state_dict()
    for key in ("tables.0.weight", "tables.1.weight"):
        assert not torch.equal(after[key], before[key]), key  # the steps moved rows
        torch.testing.assert_close(replica.layer.state_dict()[key], after[key], rtol=0, atol=1e-6)


def test_a_checkpoint_whose_plan_replicated_other_tables_is_refused_in_one_line():
    """With trainer.sharding=auto the planner's choice depends on the number of ranks (a 1000 x 8
    table: table_wise in 1 process, column_wise on 2, data_parallel on 4), so a resume with
    another trainer.devices may replicate tables the checkpoint's run did not (restore_training
    turns the ValueError into its one line)."""
    from torch import nn

    from mtlrec.training.optimizers import MultiOptimizer
    from mtlrec.training.torchrec_backend import FusedTables, TorchRecOptimizer

    native = FieldEmbedding(rich_spec(), 4)

    def optimizer(sharding: str) -> TorchRecOptimizer:
        dense = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        return TorchRecOptimizer(MultiOptimizer([dense]), FusedTables([shard(native, sharding)]))

    saved = optimizer("table_wise").state_dict()  # no replicated table
    with pytest.raises(ValueError) as info:
        optimizer("data_parallel").load_state_dict(saved)
    replicated = optimizer("data_parallel")
    tables = ", ".join(replicated.replicated_names[0])
    assert str(info.value) == (
        f"the checkpoint's data-parallel tables are none, this run's {tables}: the planner "
        "replicates other tables with this trainer.devices; resume with the run's own "
        "trainer.devices"
    )
    # the same number of replicated optimizers, other tables: refused by name, not loaded into
    # the wrong tables' state
    other = replicated.state_dict()
    assert other["replicated_table_names"] == replicated.replicated_names
    other["replicated_table_names"] = [["some_other_table"]]
    with pytest.raises(ValueError) as info:
        optimizer("data_parallel").load_state_dict(other)
    assert str(info.value).startswith(
        f"the checkpoint's data-parallel tables are some_other_table, this run's {tables}: "
    )
    optimizer("data_parallel").load_state_dict(replicated.state_dict())  # the same tables: fine
    del other["replicated_table_names"]  # saved before the names were: the count is checked
    optimizer("data_parallel").load_state_dict(other)


@pytest.mark.parametrize("sharding", ["table_wise", "data_parallel"])
def test_a_table_built_in_shards_gets_the_whole_draws_values_in_one_process(sharding):
    """A layer built inside seeded_init.drawn_in_shards() (its 150,000-row table a meta tensor:
    never allocated whole) and sharded in one process holds the values of the layer built as
    ever (3 chunks drawn into the shard or the replica; the small table drawn from the global
    generator), the SeededInit with the whole table's fingerprint (table_files checks it), and
    gives the same vectors."""
    from mtlrec.models import seeded_init

    spec = make_spec(
        [FeatureSpec("item", "sparse", 150_000), FeatureSpec("user", "sparse", 30, embedding_dim=8)]
    )
    torch.manual_seed(0)
    native = FieldEmbedding(spec, 4, init_std=0.5)
    torch.manual_seed(0)
    with seeded_init.drawn_in_shards():
        built = FieldEmbedding(spec, 4, init_std=0.5)
    assert [t.weight.is_meta for t in built.tables] == [True, False]
    ensure_process_group(torch.device("cpu"))
    layer = TorchRecFieldEmbedding.from_native(built)
    shard_layer(layer, shard_settings(sharding=sharding), torch.device("cpu"))
    assert sharding_types(layer) == {sharding}
    state = layer.state_dict()
    for j, table in enumerate(native.tables):
        assert torch.equal(state[f"tables.{j}.weight"], table.weight.detach()), j
    assert layer.initial_seeds[0] == seeded_init.seeded_init_of(native.tables[0].weight)
    assert layer.initial_seeds[1] is None and layer.initial_weights == []
    sparse, dense = batch(spec)
    torch.testing.assert_close(layer(sparse, dense), native(sparse, dense), rtol=0, atol=0)


def test_weights_loaded_before_sharding_replace_the_draw_and_its_seed():
    """A layer built in shards whose tables a state dict sets before it is sharded: the shards
    hold the loaded values, and no SeededInit claims the table is at its init (table_files would
    otherwise skip writing it)."""
    from mtlrec.models import seeded_init

    spec = make_spec([FeatureSpec("item", "sparse", 120_000)])
    torch.manual_seed(0)
    with seeded_init.drawn_in_shards():
        built = FieldEmbedding(spec, 4, init_std=0.5)
    ensure_process_group(torch.device("cpu"))
    layer = TorchRecFieldEmbedding.from_native(built)
    values = torch.randn(120_000, 4)
    layer.load_state_dict({"tables.0.weight": values})
    shard_layer(layer, shard_settings(sharding="table_wise"), torch.device("cpu"))
    assert torch.equal(layer.state_dict()["tables.0.weight"], values)
    assert layer.initial_seeds == [None]
