"""`mtlrec predict RUN_DIR --input X --output Y.parquet`: score prepared rows or raw values.

The input is a prepared parquet file (the dataset layout's encoded columns) or raw values (a
CSV/TSV, or a parquet whose categorical columns hold text; `--raw` for raw integer values), which
are encoded with the run's dataset encoders exactly as `mtlrec prepare` did (docs/inference.md).
The output is written atomically and never replaces a file unless --overwrite is given; it can
never be the input file. Temp files of a killed predict are removed by the next one.
"""

from __future__ import annotations

import argparse

from mtlrec.commands import OK
from mtlrec.commands.evaluate import BEST

SUMMARY = "score prepared rows or raw values (RUN_DIR --input X --output Y.parquet)"
FORWARDS = False


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--input", required=True, help="prepared parquet rows, or raw values (CSV/TSV/parquet)"
    )
    p.add_argument("--output", required=True, help="parquet file to write (atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument(
        "--raw",
        action="store_true",
        help="the input holds raw values even though its categorical columns are integers",
    )
    p.add_argument("--batch-size", type=int, default=65536, help="rows scored at a time")
    p.add_argument(
        "--id-columns",
        nargs="*",
        default=[],
        help="input columns copied to the output: `a b` or `a,b`",
    )
    p.add_argument(
        "--checkpoint",
        default=BEST,
        help="file in RUN_DIR/checkpoints: best.pt, last.pt, best_<task> (keep_best_per_task)",
    )
    p.add_argument(
        "--fusion",
        nargs="?",
        const="fusion",
        metavar="NAME",
        help="add the fused `score` column of RUN/fusion/NAME.json (mtlrec fuse; NAME: fusion)",
    )


def run(args: argparse.Namespace) -> int:
    from mtlrec.inference import predict_file

    # `--id-columns a,b` and `--id-columns a b` (and a mix) name the same columns
    args.id_columns = [c.strip() for a in args.id_columns for c in a.split(",") if c.strip()]
    done = predict_file(
        args.run_dir,
        args.input,
        args.output,
        args.batch_size,
        args.id_columns,
        args.checkpoint,
        overwrite=args.overwrite,
        raw=args.raw,
        fusion=args.fusion,
    )
    if done.raw_summary:
        print(done.raw_summary)
    print(f"{args.output}: {done.rows:,} rows, columns {[*args.id_columns, *done.outputs]}")
    return OK
