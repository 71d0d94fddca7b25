"""The `mtlrec` command: one CLI, subcommands.

mtlrec train [hydra overrides]       train (Hydra: -m, --cfg, --info, hydra.run.dir=... all work)
mtlrec --version
"""

from __future__ import annotations

import os
import sys

USAGE = """usage: mtlrec <command> [args]

commands:
  train      train a model; Hydra overrides, e.g. `mtlrec train model=mmoe trainer.epochs=5`
             (`mtlrec train --help` lists the config groups, `--cfg job` shows the config)
"""

# Subcommands other than train: name -> "module:function" taking argv (list[str]) -> exit code.
COMMANDS: dict[str, str] = {}


def main(argv: list[str] | None = None) -> None:
    # Small models on few cores: OpenMP's default busy-wait makes threads spin against each other
    # and against parallel jobs (up to ~26x slower with 2 threads when the other core is busy).
    # Must be set before torch loads; users can still override it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        from mtlrec import __version__

        print(f"mtlrec {__version__}")
        return
    command, rest = argv[0], argv[1:]
    if command == "train":
        from mtlrec.train import main as train_main

        sys.argv = [f"{os.path.basename(sys.argv[0])} train", *rest]
        train_main()
        return
    if command not in COMMANDS:
        print(
            f"mtlrec: unknown command '{command}'; commands: {', '.join(['train', *sorted(COMMANDS)])}",
            file=sys.stderr,
        )
        sys.exit(2)
    import importlib

    from mtlrec.errors import MtlrecError

    module, func = COMMANDS[command].split(":")
    try:
        code = getattr(importlib.import_module(module), func)(rest)
    except MtlrecError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"mtlrec {command}: error: {e}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
