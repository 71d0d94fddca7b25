"""`mtlrec evaluate RUN_DIR [--split S | --data PATH] [--json]`: metrics of a run's checkpoint."""

from __future__ import annotations

import argparse
import json

from mtlrec.commands import OK

SUMMARY = "metrics of a run's best checkpoint (RUN_DIR [--split S | --data PATH])"
FORWARDS = False
BEST = "best.pt"  # mtlrec.training.checkpoint.BEST, spelled out so --help needs no torch


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--split", default=None, help="a split of the run's dataset (default: test)")
    src.add_argument("--data", help="a prepared dataset dir (its test split) or one parquet file")
    p.add_argument(
        "--checkpoint",
        default=BEST,
        help="file in RUN_DIR/checkpoints: best.pt, last.pt, best_<task> (keep_best_per_task)",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args: argparse.Namespace) -> int:
    from mtlrec.inference import evaluate

    metrics = evaluate(args.run_dir, split=args.split, data=args.data, checkpoint=args.checkpoint)
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    else:
        width = max(len(k) for k in metrics)
        for k in sorted(metrics):
            print(f"{k:<{width}}  {metrics[k]:.6f}")
    return OK
