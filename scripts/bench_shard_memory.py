"""Peak RSS of each rank of a 2-rank sharded TorchRec run as its table grows: this tree against a
baseline commit, in one invocation.

    python scripts/bench_shard_memory.py --baseline 7703ed6 --vocab 10000,4000000
    python scripts/bench_shard_memory.py --baseline main --sharding table_wise --repeats 2

Each cell is one `mtlrec train` of scripts/bench_vocab.py's MMoE on its synthetic_ccp data, whose
`item_id` ids are spread over V ids (only that table grows), with trainer.devices=2,
trainer.embedding_backend=torchrec, rowwise_adagrad, `--sharding` (column_wise: each rank holds
half of every table's columns; table_wise: a table on one rank) and the checkpoints' tables in DCP
folders (checkpoint.sharded=auto). It runs once from this tree and once from the baseline commit
(its mtlrec/ extracted with `git archive`), each with its tree on PYTHONPATH and from `--work` as
the working directory (`python -m mtlrec` puts the working directory first on sys.path: run from
inside a checkout, it would import that checkout), in rotation with `--repeats`. While a run lasts, the script reads every 0.1 s the kernel's peak resident set
(VmHWM in /proc/PID/status) of the launcher and of each rank (the launcher's spawned children, in
the order they started: rank 0, rank 1); the last reading before a process ends is its peak (a
peak within its last 0.1 s would be missed; `--trace DIR` writes every reading, to see when the
memory is taken). Reported: each rank's peak MiB, this tree's over the
baseline's, the test mean AUC of both (the same model: equal), and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_vocab import MODEL, ROOT, base_dataset, widen

POLL_SECONDS = 0.1
SYSTEM = ["trainer.embedding_backend=torchrec", "trainer.embedding_optimizer=rowwise_adagrad",
          "trainer.devices=2", "trainer.patience=null"]  # fmt: skip


def baseline_tree(rev: str, work: Path) -> Path:
    """mtlrec/ of commit `rev`, extracted under `work` (a folder to put first on PYTHONPATH)."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev],
                            check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    out = work / f"tree-{commit}"
    if not (out / "mtlrec").is_dir():
        tmp = work / f".tree-{commit}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "mtlrec"],
                                 check=True, capture_output=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        tmp.rename(out)
    return out


def _children() -> dict[int, list[int]]:
    """{parent pid: its children's pids} of every process now."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            out.setdefault(parent, []).append(int(entry))
    return out


def _descendants(root: int) -> list[int]:
    children, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _reading(pid: int) -> tuple[int, str, int, int] | None:
    """(start time in ticks, command line, VmHWM, VmRSS in KiB) of a live process; None once
    gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    sizes = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in status.splitlines())
             if k in ("VmHWM", "VmRSS")}  # fmt: skip
    if len(sizes) < 2:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19]), cmd, sizes["VmHWM"], sizes["VmRSS"]


def measured(
    command: list[str], env: dict[str, str], cwd: Path, trace: Path | None = None
) -> dict[str, float]:
    """Run `command`; the peak MiB of the launcher and of each rank (`rank 0`, `rank 1`). With
    `trace`: every reading written there (seconds since the launch, pid, VmRSS and VmHWM MiB)."""
    peaks: dict[int, tuple[int, str, int]] = {}
    lines, launched = ["seconds\tpid\trss_mib\tpeak_mib"], time.perf_counter()
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty run never blocks
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        while proc.poll() is None:
            for pid in _descendants(proc.pid):
                got = _reading(pid)
                if got is not None:
                    peaks[pid] = (got[0], got[1], max(got[2], peaks.get(pid, got[:3])[2]))
                    seconds = time.perf_counter() - launched
                    lines.append(f"{seconds:.1f}\t{pid}\t{got[3] // 1024}\t{got[2] // 1024}")
            time.sleep(POLL_SECONDS)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(command)} failed: {err.read().decode()[-2000:]}")
    if trace is not None:
        trace.write_text("\n".join(lines) + "\n")
    ranks = sorted(v for v in peaks.values() if "spawn_main" in v[1])  # by start time
    out = {f"rank {r}": kib / 1024 for r, (_, _, kib) in enumerate(ranks)}
    out["launcher"] = peaks[proc.pid][2] / 1024 if proc.pid in peaks else float("nan")
    return out


def cell(
    data: Path, run_dir: Path, tree: Path, sharding: str, epochs: int, trace: Path | None
) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    path = os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": path}
    command = [sys.executable, "-m", "mtlrec", "train", "dataset=prepared", f"dataset.path={data}",
               *MODEL, *SYSTEM, f"trainer.sharding={sharding}", f"trainer.epochs={epochs}",
               f"hydra.run.dir={run_dir}"]  # fmt: skip
    out = measured(command, env, run_dir.parent, trace)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out["test_mean_auc"] = metrics["metrics"].get("test/mean_auc")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the commit to compare with")
    parser.add_argument("--vocab", default="10000,4000000")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--sharding", default="column_wise", choices=["column_wise", "table_wise"])
    parser.add_argument("--repeats", type=int, default=1, help="rounds (the max peak is kept)")
    parser.add_argument("--trace", type=Path, help="a folder: every reading of each run, as TSV")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench_shard_memory")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.trace:
        args.trace.mkdir(parents=True, exist_ok=True)
    base = baseline_tree(args.baseline, args.work)
    data = base_dataset(args.work, args.rows)
    trees = {"baseline": base, "this tree": ROOT}
    results: dict[tuple[int, str], dict[str, float]] = {}
    started = os.getloadavg()
    for _ in range(args.repeats):
        for vocab in (int(v) for v in args.vocab.split(",")):
            wide = widen(data, args.work, vocab)
            for name, tree in trees.items():
                trace = args.trace / f"{vocab}-{name.replace(' ', '_')}.tsv" if args.trace else None
                got = cell(wide, args.work / "run", tree, args.sharding, args.epochs, trace)
                kept = results.setdefault((vocab, name), got)
                kept.update({k: max(v, kept[k]) for k, v in got.items() if k != "test_mean_auc"})
    loads = f"load average {started} at the start, {os.getloadavg()} at the end"
    print(f"{loads}; {args.sharding}, {args.epochs} epochs, {args.rows:,} rows")
    print("| ids | process | baseline MiB | this tree MiB | ratio |")
    print("|---|---|---|---|---|")
    for vocab in (int(v) for v in args.vocab.split(",")):
        before, after = results[(vocab, "baseline")], results[(vocab, "this tree")]
        for who in ("rank 0", "rank 1", "launcher"):
            ratio = after[who] / before[who]
            print(f"| {vocab:,} | {who} | {before[who]:,.0f} | {after[who]:,.0f} | {ratio:.2f}x |")
        print(
            f"| {vocab:,} | test mean AUC | {before['test_mean_auc']} | {after['test_mean_auc']} | |"
        )


if __name__ == "__main__":
    main()
