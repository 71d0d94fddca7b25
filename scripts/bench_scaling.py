"""Seconds per epoch and peak memory of `mtlrec train` as the synthetic_ccp data grows.

    python scripts/bench_scaling.py                      # 1M, 3M, 10M rows, ESMM, 1 epoch, 1 thread
    python scripts/bench_scaling.py --rows 1000000,3000000 --epochs 2

For each size: the dataset is generated first in its own process (generation holds float64
intermediates; its peak RSS is reported apart), then `mtlrec train` runs in a fresh process
through its real code path (experiment.run: load, train, validate, test, checkpoint). Reported:
train seconds per epoch, train samples/s, the split tensors' size, the process's RSS after
importing torch + mtlrec (the baseline), its peak RSS, and the ratio

    (peak RSS - baseline) / tensor bytes      target: < 2.5 (issue 5)

Model: ESMM, towers [16, 8], embedding 16, batch 1024, Adam 1e-3 (the bench.py synthetic workload).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_common import peak_rss_mib, thread_env, train_epoch_cpu

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["model=esmm", "model.tower_dims=[16,8]", "model.embedding_dim=16",
             "trainer.batch_size=1024", "trainer.lr=0.001", "trainer.patience=null",
             "trainer.progress=false", "device=cpu", "seed=0"]  # fmt: skip


def generate(path: Path, rows: int) -> dict:
    from mtlrec.data.sources.synthetic_ccp import ensure_prepared

    record = path.parent / f"generate-{rows}.json"  # kept: a cached dataset is not regenerated
    if (path / "spec.json").is_file() and record.is_file():
        return json.loads(record.read_text())
    t0 = time.perf_counter()
    ensure_prepared(path, rows, 0)
    res = {"generate_s": time.perf_counter() - t0, "generate_peak_rss_mib": peak_rss_mib()}
    record.write_text(json.dumps(res))
    return res


def train(path: Path, rows: int, epochs: int, threads: int, extra: list[str]) -> dict:
    import torch
    from hydra import compose, initialize_config_module

    from mtlrec.data.spec import DatasetSpec
    from mtlrec.experiment import run

    torch.set_num_threads(threads)
    baseline = peak_rss_mib()  # torch + mtlrec imported, no data yet
    spec = DatasetSpec.load(path)
    overrides = OVERRIDES + [
        "dataset=synthetic_ccp", f"dataset.num_rows={rows}", f"dataset.path={path}",
        f"trainer.epochs={epochs}", f"trainer.num_threads={threads}"] + extra  # fmt: skip
    with initialize_config_module(config_module="mtlrec.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    run_dir = path.parent / f"run-{rows}-{os.getpid()}"
    t0 = time.perf_counter()
    # CPU seconds of each training epoch besides wall seconds: on a shared machine the wall clock
    # includes time spent waiting for a core; process CPU time (1 thread) mostly does not.
    with train_epoch_cpu() as cpu_s:
        run(cfg, run_dir)
    wall = time.perf_counter() - t0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    import csv

    with open(run_dir / "history.csv") as f:
        history = list(csv.DictReader(f))
    row_bytes = 8 * len(spec.sparse) + 4 * len(spec.dense) + 4 * len(spec.labels)
    return {
        "rows": rows,
        "train_rows": int(round(rows * 0.7)),
        "epoch_s": [float(h["train_seconds"]) for h in history],
        "epoch_cpu_s": cpu_s,
        "train_samples_per_s": metrics["train_samples_per_s"],
        "wall_s": wall,
        "tensor_mib": rows * row_bytes / 2**20,
        "baseline_rss_mib": baseline,
        "peak_rss_mib": peak_rss_mib(),
        "test_ctr_auc": metrics["metrics"]["test/ctr_auc"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default="1000000,3000000,10000000")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", default=str(ROOT / ".bench" / "scaling"))
    p.add_argument("--override", action="append", default=[], help="extra mtlrec override")
    p.add_argument("--worker", choices=["generate", "train"], help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        rows = int(args.rows)
        res = (
            generate(Path(args.path), rows)
            if args.worker == "generate"
            else train(Path(args.path), rows, args.epochs, args.threads, args.override)
        )
        Path(args.out).write_text(json.dumps(res))
        return 0

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    env = thread_env(args.threads)
    print(f"threads={args.threads} OMP_WAIT_POLICY=PASSIVE epochs={args.epochs}", flush=True)
    results = []
    for rows in [int(r) for r in args.rows.split(",")]:
        path = work / f"synthetic_ccp-n{rows}"
        out = work / f"result-{rows}.json"
        res: dict = {}
        for step in ("generate", "train"):
            cmd = [sys.executable, __file__, "--worker", step, "--rows", str(rows), "--path",
                   str(path), "--out", str(out), "--epochs", str(args.epochs),
                   "--threads", str(args.threads)]  # fmt: skip
            for o in args.override:
                cmd += ["--override", o]
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            res |= json.loads(out.read_text())
        res["rss_over_tensors"] = (res["peak_rss_mib"] - res["baseline_rss_mib"]) / res[
            "tensor_mib"
        ]
        results.append(res)
        print(json.dumps(res), flush=True)
    head = ("| rows | train rows | s / epoch | CPU s / epoch | train samples/s | CPU s / epoch per 1M train rows | "
            "tensors MiB | baseline RSS MiB | peak RSS MiB | (peak - baseline) / tensors | "
            "generation s | generation peak RSS MiB |")  # fmt: skip
    lines = [head, "|" + "---|" * 12]
    for r in results:
        epoch = sorted(r["epoch_s"])[len(r["epoch_s"]) // 2]
        cpu = sorted(r["epoch_cpu_s"])[len(r["epoch_cpu_s"]) // 2]
        lines.append(
            f"| {r['rows']:,} | {r['train_rows']:,} | {epoch:.1f} | {cpu:.1f} | {r['train_samples_per_s']:,.0f} | "
            f"{cpu / (r['train_rows'] / 1e6):.2f} | {r['tensor_mib']:,.0f} | "
            f"{r['baseline_rss_mib']:,.0f} | {r['peak_rss_mib']:,.0f} | {r['rss_over_tensors']:.2f} | "
            f"{r['generate_s']:.0f} | {r['generate_peak_rss_mib']:,.0f} |"
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
