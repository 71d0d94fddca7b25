"""`mtlrec tune SEARCH [overrides...] [--trials N] [--jobs N] [--study-dir DIR]`: an Optuna study.

The arguments go untouched to the tune module's own parser (``mtlrec.tuning.command:main``),
imported only when the command runs (it needs optuna: `pip install "mtlrec[tune]"`).
"""

from __future__ import annotations

from mtlrec.commands.forward import call

SUMMARY = "hyper-parameter search (Optuna): SEARCH from conf/search/ or a yaml file"
FORWARDS = True
TARGET = "mtlrec.tuning.command:main"
EPILOG = "--trials N, --jobs N (each trial its share of the cores), --study-dir DIR (resumes)"


def configure(parser) -> None:
    """Nothing to declare: tune parses its own arguments."""


def run(argv: list[str]) -> int:
    return call(TARGET, argv)
