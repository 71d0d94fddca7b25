"""Generation speed and memory of the embedded datasets (synthetic_ccp, mmoe_synthetic).

    python scripts/bench_generate.py                         # 1M and 4M rows, both generators
    python scripts/bench_generate.py --rows 1000000 --generators synthetic_ccp --json out.json

Each (generator, rows) runs in a fresh process that writes the prepared dataset into a temp dir
(parquet splits + spec.json, as on first use) and reports rows/s and its peak RSS (VmHWM), so
peak RSS is that generation's own. Generation is chunked (ccp_generator.CHUNK_ROWS,
mmoe_synthetic.CHUNK_ROWS): peak RSS should stay nearly flat as rows grow (synthetic_ccp: the
chunk + the calibration logits; mmoe_synthetic: the chunk + 9 bytes per row for the split).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import thread_env

WORKER = r"""
import json, sys, time, tempfile
from pathlib import Path
sys.path.insert(0, {scripts!r})
from bench_common import peak_rss_mib
gen, rows, input_dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
base = peak_rss_mib()
with tempfile.TemporaryDirectory() as tmp:
    t = time.perf_counter()
    if gen == "synthetic_ccp":
        from mtlrec.data.ccp_generator import write_prepared
        write_prepared(Path(tmp), rows, 0)
    else:
        from mtlrec.data.sources.mmoe_synthetic import write_prepared
        write_prepared(Path(tmp), "mmoe_synthetic", rows, input_dim, 0.5, 0)
    seconds = time.perf_counter() - t
    size = sum(p.stat().st_size for p in Path(tmp).iterdir())
print(json.dumps({{"generator": gen, "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
                  "peak_rss_mib": peak_rss_mib(), "rss_before_mib": base, "bytes_on_disk": size}}))
"""


def run_one(generator: str, rows: int, input_dim: int) -> dict:
    code = WORKER.format(scripts=str(Path(__file__).resolve().parent))
    env = thread_env(1, OPENBLAS_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", code, generator, str(rows), str(input_dim)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(
            f"{generator} at {rows} rows failed: {out.stderr.strip().splitlines()[-1]}"
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1000000,4000000", help="comma-separated row counts")
    parser.add_argument("--generators", default="synthetic_ccp,mmoe_synthetic")
    parser.add_argument("--input-dim", type=int, default=100, help="mmoe_synthetic's d")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = []
    print(f"{'generator':<16}{'rows':>12}{'seconds':>10}{'rows/s':>12}{'peak RSS MiB':>14}")
    for gen in args.generators.split(","):
        for rows in (int(r) for r in args.rows.split(",")):
            r = run_one(gen, rows, args.input_dim)
            results.append(r)
            print(
                f"{gen:<16}{rows:>12,}{r['seconds']:>10.1f}{r['rows_per_s']:>12,.0f}"
                f"{r['peak_rss_mib']:>14,.0f}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"(total {time.time() - t0:.0f} s; {tempfile.gettempdir()} used for the datasets)")
