"""AUC of the sparse embedding path against dense Adam: same data, model and seed, 3 seeds.

    python scripts/sparse_parity.py                          # synthetic_ccp 200k rows + census
    python scripts/sparse_parity.py --datasets synthetic_ccp --seeds 0,1,2 --epochs 1

For each dataset and seed, `mtlrec train` runs twice in its own process, with
`trainer.embedding_optimizer=adam` (dense gradient, fused Adam on the whole table) and
`=sparse_adam` (RowAdam: Adam on the rows a batch uses, absent rows caught up with dense Adam's
zero-gradient drift; mtlrec/training/row_adam.py), everything else equal. It prints the val and
test mean AUC of both and the difference sparse - dense per seed, then the mean and the largest
|difference|. Target (issue 16): |test difference| <= 0.002, which lets `auto` pick the sparse
path (mtlrec/training/optimizers.py).

synthetic_ccp: the bench_vocab data (200k rows; `--vocab V` spreads item_id over V ids as
bench_vocab does). census: `mtlrec prepare dataset=census` of census-income.test.gz in
$MTLREC_CENSUS_DIR (default ../shared/data/census-income-kdd next to the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_vocab  # noqa: E402  (a sibling script)

ROOT = bench_vocab.ROOT
CENSUS_DIR = Path(
    os.environ.get("MTLREC_CENSUS_DIR", ROOT.parent / "shared" / "data" / "census-income-kdd")
)
NETWORK = [o for o in bench_vocab.MODEL if not o.startswith("seed=")]


def census(work: Path) -> list[str]:
    """Overrides for the prepared census dataset (prepared once under `work`)."""
    prepared = work / "census" / "census-g1"
    if not (prepared / "spec.json").is_file():
        env = dict(os.environ, MTLREC_DATA_DIR=str(work / "census"))
        command = [sys.executable, "-m", "mtlrec", "prepare", "dataset=census",
                   f"dataset.raw_dir={CENSUS_DIR}"]  # fmt: skip
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return ["dataset=census", f"dataset.path={prepared}"]


def synthetic(work: Path, rows: int, vocab: int | None) -> list[str]:
    data = bench_vocab.base_dataset(work, rows)
    if vocab is not None:
        data = bench_vocab.widen(data, work, vocab)
    return ["dataset=prepared", f"dataset.path={data}"]


def compare(name: str, dataset: list[str], args: argparse.Namespace) -> list[dict]:
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        auc = {}
        for optimizer in ("adam", "sparse_adam"):
            run = args.work / "runs" / f"{name}-{seed}-{optimizer}"
            overrides = [*dataset, *NETWORK, f"seed={seed}"]
            auc[optimizer] = bench_vocab.train(run, run, optimizer, args.epochs, overrides)
        row = {"dataset": name, "seed": seed, "epochs": args.epochs}
        for split in ("val", "test"):
            dense, sparse = (auc[o][f"{split}_mean_auc"] for o in ("adam", "sparse_adam"))
            row |= {
                f"{split}_adam": dense,
                f"{split}_sparse": sparse,
                f"{split}_diff": sparse - dense,
            }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="synthetic_ccp,census")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--vocab", type=int, help="synthetic_ccp: spread item_id over V ids")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench_vocab")
    args = parser.parse_args()
    results = []
    for name in args.datasets.split(","):
        if name == "census":
            dataset = census(args.work)
        else:
            dataset = synthetic(args.work, args.rows, args.vocab)
            name = f"synthetic_ccp-v{args.vocab}" if args.vocab else name
        results += compare(name, dataset, args)
    print("\n| dataset | seed | test AUC adam | test AUC sparse_adam | sparse - adam |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['dataset']} | {r['seed']} | {r['test_adam']:.4f} | {r['test_sparse']:.4f} | "
              f"{r['test_diff']:+.4f} |")  # fmt: skip
    diffs = [r["test_diff"] for r in results]
    print(f"\nmean difference {statistics.mean(diffs):+.4f}, largest |difference| "
          f"{max(abs(d) for d in diffs):.4f} (target <= 0.002)")  # fmt: skip


if __name__ == "__main__":
    main()
