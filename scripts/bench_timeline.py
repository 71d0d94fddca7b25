"""Prepare time of a log in time order against the global time cut (a benchmark, not a test).

    python scripts/bench_timeline.py                               # 250k, 500k, 1M events
    python scripts/bench_timeline.py --rows 100000 --repeats 1

For each size it writes a generated event log (user_id with a long tail of users, movie_id of 20k
movies, ts, two dense columns, click), then prepares it in this process, one thread, with:

    column        split.by=column on ts (the global time cut, 80/10/10): the baseline
    user_time     split.by=user_time (each user's last event test, the one before val)
    user_time+seq the same, plus a history built from the log (from: user/item/ts, max_len 50)

and prints each one's wall time and its ratio to the baseline measured in the same run (best of
--repeats), so the extra cost of the log pass, the sort and the history cells shows, not the
machine's load. Files go to --workdir (default .bench/timeline, git-ignored), removed unless --keep.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd


def write_log(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    pd.DataFrame(
        {
            "user_id": rng.zipf(1.3, rows) % max(1000, rows // 20),
            "movie_id": rng.integers(0, 20_000, rows),
            "ts": rng.integers(1_700_000_000, 1_700_000_000 + 86_400 * 30, rows),
            "price": np.round(rng.lognormal(2, 1, rows), 2),
            "age": rng.integers(18, 80, rows),
            "click": (rng.random(rows) < 0.1).astype(np.int8),
        }
    ).to_csv(path, index=False)


def config(csv: Path, out: Path, variant: str) -> dict:
    cfg: dict = {
        "name": "bench_timeline",
        "preparer": "csv",
        "path": str(out),
        "raw_dir": str(csv.parent),
        "files": csv.name,
        "sparse": ["user_id", "movie_id"],
        "dense": ["price", "age"],
        "targets": {"ctr": {"label": "click"}},
    }
    if variant == "column":
        cfg["split"] = {"by": "column", "column": "ts"}
    else:
        cfg["split"] = {"by": "user_time", "user": "user_id", "time": "ts", "test": 1, "val": 1}
    if variant == "user_time+seq":
        log = {"user": "user_id", "item": "movie_id", "time": "ts", "max_len": 50}
        cfg["sequences"] = {"history": {"from": log}}
    return cfg


def prepare_seconds(csv: Path, out: Path, variant: str) -> float:
    from mtlrec.data.sources import prepare_dataset

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    prepare_dataset(config(csv, out, variant))
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[250_000, 500_000, 1_000_000])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path(".bench/timeline"))
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    args.workdir.mkdir(parents=True, exist_ok=True)
    variants = ("column", "user_time", "user_time+seq")
    print("| events | " + " | ".join(variants) + " | user_time / column | +seq / column |")
    print("| --- | " + " | ".join("---" for _ in variants) + " | --- | --- |")
    try:
        for rows in args.rows:
            csv = args.workdir / f"log-{rows}.csv"
            write_log(csv, rows)
            best = {v: float("inf") for v in variants}
            for _ in range(args.repeats):  # interleaved: the load hits every variant alike
                for v in variants:
                    best[v] = min(best[v], prepare_seconds(csv, args.workdir / "out", v))
            cells = " | ".join(f"{best[v]:.2f} s" for v in variants)
            r1, r2 = best["user_time"] / best["column"], best["user_time+seq"] / best["column"]
            print(f"| {rows:,} | {cells} | {r1:.2f} | {r2:.2f} |", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
