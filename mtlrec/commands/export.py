"""`mtlrec export RUN_DIR --format torchscript|onnx [--output DIR]`: a standalone model file."""

from __future__ import annotations

import argparse

from mtlrec.commands import OK
from mtlrec.commands.evaluate import BEST

SUMMARY = "a standalone TorchScript/ONNX model, checked within 1e-5 (RUN_DIR --format F)"
FORWARDS = False


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", required=True, choices=["torchscript", "onnx"])
    p.add_argument("--output", default=None, help="directory to write (default RUN_DIR/export)")
    p.add_argument("--checkpoint", default=BEST, help="file in RUN_DIR/checkpoints (best.pt)")
    p.add_argument("--sample-rows", type=int, default=1024, help="rows of the equivalence check")


def run(args: argparse.Namespace) -> int:
    from mtlrec.inference import EXPORT_TOLERANCE, export

    result = export(args.run_dir, args.format, args.output, args.checkpoint, args.sample_rows)
    print(f"wrote {result['model_file']} and {result['spec_file']}")
    print(
        f"check: {args.format} vs PyTorch on {result['sample_rows']:,} sample rows: max |diff| "
        f"{result['max_abs_diff']:.2e} <= {EXPORT_TOLERANCE:g}: OK"
    )
    return OK
