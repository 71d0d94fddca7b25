"""Seed study: train one configuration over many seeds and report each task's test AUC spread.

    python scripts/bench_seeds.py --data-dir .bench/data                       # census MMoE, seeds 1-20
    python scripts/bench_seeds.py --data-dir .bench/data --seeds 1-8 model.tower_init=default
                                                                              # extra overrides: every run

First prepare census (docs/datasets.md): `mtlrec prepare dataset=census dataset.raw_dir=DIR
data_dir=DATA_DIR`. Every run is `experiment=census_mmoe` (8 experts [16], towers [8], embedding 4,
Adam 1e-3, batch 1024) for --epochs epochs (default 5, no early stopping), one torch thread, one
run at a time, in-process; run dirs go under --out (refused if it already holds runs). Per task it
prints min / median / std of the test AUC over the seeds and the seeds more than --gap (0.01) below
the median, and per seed the tower units that never fire on the val split ("dead", the trap's
mark: docs/results.md "Seed study"). Exit status 1 when a seed is more than --gap below a median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402

from mtlrec.data.loader import load_split  # noqa: E402
from mtlrec.experiment import run  # noqa: E402
from mtlrec.inference.loading import load_run  # noqa: E402
from mtlrec.training.checkpoint import model_from_checkpoint  # noqa: E402

TASKS = ("income", "marital")


def seed_list(text: str) -> list[int]:
    """'1-20' or '1,5,8' -> the seeds."""
    if "-" in text:
        first, last = (int(x) for x in text.split("-"))
        return list(range(first, last + 1))
    return [int(x) for x in text.split(",")]


def dead_tower_units(run_dir: Path) -> list[int]:
    """Per task: hidden units of its tower that are zero on every val row (ReLU never fires)."""
    payload, _ = load_run(run_dir, "last.pt")
    model, spec, tasks = model_from_checkpoint(payload)
    val = load_split(Path(payload["config"]["dataset"]["path"]) / spec.splits["val"], spec, tasks)
    seen: dict[str, torch.Tensor] = {}
    hook = model.towers.act.register_forward_hook(lambda m, i, out: seen.update(out=out))
    with torch.no_grad():
        model(val.sparse, val.dense)
    hook.remove()
    return (~(seen["out"] > 0).any(1)).sum(-1).tolist()  # [T, B, h] -> per task


def train_seed(seed: int, args: argparse.Namespace, extra: list[str]) -> dict[str, float]:
    overrides = [
        "experiment=census_mmoe",
        f"data_dir={args.data_dir}",
        f"seed={seed}",
        f"trainer.epochs={args.epochs}",
        "trainer.patience=null",
        "trainer.num_threads=1",
        "trainer.progress=false",
        "device=cpu",
        *extra,
    ]
    with initialize_config_module(config_module="mtlrec.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    run_dir = args.out / f"seed_{seed}"
    run(cfg, run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    result = {task: metrics[f"test/{task}_auc"] for task in TASKS}
    for task, dead in zip(TASKS, dead_tower_units(run_dir), strict=True):
        result[f"{task}_dead"] = dead
    return result


def report(results: dict[int, dict[str, float]], gap: float) -> bool:
    """Print the per-seed table and the per-task summary; True when no seed is past the gap."""
    print("seed  " + "  ".join(f"{t}_auc {t}_dead_units" for t in TASKS))
    for seed, r in results.items():
        print(f"{seed:>4}  " + "  ".join(f"{r[t]:.4f} {int(r[t + '_dead'])}" for t in TASKS))
    ok = True
    for task in TASKS:
        values = [r[task] for r in results.values()]
        median = statistics.median(values)
        low = [s for s, r in results.items() if r[task] < median - gap]
        ok = ok and not low
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(
            f"{task}: min {min(values):.4f}  median {median:.4f}  std {std:.4f}  "
            f"seeds more than {gap} below the median: {low or 'none'}"
        )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="data_dir holding census-g1")
    parser.add_argument("--seeds", default="1-20", help="'1-20' or '1,5,8'")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--gap", type=float, default=0.01)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_seeds"))
    parser.add_argument("overrides", nargs="*", help="extra `mtlrec train` overrides")
    args = parser.parse_args()
    args.data_dir = args.data_dir.expanduser().resolve()
    if args.out.exists() and any(args.out.iterdir()):
        print(f"{args.out} already holds runs; pass another --out", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    results = {}
    for seed in seed_list(args.seeds):
        results[seed] = train_seed(seed, args, args.overrides)
        print(f"seed {seed}: " + json.dumps(results[seed]), flush=True)
    return 0 if report(results, args.gap) else 1


if __name__ == "__main__":
    sys.exit(main())
