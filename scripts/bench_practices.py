"""Training samples/s of the training practices (docs/training.md) against the plain run, CPU.

    python scripts/bench_practices.py --out /tmp/practices            # 2 rounds, ~3 minutes
    python scripts/bench_practices.py --out /tmp/practices --rounds 1 --rows 100000

Every case is a real `mtlrec train` process (MMoE on the default synthetic_ccp data, batch 1024,
2 epochs, one torch thread, validation excluded from the train samples/s of its metrics.json).
Cases run interleaved round by round, and each is reported as its median samples/s and its
ratio to the plain run's median of the SAME invocation (the CPU is shared: absolute numbers
move, ratios much less):

    plain          trainer.precision=fp32, constant lr
    accumulate4    trainer.accumulate_batches=4 (4096 rows per optimizer step)
    batch4096      trainer.batch_size=4096 (the same rows per optimizer step, one forward)
    bf16           trainer.precision=bf16
    cosine-warmup  trainer.lr_schedule=cosine trainer.warmup_steps=100
    ema            trainer.ema_decay=0.999

Writes OUT/bench_practices.json and prints the markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench_common import ratio_table, thread_env

CASES = {
    "plain": [],
    "accumulate4": ["trainer.accumulate_batches=4"],
    "batch4096": ["trainer.batch_size=4096"],
    "bf16": ["trainer.precision=bf16"],
    "cosine-warmup": ["trainer.lr_schedule=cosine", "trainer.warmup_steps=100"],
    "ema": ["trainer.ema_decay=0.999"],
}
COMMON = ["model=mmoe", "trainer.epochs=2", "trainer.patience=null", "trainer.num_threads=1",
          "trainer.progress=false", "device=cpu", "seed=0"]  # fmt: skip


def train(name: str, rows: int, out: Path, round_: int) -> float:
    run_dir = out / "runs" / f"{name}-{round_}"
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, "-m", "mtlrec", "train", f"dataset.num_rows={rows}", *COMMON,
               *CASES[name], f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = thread_env(1)
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return float(json.loads((run_dir / "metrics.json").read_text())["train_samples_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    speeds: dict[str, list[float]] = {name: [] for name in CASES}
    for round_ in range(args.rounds):
        for name in CASES:
            speeds[name].append(train(name, args.rows, args.out, round_))
            print(f"round {round_ + 1} {name}: {speeds[name][-1]:,.0f} samples/s", flush=True)
    medians = {name: statistics.median(values) for name, values in speeds.items()}
    table = ratio_table(["case", "train samples/s (median)", "vs plain"], medians, "plain")
    (args.out / "bench_practices.json").write_text(json.dumps(speeds, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
