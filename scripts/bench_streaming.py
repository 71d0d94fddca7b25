"""streaming=enabled against in-memory training: memory stays flat as the file grows.

    python scripts/bench_streaming.py                 # train files of 1.9M and 7M rows, ESMM, 1 thread
    python scripts/bench_streaming.py --train-rows 1900000 --repeats 3

The train files are cut from one generated synthetic_ccp dataset (--source-rows) and rewritten with
row groups of 65,536 rows; val and test are kept small (50,000 rows each) so that only the train
split differs between sizes. Every run is a fresh process through mtlrec's real code path
(experiment.run); in-memory and streaming runs alternate. The streaming reader holds at most

    shuffle_buffer + batch_size + (prefetch + 2) * read_rows + row_group_rows  rows

(the "allowed prefetch" below, in rows and MiB of tensors); the smallest file is over 5x that.
Reported per run: train samples/s (streaming as a ratio to in-memory on the same file; target
>= 0.7), peak RSS, and the RSS sampled every 0.25 s while training (min-max), which is flat for
streaming and grows with the file in memory.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench_common import current_rss_mib, peak_rss_mib, thread_env, train_epoch_cpu

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["model=esmm", "model.tower_dims=[16,8]", "model.embedding_dim=16",
             "trainer.batch_size=1024", "trainer.lr=0.001", "trainer.patience=null",
             "trainer.progress=false", "trainer.epochs=1", "device=cpu", "seed=0"]  # fmt: skip
SMALL_EVAL_ROWS = 50_000
ROW_GROUP = 65_536


def make_files(work: Path, source_rows: int, sizes: list[int]) -> dict[int, Path]:
    import pyarrow.parquet as pq

    from mtlrec.data.sources.synthetic_ccp import ensure_prepared
    from mtlrec.data.spec import DatasetSpec

    scaling = ROOT / ".bench" / "scaling" / f"synthetic_ccp-n{source_rows}"
    source = scaling if scaling.joinpath("spec.json").is_file() else work / f"source-{source_rows}"
    ensure_prepared(source, source_rows, 0)
    spec = DatasetSpec.load(source)
    out = {}
    for rows in sizes:
        d = work / f"train-{rows}"
        if not (d / "spec.json").is_file():
            d.mkdir(parents=True, exist_ok=True)
            pf = pq.ParquetFile(source / spec.splits["train"])
            if pf.metadata.num_rows < rows:
                raise SystemExit(
                    f"--source-rows too small: its train split has {pf.metadata.num_rows} rows"
                )
            with pq.ParquetWriter(d / "train.parquet", pf.schema_arrow) as w:
                left = rows
                for rb in pf.iter_batches(batch_size=ROW_GROUP):
                    rb = rb.slice(0, min(left, rb.num_rows))
                    w.write_batch(rb, row_group_size=ROW_GROUP)
                    left -= rb.num_rows
                    if left == 0:
                        break
            for s in ("val", "test"):
                t = pq.read_table(source / spec.splits[s]).slice(0, SMALL_EVAL_ROWS)
                pq.write_table(t, d / f"{s}.parquet")
            spec.save(d)
        out[rows] = d
    return out


def worker(path: Path, streaming: bool, args) -> dict:
    import torch
    from hydra import compose, initialize_config_module

    from mtlrec.experiment import run

    torch.set_num_threads(args.threads)
    baseline = peak_rss_mib()
    overrides = OVERRIDES + [
        "dataset=prepared", f"dataset.path={path}", f"trainer.num_threads={args.threads}",
        f"streaming={'enabled' if streaming else 'disabled'}", f"streaming.shuffle_buffer={args.shuffle_buffer}",
        f"streaming.prefetch={args.prefetch}", f"streaming.read_rows={args.read_rows}"]  # fmt: skip
    with initialize_config_module(config_module="mtlrec.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample():
        t0 = time.perf_counter()
        while not done.wait(0.25):
            samples.append((time.perf_counter() - t0, current_rss_mib()))

    threading.Thread(target=sample, daemon=True).start()
    run_dir = path / f"run-{'stream' if streaming else 'memory'}-{os.getpid()}"
    # Process CPU seconds of the epoch (the reader thread included) besides wall seconds: on a
    # shared machine the wall clock also counts time spent waiting for a core.
    with train_epoch_cpu() as cpu_s:
        run(cfg, run_dir)
    done.set()
    m = json.loads((run_dir / "metrics.json").read_text())
    with open(run_dir / "history.csv") as f:
        wall_epoch = float(next(csv.DictReader(f))["train_seconds"])
    return {
        "train_samples_per_s": m["train_samples_per_s"],
        # training rows per process-CPU second (1 epoch: rows = samples/s x wall seconds)
        "train_cpu_samples_per_s": m["train_samples_per_s"] * wall_epoch / cpu_s[0],
        "peak_rss_mib": peak_rss_mib(),
        "baseline_rss_mib": baseline,
        "rss_samples": samples,
        "test_ctr_auc": m["metrics"]["test/ctr_auc"],
    }


def decode_rates(path: Path, read_rows: int, thread_counts: list[int]) -> dict[int, float]:
    """Rows/s of the streaming reader alone (read + decode + encode, no training), per
    streaming.decode_threads: how fast it could feed a trainer that never waits."""
    from mtlrec.data.spec import DatasetSpec
    from mtlrec.data.streaming import StreamingSplit

    spec = DatasetSpec.load(path.parent)
    rates = {}
    for threads in thread_counts:
        split = StreamingSplit(path, spec, read_rows=read_rows, decode_threads=threads)
        t0, rows = time.perf_counter(), 0
        for sparse, _, _ in split.chunks(list(range(split.num_row_groups))):
            rows += sparse.shape[0]
        rates[threads] = rows / (time.perf_counter() - t0)
        split.close()
    return rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-rows", default="1900000,7000000")
    p.add_argument("--source-rows", type=int, default=10_000_000)
    p.add_argument("--shuffle-buffer", type=int, default=100_000)
    p.add_argument("--prefetch", type=int, default=4)
    p.add_argument("--read-rows", type=int, default=32_768)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--decode-threads", default="1,2,4", help="reader threads to time alone")
    p.add_argument("--work-dir", default=str(ROOT / ".bench" / "streaming"))
    p.add_argument("--worker", choices=["memory", "stream"], help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        res = worker(Path(args.path), args.worker == "stream", args)
        Path(args.out).write_text(json.dumps(res))
        return 0

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(r) for r in args.train_rows.split(",")]
    files = make_files(work, args.source_rows, sizes)
    row_bytes = 8 * 11 + 4 * 3 + 4 * 3  # synthetic_ccp: 11 sparse int64, 3 dense, 3 labels
    held = args.shuffle_buffer + 1024 + (args.prefetch + 2) * args.read_rows + ROW_GROUP
    print(
        f"threads={args.threads} OMP_WAIT_POLICY=PASSIVE; allowed prefetch: {held:,} rows "
        f"({held * row_bytes / 2**20:.0f} MiB of tensors): shuffle_buffer={args.shuffle_buffer} "
        f"prefetch={args.prefetch} read_rows={args.read_rows}",
        flush=True,
    )
    decode = decode_rates(
        files[max(sizes)] / "train.parquet",
        args.read_rows,
        [int(t) for t in args.decode_threads.split(",")],
    )
    for threads, rate in decode.items():
        print(f"reader alone, decode_threads={threads}: {rate:,.0f} rows/s", flush=True)
    env = thread_env(args.threads)
    results: dict[tuple[int, str], list[dict]] = {}
    for rep in range(args.repeats):
        for rows in sizes:
            for mode in ("memory", "stream"):
                out = work / f"result-{rows}-{mode}.json"
                cmd = [sys.executable, __file__, "--worker", mode, "--path", str(files[rows]),
                       "--out", str(out), "--threads", str(args.threads),
                       "--shuffle-buffer", str(args.shuffle_buffer), "--prefetch", str(args.prefetch),
                       "--read-rows", str(args.read_rows)]  # fmt: skip
                subprocess.run(cmd, check=True, env=env, capture_output=True)
                res = json.loads(out.read_text())
                results.setdefault((rows, mode), []).append(res)
                train_rss = [r for t, r in res["rss_samples"]]
                print(
                    f"rep {rep + 1} {rows:>10,} rows {mode:6s} {res['train_samples_per_s']:>9,.0f} samples/s "
                    f"({res['train_cpu_samples_per_s']:,.0f} per CPU s) "
                    f"peak RSS {res['peak_rss_mib']:,.0f} MiB  RSS while running "
                    f"{min(train_rss, default=0):,.0f}-{max(train_rss, default=0):,.0f} MiB",
                    flush=True,
                )
    lines = [
        "| train rows | file rows / allowed prefetch | mode | train samples/s | x in-memory | "
        "train samples per CPU s | x in-memory | peak RSS MiB | "
        "peak - baseline MiB | RSS while running MiB (min-max) | test ctr AUC |",
        "|" + "---|" * 11,
    ]
    for rows in sizes:
        mem = statistics.median(r["train_samples_per_s"] for r in results[(rows, "memory")])
        mem_cpu = statistics.median(r["train_cpu_samples_per_s"] for r in results[(rows, "memory")])
        for mode in ("memory", "stream"):
            rs = results[(rows, mode)]
            sps = statistics.median(r["train_samples_per_s"] for r in rs)
            cps = statistics.median(r["train_cpu_samples_per_s"] for r in rs)
            peak = statistics.median(r["peak_rss_mib"] for r in rs)
            base = statistics.median(r["baseline_rss_mib"] for r in rs)
            rss = [x for r in rs for _, x in r["rss_samples"]]
            lines.append(
                f"| {rows:,} | {rows / held:.1f} | {'streaming' if mode == 'stream' else 'in memory'} | "
                f"{sps:,.0f} | {sps / mem:.2f} | {cps:,.0f} | {cps / mem_cpu:.2f} | "
                f"{peak:,.0f} | {peak - base:,.0f} | "
                f"{min(rss, default=0):,.0f}-{max(rss, default=0):,.0f} | {rs[0]['test_ctr_auc']:.4f} |"
            )
    lines.append("")
    lines.append(
        "| reader alone: streaming.decode_threads | rows/s | x training rows/s (streaming, largest file) |"
    )
    lines.append("|---|---|---|")
    train_sps = statistics.median(r["train_samples_per_s"] for r in results[(max(sizes), "stream")])
    for threads, rate in decode.items():
        lines.append(f"| {threads} | {rate:,.0f} | {rate / train_sps:.1f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
