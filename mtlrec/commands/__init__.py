"""The `mtlrec` subcommands: one module per command, each registering an argparse subparser.

A command module (``mtlrec/commands/<name>.py``) defines

- ``SUMMARY``: the one line `mtlrec --help` shows for it;
- ``FORWARDS``: True when its arguments go untouched to another parser (Hydra, for ``train``),
  False when ``configure`` declares them (every other command: its parser lives here, next to
  it; ``INTERMIXED = True`` lets positionals follow flags, as ``tune``'s overrides do);
- ``configure(parser)``: adds its arguments to its subparser (nothing for a forwarding command);
- ``run(args)``: does the work and returns the exit status; ``args`` is the parsed
  ``argparse.Namespace``, or the raw ``list[str]`` for a forwarding command.

Command modules import nothing heavy at module level (torch, sklearn, pandas, pyarrow load inside
``run``), so that `mtlrec --help`, `mtlrec help CMD` and shell completion stay fast. Adding a
command is one new module plus its name in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

# Exit statuses, the same for every command (shell conventions).
OK, ERROR, USAGE = 0, 1, 2  # USAGE: a wrong command line (argparse's own convention)
SIGNAL_BASE = 128  # killed/stopped by signal N: 128 + N (130 SIGINT, 141 SIGPIPE, 143 SIGTERM)

# Flags every forwarding command understands (completion offers them where no parser is at hand).
FORWARDS_HELP = ("--help",)

# Command name -> module; the order is the order of `mtlrec --help`.
COMMANDS: dict[str, str] = {
    name: f"mtlrec.commands.{name}"
    for name in (
        "train",
        "prepare",
        "compare",
        "evaluate",
        "predict",
        "export",
        "fuse",
        "calibrate",
        "tune",
        "completion",
    )
}


def load(name: str) -> ModuleType:
    """The module of command `name` (a key of COMMANDS)."""
    return importlib.import_module(COMMANDS[name])


class CommandParser(argparse.ArgumentParser):
    """argparse whose usage errors are ONE line naming where to look, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(USAGE)
