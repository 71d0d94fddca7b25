"""`mtlrec export`: a run's model as a standalone TorchScript or ONNX file, checked against PyTorch."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError
from mtlrec.inference.loading import load_run
from mtlrec.models.base import MultiTaskModel
from mtlrec.runs.run_dir import atomic_write_json
from mtlrec.training.checkpoint import BEST, model_from_checkpoint

EXPORT_TOLERANCE = 1e-5


class ExportedModel(nn.Module):
    """The standalone scoring function: raw per-field ids and dense values -> output matrix.

    Inputs: `sparse_ids` int64 [B, F] in the spec's per-field id space (no offsets; unseen ids are
    mapped to the field's oov_id when it has one), `dense` float32 [B, D]. Output: float32 [B, K],
    one column per model output in `export.json` order (probabilities for binary outputs).
    """

    def __init__(self, model: MultiTaskModel, spec: DatasetSpec):
        super().__init__()
        self.model = model
        self.names = list(model.output_types)
        self.binary = [model.output_types[n] == "binary" for n in self.names]
        self.register_buffer("offsets", torch.tensor(spec.field_offsets, dtype=torch.long))
        self.register_buffer(
            "vocab", torch.tensor([f.vocab_size for f in spec.sparse], dtype=torch.long)
        )
        self.register_buffer(
            "oov",
            torch.tensor(
                [-1 if f.oov_id is None else f.oov_id for f in spec.sparse], dtype=torch.long
            ),
        )

    def forward(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        vocab = cast(torch.Tensor, self.vocab)  # buffers (registered in __init__)
        oov = cast(torch.Tensor, self.oov)
        offsets = cast(torch.Tensor, self.offsets)
        unseen = ((sparse_ids < 0) | (sparse_ids >= vocab)) & (oov >= 0)
        ids = torch.where(unseen, oov.expand_as(sparse_ids), sparse_ids)
        out = self.model(ids + offsets, dense)
        cols = [
            torch.sigmoid(out[n].float()) if b else out[n].float()
            for n, b in zip(self.names, self.binary, strict=True)
        ]
        return torch.stack(cols, dim=1)


def sample_inputs(spec: DatasetSpec, rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random in-vocabulary ids and standard-normal dense values (what the check scores)."""
    g = torch.Generator().manual_seed(seed)
    sparse = (
        torch.stack(
            [torch.randint(0, f.vocab_size, (rows,), generator=g) for f in spec.sparse], dim=1
        )
        if spec.sparse
        else torch.zeros((rows, 0), dtype=torch.long)
    )
    dense = torch.randn((rows, len(spec.dense)), generator=g)
    return sparse, dense


def export(
    run_dir: str | Path,
    fmt: str,
    output: str | Path | None = None,
    checkpoint: str = BEST,
    sample_rows: int = 1024,
) -> dict[str, Any]:
    """Write DIR/model.{pt,onnx} + DIR/spec.json + DIR/export.json and check the exported model."""
    if fmt not in ("torchscript", "onnx"):
        raise MtlrecError(f"--format {fmt!r} is unknown; use torchscript or onnx")
    if sample_rows < 2:
        raise MtlrecError(f"--sample-rows must be >= 2, got {sample_rows}")
    from mtlrec.inference.progress import steps

    with steps("export", 2) as bar:
        with bar.step(f"loading {checkpoint}"):
            payload, ckpt = load_run(run_dir, checkpoint)
            model, spec, _ = model_from_checkpoint(payload)
        with bar.step(f"{fmt}: converting, checking on {sample_rows:,} sample rows"):
            return _export_checked(run_dir, fmt, output, payload, ckpt, model, spec, sample_rows)


