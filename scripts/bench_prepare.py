"""Peak memory of `mtlrec prepare` on a generated CSV of millions of rows (a benchmark, not a test).

    python scripts/bench_prepare.py                          # 2M rows (default)
    python scripts/bench_prepare.py --rows 2000000 4000000   # memory should not grow with rows

For each size it generates a click -> purchase log (4 sparse columns, one with ~1M distinct ids,
4 dense columns, a day column, 2 labels), then measures, each in a fresh process, the peak
resident set size (ru_maxrss) of:

    import    python + the imports prepare needs (the floor)
    prepare   the streamed prepare (generic csv preparer, seeded 80/10/10 random split)
    pandas    pandas.read_csv of the whole file (what an in-memory preparer needs at least)

and prints the ratio prepare / pandas measured in the same run. Files go to --workdir
(default .bench/prepare, git-ignored) and are removed unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def generate_csv(path: Path, rows: int, seed: int = 0, chunk: int = 250_000) -> None:
    """Written in chunks so that the generator itself stays small."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            item = rng.integers(0, 100_000, size=n)
            price = np.round(np.exp(rng.normal(3, 1, size=n)), 2)
            click = (rng.random(n) < 0.05 + 0.05 * (item % 3 == 0)).astype(np.int8)
            df = pd.DataFrame(
                {
                    "user_id": rng.zipf(1.2, size=n) % 1_000_000,
                    "item_id": item,
                    "category": item % 100,
                    "city": rng.integers(0, 1000, size=n),
                    "price": price,
                    "age": rng.integers(18, 80, size=n),
                    "activity": np.round(rng.lognormal(0, 1, size=n), 3),
                    "rating": np.round(rng.normal(4, 0.5, size=n), 2),
                    "day": start // chunk,
                    "click": click,
                    "purchase": click * (rng.random(n) < 0.1).astype(np.int8),
                }
            )
            df.to_csv(f, index=False, header=start == 0)


def dataset_cfg(csv_path: Path, out: Path, block_size_mb: float) -> dict:
    return {
        "name": "bench",
        "preparer": "csv",
        "path": str(out),
        "raw_dir": str(csv_path.parent),
        "files": csv_path.name,
        "block_size_mb": block_size_mb,
        "sparse": ["user_id", "item_id", "category", "city"],
        "dense": ["price", "age", "activity", "rating"],
        "dense_transform": "standardize",
        "dense_transforms": {"price": "log1p_standardize", "activity": "log1p_standardize"},
        "min_count": 2,
        "targets": {
            "ctr": {"label": "click"},
            "cvr": {"label": "purchase", "where": "click"},
        },
        "funnel": {"click": "click", "conversion": "purchase"},
        "split": {"by": "random", "seed": 0, "fractions": {"train": 0.8, "val": 0.1, "test": 0.1}},
    }


def child(mode: str, csv_path: Path, out: Path, block_size_mb: float) -> None:
    """Runs in a fresh process; prints {"peak_rss_mb", "seconds", ...} as JSON."""
    t0 = time.perf_counter()
    extra = {}
    if mode == "import":
        import pyarrow  # noqa: F401

        import mtlrec.data.prepare  # noqa: F401
    elif mode == "prepare":
        from mtlrec.data.sources import prepare_dataset

        result = prepare_dataset(dataset_cfg(csv_path, out, block_size_mb), overwrite=True)
        extra = {
            "rows": {s: v.rows for s, v in result.summary.items()},
            "vocab": result.vocab_sizes,
        }
    elif mode == "pandas":
        import pandas as pd

        extra = {"rows": len(pd.read_csv(csv_path))}
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"mode": mode, "peak_rss_mb": peak_kb / 1024, "seconds": seconds, **extra}))


def measure(mode: str, csv_path: Path, out: Path, block_size_mb: float) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(csv_path), str(out), str(block_size_mb)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), float(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000_000])
    parser.add_argument("--block-size-mb", type=float, default=1.0)
    parser.add_argument("--workdir", type=Path, default=Path(".bench/prepare"))
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"{'rows':>10} {'csv MiB':>8} | {'peak RSS MiB: import':>21} {'prepare':>8} {'pandas':>8}"
        f" | {'prepare/pandas':>14} | {'prepare s':>9} {'pandas s':>8}"
    )
    for rows in args.rows:
        csv_path = args.workdir / f"events-{rows}.csv"
        out = args.workdir / f"prepared-{rows}"
        if not csv_path.exists():
            generate_csv(csv_path, rows)
        size = csv_path.stat().st_size / 2**20
        base = measure("import", csv_path, out, args.block_size_mb)
        prep = measure("prepare", csv_path, out, args.block_size_mb)
        pand = measure("pandas", csv_path, out, args.block_size_mb)
        assert sum(prep["rows"].values()) == rows == pand["rows"], (prep["rows"], pand["rows"])
        print(
            f"{rows:>10,} {size:>8.0f} | {base['peak_rss_mb']:>21.0f} {prep['peak_rss_mb']:>8.0f}"
            f" {pand['peak_rss_mb']:>8.0f} | {prep['peak_rss_mb'] / pand['peak_rss_mb']:>14.2f}"
            f" | {prep['seconds']:>9.1f} {pand['seconds']:>8.1f}"
        )
        print(f"{'':>10} vocab sizes: {prep['vocab']}; split rows: {prep['rows']}")
        if not args.keep:
            csv_path.unlink()
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
