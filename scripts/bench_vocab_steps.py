"""Training-step cost as one field's vocabulary grows, in CPU time (robust on a shared machine).

    python scripts/bench_vocab_steps.py                       # 10k, 1M, 5M, 20M ids
    python scripts/bench_vocab_steps.py --vocab 10000,5000000 --optimizers sparse_adam --repeats 3

scripts/bench_vocab.py times whole `mtlrec train` runs by the wall clock, which other jobs on a
shared 2-core machine distort by up to 2x. This one times only the training steps, by the
process's CPU time (time.process_time: time spent waiting for a core is not counted), on the
same data (bench_vocab's synthetic_ccp 200k rows, item_id spread over V ids) and the same
network (MMoE 4 experts [32], towers [16], embedding 16, batch 1024, 1 thread). Each cell runs
in its own process: build the model and `build_optimizer(..., embedding_optimizer)` (the moments
of RowAdam are allocated here, at start-up: that time is reported apart as `build_s`), then one
epoch of steps (the sparse path's catch-up of the batch's rows, forward, the objective's per-task means summed, backward, optimizer step) in a
fixed order. Reported: train samples per CPU-second, the ratio to the smallest vocabulary and
`build_s`. Cells rotate across `--repeats` rounds; the median is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_vocab  # noqa: E402  (a sibling script)

BATCH = 1024


def one_cell(data: Path, optimizer: str) -> dict:
    import torch

    from mtlrec.data.loader import load_splits
    from mtlrec.data.spec import DatasetSpec
    from mtlrec.models import build_model
    from mtlrec.training.objective import Objective
    from mtlrec.training.optimizers import build_optimizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = DatasetSpec.load(data)
    train = load_splits(data, spec, spec.tasks, names=("train",))["train"]
    model_cfg = {"name": "mmoe", "num_experts": 4, "expert_dims": [32], "tower_dims": [16],
                 "embedding_dim": 16}  # fmt: skip
    started = time.process_time()
    model, tasks = build_model(model_cfg, spec, spec.tasks)
    opt = build_optimizer(model, "adam", 1e-3, 0.0, optimizer)  # type: ignore[arg-type]
    build_s = time.process_time() - started
    objective = Objective(tasks, spec, None)
    order = torch.randperm(train.labels.shape[0], generator=torch.Generator().manual_seed(0))
    steps = len(order) // BATCH
    started = time.process_time()
    for i in range(steps):
        rows = order[i * BATCH : (i + 1) * BATCH]
        sparse = train.sparse[rows]
        opt.catch_up(model, sparse)  # as Trainer.step: sparse_adam's rows, current
        outputs = model(sparse, train.dense[rows])
        means = objective.losses(outputs, train.labels[rows])[0]
        opt.zero_grad(set_to_none=True)
        means.sum().backward()
        opt.step()
    seconds = time.process_time() - started
    return {"samples_per_cpu_s": steps * BATCH / seconds, "build_s": build_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", default="10000,1000000,5000000,20000000")
    parser.add_argument("--optimizers", default="adam,sparse_adam")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--work", type=Path, default=bench_vocab.ROOT / "outputs" / "bench_vocab")
    parser.add_argument("--cell", nargs=2, metavar=("DATA", "OPTIMIZER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:  # the child process of one cell
        print(json.dumps(one_cell(Path(args.cell[0]), args.cell[1])))
        return
    base = bench_vocab.base_dataset(args.work, args.rows)
    sizes = [int(v) for v in args.vocab.split(",")]
    cells = [(v, o) for v in sizes for o in args.optimizers.split(",")]
    runs: dict[tuple[int, str], list[dict]] = {cell: [] for cell in cells}
    for _ in range(args.repeats):
        for vocab, optimizer in cells:
            data = bench_vocab.widen(base, args.work, vocab)
            command = [sys.executable, __file__, "--cell", str(data), optimizer]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs[vocab, optimizer].append(json.loads(out.splitlines()[-1]))
            print(json.dumps({"vocab": vocab, "optimizer": optimizer, **runs[vocab, optimizer][-1]}),
                  flush=True)  # fmt: skip
    print(f"\n| vocab | optimizer | train samples per CPU-s (median of {args.repeats}) | "
          f"vs {sizes[0]:,} ids | build s |\n| ---: | --- | ---: | ---: | ---: |")  # fmt: skip
    for vocab, optimizer in cells:
        speed = statistics.median(r["samples_per_cpu_s"] for r in runs[vocab, optimizer])
        first = statistics.median(r["samples_per_cpu_s"] for r in runs[sizes[0], optimizer])
        build = statistics.median(r["build_s"] for r in runs[vocab, optimizer])
        print(f"| {vocab:,} | {optimizer} | {speed:,.0f} | {speed / first:.2f}x | {build:.2f} |")


if __name__ == "__main__":
    main()
