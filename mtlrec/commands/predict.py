"""`mtlrec predict RUN_DIR --input X.parquet --output Y.parquet`: score a parquet file.

The output is written atomically and never replaces a file unless --overwrite is given; it can
never be the input file. Temp files of a killed predict are removed by the next one.
"""

from __future__ import annotations

import argparse

from mtlrec.commands import OK
from mtlrec.commands.evaluate import BEST

SUMMARY = "score a parquet file (RUN_DIR --input X.parquet --output Y.parquet)"
FORWARDS = False


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--input", required=True, help="parquet file with the feature columns")
    p.add_argument("--output", required=True, help="parquet file to write (atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--batch-size", type=int, default=65536, help="rows read and scored at a time")
    p.add_argument("--id-columns", nargs="*", default=[], help="input columns copied to the output")
    p.add_argument("--checkpoint", default=BEST, help="file in RUN_DIR/checkpoints (best.pt)")


def run(args: argparse.Namespace) -> int:
    from mtlrec.inference import predict

    rows, outputs = predict(
        args.run_dir,
        args.input,
        args.output,
        args.batch_size,
        args.id_columns,
        args.checkpoint,
        overwrite=args.overwrite,
    )
    print(f"{args.output}: {rows:,} rows, columns {[*args.id_columns, *outputs]}")
    return OK
