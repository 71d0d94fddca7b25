"""Where the torchrec backend's tables go (mtlrec/training/torchrec_plan.py): trainer.sharding=auto
plans the same under every PYTHONHASHSEED, and a resumed run's recorded plan is rebuilt exactly,
refused in one line when it does not fit the tables."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchrec", reason="needs TorchRec (bash scripts/install_torchrec.sh)")

from helpers.torchrec import shard_settings  # noqa: E402
from mtlrec.errors import MtlrecError  # noqa: E402
from mtlrec.training import torchrec_backend  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# Two tables (5000 x 4, 3000 x 8) planned with trainer.sharding=auto for 1, 2 and 4 ranks (a
# Topology of that many; planning needs no process group of that size). In one process TorchRec
# 1.8 rates a whole table (table_wise) and a one-shard column_wise table the same, and chose
# column_wise under PYTHONHASHSEED 2 and 5, table_wise under 1 (before OrderedEnumerator).
PLAN_SNIPPET = """
import json, torch
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from mtlrec.data.spec import FeatureSpec
from mtlrec.models.features import FieldEmbedding
from mtlrec.models.torchrec_embedding import TorchRecFieldEmbedding
from mtlrec.training.torchrec_backend import ensure_process_group
from mtlrec.training.torchrec_plan import make_planner, plan_record
from helpers.torchrec import shard_settings
from tests.models.test_features import make_spec

