"""`mtlrec prepare dataset=NAME [overrides]`: raw files -> a prepared dataset.

The arguments are declared here; the work is mtlrec.data.prepare's `prepare_command`, imported
only when the command runs.
"""

from __future__ import annotations

import argparse

SUMMARY = "raw files -> a prepared dataset (dataset=census dataset.raw_dir=DIR)"
FORWARDS = False
EPILOG = (
    "e.g. mtlrec prepare dataset=census dataset.raw_dir=~/data/census-income-kdd\n"
    "`--config-dir my_conf dataset=my_data` for your own data; overwrite=true to redo"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-dir", help="a directory of your own configs (holding dataset/NAME.yaml)"
    )
    parser.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides: dataset=NAME key=value ...")


def run(args: argparse.Namespace) -> int:
    from mtlrec.data.prepare import prepare_command

    return prepare_command(args.overrides, args.config_dir, args.cfg)


def main(argv: list[str]) -> int:
    """`mtlrec prepare ARGV...` without the CLI around it (same arguments, same errors)."""
    from mtlrec.commands import CommandParser

    parser = CommandParser(prog="mtlrec prepare", description=__doc__.splitlines()[0])
    configure(parser)
    return run(parser.parse_args(argv))
