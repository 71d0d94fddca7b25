"""mtlrec against a bare PyTorch loop and the peers, same architecture, same data, same run.

    python scripts/bench.py                       # census (MMoE) and synthetic_ccp 1M rows (ESMM)
    python scripts/bench.py --workload census --repeats 5 --markdown /tmp/census.md
    python scripts/bench.py --systems mtlrec,bare --workload synthetic_ccp --rows 200000

Systems (each repetition of each system runs in its own fresh process, so peak RSS is its own):
  mtlrec         the real code path: a Hydra-composed `mtlrec train` config run by
                 mtlrec.experiment.run (per-epoch validation, checkpoints, run dir and all)
  bare           a plain PyTorch loop (bench_workers.py) on in-memory tensors: no framework at all,
                 the reference for "no framework overhead" (experts fused in one matmul)
  deepctr-torch  DeepCTR-Torch 0.3.0 (MMOE / ESMM), in its own venv
  torch-rechub   torch-rechub 0.9.0 (MMOE / ESMM + MTLTrainer), in its own venv

The peers are installed on first use into .bench/venvs/<peer> (torch==2.13.0 first, then the
pinned peer); a peer that cannot be installed is skipped with one line saying why.

Measured per system (medians over `--repeats` repetitions, systems interleaved: rep 1 of every
system, then rep 2, ... so that load from other jobs on the machine hits all systems alike):
  train samples/s  training rows x epochs / seconds spent in training epochs (no validation)
  eval samples/s   test rows / median seconds (of 3) to predict the whole test split (every output's
                   probabilities; mtlrec: Trainer.predict, which its test evaluation runs);
                   AUCs are computed after the timer stops, for every system alike
  per CPU s        the same rows / process CPU seconds (user + system) of that phase: on a
                   shared machine the wall clock also counts time spent waiting for a core,
                   CPU time mostly does not (1 thread), so these ratios are the steadier ones
  peak RSS         VmHWM of the system's process (data, model, framework, everything)
  test AUC         per task on the test split, at the end of training (mtlrec: at its best
                   validation epoch, as `mtlrec train` reports it)
and each throughput as a ratio to the bare loop's. Threads (torch.set_num_threads, OMP/MKL env)
and OMP_WAIT_POLICY are fixed for every process and printed.

Workloads
  census         UCI census-income (KDD) test file (census-income.test.gz in $MTLREC_CENSUS_DIR,
                 default ../shared/data/census-income-kdd next to the repository), prepared by
                 `mtlrec prepare dataset=census` (60/20/20 at random, seed 0; vocabularies from
                 train; tasks income > 50K and never married; 32 categorical + 7 numeric fields).
                 Without `mtlrec prepare`, the script's own loader makes the same split (ids over
                 the whole file). MMoE: 8 experts [16], linear gates, towers [8], embedding 4,
                 Adam 1e-3, batch 1024, 5 epochs.
  synthetic_ccp  mtlrec's embedded generator at --rows rows (default 1M; 70/15/15); ESMM with
                 towers [16, 8], embedding 16, Adam 1e-3, batch 1024 (1 epoch by default: the
                 slowest peer needs minutes per epoch). torch-rechub's ESMM takes sparse
                 features only, so for it the 3 dense features are bucketized into 16 quantile ids.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_common import ROOT, thread_env
from bench_data import census_tag
from bench_peers import PEERS, ensure_peer
from bench_workers import BATCH, LR, VARIANTS, worker_main

SYSTEMS = ("mtlrec", "bare", "deepctr-torch", "torch-rechub")
ALL_SYSTEMS = SYSTEMS + tuple(VARIANTS)
WORKLOADS = {
    "census": {
        "model": "mmoe",
        "num_experts": 8,
        "expert_dims": [16],
        "tower_dims": [8],
        "embedding_dim": 4,
        "epochs": 5,
    },
    "synthetic_ccp": {"model": "esmm", "tower_dims": [16, 8], "embedding_dim": 16, "epochs": 1},
}


# ---------------------------------------------------------------------------------------------
# --hot-path: the per-step operations mtlrec changed, timed alone (microseconds per call)
# ---------------------------------------------------------------------------------------------
def hot_path(threads: int) -> str:
    import torch

    torch.set_num_threads(threads)

    def us(fn, n=200):
        for _ in range(10):
            fn()
        times = []
        for _ in range(5):
            t0 = time.process_time()
            for _ in range(n):
                fn()
            times.append((time.process_time() - t0) / n * 1e6)
        return statistics.median(times)

    rows = ["| operation (batch 1024, 1 thread) | before | after | speed-up |", "|---|---|---|---|"]
    # shapes: census MMoE (526 ids x 4, 32 fields) and synthetic_ccp ESMM (30,809 ids x 16, 11)
    for name, vocab, dim, fields in (("census", 526, 4, 32), ("synthetic_ccp", 30809, 16, 11)):
        w = torch.nn.Parameter(torch.randn(vocab, dim) * 0.01)
        ids = torch.randint(0, vocab, (1024, fields))
        g = torch.randn(1024, fields, dim)

        def emb(w=w, ids=ids, g=g):
            w.grad = None
            torch.nn.functional.embedding(ids, w).backward(g)

        def isel(w=w, ids=ids, g=g):
            w.grad = None
            w.index_select(0, ids.view(-1)).view(ids.shape[0], ids.shape[1], -1).backward(g)

        a, b = us(emb), us(isel)
        rows.append(
            f"| {name}: embedding lookup + backward: F.embedding -> index_select | {a:,.0f} us | {b:,.0f} us | {a / b:.1f}x |"
        )
        shapes = {"census": [(vocab, dim), (135, 128), (128,), (135, 16), (16,), (2, 16, 8), (2, 1, 8), (2, 8, 1), (2, 1, 1)],
                  "synthetic_ccp": [(vocab, dim), (179, 16), (16,), (16, 8), (8,), (8, 1), (1,)] * 1}[name]  # fmt: skip
        times = []
        for kw in ({}, {"fused": True}):
            ps = [torch.nn.Parameter(torch.randn(*sh)) for sh in shapes]
            for p_ in ps:
                p_.grad = torch.randn_like(p_)
            opt = torch.optim.Adam(ps, lr=1e-3, **kw)
            times.append(us(opt.step))
        rows.append(
            f"| {name}: Adam step: default (per-tensor loop) -> fused=True | {times[0]:,.0f} us | {times[1]:,.0f} us | {times[0] / times[1]:.1f}x |"
        )
        src = torch.randint(0, vocab, (60_000, fields))
        idx = torch.randperm(60_000)[:1024]
        a, b = (
            us(lambda src=src, idx=idx: src[idx]),
            us(lambda src=src, idx=idx: src.index_select(0, idx)),
        )
        rows.append(
            f"| {name}: batch gather of the ids: split[idx] -> index_select | {a:,.0f} us | {b:,.0f} us | {a / b:.1f}x |"
        )
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------------
def run_worker(py: Path, system: str, data: Path, wl: dict, args, out: Path) -> dict:
    env = thread_env(args.threads, args.omp_wait_policy, PYTHONWARNINGS="ignore",
                     MTLREC_DATA_DIR=str(data.parent / "mtlrec-cache"))  # fmt: skip
    cmd = [str(py), str(Path(__file__).resolve()), "--worker", system, "--data", str(data),
           "--out", str(out), "--threads", str(args.threads), "--wl", json.dumps(wl)]  # fmt: skip
    for o in args.mtlrec_override:
        cmd += ["--mtlrec-override", o]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out.parent)
    if r.returncode != 0 or not out.exists():
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        return {"error": f"exit {r.returncode}: {tail}"}
    res = json.loads(out.read_text())
    res["wall_s"] = time.perf_counter() - t0
    return res


def summarize(system: str, runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"system": system, "error": runs[0]["error"] if runs else "no runs"}

    def med(key):
        return statistics.median(r[key] for r in ok)

    return {
        "system": system,
        "train": med("train_samples_per_s"),
        "eval": med("eval_samples_per_s"),
        "rss": med("peak_rss_mib"),
        "train_cpu": med("train_samples_per_cpu_s"),
        "eval_cpu": med("eval_samples_per_cpu_s"),
        "auc": {k: statistics.median(r["auc"][k] for r in ok) for k in ok[0]["auc"]},
        "n": len(ok),
        # mtlrec's own per-epoch speeds: epochs 2+ leave out warm-up (and torch.compile's compile)
        "steady": statistics.median(
            statistics.median(r["epoch_train_samples_per_s"][1:]) for r in ok
        )
        if all(len(r.get("epoch_train_samples_per_s", [])) > 1 for r in ok)
        else None,
        "train_all": [r["train_samples_per_s"] for r in ok],
    }


def table(name: str, wl: dict, rows: list[dict], meta: dict) -> str:
    bare = next((r for r in rows if r["system"] == "bare" and "error" not in r), None)
    tasks = [n for n, _, _ in meta["auc"]]
    head = [
        "system",
        "train samples/s",
        "x bare",
        "per CPU s",
        "x bare",
        "eval samples/s",
        "x bare",
    ]
    head += ["per CPU s", "x bare", "peak RSS MiB"]
    head += [f"test AUC {t}" for t in tasks] + ["reps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | skipped: {r['error'].splitlines()[-1][:150]} |")
            continue
        cells = [r["system"]]
        for key in ("train", "train_cpu", "eval", "eval_cpu"):
            cells += [f"{r[key]:,.0f}", f"{r[key] / bare[key]:.2f}" if bare else "-"]
        cells.append(f"{r['rss']:,.0f}")
        cells += [f"{r['auc'][t]:.4f}" for t in tasks] + [str(r["n"])]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"{r['system']}: {r['steady']:,.0f} train samples/s over epochs 2+"
        + (f" ({r['steady'] / bare['train']:.2f}x bare)" if bare else "")
        for r in rows
        if r.get("steady")
    ]
    return "\n".join(lines) + ("\n\n" + "; ".join(notes) + "." if notes else "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", choices=["census", "synthetic_ccp", "all"], default="all")
    p.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma list of " + ", ".join(SYSTEMS)
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="repetitions per system (median reported)"
    )
    p.add_argument(
        "--peer-repeats",
        type=int,
        default=None,
        help="repetitions of the peers (default: --repeats)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--omp-wait-policy", default="PASSIVE")
    p.add_argument("--rows", type=int, default=1_000_000, help="synthetic_ccp rows")
    p.add_argument("--epochs", type=int, default=None, help="override the workload's epochs")
    p.add_argument("--work-dir", default=str(ROOT / ".bench"))
    p.add_argument("--no-install", action="store_true", help="never create peer venvs")
    p.add_argument("--markdown", default=None, help="also write the tables to this file")
    p.add_argument("--mtlrec-override", action="append", default=[], help="extra mtlrec override")
    p.add_argument("--hot-path", action="store_true", help="only time the per-step operations")
    # worker mode (internal)
    p.add_argument("--worker", choices=ALL_SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--wl", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.system_list = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.system_list if s not in ALL_SYSTEMS]
    if unknown and not args.worker:
        p.error(f"--systems: unknown {unknown}; choose from {list(ALL_SYSTEMS)}")
    return args


def pythons_of(systems: list[str], work: Path, install: bool) -> tuple[dict, dict[str, str]]:
    """The python each system runs under, and the peers skipped (with why)."""
    pythons = {s: Path(sys.executable) for s in ("mtlrec", "bare", *VARIANTS)}
    skipped: dict[str, str] = {}
    for s in systems:
        if s in PEERS:
            py, why = ensure_peer(s, work / "venvs", install)
            if py is None:
                skipped[s] = why
                print(f"skipping {s}: {why}", flush=True)
            else:
                pythons[s] = py
    return pythons, skipped


def prepared_data(name: str, work: Path, rows: int) -> tuple[str, Path]:
    """(tag, dir) of the workload's data, prepared on first use in a child process, so that
    generation memory never counts against anyone."""
    tag = census_tag() if name == "census" else f"synthetic_ccp-{rows}"
    data = work / "data" / tag
    if not (data / "arrays.npz").exists():
        print(f"preparing {tag} in {data} ...", flush=True)
        data.mkdir(parents=True, exist_ok=True)
        code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_data; " + (
            f"bench_data.prepare_census(bench_data.Path({str(data)!r}))"
            if name == "census"
            else f"bench_data.prepare_synthetic(bench_data.Path({str(data)!r}), {rows})"
        )  # fmt: skip
        subprocess.run([sys.executable, "-c", code], check=True)
    return tag, data


def run_reps(tag: str, data: Path, wl: dict, systems: list[str], pythons: dict, args) -> dict:
    """Every system's repetitions, interleaved: rep 1 of every system, then rep 2, ..."""
    work = Path(args.work_dir)
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    for rep in range(args.repeats):
        for s in runs:
            if s in PEERS and rep >= (args.peer_repeats or args.repeats):
                continue
            out = work / "results" / tag / f"{s}-{rep}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            if out.exists():
                out.unlink()
            res = run_worker(pythons[s], s, data, wl, args, out)
            runs[s].append(res)
            brief = res.get("error", "").splitlines()[-1:] or [
                f"train {res['train_samples_per_s']:,.0f}/s  eval {res['eval_samples_per_s']:,.0f}/s  "
                f"rss {res['peak_rss_mib']:,.0f} MiB  auc {res['auc']}"
            ]
            print(f"[{tag}] rep {rep + 1} {s:14s} {brief[0]}", flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.hot_path:
        print(hot_path(args.threads))
        return 0
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    pythons, skipped = pythons_of(args.system_list, work, not args.no_install)
    header = (
        f"threads={args.threads} (torch.set_num_threads, OMP_NUM_THREADS, MKL_NUM_THREADS)  "
        f"OMP_WAIT_POLICY={args.omp_wait_policy}  cpu_count={os.cpu_count()}  "
        f"python {platform.python_version()}  {platform.machine()}"
    )
    print(header, flush=True)
    command = "python scripts/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    md = [f"Command: `{command.strip()}`", "", header, ""]
    names = ["census", "synthetic_ccp"] if args.workload == "all" else [args.workload]
    for name in names:
        wl = dict(WORKLOADS[name])
        if args.epochs:
            wl["epochs"] = args.epochs
        tag, data = prepared_data(name, work, args.rows)
        meta = json.loads((data / "meta.json").read_text())
        print(f"data: {meta.get('source', '?')}", flush=True)
        measured = [s for s in args.system_list if s not in skipped]
        runs = run_reps(tag, data, wl, measured, pythons, args)
        rows = [summarize(s, r) for s, r in runs.items()]
        rows += [{"system": s, "error": why} for s, why in skipped.items()]
        desc = (
            f"{name} ({wl['model']}, {wl['epochs']} epoch(s), batch {BATCH}, Adam {LR:g}; "
            f"{len(meta['vocabs'])} sparse + {len(meta['dense'])} dense features; "
            f"data: {meta.get('source', '?')})"
        )
        text = table(name, wl, rows, meta)
        print(f"\n{desc}\n{text}\n", flush=True)
        md += [f"**{desc}**", "", text, ""]
    if args.markdown:
        Path(args.markdown).write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
