"""The GPU run, prepared: one script, under 8 minutes on one current GPU, one JSON + one table.

    python scripts/bench_gpu.py --out /tmp/gpu                # 10M synthetic_ccp rows
    python scripts/bench_gpu.py --out /tmp/gpu --rows 1000000 # a quicker pass

Every measurement is a real `mtlrec train` process (its own run dir; train samples/s from its
metrics.json; 1 epoch; validation and test included but not timed):
  1. ESMM and MMoE at batch 1024 / 8192 / 65536, the whole data on the device
  2. the pinned-host path (data kept in pinned host memory, batches copied per step), forced with
     trainer.data_on_device=false, batch 8192
  3. bf16 autocast (trainer.precision=bf16) and fp16 autocast + GradScaler (trainer.precision=fp16),
     batch 8192; gradient accumulation (trainer.accumulate_batches=4) at batch 8192
  4. a 10M-id field (item_id spread over 10M ids, scripts/bench_vocab.py's bijection): dense Adam
     vs the sparse path (trainer.embedding_optimizer=sparse_adam), batch 8192
  5. trainer.devices=N (DDP, nccl) at batch 8192 per rank, when N > 1 GPUs are visible
  6. the TorchRec backend (trainer.embedding_backend=torchrec, needs scripts/install_torchrec.sh
     cuda) on the 10M-id field: FBGEMM fused rowwise_adagrad and rowwise_adam in one process; with
     N > 1 GPUs, each sharding over N ranks (nccl): row_wise (GPU only), table_wise, column_wise
     and data_parallel (tested on the CPU with gloo; on CUDA never run yet)
Writes OUT/bench_gpu.json and OUT/bench_gpu.md (the table for docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vocab import base_dataset, widen  # noqa: E402

MODELS = {
    "esmm": ["model=esmm", "model.tower_dims=[64,32]"],
    "mmoe": [
        "model=mmoe",
        "model.num_experts=8",
        "model.expert_dims=[64]",
        "model.tower_dims=[32]",
    ],
}
COMMON = ["trainer.epochs=1", "trainer.patience=null", "trainer.progress=false", "device=cuda",
          "seed=0", "model.embedding_dim=16"]  # fmt: skip


def run(name: str, data: Path, overrides: list[str], out: Path, budget_end: float) -> dict:
    if time.monotonic() > budget_end:
        return {"name": name, "skipped": "time budget spent"}
    run_dir = out / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, "-m", "mtlrec", "train", "dataset=prepared", f"dataset.path={data}",
               *COMMON, *overrides, f"hydra.run.dir={run_dir}"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"name": name, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    result = {
        "name": name,
        "overrides": overrides,
        "train_samples_per_s": metrics["train_samples_per_s"],
        "eval_samples_per_s": metrics.get("eval_samples_per_s"),
        "test_mean_auc": metrics["metrics"].get("test/mean_auc"),
        "wall_s": wall,
    }
    print(json.dumps(result), flush=True)
    return result


def plan(n_gpus: int) -> list[tuple[str, list[str], bool]]:
    """(name, overrides, uses the 10M-id dataset)"""
    cases = [
        (f"{m}-b{b}", [*MODELS[m], f"trainer.batch_size={b}"], False)
        for m in MODELS
        for b in (1024, 8192, 65536)
    ]
    b8k = "trainer.batch_size=8192"
    cases += [
        ("mmoe-b8192-pinned", [*MODELS["mmoe"], b8k, "trainer.data_on_device=false"], False),
        ("mmoe-b8192-bf16", [*MODELS["mmoe"], b8k, "trainer.precision=bf16"], False),
        ("mmoe-b8192-fp16", [*MODELS["mmoe"], b8k, "trainer.precision=fp16"], False),
        ("mmoe-b8192-accumulate4", [*MODELS["mmoe"], b8k, "trainer.accumulate_batches=4"], False),
        ("mmoe-b8192-10M-ids-adam", [*MODELS["mmoe"], b8k, "trainer.embedding_optimizer=adam"], True),
        ("mmoe-b8192-10M-ids-sparse", [*MODELS["mmoe"], b8k, "trainer.embedding_optimizer=sparse_adam"], True),
    ]  # fmt: skip
    if n_gpus > 1:
        cases.append(
            (f"mmoe-b8192-ddp{n_gpus}", [*MODELS["mmoe"], b8k, f"trainer.devices={n_gpus}"], False)
        )
    return cases + torchrec_cases(n_gpus)


def torchrec_cases(n_gpus: int) -> list[tuple[str, list[str], bool]]:
    """The TorchRec backend on the 10M-id field (skipped, with a note, without TorchRec)."""
    try:
        import torchrec  # noqa: F401
    except Exception as e:  # not installed, or the CPU FBGEMM build on a GPU machine
        print(f"torchrec cases skipped: {type(e).__name__}: {e}", file=sys.stderr)
        return []
    base = [*MODELS["mmoe"], "trainer.batch_size=8192", "trainer.embedding_backend=torchrec"]
    cases = [
        ("mmoe-b8192-10M-ids-torchrec-rowwise_adagrad", [*base, "trainer.embedding_optimizer=rowwise_adagrad"], True),
        ("mmoe-b8192-10M-ids-torchrec-rowwise_adam", [*base, "trainer.embedding_optimizer=rowwise_adam"], True),
    ]  # fmt: skip
    if n_gpus > 1:
        for sharding in ("row_wise", "table_wise", "column_wise", "data_parallel"):
            cases.append(
                (
                    f"mmoe-b8192-10M-ids-torchrec-{sharding}{n_gpus}",
                    [*base, f"trainer.devices={n_gpus}", f"trainer.sharding={sharding}"],
                    True,
                )
            )
    return cases


def markdown(results: list[dict], rows: int, device: str) -> str:
    lines = [f"GPU run on {device}, synthetic_ccp {rows:,} rows (70% train), 1 epoch:", "",
             "| case | train samples/s | eval samples/s | test mean AUC | wall s |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in results:
        if "train_samples_per_s" not in r:
            lines.append(f"| {r['name']} | {r.get('error') or r.get('skipped')} | | | |")
            continue
        ev = r["eval_samples_per_s"]
        lines.append(
            f"| {r['name']} | {r['train_samples_per_s']:,.0f} | {'' if ev is None else f'{ev:,.0f}'} | "
            f"{r['test_mean_auc']:.4f} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--budget-s", type=float, default=450, help="skip cases after this")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible: bench_gpu.py measures the GPU path only")
    end = time.monotonic() + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MTLREC_DATA_DIR", str(args.out / "data"))
    t0 = time.perf_counter()
    base = base_dataset(args.out / "data", args.rows)
    print(f"generated {args.rows:,} rows in {time.perf_counter() - t0:.0f} s", flush=True)
    wide = None
    results = []
    for name, overrides, uses_wide in plan(torch.cuda.device_count()):
        if uses_wide and wide is None:
            wide = widen(base, args.out / "data", 10_000_000)
        results.append(run(name, wide if uses_wide else base, overrides, args.out, end))
    device = torch.cuda.get_device_name(0)
    (args.out / "bench_gpu.json").write_text(
        json.dumps({"device": device, "rows": args.rows, "results": results}, indent=2)
    )
    (args.out / "bench_gpu.md").write_text(markdown(results, args.rows, device))
    print(markdown(results, args.rows, device))


if __name__ == "__main__":
    main()
