"""`mtlrec compare PATH...`: one table of run dirs (single runs, sweeps).

The arguments are declared here; the work is mtlrec.report.compare's, imported only when the
command runs. `main(argv)` parses and runs the same outside the CLI (a sweep's closing table).
"""

from __future__ import annotations

import argparse

SUMMARY = "one table of run dirs or sweep dirs (--sort, --filter, --format, --plot)"
FORWARDS = False
EPILOG = "--metric, --sort, --filter k=v, --group-by-seed, --format csv|markdown|json, --plot DIR"
# mtlrec.report.render's FORMATS and LAYOUTS, spelled out so that building the parser imports no
# report code (tests/report/test_compare_terminal.py checks that the two agree).
FORMATS = ("table", "csv", "markdown", "json")
LAYOUTS = ("auto", "wide", "long")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run dirs or dirs holding them")
    parser.add_argument(
        "--metric",
        action="append",
        default=None,
        help="metric column, e.g. test/cvr_auc (repeatable; default: test metrics of the monitored family)",
    )
    parser.add_argument(
        "--sort",
        default=None,
        metavar="COLUMN",
        help="sort by a column, best first for metrics (AUC high, losses low); config columns ascending",
    )
    parser.add_argument("--reverse", action="store_true", help="reverse the --sort order")
    parser.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep runs whose config KEY equals VALUE (repeatable; also status=failed)",
    )
    parser.add_argument("--format", choices=FORMATS, default="table")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="table format: wide = one row per run, long = one block per run; "
        "auto (default) = wide when it fits the terminal",
    )
    parser.add_argument("--output", metavar="FILE", help="write to FILE instead of the terminal")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --output if it exists, or the PNGs of a --plot dir that mtlrec did not make",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--group-by-seed",
        dest="group_by_seed",
        action="store_true",
        default=None,
        help="one row per config with mean ± std over seeds and n (automatic when only the seed differs)",
    )
    group.add_argument(
        "--no-group",
        dest="group_by_seed",
        action="store_false",
        help="one row per run, even when only the seed differs",
    )
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="runs matching it are the baseline (e.g. model=single_task): per-metric delta "
        "columns (mean ± std over paired seeds) and negative-transfer marks; --plot adds seesaw.png",
    )
    parser.add_argument(
        "--plot", metavar="DIR", help='write PNG plots to DIR (needs: pip install "mtlrec[plot]")'
    )


def run(args: argparse.Namespace) -> int:
    from mtlrec.report.compare import compare

    return compare(args)


def main(argv: list[str]) -> int:
    """`mtlrec compare ARGV...` without the CLI around it (same arguments, same errors)."""
    from mtlrec.commands import CommandParser

    parser = CommandParser(prog="mtlrec compare", description=__doc__.splitlines()[0])
    configure(parser)
    return run(parser.parse_args(argv))
