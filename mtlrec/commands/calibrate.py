"""`mtlrec calibrate RUN_DIR [--split val] [--overwrite]`: per-output temperatures on val."""

from __future__ import annotations

import argparse

from mtlrec.commands import OK

SUMMARY = "fit per-task temperatures on val; evaluate/predict/export then apply them (RUN_DIR)"
FORWARDS = False
BEST = "best.pt"  # mtlrec.training.checkpoint.BEST, spelled out so --help needs no torch


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--split", default="val", help="the split to fit on (default: val)")
    p.add_argument("--checkpoint", default=BEST, help="file in RUN_DIR/checkpoints (best.pt)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing RUN_DIR/calibration.json"
    )


def run(args: argparse.Namespace) -> int:
    from mtlrec.inference.calibrate import calibrate

    record = calibrate(args.run_dir, args.split, args.checkpoint, args.overwrite)
    for output, t in record["temperatures"].items():
        s = record["scores"][output]
        print(
            f"{output}: temperature {t:.4f}  {args.split} logloss {s['logloss_before']:.5f} -> "
            f"{s['logloss_after']:.5f}  ece {s['ece_before']:.5f} -> {s['ece_after']:.5f}"
        )
    print(f"wrote {args.run_dir.rstrip('/')}/calibration.json")
    return OK
