"""What a big table costs before the first step and to read its checkpoint, as the vocabulary grows.

    python scripts/bench_table_startup.py                                  # 10k, 1M, 5M, 20M ids
    python scripts/bench_table_startup.py --before /work/main --repeats 3  # against older code

The data and the network are scripts/bench_vocab.py's (synthetic_ccp 200k rows, item_id spread
over V ids, MMoE, embedding 16, `trainer.embedding_optimizer=sparse_adam`). Per size, one
`mtlrec train` of 1 epoch makes a checkpoint (a 100k+ row table: its chain starts at the seeded
init, plus epoch 1's changed rows). Then each cell, in a fresh process with `--threads` torch
threads, times by the wall clock (and the process CPU time):

  model      build_model: the seeded table drawn (mtlrec.models.seeded_init)
  optimizer  build_optimizer: RowAdam's state allocated (moments and last steps; the cell
             builds a throwaway torch.optim.Adam first, whose import of torch._dynamo is
             not the table's cost)
  load       what resume, evaluate and predict do: load_checkpoint(last.pt) (the table drawn
             from the init entry, its zeros, the delta rows), then the model and its optimizer
             built for it (inside seeded_init.loaded_next where the code has it: the table is
             not drawn a second time) and both load_state_dicts

With `--before DIR` (a checkout of older mtlrec, e.g. main) every cell also runs with DIR's code
first on sys.path, rounds interleaved, so before and after meet the same load. Reported: the
medians, the ratio to the smallest size, and after / before.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_vocab  # noqa: E402  (a sibling script)

PARTS = ("model", "optimizer", "load")


def one_cell(data: Path, checkpoint: Path, threads: int) -> dict:
    import torch

    import mtlrec
    from mtlrec.data.spec import DatasetSpec
    from mtlrec.models import build_model, seeded_init
    from mtlrec.training.checkpoint import load_checkpoint
    from mtlrec.training.optimizers import build_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = DatasetSpec.load(data)
    model_cfg = {"name": "mmoe", "num_experts": 4, "expert_dims": [32], "tower_dims": [16],
                 "embedding_dim": 16}  # fmt: skip
    # the first optimizer of a process imports torch._dynamo (~2 s): not the table's cost
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    out: dict = {"code": str(Path(mtlrec.__file__).parents[1])}
    clock = (time.perf_counter(), time.process_time())

    def lap(name: str) -> None:
        nonlocal clock
        now = (time.perf_counter(), time.process_time())
        out[name], out[f"{name}_cpu"] = now[0] - clock[0], now[1] - clock[1]
        clock = now

    model, _ = build_model(model_cfg, spec, spec.tasks)
    lap("model")
    opt = build_optimizer(model, "adam", 1e-3, 0.0, "sparse_adam")  # type: ignore[arg-type]
    lap("optimizer")
    del model, opt  # a new run's: reading a checkpoint builds its own, as the commands do
    payload = load_checkpoint(checkpoint)
    loaded_next = getattr(seeded_init, "loaded_next", contextlib.nullcontext)  # older code: none
    with loaded_next():
        model, _ = build_model(model_cfg, spec, spec.tasks)
    opt = build_optimizer(model, "adam", 1e-3, 0.0, "sparse_adam")  # type: ignore[arg-type]
    model.load_state_dict(payload["model_state"])
    opt.load_state_dict(payload["optimizer_state"])
    lap("load")
    return out


def checkpoint_of(work: Path, data: Path, vocab: int) -> Path:
    run_dir = work / "runs-startup" / str(vocab)
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        bench_vocab.train(data, run_dir, "native_sparse", 1)
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", default="10000,1000000,5000000,20000000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each cell")
    parser.add_argument("--before", type=Path, help="a checkout of older code to compare")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--work", type=Path, default=bench_vocab.ROOT / "outputs" / "bench_vocab")
    parser.add_argument("--cell", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:  # the child process of one cell
        print(json.dumps(one_cell(Path(args.cell[0]), Path(args.cell[1]), int(args.cell[2]))))
        return
    base = bench_vocab.base_dataset(args.work, args.rows)
    sizes = [int(v) for v in args.vocab.split(",")]
    codes = {
        "after": bench_vocab.ROOT,
        **({"before": args.before.resolve()} if args.before else {}),
    }
    inputs = {}
    for vocab in sizes:
        data = bench_vocab.widen(base, args.work, vocab)
        inputs[vocab] = (data, checkpoint_of(args.work, data, vocab))
    runs: dict[tuple[int, str], list[dict]] = {(v, c): [] for v in sizes for c in codes}
    for _ in range(args.repeats):
        for vocab in sizes:
            for code, root in sorted(codes.items()):  # each code in turn, same conditions
                env = {**os.environ, "PYTHONPATH": str(root), "OMP_WAIT_POLICY": "PASSIVE"}
                cell = [str(p) for p in inputs[vocab]] + [str(args.threads)]
                command = [sys.executable, __file__, "--cell", *cell]
                done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
                run = json.loads(done.stdout.splitlines()[-1])
                if Path(run["code"]) != root:
                    raise SystemExit(f"the cell ran {run['code']}'s mtlrec, not {root}'s")
                runs[vocab, code].append(run)
                print(json.dumps({"vocab": vocab, "code": code, **run}), flush=True)
    print_table(runs, sizes, list(codes), args.repeats)


def print_table(runs: dict, sizes: list[int], codes: list[str], repeats: int) -> None:
    def median(vocab: int, code: str, part: str) -> float:
        return statistics.median(r[part] for r in runs[vocab, code])

    print(f"\n| vocab | code | model s | optimizer s | load s | model + optimizer vs "
          f"{sizes[0]:,} | load vs {sizes[0]:,} | model + optimizer after / before | "
          f"load after / before |\n| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")  # fmt: skip
    for vocab in sizes:
        for code in sorted(codes):
            parts = {p: median(vocab, code, p) for p in PARTS}
            start = parts["model"] + parts["optimizer"]
            small = median(sizes[0], code, "model") + median(sizes[0], code, "optimizer")
            versus = ("", "")
            if code == "after" and "before" in codes:
                before = median(vocab, "before", "model") + median(vocab, "before", "optimizer")
                versus = (f"{start / before:.2f}x", f"{parts['load'] / median(vocab, 'before', 'load'):.2f}x")  # fmt: skip
            print(f"| {vocab:,} | {code} | {parts['model']:.2f} | {parts['optimizer']:.2f} | "
                  f"{parts['load']:.2f} | {start / small:.2f}x | "
                  f"{parts['load'] / median(sizes[0], code, 'load'):.2f}x | {versus[0]} | {versus[1]} |")  # fmt: skip
    print(f"(medians of {repeats}, wall clock; CPU seconds in the JSON lines above)")


if __name__ == "__main__":
    main()
