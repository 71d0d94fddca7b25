"""ShardedCheckpointer on 2 gloo ranks with two tables, one on each rank (table_wise): each rank
writes its shards and its fused optimizer state (rank 0 holds none of rank 1's table), the folder
gathered in one process gives every table and state in full, and layers of other weights load
every shard back (mtlrec/training/torchrec_checkpoint.py); a model built as a run builds it
(its seeded table a meta tensor, each rank drawing its shards: torchrec_init.py) holds the whole
draw's values, table_wise and column_wise, and a resume's (nothing drawn) loads its shards. One
spawn of 2 processes: slow."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

pytest.importorskip("torchrec", reason="needs TorchRec (bash scripts/install_torchrec.sh)")

pytestmark = pytest.mark.slow


def _spec():
    """Two tables: item (40 x 4), user (30 x 8)."""
    from mtlrec.data.spec import FeatureSpec
    from tests.models.test_features import make_spec

    return make_spec(
        [FeatureSpec("item", "sparse", 40), FeatureSpec("user", "sparse", 30, embedding_dim=8)]
    )


def _layer(seed: int):
    """The native layer of _spec, its init from `seed`."""
    from mtlrec.models.features import FieldEmbedding

    torch.manual_seed(seed)
    return FieldEmbedding(_spec(), 4, init_std=0.5)


def _model(seed: int, sharding: str = "table_wise", optimizer: str = "adagrad") -> nn.Module:
    from helpers.torchrec import shard_settings
    from mtlrec.training.torchrec_backend import shard_model

    model = nn.Module()
    model.embedding = _layer(seed)
    cfg = shard_settings(
        embedding_backend="torchrec",
        embedding_optimizer=optimizer,
        sharding=sharding,
        devices=2,
    )
    shard_model(model, cfg, torch.device("cpu"), lambda name, record: None)
    return model


def _optimizer(model: nn.Module):
    from mtlrec.training.optimizers import MultiOptimizer
    from mtlrec.training.torchrec_backend import with_fused_tables

    dense = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    return with_fused_tables(MultiOptimizer([dense]), model)


def _gathered(model: nn.Module, optimizer) -> dict:
    """Every table and fused state in full (collectives: every rank calls it)."""
    return {"model": model.state_dict(), "fused": optimizer.fused.state_dict()}


def _ranks(rank: int, tmp: str) -> None:
    from mtlrec.training.dcp_files import SHARDED_KEY
    from mtlrec.training.torchrec_checkpoint import ShardedCheckpointer, restoring

    tmp_path = Path(tmp)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model, checkpoints = _model(0), tmp_path / "checkpoints"
    optimizer = _optimizer(model)
    at = _spec().vocab_offsets
    ids = torch.tensor([[at["item"] + 1, at["user"] + 1], [at["item"] + 3, at["user"] + 5]])
    model.embedding(ids, torch.zeros(2, 0)).sum().backward()  # the fused step: state != 0
    manifest = ShardedCheckpointer(checkpoints, model, optimizer, rank == 0).write(1, {})
    written = _gathered(model, optimizer)
    other = _model(1)  # other weights, fresh fused state: everything comes from the folder
    other_optimizer = _optimizer(other)
    payload = {SHARDED_KEY: manifest}
    with restoring(payload, checkpoints / "last.pt", other, other_optimizer, "auto"):
        pass
    loaded = _gathered(other, other_optimizer)
    resharded = _model(2, "column_wise")  # another plan: DCP reshards (adagrad's state too)
    resharded_optimizer = _optimizer(resharded)
    with restoring(payload, checkpoints / "last.pt", resharded, resharded_optimizer, "auto"):
        pass
    resharded_state = _gathered(resharded, resharded_optimizer)
    refused = _refused_elsewhere(tmp_path / "rowwise", ids)
    evaluation = _lockstep_evaluation(rank)
    best = _best_by_reference(tmp_path / "best", ids)
    in_shards = {s: _drawn_in_shards(s, tmp_path) for s in ("table_wise", "column_wise")}
    if rank == 0:
        plan = [s.plan for s in model.sharded_tables][0]
        torch.save({"manifest": manifest, "written": written, "loaded": loaded, "plan": plan,
                    "refused": refused, "resharded": resharded_state, "evaluation": evaluation, "best": best,
                    "in_shards": in_shards},
                   tmp_path / "out.pt")  # fmt: skip
    dist.destroy_process_group()
    # as mtlrec's ranks end (distributed/launch.py _leave): no C++ static destructors, where a
    # library thread still joinable at exit can abort a finished rank
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _refused_elsewhere(checkpoints: Path, ids: torch.Tensor) -> str:
    """rowwise_adagrad's shards written table_wise, loaded into column_wise ones: its per-row
    state has a column per shard, so DCP cannot reshard it; the one line (every rank's)."""
    from mtlrec.errors import MtlrecError
    from mtlrec.training.dcp_files import SHARDED_KEY
    from mtlrec.training.torchrec_checkpoint import ShardedCheckpointer, restoring

    model = _model(0, "table_wise", "rowwise_adagrad")
    optimizer = _optimizer(model)
    model.embedding(ids, torch.zeros(2, 0)).sum().backward()
    manifest = ShardedCheckpointer(checkpoints, model, optimizer, dist.get_rank() == 0).write(1, {})
    other = _model(1, "column_wise", "rowwise_adagrad")
    try:
        with restoring({SHARDED_KEY: manifest}, checkpoints / "last.pt", other, _optimizer(other),
                       "auto"):  # fmt: skip
            return "loaded"
    except MtlrecError as e:  # not DCP's CheckpointException (a BaseException), a traceback
        return str(e)


def _best_by_reference(checkpoints: Path, ids: torch.Tensor) -> dict:
    """keep_best's state at "epoch 1" (the tables as placeholders) and its checkpoint's folder,
    a fused step, "epoch 2"'s folder, then the end of fit's load_best; and a model of other
    weights resumed from epoch 2's checkpoint (its best weights: placeholders again), whose
    load_best reads epoch 1's folder that the checkpoint names. The tables as gathered at each
    point (a collective, for the comparison only)."""
    from mtlrec.training.dcp_files import SHARDED_KEY
    from mtlrec.training.torchrec_checkpoint import ShardedCheckpointer, restoring

    model = _model(0)
    tables = ShardedCheckpointer(checkpoints, model, _optimizer(model), dist.get_rank() == 0)
    best = tables.live_state()
    first = tables.write(1, best)
    at_best = model.state_dict()
    model.embedding(ids, torch.zeros(2, 0)).sum().backward()  # the fused step changes the rows
    second = tables.write(2, best)
    trained = model.state_dict()
    tables.load_best(best)
    restored = model.state_dict()
    other = _model(1)
    other_optimizer = _optimizer(other)
    dense = {k: v for k, v in best.items() if not v.is_meta}  # what last.pt holds of them
    payload = {SHARDED_KEY: second, "train_state": {"best_state": dense}}
    with restoring(payload, checkpoints / "last.pt", other, other_optimizer, "auto") as resumed:
        kept = resumed["train_state"]["best_state"]
    resumed_tables = ShardedCheckpointer(checkpoints, other, other_optimizer, dist.get_rank() == 0)
    resumed_tables.adopt(payload)
    resumed_last = other.state_dict()
    resumed_tables.load_best(kept)
    return {
        "placeholders": sorted(k for k, v in best.items() if v.is_meta),
        "resumed_placeholders": sorted(k for k, v in kept.items() if v.is_meta),
        "folders": [first["folder"], second["folder"]],
        "best": [first["best"]["folder"], second["best"]["folder"]],
        "states": [at_best, trained, restored, resumed_last, other.state_dict()],
    }


BIG_ROWS = 150_000  # a seeded table (seeded_init.SEEDED_FROM_ROWS): 3 chunks of 65,536 rows


def _big_spec():
    """A seeded table (item: 150,000 x 8) and a small one (user: 30 x 16)."""
    from mtlrec.data.spec import FeatureSpec
    from tests.models.test_features import make_spec

    return make_spec(
        [
            FeatureSpec("item", "sparse", BIG_ROWS),
            FeatureSpec("user", "sparse", 30, embedding_dim=16),
        ]
    )


def _built_in_shards(sharding: str, loaded_next: bool = False) -> tuple[nn.Module, list[bool]]:
    """A model built as experiment.build builds it for the torchrec backend (inside
    seeded_init.drawn_in_shards(), and loaded_next() for a resume, converted, then sharded), and
    which of its native tables were meta tensors."""
    from helpers.torchrec import shard_settings
    from mtlrec.models import seeded_init
    from mtlrec.models.features import FieldEmbedding
    from mtlrec.models.torchrec_embedding import convert_model
    from mtlrec.training.torchrec_backend import shard_model

    torch.manual_seed(7)
    with seeded_init.loaded_next(loaded_next), seeded_init.drawn_in_shards():
        model = nn.Module()
        model.embedding = FieldEmbedding(_big_spec(), 8, init_std=0.3)
    built_meta = [t.weight.is_meta for t in model.embedding.tables]
    convert_model(model)
    cfg = shard_settings(embedding_backend="torchrec", sharding=sharding, devices=2)
    shard_model(model, cfg, torch.device("cpu"), lambda name, record: None)
    return model, built_meta


def _local(model: nn.Module) -> list[list[tuple[list[int], torch.Tensor]]]:
    """This rank's pieces (offsets, a copy of the values) of each table."""
    from mtlrec.training.torchrec_backend import table_states
    from mtlrec.training.torchrec_init import local_pieces

    (sharded,) = model.sharded_tables
    return [
        [(offsets, piece.detach().clone()) for offsets, piece in local_pieces(state)]
        for state in table_states(sharded.module)
    ]


def _drawn_in_shards(sharding: str, tmp_path: Path) -> dict:
    """A model built as a run builds it (`_built_in_shards`): whether any table was whole on
    this rank, every rank's pieces of each table (gathered for the comparison), the recorder's
    start without a gather; then its shards written to a DCP folder and a resume's model (built
    inside loaded_next(): nothing drawn) loading them: whether it got this rank's pieces."""
    from mtlrec.training.dcp_files import SHARDED_KEY
    from mtlrec.training.torchrec_checkpoint import ShardedCheckpointer, restoring

    model, built_meta = _built_in_shards(sharding)
    (sharded,) = model.sharded_tables
    started = _start_without_gathering(model, tmp_path / sharding)
    pieces = _local(model)
    every: list = [None, None]
    dist.all_gather_object(every, pieces)
    folder = tmp_path / sharding / "resume"
    manifest = ShardedCheckpointer(folder, model, _optimizer(model), dist.get_rank() == 0).write(
        1, {}
    )
    resumed, resumed_meta = _built_in_shards(sharding, loaded_next=True)
    (resumed_layer,) = [s.layer for s in resumed.sharded_tables]
    undrawn = _local(resumed)  # what a resume's shards hold before the folder is read
    with restoring(
        {SHARDED_KEY: manifest}, folder / "last.pt", resumed, _optimizer(resumed), "auto"
    ):
        pass
    loaded = _local(resumed)
    return {
        "built_meta": built_meta,
        "pieces": every,
        "seeds": sharded.layer.initial_seeds,
        "best_keys": started,
        "resumed_meta": resumed_meta,
        "resumed_seeds": resumed_layer.initial_seeds,
        "resumed_drawn": _same(undrawn, pieces),
        "resumed": _same(loaded, pieces),
    }


def _same(a: list, b: list) -> list[bool]:
    """Per table: the same offsets and values, piece by piece."""
    return [
        len(x) == len(y)
        and all(o == p and torch.equal(t, u) for (o, t), (p, u) in zip(x, y, strict=False))
        for x, y in zip(a, b, strict=True)
    ]


def _start_without_gathering(model: nn.Module, checkpoints: Path) -> list[str]:
    """What a run's recorder makes at start (experiment.RunRecorder: the DCP checkpointer and
    BestFiles), with TorchRec's gather made to fail: the table keys BestFiles tracks (none)."""
    from mtlrec.training import torchrec_backend
    from mtlrec.training.best_files import BestFiles
    from mtlrec.training.torchrec_checkpoint import ShardedCheckpointer

    def refuse(local: dict) -> dict:
        raise AssertionError(f"a table was gathered at start: {sorted(local)}")

    gather, torchrec_backend.gather_full = torchrec_backend.gather_full, refuse
    try:
        tables = ShardedCheckpointer(checkpoints, model, _optimizer(model), dist.get_rank() == 0)
        return sorted(BestFiles(tables, model, model).keys)
    finally:
        torchrec_backend.gather_full = gather


def _check_drawn_in_shards(in_shards: dict) -> None:
    """Each rank's pieces are the whole draw's values (today's: the layer built as ever, same
    seed): table_wise, each table whole on one rank; column_wise, each rank half the columns of
    each; the seeded table was a meta tensor on each rank (no rank drew or held it whole)."""
    from mtlrec.models.features import FieldEmbedding

    torch.manual_seed(7)
    whole = [t.weight.detach() for t in FieldEmbedding(_big_spec(), 8, init_std=0.3).tables]
    assert [list(w.shape) for w in whole] == [[BIG_ROWS, 8], [30, 16]]
    for sharding, got in in_shards.items():
        assert got["built_meta"] == [True, False], sharding
        assert got["seeds"] == [None, None], sharding  # no fingerprint: nothing was whole
        assert got["best_keys"] == [], sharding  # and the recorder's start gathered nothing
        # a resume's model: meta, no init (nothing drawn: the seeded table's shard is not the
        # init), then every shard from the folder
        assert got["resumed_meta"] == [True, False] and got["resumed_seeds"] == [None, None]
        assert got["resumed_drawn"][0] is False and got["resumed"] == [True, True], sharding
        for j, table in enumerate(whole):
            held = [(rank, o, p) for rank in (0, 1) for o, p in got["pieces"][rank][j]]
            if sharding == "column_wise":
                assert [(rank, o[1], p.shape[1]) for rank, o, p in held] == [
                    (0, 0, table.shape[1] // 2),
                    (1, table.shape[1] // 2, table.shape[1] // 2),
                ], j
            else:
                assert len(held) == 1 and list(held[0][2].shape) == list(table.shape), j
            for rank, (row, col), piece in held:
                expected = table[row : row + piece.shape[0], col : col + piece.shape[1]]
                assert torch.equal(piece, expected), (sharding, j, rank)


EVAL_ROWS, EVAL_BATCH = 450, 100  # 5 eval batches: rank 0 predicts 2 of them, rank 1 3
FEW_ROWS = 60  # then 1 eval batch: rank 0 predicts none, rank 1 all


def _lockstep_evaluation(rank: int) -> dict:
    """Evaluator.evaluate of an MMoE (gates: padding must not count) whose tables are split
    column_wise over the 2 ranks, with TorchRec's gather made to fail: every rank's forwards
    (counted) and its table shards, the metrics, and those of the model before sharding (the
    native layer, same weights, evaluated data-parallel: as one process)."""
    import copy

    from conftest import compose_train
    from helpers.torchrec import shard_settings
    from mtlrec.data.ccp_generator import dataset_spec
    from mtlrec.data.loader import SplitTensors
    from mtlrec.models import build_model
    from mtlrec.training import torchrec_backend
    from mtlrec.training.distributed.context import RankContext, set_current
    from mtlrec.training.evaluator import Evaluator
    from mtlrec.training.metrics import eval_targets
    from tests.training.test_fit import _batch

    set_current(RankContext(rank=rank, world_size=2, backend="gloo"))
    spec, cpu = dataset_spec(1000, 0), torch.device("cpu")
    torch.manual_seed(0)
    model, tasks = build_model(dict(compose_train(["model=mmoe"]).model), spec, spec.tasks)
    targets = eval_targets(tasks, model.output_types, spec)
    b = _batch(spec, EVAL_ROWS, seed=3)
    split = SplitTensors(b.sparse, b.dense, b.labels)
    few = SplitTensors(b.sparse[:FEW_ROWS], b.dense[:FEW_ROWS], b.labels[:FEW_ROWS])
    native = Evaluator(copy.deepcopy(model), spec, tasks, targets, cpu, EVAL_BATCH)
    expected = [native.evaluate(split, "val"), native.evaluate(few, "val")]
    cfg = shard_settings(
        embedding_backend="torchrec", sharding="column_wise", devices=2, embedding_optimizer="sgd"
    )
    torchrec_backend.shard_model(model, cfg, cpu, lambda name, record: None)
    (sharded,) = model.sharded_tables
    lookup, forwards = sharded.layer.lookup, []
    sharded.layer.__dict__["lookup"] = lambda ids: forwards.append(len(ids[0])) or lookup(ids)
    gather = torchrec_backend.gather_full

    def refuse(local: dict) -> dict:
        raise AssertionError(f"a table was gathered during evaluation: {sorted(local)}")

    torchrec_backend.gather_full = refuse
    try:
        evaluator = Evaluator(model, spec, tasks, targets, cpu, EVAL_BATCH)
        got = [evaluator.evaluate(split, "val"), evaluator.evaluate(few, "val")]
    finally:
        torchrec_backend.gather_full = gather
    shards = [
        [list(s.metadata.shard_sizes) for s in state.local_shards()]
        for state in torchrec_backend.table_states(sharded.module)
    ]
    every: list = [None, None]
    dist.all_gather_object(every, {"forwards": forwards, "shards": shards})
    set_current(RankContext())
    return {"expected": expected, "got": got, "ranks": every, "shapes": sharded.layer.table_shapes}


def test_each_rank_writes_its_tables_and_every_shard_comes_back(tmp_path):
    from mtlrec.training import dcp_files
    from mtlrec.training.dcp_files import SHARDED_KEY

    mp.spawn(_ranks, args=(str(tmp_path),), nprocs=2)
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert sorted(p["ranks"][0] for p in out["plan"].values()) == [0, 1]  # a table per rank
    manifest, written, loaded = out["manifest"], out["written"], out["loaded"]
    assert manifest["model_keys"] == ["embedding.tables.0.weight", "embedding.tables.1.weight"]
    assert len(manifest["fused_keys"]) == 2  # rank 0's table's state and rank 1's
    assert sorted(manifest["files"]) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    fresh = {f"embedding.{k}": v for k, v in _layer(1).state_dict().items()}
    for key, value in written["model"].items():
        assert torch.equal(loaded["model"][key], value), key
        if key in manifest["model_keys"]:
            assert not torch.equal(fresh[key], value), key  # the load changed something
    assert written["fused"].keys() == loaded["fused"].keys() and len(written["fused"]) == 2
    for key, value in written["fused"].items():
        assert value.abs().sum() > 0 and torch.equal(loaded["fused"][key], value), key
    payload = {
        "model_state": {},
        "optimizer_state": {"optimizers": []},
        SHARDED_KEY: manifest,
    }
    for part in ("model", "fused"):
        assert out["resharded"][part].keys() == written[part].keys()
        for key, value in written[part].items():
            assert torch.equal(out["resharded"][part][key], value), key
    refused, folder = out["refused"], tmp_path / "rowwise" / "sharded"
    assert refused.startswith(
        f"{tmp_path / 'rowwise' / 'last.pt'}: its sharded tables in {folder}/"
    )
    assert refused.endswith(
        "do not fit this run's shards (ValueError: Size mismatch between saved torch.Size([30]) "
        "and current: torch.Size([60]) for fused_tables/0/collections.1.embeddings.table_1.weight/"
        "table_1.momentum1); resume with the run's own settings (written by 2 ranks: "
        "trainer.devices=2)"
    )
    gathered = dcp_files.gather(payload, tmp_path / "checkpoints" / "last.pt")
    for key in manifest["model_keys"]:
        assert torch.equal(gathered["model_state"][key], written["model"][key]), key
    for key, value in written["fused"].items():
        assert torch.equal(gathered["optimizer_state"]["fused_tables"][key], value), key
    _check_lockstep_evaluation(out["evaluation"])
    _check_drawn_in_shards(out["in_shards"])
    best = out["best"]  # the best weights' tables by reference to epoch 1's folder
    assert best["placeholders"] == manifest["model_keys"]  # no rank kept a copy of a table
    assert best["resumed_placeholders"] == manifest["model_keys"]  # a resume reads no table
    assert best["best"] == [best["folders"][0]] * 2 and best["folders"][0] != best["folders"][1]
    at_best, trained, restored, resumed_last, resumed_best = best["states"]
    for key in manifest["model_keys"]:
        assert not torch.equal(trained[key], at_best[key]), key
        assert torch.equal(restored[key], at_best[key]), key  # each rank's shards read back
        assert torch.equal(resumed_last[key], trained[key]), key  # the resume: epoch 2's
        assert torch.equal(resumed_best[key], at_best[key]), key  # then epoch 1's folder


def _check_lockstep_evaluation(evaluation: dict) -> None:
    """Both ranks made 3 forwards (rank 0: 2 batches of 100 rows and a padding forward of one
    row; rank 1: 3 batches, the last of 50), then 1 for the split of one batch (rank 0: a padding
    forward alone), each holding half of every table's columns, no table was gathered, and the
    metrics (AUCs, losses, mean gates) are the native model's."""
    (rank0, rank1), shapes = evaluation["ranks"], evaluation["shapes"]
    assert rank0["forwards"] == [EVAL_BATCH, EVAL_BATCH, 1, 1]
    assert rank1["forwards"] == [EVAL_BATCH, EVAL_BATCH, EVAL_ROWS - 4 * EVAL_BATCH, FEW_ROWS]
    for shards in (rank0["shards"], rank1["shards"]):
        assert shards == [[[rows, dim // 2]] for rows, dim in shapes]
    for expected, got in zip(evaluation["expected"], evaluation["got"], strict=True):
        assert any(k.startswith("gate/") for k in expected) and got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