def _export_checked(run_dir, fmt, output, payload, ckpt, model, spec, sample_rows) -> dict:
    wrapper = ExportedModel(model, spec).eval()
    out_dir = Path(output).expanduser() if output else Path(run_dir) / "export"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MtlrecError(f"{out_dir}: cannot create the export dir ({e.strerror})") from None
    sparse, dense = sample_inputs(spec, sample_rows)
    with torch.no_grad():
        expected = wrapper(sparse, dense).numpy()
    model_file = out_dir / ("model.pt" if fmt == "torchscript" else "model.onnx")
    # A new temp file (not mkstemp's 0600): the model file gets the user's umask like any other.
    tmp = str(out_dir / f".{model_file.name}.export-{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        if fmt == "torchscript":
            got = _export_torchscript(wrapper, sparse, dense, tmp)
        else:
            got = _export_onnx(wrapper, sparse, dense, tmp)
        diff = float(np.abs(got - expected).max()) if expected.size else 0.0
        if not (got.shape == expected.shape and math.isfinite(diff) and diff <= EXPORT_TOLERANCE):
            raise MtlrecError(
                f"{model_file}: the exported {fmt} model differs from the PyTorch model by "
                f"{diff:.2e} > {EXPORT_TOLERANCE:g} on the sample; not written"
            )
        os.replace(tmp, model_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    spec_file = spec.save(out_dir)
    info = export_info(
        fmt, model_file, ckpt, payload["model_name"], spec, wrapper, sample_rows, diff
    )
    atomic_write_json(out_dir / "export.json", info)
    return {
        "model_file": model_file,
        "spec_file": spec_file,
        "max_abs_diff": diff,
        "sample_rows": sample_rows,
        "outputs": wrapper.names,
    }


def export_info(
    fmt: str,
    model_file: Path,
    ckpt: Path,
    model_name: str,
    spec: DatasetSpec,
    wrapper: ExportedModel,
    sample_rows: int,
    diff: float,
) -> dict[str, Any]:
    """export.json: what the exported file takes and returns, and how it was checked."""
    return {
        "format": fmt,
        "model_file": model_file.name,
        "checkpoint": str(ckpt),
        "model": model_name,
        "inputs": {
            "sparse_ids": {
                "dtype": "int64",
                "shape": ["batch", len(spec.sparse)],
                "columns": [f.name for f in spec.sparse],
                "note": "per-field ids in [0, vocab_size); unseen ids map to oov_id where the spec has one",
            },
            "dense": {
                "dtype": "float32",
                "shape": ["batch", len(spec.dense)],
                "columns": [f.name for f in spec.dense],
            },
        },
        "outputs": {
            "dtype": "float32",
            "shape": ["batch", len(wrapper.names)],
            "columns": wrapper.names,
            "kinds": [wrapper.model.output_types[n] for n in wrapper.names],
            "note": "probabilities for binary outputs, values for regression outputs",
        },
        "check": {"sample_rows": sample_rows, "max_abs_diff": diff, "tolerance": EXPORT_TOLERANCE},
    }


def _export_torchscript(wrapper: ExportedModel, sparse, dense, path: str) -> np.ndarray:
    import warnings

    half = max(1, len(sparse) // 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice in recent versions
        traced = torch.jit.trace(wrapper, (sparse[:half], dense[:half]), check_trace=False)
        torch.jit.save(traced, path)
        loaded = torch.jit.load(path)
        with torch.no_grad():
            return loaded(sparse, dense).numpy()  # another batch size than traced with


def _export_onnx(wrapper: ExportedModel, sparse, dense, path: str) -> np.ndarray:
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError:
        raise MtlrecError(
            "--format onnx needs the optional packages onnx and onnxruntime: pip install 'mtlrec[onnx]'"
        ) from None
    import io
    import warnings

    half = max(1, len(sparse) // 2)
    buf = io.BytesIO()
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [q.level for q in quiet]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for q in quiet:
            q.setLevel(logging.ERROR)  # the exporter's progress lines and optional-op notices
        torch.onnx.export(
            wrapper,
            (sparse[:half], dense[:half]),
            # torch annotates f as a path only, but the exporter hands it to onnx.save, which
            # also writes to a binary file object
            buf,  # type: ignore[arg-type]
            input_names=["sparse_ids", "dense"],
            output_names=["outputs"],
            dynamic_axes={
                "sparse_ids": {0: "batch"},
                "dense": {0: "batch"},
                "outputs": {0: "batch"},
            },
            dynamo=True,  # the TorchScript-based exporter lacks ops the models use (expm1)
            verbose=False,
        )
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    Path(path).write_bytes(buf.getvalue())
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {"sparse_ids": sparse.numpy(), "dense": dense.numpy()})[0]
