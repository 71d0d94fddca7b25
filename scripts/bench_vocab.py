"""Train samples/s, epoch-end cost, checkpoint bytes and peak RSS as one field's vocabulary grows.

    python scripts/bench_vocab.py                                   # 10k, 1M, 5M, 20M ids
    python scripts/bench_vocab.py --vocab 10000,5000000 --rows 200000 --epochs 1
    python scripts/bench_vocab.py --systems native_sparse --vocab 10000,20000000
    python scripts/bench_vocab.py --systems native_sparse,native_sparse_per_task --baseline main

The data is the same at every size: synthetic_ccp (generated once), whose `item_id` field (10k ids) is
spread over a vocabulary of V ids by a fixed bijection (id -> id * 7919 mod V) with
spec.json's vocab_size set to V. Only the table grows; rows, batches and labels stay identical. For
each size and each system of SYSTEMS (native_dense: `trainer.embedding_optimizer=adam`, a
dense gradient + fused Adam on the whole table; native_sparse: `sparse_adam`, a sparse gradient +
RowAdam on the rows a batch uses, tables of 100k+ rows checkpointed as checkpoints/tables/ base +
changed rows; torchrec: `trainer.embedding_backend=torchrec` with FBGEMM's fused
`rowwise_adagrad`; another backend adds its entry there), `mtlrec train` runs in
its own process (MMoE 4 experts [32], towers [16], embedding 16, batch 1024, 1 thread) and
reports its start-up (launch to the end of the build: imports, data, the model with its tables'
init, the optimizer's state), train samples/s (metrics.json), the last epoch's end (flush, validation, best weights and
checkpoints: the `epoch N end` line of train.log) against that epoch's training seconds (and
epoch 1's end and its end / train: a new run's first checkpoint, no base file since the
seeded init), the
bytes the checkpoints take on disk (a file with several names, hard links, counted once), its
peak RSS (wait4) and val/test mean AUC. With `--repeats N` the cells run N rounds in rotation
and the median run is reported (the wall clock of a shared machine varies;
scripts/bench_vocab_steps.py times the steps by CPU time).

Targets (issue 16): samples/s at 5M ids >= 0.8x samples/s at 10k ids (the sparse path), and RSS
growing only by the table and its optimizer state (2 x the table for Adam's two moments, + 8
bytes a row for RowAdam's last-step counter). Issue 27: >= 0.9x of 10k at 5M and 20M for the
best path, and an epoch's end <= 0.5x its training time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
FIELD = "item_id"
MODEL = ["model=mmoe", "model.num_experts=4", "model.expert_dims=[32]", "model.tower_dims=[16]",
         "model.embedding_dim=16", "trainer.batch_size=1024", "trainer.patience=null",
         "trainer.progress=false", "trainer.num_threads=1", "device=cpu", "seed=0"]  # fmt: skip
# system -> its overrides (a new backend adds a line)
SYSTEMS = {"native_dense": ["trainer.embedding_optimizer=adam"],
           "native_sparse": ["trainer.embedding_optimizer=sparse_adam"],
           # each evaluation task's own best weights too (ctr and cvr; ctr alone: 1 task)
           "native_sparse_per_task": ["trainer.embedding_optimizer=sparse_adam",
                                      "trainer.keep_best_per_task=true"],
           "native_sparse_per_task_ctr": ["trainer.embedding_optimizer=sparse_adam",
                                          "trainer.keep_best_per_task=true", "dataset.tasks=[ctr]"],
           "torchrec": ["trainer.embedding_backend=torchrec",
                        "trainer.embedding_optimizer=rowwise_adagrad"],
           # 2 gloo ranks, the table split column-wise; checkpoints: each rank's shards in a DCP
           # folder (auto) or every shard gathered into rank 0's last.pt (gathered)
           "torchrec_2ranks_dcp": ["trainer.embedding_backend=torchrec",
                                   "trainer.embedding_optimizer=rowwise_adagrad",
                                   "trainer.devices=2", "trainer.sharding=column_wise"],
           "torchrec_2ranks_gathered": ["trainer.embedding_backend=torchrec",
                                       "trainer.embedding_optimizer=rowwise_adagrad",
                                       "trainer.devices=2", "trainer.sharding=column_wise",
                                       "checkpoint.sharded=gathered"]}  # fmt: skip


def base_dataset(work: Path, rows: int) -> Path:
    from mtlrec.data.sources.synthetic_ccp import ensure_prepared

    path = work / f"synthetic_ccp-{rows}"
    if not (path / "spec.json").is_file():
        ensure_prepared(path, rows, 0)
    return path


def widen(base: Path, work: Path, vocab: int) -> Path:
    """A copy of `base` whose FIELD ids are spread over `vocab` ids (same rows, same labels)."""
    out = work / f"{base.name}-v{vocab}"
    if (out / "spec.json").is_file():
        return out
    tmp = work / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    spec = json.loads((base / "spec.json").read_text())
    field = next(f for f in spec["features"] if f["name"] == FIELD)
    if vocab < field["vocab_size"]:
        raise SystemExit(f"--vocab {vocab} is below {FIELD}'s own {field['vocab_size']} ids")
    field["vocab_size"] = vocab
    (tmp / "spec.json").write_text(json.dumps(spec, indent=2))
    for split_file in spec["splits"].values():
        table = pq.read_table(base / split_file)
        ids = table.column(FIELD).to_numpy().astype("int64")
        spread = (ids * 7919) % vocab  # injective: 7919 is prime and no V here is its multiple
        table = table.set_column(table.schema.get_field_index(FIELD), FIELD, [spread])
        pq.write_table(table, tmp / split_file)
    tmp.rename(out)
    return out


def train(
    data: Path,
    run_dir: Path,
    optimizer: str,
    epochs: int,
    overrides: list[str] | None = None,
    source: Path | None = None,
) -> dict:
    """One `mtlrec train` in its own process: samples/s, the last epoch's end and its training
    seconds, checkpoint bytes, peak RSS (wait4) and mean AUCs. `optimizer`: a SYSTEMS name or a
    trainer.embedding_optimizer value. `overrides` replace MODEL (the dataset too: default
    `dataset=prepared dataset.path=data`). `source`: a tree whose mtlrec/ is imported instead
    of the installed one (baseline_tree)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    settings = overrides or ["dataset=prepared", f"dataset.path={data}", *MODEL]
    system = SYSTEMS.get(optimizer, [f"trainer.embedding_optimizer={optimizer}"])
    command = [sys.executable, "-m", "mtlrec", "train", *settings, f"trainer.epochs={epochs}",
               *system, f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    if source is not None:  # found before the installed (editable) mtlrec
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    launched = time.time()
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty run never blocks
        # `-m` puts the working directory first on sys.path: the baseline's is its own tree
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=source)
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(command)} failed: {err.read().decode()[-2000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    with open(run_dir / "history.csv") as f:
        train_seconds = [float(r["train_seconds"]) for r in csv.DictReader(f)]
    log = (run_dir / "train.log").read_text()
    ends = re.findall(r"epoch \d+ end: ([0-9.]+)s", log)
    return {
        "startup_seconds": startup_seconds(log, launched),
        "samples_per_s": metrics["train_samples_per_s"],
        "train_seconds": train_seconds[-1],
        "epoch_end_seconds": float(ends[-1]) if ends else None,
        "first_end_seconds": float(ends[0]) if ends else None,  # epoch 1: the first checkpoint
        "first_train_seconds": train_seconds[0],
        "checkpoint_bytes": disk_bytes(run_dir / "checkpoints"),
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "val_mean_auc": metrics["metrics"].get("val/mean_auc"),
        "test_mean_auc": metrics["metrics"].get("test/mean_auc"),
    }


def startup_seconds(log: str, launched: float) -> float | None:
    """Seconds from the process's launch to the end of the run's build (train.log's `rows:`
    line, logged after the model, its tables' init and the optimizer's state are made, before
    the first step): imports, settings, data, model and optimizer."""
    found = re.search(r"^\[([0-9-]+ [0-9:]+,[0-9]+)\]\[mtlrec\]\[INFO\] - rows: ", log, re.M)
    if found is None:
        return None
    logged = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")  # local time, ms
    return logged.timestamp() - launched


def baseline_tree(rev: str, work: Path) -> Path:
    """mtlrec as of git revision `rev` (its conf/ as mtlrec/conf, as the wheel ships it), for
    runs of the same invocation before and after a change (`--baseline REV`)."""
    out = work / f"baseline-{rev.replace('/', '_')}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "mtlrec", "conf"],
                             check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    (out / "conf").rename(out / "mtlrec" / "conf")
    probe = "import mtlrec, mtlrec.conf; print(mtlrec.__file__, mtlrec.conf.__file__)"
    env = {**os.environ, "PYTHONPATH": str(out)}
    found = subprocess.run([sys.executable, "-c", probe], cwd=out, env=env, check=True,
                           capture_output=True, text=True).stdout.split()  # fmt: skip
    if not all(Path(f).resolve().is_relative_to(out.resolve()) for f in found):
        raise SystemExit(f"--baseline {rev}: the runs would import {found}, not {out}")
    return out


def disk_bytes(directory: Path) -> int:
    """Bytes of the files under `directory` (tables/ too), a file with several names (hard links)
    counted once."""
    files = {p.stat().st_ino: p.stat().st_size for p in directory.rglob("*") if p.is_file()}
    return sum(files.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", default="10000,1000000,5000000,20000000")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="SYSTEMS names")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench_vocab")
    parser.add_argument("--repeats", type=int, default=1, help="runs per cell (median; rotated)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--baseline", metavar="REV", help="also run every cell with mtlrec as of "
                        "this git revision (SYSTEM@REV), alternated: before/after in one run")  # fmt: skip
    args = parser.parse_args()
    base = base_dataset(args.work, args.rows)
    sizes = [int(v) for v in args.vocab.split(",")]
    sources: dict[str, Path | None] = {"": None}
    if args.baseline:
        sources[f"@{args.baseline}"] = baseline_tree(args.baseline, args.work)
    systems = [o + at for o in args.systems.split(",") for at in sources]
    cells = [(v, o) for v in sizes for o in systems]
    runs: dict[tuple[int, str], list[dict]] = {cell: [] for cell in cells}
    for _ in range(args.repeats):  # every cell once per round: load changes hit all cells alike
        for vocab, label in cells:
            data = widen(base, args.work, vocab)
            run_dir = args.work / "runs" / f"{vocab}-{label.replace('@', '-at-')}"
            optimizer, _, rev = label.partition("@")
            source = sources[f"@{rev}" if rev else ""]
            runs[vocab, label].append(train(data, run_dir, optimizer, args.epochs, source=source))
            print(json.dumps({"vocab": vocab, "optimizer": label, **runs[vocab, label][-1]}),
                  flush=True)  # fmt: skip
    results = [{"vocab": v, "optimizer": o, **median_run(runs[v, o])} for v, o in cells]
    print_table(results, sizes[0])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def median_run(runs: list[dict]) -> dict:
    """The run with the median samples/s (its RSS and AUCs with it; AUCs are the same anyway),
    with the median start-up of all the runs (a run's start-up and its training speed vary
    with the load independently)."""
    ordered = sorted(runs, key=lambda r: r["samples_per_s"])
    startups = [r["startup_seconds"] for r in runs if r.get("startup_seconds") is not None]
    startup = statistics.median(startups) if startups else None
    return {**ordered[len(ordered) // 2], "startup_seconds": startup, "repeats": len(runs)}


def print_table(results: list[dict], smallest: int) -> None:
    base = {r["optimizer"]: r for r in results if r["vocab"] == smallest}
    print(f"\n| vocab | system | train samples/s | vs {smallest:,} ids | epoch end s | "
          f"end / train | vs {smallest:,} | epoch 1 end s | epoch 1 end / train | checkpoints MiB | "
          f"peak RSS MiB | RSS vs {smallest:,} | start-up s | start-up vs {smallest:,} | "
          "test mean AUC |\n"
          "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
          "| ---: | ---: |")  # fmt: skip
    for r in results:
        ratio = r["samples_per_s"] / base[r["optimizer"]]["samples_per_s"]
        auc = "" if r["test_mean_auc"] is None else f"{r['test_mean_auc']:.4f}"
        ref = base[r["optimizer"]]
        end, first = r["epoch_end_seconds"], r.get("first_end_seconds")
        share, ref_share = (
            None if x["epoch_end_seconds"] is None else x["epoch_end_seconds"] / x["train_seconds"]
            for x in (r, ref)
        )
        shown = (
            ("", "", "")
            if share is None
            else (f"{end:.2f}", f"{share:.2f}x", f"{share / ref_share:.1f}x" if ref_share else "")
        )
        rss = r["peak_rss_mib"] / ref["peak_rss_mib"]
        first_share = (
            "" if first is None or not r.get("first_train_seconds")
            else f"{first / r['first_train_seconds']:.2f}x"
        )  # fmt: skip
        print(f"| {r['vocab']:,} | {r['optimizer']} | {r['samples_per_s']:,.0f} | {ratio:.2f}x | "
              f"{shown[0]} | {shown[1]} | {shown[2]} | {'' if first is None else f'{first:.2f}'} | "
              f"{first_share} | {r['checkpoint_bytes'] / 2**20:,.0f} | {r['peak_rss_mib']:,.0f} | {rss:.2f}x | "
              f"{startup_cells(r, ref)} | {auc} |")  # fmt: skip


def startup_cells(r: dict, ref: dict) -> str:
    """`start-up s | vs the smallest size` (empty where train.log had no `rows:` line)."""
    mine, small = r.get("startup_seconds"), ref.get("startup_seconds")
    if mine is None:
        return " | "
    return f"{mine:.2f} | " + (f"{mine / small:.2f}x" if small else "")


if __name__ == "__main__":
    main()
