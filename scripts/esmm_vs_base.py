"""ESMM vs the naive CVR model (cvr_base) on the default synthetic_ccp data, several seeds.

The ESMM paper's claim: a CVR estimated over the entire impression space (ESMM) beats one trained
on clicked impressions only (BASE). synthetic_ccp stores the counterfactual label
`conversion_if_clicked` for every impression, so `test/cvr_auc_entire` measures exactly that.

    python scripts/esmm_vs_base.py                 # default: 200k rows, 5 epochs, seeds 1 2 3
    python scripts/esmm_vs_base.py --seeds 1 2 --num-rows 100000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

METRICS = ("test/cvr_auc_entire", "test/cvr_auc", "test/ctcvr_auc", "test/ctr_auc")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--num-rows", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="esmm_vs_base-"))
    results: dict[str, list[dict]] = {}
    for model in ("esmm", "cvr_base"):
        for seed in args.seeds:
            run_dir = out / f"{model}-{seed}"
            cmd = [
                "mtlrec",
                "train",
                f"model={model}",
                f"seed={seed}",
                f"dataset.num_rows={args.num_rows}",
                f"trainer.num_threads={args.threads}",
                "device=cpu",
                f"hydra.run.dir={run_dir}",
            ]
            env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")
            results.setdefault(model, []).append(
                json.loads((run_dir / "metrics.json").read_text())["metrics"]
            )
    print(
        f"synthetic_ccp, {args.num_rows:,} rows, 5 epochs (early stopping), seeds {args.seeds}; runs in {out}"
    )
    print("| model | " + " | ".join(METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for model, runs in results.items():
        cells = []
        for key in METRICS:
            values = [r[key] for r in runs if r.get(key) is not None]
            cells.append(f"{np.mean(values):.4f} +- {np.std(values):.4f}" if values else "-")
        print(f"| {model} | " + " | ".join(cells) + " |")
    gap = np.mean([r["test/cvr_auc_entire"] for r in results["esmm"]]) - np.mean(
        [r["test/cvr_auc_entire"] for r in results["cvr_base"]]
    )
    print(f"ESMM - BASE on test/cvr_auc_entire: {gap:+.4f}")
    sys.exit(0 if gap > 0 else 1)


if __name__ == "__main__":
    main()
