"""`mtlrec prepare dataset=NAME [overrides]`: raw files -> a prepared dataset.

The arguments go untouched to the preparer's own parser (``mtlrec.data.prepare:main``), imported
only when the command runs, by that dotted path, so the data package may move it behind a
re-export.
"""

from __future__ import annotations

from mtlrec.commands.forward import call

SUMMARY = "raw files -> a prepared dataset (dataset=census dataset.raw_dir=DIR)"
FORWARDS = True
TARGET = "mtlrec.data.prepare:main"
EPILOG = "`--config-dir my_conf dataset=my_data` for your own data; overwrite=true to redo"


def configure(parser) -> None:
    """Nothing to declare: the preparer parses its own arguments."""


def run(argv: list[str]) -> int:
    return call(TARGET, argv)