ensure_process_group(torch.device("cpu"))
spec = make_spec([FeatureSpec("item", "sparse", 5000), FeatureSpec("user", "sparse", 3000, embedding_dim=8)])
layer = TorchRecFieldEmbedding.from_native(FieldEmbedding(spec, 4))
cpu, sharders = torch.device("cpu"), [EmbeddingCollectionSharder()]
plans = {
    world: plan_record(
        make_planner(layer.table_shapes, shard_settings(), cpu, world).plan(layer.collections, sharders)
    )
    for world in (1, 2, 4)
}
print(json.dumps(plans, sort_keys=True))
"""


def _whole(rows: int, dim: int, rank: int = 0) -> dict:
    return {
        "sharding_type": "table_wise",
        "compute_kernel": "fused",
        "ranks": [rank],
        "shards": [{"offsets": [0, 0], "sizes": [rows, dim], "placement": f"rank:{rank}/cpu"}],
    }


@pytest.mark.slow  # 3 processes
def test_auto_plans_the_same_under_every_hash_seed():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    plans = {}
    for seed in ("1", "2", "5"):
        done = subprocess.run(
            [sys.executable, "-c", PLAN_SNIPPET],
            env={**env, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        plans[seed] = json.loads(done.stdout.strip().splitlines()[-1])
    # of equal estimates, a whole table on one rank wins (TIE_ORDER); on more ranks the
    # partitioner spreads the tables
    one = {"table_0": _whole(5000, 4), "table_1": _whole(3000, 8)}
    spread = {"table_0": _whole(5000, 4, rank=1), "table_1": _whole(3000, 8)}
    want = {"1": one, "2": spread, "4": spread}
    assert plans == {"1": want, "2": want, "5": want}


def _layer():
    from mtlrec.data.spec import FeatureSpec
    from mtlrec.models.features import FieldEmbedding
    from mtlrec.models.torchrec_embedding import TorchRecFieldEmbedding
    from tests.models.test_features import make_spec

    torchrec_backend.ensure_process_group(torch.device("cpu"))
    spec = make_spec([FeatureSpec("item", "sparse", 500)])
    return TorchRecFieldEmbedding.from_native(FieldEmbedding(spec, 8))


# table_0 (500 x 8) as the planner would not place it in one process: split in two columns
SPLIT = {
    "table_0": {
        "sharding_type": "column_wise",
        "compute_kernel": "fused",
        "ranks": [0, 0],
        "shards": [
            {"offsets": [0, 0], "sizes": [500, 4], "placement": "rank:0/cpu"},
            {"offsets": [0, 4], "sizes": [500, 4], "placement": "rank:0/cpu"},
        ],
    }
}


def test_a_recorded_plan_is_rebuilt_exactly(tmp_path):
    from mtlrec.training.torchrec_plan import plan_record

    assert torchrec_backend.shard_layer(_layer(), shard_settings(), torch.device("cpu")).plan == {
        "table_0": _whole(500, 8)
    }
    recorded = {"tables": SPLIT, "source": tmp_path / "sharding_plan.json"}
    sharded = torchrec_backend.shard_layer(
        _layer(), shard_settings(), torch.device("cpu"), recorded
    )
    assert sharded.plan == SPLIT
    assert plan_record(sharded.module.plan) == SPLIT  # what DistributedModelParallel was given
    (weight,) = torchrec_backend.table_states(sharded.module)
    assert [list(s.metadata.shard_sizes) for s in weight.local_shards()] == [[500, 4], [500, 4]]


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"sizes": [500, 2]}, "shards [[500, 2], [500, 4]]"),
        ({"sizes": [400, 4]}, "shards [[400, 4], [500, 4]]"),
        ({"offsets": [200, 0]}, "shards [[500, 4], [500, 4]]"),
        # a plan edited by hand: each was TorchRec's traceback
        ({"offsets": ["0", "0"]}, "TypeError: ['0', '0'] is not a list of whole numbers"),
        ({"placement": "rank:3/cpu"}, "placements ['rank:3/cpu', 'rank:0/cpu']"),
        (
            {"placement": "rank:0/cuda:0"},
            "placements ['rank:0/cuda:0', 'rank:0/cpu']",
        ),  # made on CUDA
        ({"sharding_type": "grid"}, "sharding_type 'grid', compute_kernel 'fused'"),
        ({"compute_kernel": "fast"}, "sharding_type 'column_wise', compute_kernel 'fast'"),
    ],
)
def test_a_recorded_plan_that_does_not_fit_the_table_is_one_line(tmp_path, change, problem):
    tables = copy.deepcopy(SPLIT)
    table = tables["table_0"]
    (
        table if "sharding_type" in change or "compute_kernel" in change else table["shards"][0]
    ).update(change)
    source = tmp_path / "sharding_plan.json"
    with pytest.raises(MtlrecError) as info:
        torchrec_backend.shard_layer(
            _layer(), shard_settings(), torch.device("cpu"), {"tables": tables, "source": source}
        )
    assert str(info.value) == (
        f"{source}: the plan of table_0 ({problem}) does not fit this run's 500 x 8 table on 1 "
        "rank(s); restore it from a copy of the run dir, or delete it to let the planner place "
        "the tables again"
    )


def test_which_recorded_plans_a_resume_keeps(tmp_path, caplog):
    from mtlrec.training.torchrec_plan import recorded_tables

    path = tmp_path / "sharding_plan.json"
    assert recorded_tables(path, 1) is None  # no record (e.g. a run from before the backend)
    path.write_text(json.dumps({"world_size": 2, "sharding": "auto", "tables": SPLIT}))
    with caplog.at_level("INFO"):
        assert recorded_tables(path, 2) == {"tables": SPLIT, "source": path}
        assert recorded_tables(path, 1) is None  # another number of ranks: planned again
    assert f"torchrec: the tables keep the plan of {path} (2 rank(s))" in caplog.text
    assert f"torchrec: {path} was planned for 2 rank(s), this run has 1: the planner places " in (
        caplog.text
    )
    for damaged, error in [
        ('{"world_size": 2', "JSONDecodeError: "),
        ('{"world_size": 2, "tables": []}', "TypeError: tables is a list, not an object)"),
    ]:
        path.write_text(damaged)
        with pytest.raises(MtlrecError) as info:
            recorded_tables(path, 2)
        assert str(info.value).startswith(f"{path}: not a readable sharding plan ({error}")
        assert str(info.value).endswith(
            "restore it from a copy of the run dir, or delete it to let the planner place the "
            "tables again"
        )


@pytest.mark.parametrize("rows", [1000, 10])
def test_a_fused_state_of_another_sharding_is_refused_not_truncated(rows):
    """The gathered fused state's shape follows the plan (rowwise_adagrad: a row state per
    column_wise shard): a larger one loaded the first rows silently, a smaller one failed with a
    bare RuntimeError; both are one ValueError (a resume's or init.optimizer's one line)."""
    sharded = torchrec_backend.shard_layer(_layer(), shard_settings(), torch.device("cpu"))
    fused = torchrec_backend.FusedTables([sharded])
    ((key, before),) = fused.state_dict().items()
    assert list(before.shape) == [500]  # rowwise_adagrad: one value per row
    with pytest.raises(ValueError) as info:
        fused.load_state_dict({key: torch.ones(rows)})
    assert str(info.value) == (
        f"the checkpoint's fused optimizer state {key} is [{rows}], this run's [500]: its tables "
        "were sharded otherwise (rowwise_adagrad keeps a row state per column_wise shard); use "
        "the run's own trainer.devices"
    )
    assert torch.equal(fused.state_dict()[key], before)  # nothing loaded
