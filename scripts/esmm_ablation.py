"""The ESMM paper's ablation table (BASE, DIVISION, ESMM-NS, ESMM), ESCM² and ESM² on synthetic_ccp.

Ma et al. (SIGIR 2018), Table 2 shape: CVR AUC on clicked impressions (`cvr_auc`) and over the
entire space against the counterfactual label (`cvr_auc_entire`, which synthetic_ccp stores), for
BASE (cvr_base), DIVISION, ESMM-NS (esmm, share_embedding=false) and ESMM; then ESCM² (Wang et al.,
SIGIR 2022) with the IPS and the DR regularizer, then ESM² (Wen et al., SIGIR 2020) on the same data
with the generator's D-action stage added (`dataset=synthetic_ccp_action`: the stage draws from its own
random stream, so every other column, and the split, equal the data the other models see). Every run is a plain `mtlrec train`; the best
epoch is chosen on each model's own validation loss (val/loss: the weighted sum of the losses it
trains on), never on a counterfactual label. (Choosing on val/cvr_auc was tried and rejected: with
~700 clicked validation rows it is noisy and often picked epoch 1, whose CTR tower is untrained.)

    python scripts/esmm_ablation.py                      # 100k rows, 3 epochs, seeds 1 2 3
    python scripts/esmm_ablation.py --num-rows 200000 --epochs 5 --out outputs/ablation
    python scripts/esmm_ablation.py --dataset synthetic_ccp_weak --models BASE ESMM ESCM2-IPS ESCM2-DR

`--dataset synthetic_ccp_weak` is ESCM²'s second setting (conf/dataset/synthetic_ccp_weak.yaml:
click and conversion effects correlated 0.2, 40% conversion among clicks).

Prints a markdown table (mean +- std over seeds) and the exact command of each run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = {
    "BASE": ["model=cvr_base"],
    "DIVISION": ["model=division"],
    "ESMM-NS": ["model=esmm", "model.share_embedding=false"],
    "ESMM": ["model=esmm"],
    "ESCM2-IPS": ["model=escm2", "model.regularizer=ips"],
    "ESCM2-DR": ["model=escm2", "model.regularizer=dr"],
    "ESCM2-DR-JL": ["model=escm2", "model.regularizer=dr", "model.imputation=label"],
    "ESM2": ["dataset=synthetic_ccp_action", "model=esm2"],  # the same data plus the D-action
}
DATASETS = ("synthetic_ccp", "synthetic_ccp_weak")
METRICS = ("test/cvr_auc", "test/cvr_auc_entire", "test/ctcvr_auc", "test/ctr_auc")


def command(model: list[str], seed: int, args: argparse.Namespace, run_dir: Path) -> list[str]:
    return [
        "mtlrec",
        "train",
        *([] if any(o.startswith("dataset=") for o in model) else [f"dataset={args.dataset}"]),
        *model,
        f"seed={seed}",
        f"dataset.num_rows={args.num_rows}",
        f"trainer.epochs={args.epochs}",
        "trainer.monitor=val/loss",
        "trainer.mode=min",
        "trainer.patience=null",
        f"trainer.num_threads={args.threads}",
        "device=cpu",
        f"hydra.run.dir={run_dir}",
    ]


def clamped_fraction(run_dir: Path) -> float:
    """DIVISION: the fraction of test rows whose pCTCVR / pCTR was above 1 and clamped."""
    import pyarrow.parquet as pq
    import torch

    from mtlrec.data.sources import resolve_dataset_dir
    from mtlrec.inference import encode_features
    from mtlrec.training.checkpoint import load_checkpoint, model_from_checkpoint

    payload = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    model, spec, _ = model_from_checkpoint(payload)
    test = resolve_dataset_dir(payload["config"]["dataset"]) / spec.splits["test"]
    sparse, dense = encode_features(pq.read_table(test), spec, str(test))
    with torch.no_grad():
        return float(model(sparse, dense)["cvr_clamped"].mean())


def cell(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--num-rows", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--dataset", default="synthetic_ccp", choices=DATASETS)
    parser.add_argument(
        "--out", type=Path, default=None, help="run dirs go here (default: a temp dir)"
    )
    args = parser.parse_args()
    if args.dataset != "synthetic_ccp" and "ESM2" in args.models:
        parser.error("ESM2 runs on synthetic_ccp_action (the default data plus the D-action stage)")
    out = args.out or Path(tempfile.mkdtemp(prefix="esmm_ablation-"))
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    results: dict[str, list[dict]] = {}
    for name in args.models:
        for seed in args.seeds:
            run_dir = out / f"{name}-{seed}"
            cmd = command(MODELS[name], seed, args, run_dir)
            print(" ".join(cmd), flush=True)
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
            record = json.loads((run_dir / "metrics.json").read_text())
            results.setdefault(name, []).append(record["metrics"])
            print(
                f"  {time.perf_counter() - start:.0f} s, best epoch {record.get('best_epoch')}",
                flush=True,
            )
    print(
        f"\n{args.dataset}, {args.num_rows:,} rows, {args.epochs} epochs, best epoch on "
        f"val/loss, seeds {args.seeds}; runs in {out}\n"
    )
    print("| model | " + " | ".join(METRICS) + " | n |")
    print("| --- |" + " ---: |" * len(METRICS) + " --- |")
    for name, runs in results.items():
        cells = [cell([r[k] for r in runs if r.get(k) is not None]) for k in METRICS]
        print(f"| {name} | " + " | ".join(cells) + f" | {len(runs)} |")
    if "DIVISION" in results:
        fractions = [clamped_fraction(out / f"DIVISION-{seed}") for seed in args.seeds]
        print(f"\nDIVISION: test rows with pCTCVR > pCTR (clamped to pCVR = 1): {cell(fractions)}")


if __name__ == "__main__":
    main()
