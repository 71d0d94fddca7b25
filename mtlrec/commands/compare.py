"""`mtlrec compare PATH...`: one table of run dirs (single runs, sweeps).

The arguments go untouched to the compare module's own parser (``mtlrec.report.compare:main``),
imported only when the command runs, by that dotted path.
"""

from __future__ import annotations

from mtlrec.commands.forward import call

SUMMARY = "one table of run dirs or sweep dirs (--sort, --filter, --format, --plot)"
FORWARDS = True
TARGET = "mtlrec.report.compare:main"
EPILOG = "--metric, --sort, --filter k=v, --group-by-seed, --format csv|markdown|json, --plot DIR"


def configure(parser) -> None:
    """Nothing to declare: compare parses its own arguments."""


def run(argv: list[str]) -> int:
    return call(TARGET, argv)
