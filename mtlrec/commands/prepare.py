"""`mtlrec prepare dataset=NAME [overrides]`: raw files -> a prepared dataset.

The arguments are declared here, and so is the one call of the sources registry
(mtlrec.data.sources.prepare_dataset): the prepare machinery in mtlrec.data.prepare sits below the
sources and never imports them. Everything is imported only when the command runs.
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
    from mtlrec.data.prepare import compose_prepare, dataset_override, print_summary
    from mtlrec.data.sources import preparable_sources, prepare_dataset
    from mtlrec.errors import UsageError

    overrides = list(args.overrides)
    if dataset_override(overrides) is None:
        built_in = ", ".join(n for n in preparable_sources() if n != "csv")
        raise UsageError(
            f"say which dataset to prepare, e.g. `mtlrec prepare dataset=census`; built in: {built_in}"
        )
    cfg = compose_prepare(overrides, args.config_dir)
    if args.cfg:
        import yaml

        print(yaml.safe_dump(cfg, sort_keys=False), end="")
        return 0
    from mtlrec.data.prepare.progress import prepare_progress

    with prepare_progress():  # a bar per pass over each raw file, on a terminal only
        result = prepare_dataset(cfg["dataset"], overwrite=bool(cfg.get("overwrite")))
    print_summary(result, config_dir=args.config_dir, overrides=overrides)
    return 0


def main(argv: list[str]) -> int:
    """`mtlrec prepare ARGV...` without the CLI around it (same arguments, same errors)."""
    from mtlrec.commands import CommandParser

    parser = CommandParser(prog="mtlrec prepare", description=__doc__.splitlines()[0])
    configure(parser)
    return run(parser.parse_args(argv))
