"""Peak RSS of each rank's start-up with TorchRec sharded tables: whole tables drawn then copied
into the shards (as before) against each rank drawing only its shards, in one invocation.

    OMP_NUM_THREADS=1 python scripts/bench_shard_startup.py --vocab 1000000,4000000,8000000

Each cell spawns 2 gloo ranks (fresh processes, so each peak is its own) that build an embedding
layer of one `item` field of V ids x `--dim` (a seeded table, models/seeded_init.py) and a small
one, as experiment.build does: inside `seeded_init.drawn_in_shards(mode == "shards")`, converted,
then sharded by `torchrec_backend.shard_model` (`--sharding`, rowwise_adagrad). Reported per rank:
the peak resident set (VmHWM) once the shards hold their values, the ratio of the two modes, and
whether both modes' shards are equal (SHA-256 of each rank's shards: the same bits).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
MODES = ("whole", "shards")


def _peak_mib() -> float:
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmHWM")).split()[1]) / 1024


def _rank(rank: int, store: str, mode: str, vocab: int, dim: int, sharding: str, out: str) -> None:
    from mtlrec.data.spec import DatasetSpec, FeatureSpec, TaskSpec
    from mtlrec.models import seeded_init
    from mtlrec.models.features import FieldEmbedding
    from mtlrec.models.torchrec_embedding import convert_model
    from mtlrec.training.torchrec_backend import shard_model, table_states
    from mtlrec.training.torchrec_init import local_pieces

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    fields = [FeatureSpec("item", "sparse", vocab), FeatureSpec("user", "sparse", 1000)]
    spec = DatasetSpec(
        name="bench", features=tuple(fields), labels=("y",), tasks=(TaskSpec("y", "y"),)
    )
    torch.manual_seed(0)
    with seeded_init.drawn_in_shards(mode == "shards"):
        model = nn.Module()
        model.embedding = FieldEmbedding(spec, dim, init_std=0.01)
    convert_model(model)
    cfg = argparse.Namespace(
        embedding_backend="torchrec", embedding_optimizer="rowwise_adagrad", sharding=sharding,
        devices=2, lr=0.1, embedding_lr=None, shard_memory_mb=None,
    )  # fmt: skip
    shard_model(model, cfg, torch.device("cpu"), lambda name, record: None)
    peak = _peak_mib()  # before the checksum reads anything
    (sharded,) = model.sharded_tables
    digest = hashlib.sha256()
    for state in table_states(sharded.module):
        for offsets, piece in local_pieces(state):
            digest.update(f"{offsets}".encode())
            digest.update(piece.detach().contiguous().numpy().tobytes())
    Path(out).write_text(f"{peak:.1f} {digest.hexdigest()}")
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


def cell(mode: str, vocab: int, dim: int, sharding: str) -> list[tuple[float, str]]:
    """[(peak MiB, checksum)] of rank 0 and rank 1."""
    with tempfile.TemporaryDirectory() as tmp:
        outs = [f"{tmp}/rank{r}" for r in range(2)]
        mp.spawn(_run, args=(f"{tmp}/store", mode, vocab, dim, sharding, outs), nprocs=2)
        return [(float(a), b) for a, b in (Path(o).read_text().split() for o in outs)]


def _run(rank: int, store: str, mode: str, vocab: int, dim: int, sharding: str, outs) -> None:
    _rank(rank, store, mode, vocab, dim, sharding, outs[rank])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", default="1000000,4000000")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--sharding", default="column_wise", choices=["column_wise", "table_wise"])
    args = parser.parse_args()
    print(f"load average {os.getloadavg()} at the start; {args.sharding}, dim {args.dim}")
    print("| ids | rank | whole MiB | shards MiB | ratio | same shards |")
    print("|---:|---|---:|---:|---:|---|")
    for vocab in (int(v) for v in args.vocab.split(",")):
        got = {mode: cell(mode, vocab, args.dim, args.sharding) for mode in MODES}
        for rank in range(2):
            (whole, a), (shards, b) = got["whole"][rank], got["shards"][rank]
            print(f"| {vocab:,} | {rank} | {whole:,.0f} | {shards:,.0f} | "
                  f"{shards / whole:.2f}x | {a == b} |")  # fmt: skip
    print(f"load average {os.getloadavg()} at the end")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
