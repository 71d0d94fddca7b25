"""DDP with a large embedding table, 2 gloo ranks on CPU: step time and bytes all-reduced per step,
dense Adam (the whole table's gradient is all-reduced) vs the sparse path (only the rows used).

    python scripts/bench_ddp_sparse.py                       # 1M and 5M rows
    python scripts/bench_ddp_sparse.py --rows 1000000 --steps 20

The model is the embedding part of a CTR model and a linear head: batch 1024 rows per rank, 11
lookups per row (10 into 20k "small field" rows, 1 uniform over the whole table: an item id), dim
16. Each rank runs `--steps` steps under DistributedDataParallel, the optimizer from
mtlrec.training.optimizers.build_optimizer (`adam` or `sparse_adam`), and times each step
(forward, backward with DDP's all-reduce, optimizer step) by the wall clock; the median step is
reported. Bytes all-reduced per step, per rank: dense, the gradient's size (rows x dim x 4 + the
head); sparse, what gloo's sparse all-reduce hands every rank (every rank's (row id, gradient row)
pairs: the averaged gradient's entries x (8 + dim x 4) bytes, as counted after the step). Memory
per rank: the table and its optimizer state (every rank holds a full replica).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from mtlrec.training import distributed
from mtlrec.training.optimizers import build_optimizer, table_bytes

DIM, BATCH, SMALL, SMALL_LOOKUPS = 16, 1024, 20_000, 10


class Net(nn.Module):
    def __init__(self, rows: int):
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(rows, DIM)
        self.head = nn.Linear((SMALL_LOOKUPS + 1) * DIM, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.table(ids).flatten(1)).squeeze(1)

    def rows_used(self, ids: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor]]:
        return [(self.table, ids.reshape(-1))]


def step_batches(rows: int, steps: int, rank: int):
    g = torch.Generator().manual_seed(100 + rank)
    for _ in range(steps):
        small = torch.randint(0, SMALL, (BATCH, SMALL_LOOKUPS), generator=g)
        item = torch.randint(0, rows, (BATCH, 1), generator=g)
        yield torch.cat([small, item], 1), torch.randint(0, 2, (BATCH,), generator=g).float()


def measure(rows: int, choice: str, steps: int, rank: int) -> dict:
    model = Net(rows)
    optimizer = build_optimizer(model, "adam", 1e-3, 0.0, choice)  # type: ignore[arg-type]
    ddp = nn.parallel.DistributedDataParallel(model)
    times, reduced = [], []
    for ids, labels in step_batches(rows, steps, rank):
        started = time.perf_counter()
        optimizer.catch_up(model, ids)
        loss = F.binary_cross_entropy_with_logits(ddp(ids), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
        grad = model.table.weight.grad
        assert grad is not None
        table = grad._nnz() * (8 + DIM * 4) if grad.is_sparse else grad.numel() * 4
        reduced.append(table + sum(p.numel() * 4 for p in model.head.parameters()))
    weights, state = table_bytes(model, choice)  # type: ignore[arg-type]
    return {
        "rows": rows,
        "optimizer": choice,
        "median_step_ms": 1e3 * statistics.median(times[2:]),  # the first steps warm up
        "allreduced_mib_per_step": statistics.median(reduced) / 2**20,
        "table_plus_state_mib_per_rank": (weights + state) / 2**20,
    }


def target(cfg, out: str) -> float:
    distributed.setup(torch.device("cpu"), cfg, True)
    torch.set_num_threads(1)
    rank = distributed.current().rank
    results = [measure(r, c, cfg.steps, rank) for r in cfg.sizes for c in cfg.optimizers]
    if rank == 0:
        Path(out, "results.json").write_text(json.dumps(results))
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,5000000")
    parser.add_argument("--optimizers", default="adam,sparse_adam")
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    cfg = OmegaConf.create(
        {
            "trainer": {"devices": 2},
            "sizes": [int(r) for r in args.rows.split(",")],
            "optimizers": args.optimizers.split(","),
            "steps": args.steps,
        }
    )
    with tempfile.TemporaryDirectory() as out:
        distributed.spawn(target, cfg, out)
        results = json.loads(Path(out, "results.json").read_text())
    print("| table rows | optimizer | median step ms | all-reduced MiB/step/rank | "
          "table + state MiB/rank |\n| ---: | --- | ---: | ---: | ---: |")  # fmt: skip
    for r in results:
        print(f"| {r['rows']:,} | {r['optimizer']} | {r['median_step_ms']:,.1f} | "
              f"{r['allreduced_mib_per_step']:,.2f} | {r['table_plus_state_mib_per_rank']:,.0f} |")  # fmt: skip
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
