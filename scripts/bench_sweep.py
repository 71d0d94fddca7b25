"""Benchmark: the same 4-job sweep run sequentially and with 2 parallel joblib jobs.

    python scripts/bench_sweep.py                       # defaults below, ~3 minutes on 2 cores
    python scripts/bench_sweep.py --rows 100000 --repeat 3 --json .bench/sweep.json

Every variant runs `mtlrec train -m model=mmoe seed=1,2,3,4 ...` in a fresh process (real CLI,
real launcher) and is timed from start to exit; ratios are against the sequential sweep with
torch's default threads, measured in the same run of this script. Variants:

  sequential          basic launcher, one job after another, torch's default threads (= cores)
  sequential-1t       basic launcher, trainer.num_threads=1
  joblib-2-shared     launcher=joblib n_jobs=2, each job gets cores // 2 threads (mtlrec's default)
  joblib-2-oversub    launcher=joblib n_jobs=2 with trainer.num_threads=<cores>: no sharing,
                      2 x cores threads on cores cores (what happens without the share)

Data generation is done once before timing (a warm-up run). The machine should otherwise be idle.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sweep(args, extra: list[str], data_dir: Path, work: Path, name: str) -> dict:
    sweep_dir = work / name
    seeds = ",".join(str(s) for s in range(1, args.jobs + 1))
    cmd = [
        sys.executable,
        "-m",
        "mtlrec",
        "train",
        "-m",
        "model=mmoe",
        f"seed={seeds}",
        f"dataset.num_rows={args.rows}",
        f"trainer.epochs={args.epochs}",
        "trainer.patience=null",
        "device=cpu",
        "trainer.progress=false",
        f"hydra.sweep.dir={sweep_dir}",
        *extra,
    ]
    env = dict(os.environ, MTLREC_DATA_DIR=str(data_dir), OMP_WAIT_POLICY="PASSIVE")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=work)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the sweep and every process it waited for (joblib's workers included):
    # what the sweep cost, much less sensitive than wall time to other load on the machine.
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    jobs = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))]
    assert len(jobs) == args.jobs and all(j["status"] == "completed" for j in jobs)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "threads": sorted({j["num_threads"] for j in jobs}),
        "train_samples_per_s": statistics.fmean(j["train_samples_per_s"] for j in jobs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="synthetic_ccp rows")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=4, help="jobs in the sweep (seeds)")
    parser.add_argument("--repeat", type=int, default=2, help="timed rounds (variants alternate)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    variants = {
        "sequential": [],
        "sequential-1t": ["trainer.num_threads=1"],
        "joblib-2-shared": ["launcher=joblib", "hydra.launcher.n_jobs=2"],
        "joblib-2-oversub": [
            "launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"trainer.num_threads={cores}",
        ],
    }
    cache = Path(".bench") / "sweep-data"
    cache.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        work = Path(tmp)
        warm = argparse.Namespace(**{**vars(args), "jobs": 1, "epochs": 1})
        sweep(warm, ["trainer.num_threads=1"], cache.resolve(), work, "warmup")
        for r in range(args.repeat):
            for name, extra in variants.items():
                results[name].append(sweep(args, extra, cache.resolve(), work, f"{name}-{r}"))
                results[name][-1]["load_avg_1min_after"] = os.getloadavg()[0]
                print(
                    f"round {r + 1} {name}: {results[name][-1]['wall_s']:.1f} s "
                    f"(1-min load average after: {os.getloadavg()[0]:.1f})",
                    file=sys.stderr,
                )
    base = statistics.median(x["wall_s"] for x in results["sequential"])
    print(
        f"\n{args.jobs}-job MMoE sweep, synthetic_ccp {args.rows:,} rows, {args.epochs} epochs, "
        f"{cores} cores, median of {args.repeat} rounds; 1-min load average at the end "
        f"{os.getloadavg()[0]:.1f} (other processes compete for the cores when it is above 2)\n"
    )
    print(
        "| variant | threads per job | sweep wall s | vs sequential | sweep CPU s "
        "| train samples/s per job |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    summary = {}
    for name, runs in results.items():
        wall = statistics.median(x["wall_s"] for x in runs)
        speed = statistics.median(x["train_samples_per_s"] for x in runs)
        cpu = statistics.median(x["cpu_s"] for x in runs)
        threads = ",".join(str(t) for t in runs[0]["threads"])
        summary[name] = {
            "cpu_s": cpu,
            "wall_s": wall,
            "ratio": wall / base,
            "threads": threads,
            "samples_per_s": speed,
        }
        print(
            f"| {name} | {threads} | {wall:.1f} | {wall / base:.2f}x | {cpu:.1f} | {speed:,.0f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"json": str(args.json)},
                    "cores": cores,
                    "summary": summary,
                    "rounds": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
