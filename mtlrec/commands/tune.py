"""`mtlrec tune SEARCH [overrides...] [--trials N] [--jobs N] [--study-dir DIR]`: an Optuna study.

The arguments are declared here; the work is mtlrec.tuning.command's `tune`, imported only when
the command runs (it needs optuna: `pip install "mtlrec[tune]"`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

SUMMARY = "hyper-parameter search (Optuna): SEARCH from conf/search/ or a yaml file"
FORWARDS = False
INTERMIXED = True  # train overrides may come before and after the flags
EPILOG = "--trials N, --jobs N (each trial its share of the cores), --study-dir DIR (resumes)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("search", help="a search in conf/search/ (e.g. mmoe) or a yaml file")
    parser.add_argument("overrides", nargs="*", help="`mtlrec train` overrides for every trial")
    parser.add_argument("--study-dir", type=Path, help="the study's dir; an existing one resumes")
    parser.add_argument("--trials", type=int, help="finished trials wanted (default: the search's)")
    parser.add_argument("--jobs", type=int, help="trials run at a time (each gets its core share)")
    parser.add_argument("--no-plots", action="store_true", help="skip Optuna's PNG plots")
    parser.add_argument(
        "--storage",
        help="an Optuna storage URL (sqlite:///f.db, postgresql://...): several machines, each "
        "with its own --study-dir, work on one study (default: STUDY_DIR/study.db)",
    )
    parser.add_argument(
        "--metrics",
        help="comma-separated metrics of a multi-objective study (the first is monitored)",
    )
    parser.add_argument(
        "--directions", help="maximize|minimize per metric (default: each metric's own direction)"
    )


def run(args: argparse.Namespace) -> int:
    from mtlrec.tuning.command import tune

    return tune(args)


def main(argv: list[str]) -> int:
    """`mtlrec tune ARGV...` without the CLI around it (same arguments, same errors)."""
    from mtlrec.commands import CommandParser

    parser = CommandParser(prog="mtlrec tune", description=__doc__.splitlines()[0])
    configure(parser)
    return run(parser.parse_intermixed_args(argv))
