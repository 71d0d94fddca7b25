"""Using a trained model outside training: evaluate, predict, export (the library side of the
`mtlrec evaluate|predict|export` commands in mtlrec/commands/).

Everything starts from a run directory: its checkpoint carries the resolved config, the dataset
spec and the trained tasks, so no config file is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

from mtlrec.inference.evaluate import check_same_features, evaluate
from mtlrec.inference.export import EXPORT_TOLERANCE, ExportedModel, export, sample_inputs
from mtlrec.inference.export_files import (
    exported_inputs,
    field_ids,
    load_export,
    verify_and_score,
    verify_export,
)
from mtlrec.inference.inputs import encode_features
from mtlrec.inference.loading import load_run
from mtlrec.inference.predict import Prediction, predict, predict_file, score

__all__ = [
    "EXPORT_TOLERANCE",
    "ExportedModel",
    "Prediction",
    "check_same_features",
    "encode_features",
    "evaluate",
    "evaluate_main",
    "export",
    "export_main",
    "exported_inputs",
    "field_ids",
    "load_export",
    "load_run",
    "predict",
    "predict_file",
    "predict_main",
    "sample_inputs",
    "score",
    "verify_and_score",
    "verify_export",
]


def _command_main(name: str, argv: Sequence[str]) -> int:
    from mtlrec.cli import main

    try:
        main([name, *argv])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def evaluate_main(argv: Sequence[str]) -> int:
    """`mtlrec evaluate ARGV...` (kept for callers of the old entry point)."""
    return _command_main("evaluate", argv)


def predict_main(argv: Sequence[str]) -> int:
    """`mtlrec predict ARGV...`."""
    return _command_main("predict", argv)


def export_main(argv: Sequence[str]) -> int:
    """`mtlrec export ARGV...`."""
    return _command_main("export", argv)
