"""Start-up overhead of a tiny `mtlrec train` run against the cost of importing its libraries.

    python scripts/bench_startup.py                  # 5 rounds, synthetic_ccp 4,000 rows
    python scripts/bench_startup.py --rounds 3 --rows 4000 --work-dir /tmp/startup

Each round runs three fresh processes, interleaved (round 1 of each, then round 2, ...):
  imports   `python -c "import torch, hydra, pyarrow"`: its process CPU time (user + system)
  floor     the same + one torch.optim.Adam (whose constructor imports torch._dynamo): what any
            PyTorch training process spends before its first step
  tiny run  `mtlrec train dataset=synthetic_ccp dataset.num_rows=N model=esmm trainer.epochs=1`
            (1 thread, no progress bar) in a worker that wraps Trainer.train_epoch: the process's
            CPU time, the CPU time of its training epochs, and the CPU time before the first epoch
and reports the medians of

    overhead = tiny run's process CPU - its training-epoch CPU     target: <= imports + 2 s

(issue 25). CPU time, not wall time: on a shared machine the wall clock also counts the time spent
waiting for a core. The dataset is generated once beforehand and not counted. Exit status 1 when
the median overhead misses the target.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench_common import ROOT, thread_env, train_epoch_cpu

IMPORTS = "import torch, hydra, pyarrow"
# The same + one optimizer: torch.optim.Optimizer.__init__ imports torch._dynamo (about 2 s of
# CPU), so every PyTorch training process pays this much before its first step.
FLOOR = IMPORTS + "; torch.optim.Adam([torch.zeros(1, requires_grad=True)])"
SLACK_S = 2.0


def tiny_run(rows: int, run_dir: Path) -> list[str]:
    return ["train", "dataset=synthetic_ccp", f"dataset.num_rows={rows}", "model=esmm",
            "trainer.epochs=1", "trainer.num_threads=1", "trainer.progress=false", "device=cpu",
            f"hydra.run.dir={run_dir}"]  # fmt: skip


def worker(out: Path, args: list[str]) -> int:
    """Run `mtlrec ARGS` in this process, timing its training epochs; write them to `out`."""
    import time

    from mtlrec.cli import main

    with train_epoch_cpu() as epochs:
        try:
            main(args)
        except SystemExit as e:  # mtlrec.cli.main always ends with sys.exit
            code = e.code
    out.write_text(
        json.dumps({
            "exit": code,
            "train_cpu_s": sum(epochs),
            "before_first_epoch_cpu_s": epochs.first_start,
            "in_process_cpu_s": time.process_time(),
        })
    )  # fmt: skip
    return code


def child_cpu(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    """Process CPU seconds (user + system) of one child process, from the kernel's accounting."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ...: exit {proc.returncode}: {proc.stderr[-800:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    work = Path(args.work_dir).resolve()
    runs = work / "runs"  # this script's own run dirs, from the last invocation: start afresh
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    env = thread_env(1, MTLREC_DATA_DIR=str(work / "data"), PYTHONWARNINGS="ignore")
    me = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    # warm-up: generates the dataset (and fills the OS file cache) outside the measured rounds
    subprocess.run([sys.executable, "-m", "mtlrec", *tiny_run(args.rows, runs / "warm-up")],
                   env=env, cwd=work, check=True, capture_output=True)  # fmt: skip
    got: dict[str, list[float]] = {"imports": [], "floor": [], "run": [], "train": [],
                                   "before_first": []}  # fmt: skip
    for r in range(args.rounds):
        got["imports"].append(child_cpu([sys.executable, "-c", IMPORTS], env, work))
        got["floor"].append(child_cpu([sys.executable, "-c", FLOOR], env, work))
        out = runs / f"round-{r}.json"
        cmd = me + [str(out), *tiny_run(args.rows, runs / f"run-{r}")]
        got["run"].append(child_cpu(cmd, env, work))
        res = json.loads(out.read_text())
        got["train"].append(res["train_cpu_s"])
        got["before_first"].append(res["before_first_epoch_cpu_s"])
        overhead = got["run"][-1] - got["train"][-1]
        print(f"round {r + 1}: imports {got['imports'][-1]:.2f} s, run {got['run'][-1]:.2f} s, "
              f"training epochs {got['train'][-1]:.2f} s, overhead {overhead:.2f} s", flush=True)  # fmt: skip
    return got


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rows", type=int, default=4000, help="synthetic_ccp rows of the tiny run")
    p.add_argument("--work-dir", default=str(ROOT / ".bench" / "startup"))
    p.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(Path(args.worker[0]), args.worker[1:])
    got = measure(args)
    med = {k: statistics.median(v) for k, v in got.items()}
    overhead = statistics.median(r - t for r, t in zip(got["run"], got["train"], strict=True))
    target = med["imports"] + SLACK_S
    print(f"\nprocess CPU seconds, medians of {args.rounds} rounds (1 thread):")
    print("| measured | CPU s |\n| --- | ---: |")
    print(f"| `{IMPORTS}` (fresh process) | {med['imports']:.2f} |")
    print(f"| the same + one `torch.optim.Adam` (imports torch._dynamo) | {med['floor']:.2f} |")
    print(f"| tiny run, whole process | {med['run']:.2f} |")
    print(f"| tiny run, training epochs | {med['train']:.2f} |")
    print(f"| tiny run, before the first epoch | {med['before_first']:.2f} |")
    print(f"| overhead (whole process - training epochs) | {overhead:.2f} |")
    print(f"| target: imports + {SLACK_S:g} s | {target:.2f} |")
    print(f"overhead / imports: {overhead / med['imports']:.2f}x; "
          f"{'meets' if overhead <= target else 'MISSES'} the target")  # fmt: skip
    return 0 if overhead <= target else 1


if __name__ == "__main__":
    sys.exit(main())
