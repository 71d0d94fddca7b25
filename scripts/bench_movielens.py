"""`mtlrec train` on MovieLens-100K-shaped data: the history pooled by target attention vs by mean.

    python scripts/bench_movielens.py                       # shared_bottom, 1 thread, 3 repeats
    python scripts/bench_movielens.py --model mmoe --threads 2 --history-len 200

MovieLens itself is a download (docs/datasets.md); this writes raw files in its exact layout and
shape instead (u.data, u.user, u.item: 100,000 ratings of 1,682 items by 943 users, each user
with at least 20 ratings, skewed user activity and item popularity, timestamps over ~7 months),
prepares them twice with `mtlrec prepare dataset=movielens` (dataset.history_pooling=
target_attention and =mean; history_len 50: 80,000 train rows, most of them with a full history
as in the real data) and trains each with `mtlrec train`'s code path (one epoch, batch 1024,
embedding 16), alternating the two in fresh processes. Reported per pooling: train samples/s
(wall) and per process-CPU second of the epoch (steadier on a shared machine; median of
--repeats), and the ratio target attention / mean, measured in the same invocation.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_common import thread_env

POOLINGS = ("target_attention", "mean")
GENRES = 19


def write_raw(d: Path, ratings: int, users: int, items: int, seed: int) -> None:
    """Raw files in the ml-100k layout: u.data (tab), u.user and u.item (|, Latin-1)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    occupations = [f"occupation{i}" for i in range(21)]
    zips = rng.choice(np.arange(100, 1000), size=795, replace=False)
    with open(d / "u.user", "w", encoding="latin-1") as f:
        for u in range(1, users + 1):
            zip_code = f"{rng.choice(zips)}{rng.integers(10, 99)}"
            occupation = occupations[rng.integers(0, 21)]
            f.write(
                f"{u}|{rng.integers(7, 74)}|{'MF'[rng.integers(0, 2)]}|{occupation}|{zip_code}\n"
            )
    with open(d / "u.item", "w", encoding="latin-1") as f:
        for i in range(1, items + 1):
            flags = (rng.random(GENRES) < 0.1).astype(int)
            f.write(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x/{i}|{'|'.join(map(str, flags))}\n")
    # every user rates >= 20 items; the rest by a skewed activity, like the real data
    activity = rng.lognormal(0.0, 1.0, size=users)
    extra = rng.multinomial(ratings - 20 * users, activity / activity.sum())
    user_of = np.repeat(np.arange(1, users + 1), 20 + extra)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    item_of = rng.choice(np.arange(1, items + 1), size=ratings, p=popularity / popularity.sum())
    ts = 874_724_710 + rng.integers(0, 215 * 86_400, size=ratings)
    stars = rng.choice(np.arange(1, 6), size=ratings, p=[0.06, 0.11, 0.27, 0.34, 0.22])
    order = rng.permutation(ratings)
    with open(d / "u.data", "w") as f:
        for k in order:
            f.write(f"{user_of[k]}\t{item_of[k]}\t{stars[k]}\t{ts[k]}\n")


def prepare(raw: Path, out: Path, pooling: str, history_len: int) -> None:
    cmd = [sys.executable, "-m", "mtlrec", "prepare", "dataset=movielens",
           f"dataset.raw_dir={raw}", f"dataset.path={out}", f"dataset.history_len={history_len}",
           f"dataset.history_pooling={pooling}"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)


def worker(path: Path, run_dir: Path, model: str, threads: int) -> None:
    """One training run in this process; prints its figures as one JSON line."""
    import torch
    from bench_common import train_epoch_cpu
    from hydra import compose, initialize_config_module

    from mtlrec.experiment import run

    torch.set_num_threads(threads)
    overrides = [f"model={model}", "model.embedding_dim=16", "dataset=prepared",
                 f"dataset.path={path}", "trainer.batch_size=1024", "trainer.epochs=1",
                 "trainer.patience=null", "trainer.progress=false", f"trainer.num_threads={threads}",
                 "device=cpu", "seed=0"]  # fmt: skip
    with initialize_config_module(config_module="mtlrec.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with train_epoch_cpu() as cpu_s:
        run(cfg, run_dir)
    samples_per_s = json.loads((run_dir / "metrics.json").read_text())["train_samples_per_s"]
    with open(run_dir / "history.csv") as f:
        wall_s = float(next(csv.DictReader(f))["train_seconds"])
    # training rows per process-CPU second of the epoch (rows = samples/s x wall seconds)
    print(json.dumps({"samples_per_s": samples_per_s, "cpu": samples_per_s * wall_s / cpu_s[0]}))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="shared_bottom")
    p.add_argument("--history-len", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", nargs=2, metavar=("PREPARED", "RUN_DIR"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]), args.model, args.threads)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_raw(root / "raw", ratings=100_000, users=943, items=1682, seed=0)
        for pooling in POOLINGS:
            prepare(root / "raw", root / pooling, pooling, args.history_len)
        results: dict[str, list[dict]] = {pooling: [] for pooling in POOLINGS}
        for rep in range(args.repeats):  # alternated: a change of load hits both alike
            for pooling in POOLINGS:
                cmd = [sys.executable, __file__, "--model", args.model,
                       "--threads", str(args.threads), "--worker", str(root / pooling),
                       str(root / f"run-{pooling}-{rep}")]  # fmt: skip
                out = subprocess.run(
                    cmd, capture_output=True, text=True, env=thread_env(args.threads)
                )
                if out.returncode != 0:
                    sys.exit(f"a training run failed ({' '.join(cmd)}):\n{out.stderr}")
                results[pooling].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.model}, history {args.history_len}, {args.threads} thread(s), "
          f"median of {args.repeats}")  # fmt: skip
    print("| history pooling | train samples/s | train samples/CPU-s |")
    print("| --- | ---: | ---: |")
    med = {
        pooling: {key: statistics.median(r[key] for r in rs) for key in ("samples_per_s", "cpu")}
        for pooling, rs in results.items()
    }
    for pooling, m in med.items():
        print(f"| {pooling} | {m['samples_per_s']:,.0f} | {m['cpu']:,.0f} |")
    wall = med["target_attention"]["samples_per_s"] / med["mean"]["samples_per_s"]
    cpu = med["target_attention"]["cpu"] / med["mean"]["cpu"]
    print(f"| ratio | {wall:.2f}x | {cpu:.2f}x |")


if __name__ == "__main__":
    main()
