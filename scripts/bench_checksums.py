"""What verifying a prepared dataset's checksums (checksums.json) adds to loading it.

    python scripts/bench_checksums.py --rows 4000000 [--dir /tmp/bench_ccp] [--repeat 3]

Generates synthetic_ccp with that many rows (once), then times, best of `--repeat` (warm page
cache): hashing the split files alone; the in-memory load of train+val+test (a) with the
checksums verified as mtlrec does it (each split hashed in a thread while it decodes) and (b)
without a manifest; and opening the train split for streaming (the whole file hashed while the
label columns are scanned) with and without a manifest.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from mtlrec.data.loader import load_splits
from mtlrec.data.prepare.manifest import MANIFEST_FILE, sha256_of
from mtlrec.data.sources import synthetic_ccp
from mtlrec.data.spec import DatasetSpec
from mtlrec.data.streaming import StreamingSplit


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4_000_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/bench_checksums_ccp"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the no-manifest warning is expected here
    path = synthetic_ccp.ensure_prepared(args.dir, args.rows, seed=1)
    spec = DatasetSpec.load(path)
    tasks = spec.tasks
    files = [path / f for f in spec.splits.values()]
    mb = sum(f.stat().st_size for f in files) / 2**20
    hash_s = best(lambda: [sha256_of(f) for f in files], args.repeat)
    with_s = best(lambda: load_splits(path, spec, tasks), args.repeat)
    stream_with = best(lambda: StreamingSplit(path / "train.parquet", spec, tasks), args.repeat)
    manifest = path / MANIFEST_FILE
    aside = path.parent / f".{path.name}.{MANIFEST_FILE}"
    shutil.move(manifest, aside)
    try:
        without_s = best(lambda: load_splits(path, spec, tasks), args.repeat)
        stream_without = best(
            lambda: StreamingSplit(path / "train.parquet", spec, tasks), args.repeat
        )
    finally:
        shutil.move(aside, manifest)
    print(f"{args.rows:,} rows, {mb:.0f} MiB of split files")
    print(f"sha256 of the split files alone:   {hash_s:.3f} s ({mb / hash_s:.0f} MiB/s)")
    print(f"in-memory load, verified:          {with_s:.3f} s")
    print(f"in-memory load, no manifest:       {without_s:.3f} s")
    print(f"  verification adds {with_s - without_s:+.3f} s ({(with_s / without_s - 1):+.1%})")
    print(f"streaming open, verified:          {stream_with:.3f} s")
    print(f"streaming open, no manifest:       {stream_without:.3f} s")


if __name__ == "__main__":
    main()
