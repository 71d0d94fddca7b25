"""`mtlrec export`: a run's model as a standalone TorchScript or ONNX file, checked against PyTorch."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from mtlrec.data.spec import PAD_ID, WEIGHT_SUFFIX, DatasetSpec
from mtlrec.dataset_settings import saved_dataset
from mtlrec.errors import MtlrecError
from mtlrec.inference.export_files import (
    EXPORT_FILE,
    FORMAT_FILES,
    copy_encoders,
    foreign_file,
    models_of,
    read_manifest,
    replace_dir,
    sample_inputs,
    sha256,
    stack_outputs,
    verify_export,
    write_checksums,
)
from mtlrec.inference.loading import load_run
from mtlrec.inference.predict import fusion_of
from mtlrec.models.base import MultiTaskModel
from mtlrec.outputs import EXPORT, check_output_dir, inject_fault, writing
from mtlrec.ranking.record import FusionRecord
from mtlrec.runs.run_dir import atomic_write_json
from mtlrec.training.binding import check_dataset
from mtlrec.training.checkpoint import BEST, model_from_checkpoint

EXPORT_TOLERANCE = 1e-5
EXPORT_INPUTS = ("sparse_ids", "dense")  # the exported model's inputs, by these names


def check_output_names(columns: list[str], checkpoint: Path | str) -> None:
    """The exported outputs are named by the tasks: a task named like an input would give one
    name to two tensors (ONNX graphs refuse it, and a reader of the TorchScript dict could not
    tell them apart), so the export is refused before anything is written."""
    clash = [c for c in columns if c in EXPORT_INPUTS]
    if clash:
        raise MtlrecError(
            f"{checkpoint}: task output {clash[0]!r} has the name of an export input "
            f"({', '.join(EXPORT_INPUTS)}); the exported outputs are named by the tasks: "
            "train the model with another task name to export it"
        )


log = logging.getLogger(__name__)


class ExportedModel(nn.Module):
    """The standalone scoring function: per-field ids and dense values -> output matrix.

    Inputs, in the dataset spec's column layout (export.json `inputs` names every column):
    `sparse_ids` int64 [B, C]: one column per single-id field, then `max_len` columns per bag or
    sequence field, holding per-field ids in [0, vocab_size) (no offsets; -1 pads a bag/sequence;
    unseen ids map to the field's oov_id when it has one); `dense` float32 [B, E]: the dense
    features, then `max_len` weights per weighted bag (0 where padded). Outputs: one float32 [B]
    tensor per model output, named by it (a dict in TorchScript, named outputs in ONNX), in
    export.json order (probabilities for binary outputs), then, with a fusion (`mtlrec fuse`),
    the fused score of the task probabilities as `score`.
    """

    def __init__(
        self, model: MultiTaskModel, spec: DatasetSpec, fusion: FusionRecord | None = None
    ):
        super().__init__()
        self.model = model
        self.names = list(model.output_types)
        self.binary = [model.output_types[n] == "binary" for n in self.names]
        self.fusion = fusion.head() if fusion is not None else None
        self.fused_columns = [self.names.index(t) for t in fusion.tasks] if fusion else []
        self.fusion_record = fusion
        layout, offsets = spec.layout, spec.vocab_offsets
        width = layout.sparse_width
        columns = {
            "offsets": torch.zeros(width, dtype=torch.long),
            "vocab": torch.zeros(width, dtype=torch.long),
            "oov": torch.full((width,), -1, dtype=torch.long),
            "padded": torch.zeros(width, dtype=torch.bool),
        }
        for f in (*spec.sparse, *spec.multi):
            a, b = layout.sparse[f.name]
            columns["offsets"][a:b] = offsets[f.name]
            columns["vocab"][a:b] = f.vocab_size
            columns["oov"][a:b] = -1 if f.oov_id is None else f.oov_id
            columns["padded"][a:b] = f.multi
        for name, values in columns.items():
            self.register_buffer(name, values)

    def forward(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        vocab = cast(torch.Tensor, self.vocab)  # buffers (registered in __init__)
        oov = cast(torch.Tensor, self.oov)
        offsets = cast(torch.Tensor, self.offsets)
        pad = cast(torch.Tensor, self.padded) & (sparse_ids == PAD_ID)
        unseen = ((sparse_ids < 0) | (sparse_ids >= vocab)) & (oov >= 0) & ~pad
        ids = torch.where(unseen, oov.expand_as(sparse_ids), sparse_ids)
        fused = torch.where(pad, torch.full_like(ids, PAD_ID), ids + offsets)
        out = self.model(fused, dense)
        cols = [
            torch.sigmoid(out[n].float()) if b else out[n].float()
            for n, b in zip(self.names, self.binary, strict=True)
        ]
        if self.fusion is not None:
            cols.append(self.fusion(torch.stack([cols[j] for j in self.fused_columns], dim=1)))
        return dict(zip(self.columns, cols, strict=True))

    @property
    def columns(self) -> list[str]:
        return self.names + (["score"] if self.fusion is not None else [])


def export(
    run_dir: str | Path,
    fmt: str,
    output: str | Path | None = None,
    checkpoint: str = BEST,
    sample_rows: int = 1024,
    fusion: str | None = None,
) -> dict[str, Any]:
    """Write DIR/model.{pt,onnx}, spec.json, the dataset's encoders.json + vocab.parquet and
    export.json (input/output layout, SHA-256 of every file), and check the exported model.
    `fusion` names a record of `mtlrec fuse` whose fused score the model outputs last."""
    if fmt not in ("torchscript", "onnx"):
        raise MtlrecError(f"--format {fmt!r} is unknown; use torchscript or onnx")
    if sample_rows < 2:
        raise MtlrecError(f"--sample-rows must be >= 2, got {sample_rows}")
    from mtlrec.inference.progress import steps

    with steps("export", 2) as bar:
        with bar.step(f"loading {checkpoint}"):
            payload, ckpt = load_run(run_dir, checkpoint)
            model, spec, _ = model_from_checkpoint(payload)
            data_dir = _dataset_dir(payload)
            if data_dir is not None:  # its encoders are copied into the export
                check_dataset(payload, ckpt, data_dir)
            wrapper = ExportedModel(
                model, spec, fusion_of(run_dir, fusion, ckpt, list(model.output_types))
            ).eval()
            check_output_names(wrapper.columns, ckpt)
        with bar.step(f"{fmt}: converting, checking on {sample_rows:,} sample rows"):
            return _export_checked(run_dir, fmt, output, payload, ckpt, wrapper, spec, sample_rows)


def _export_checked(run_dir, fmt, output, payload, ckpt, wrapper, spec, sample_rows) -> dict:
    """Write the export into a staging dir next to the target, check it, then put it in place
    whole (replacing an earlier export there only once the new one is complete)."""
    out_dir = export_dir_for(run_dir, output)
    origin = {
        "checkpoint_sha256": sha256(Path(ckpt)),
        "fusion": json.loads(json.dumps(export_info_fusion(wrapper))),
        "columns": wrapper.columns,
    }
    kept = kept_models(out_dir, fmt, origin)
    stage = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    with writing(out_dir, temps=[stage]):
        inject_fault(stage, no_space=False)  # tests: a read-only parent dir
        stage.mkdir(parents=True)
        for entry in kept.values():  # the other format's model of the same checkpoint stays
            shutil.copyfile(out_dir / entry["model_file"], stage / entry["model_file"])
        result = _write_export(stage, fmt, payload, ckpt, wrapper, spec, sample_rows, kept)
        replace_dir(stage, out_dir)
    if not result["encoders"]:
        log.warning(
            "%s: no encoders.json copied (the run's dataset is generated, its dir is gone, or "
            "it was prepared again with other features); the export holds the model and its "
            "input layout only",
            out_dir,
        )
    names = {"model_file": out_dir / result["model_file"].name, "spec_file": out_dir / "spec.json"}
    return result | names


def export_info_fusion(wrapper: ExportedModel) -> dict[str, Any] | None:
    return wrapper.fusion_record.describe() if wrapper.fusion_record is not None else None


def kept_models(out_dir: Path, fmt: str, origin: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The models of other formats in an earlier export at `out_dir` that this export keeps: an
    export dir holds one model per format, all of one checkpoint, fusion and outputs, each listed
    and checked in export.json. An earlier model of the same format is replaced; one of another
    format but another checkpoint is refused in one line (keeping it would mix two models,
    dropping it would lose it without a word)."""
    if not (out_dir / EXPORT_FILE).is_file():
        return {}
    info = read_manifest(out_dir)
    others = {f: m for f, m in models_of(info).items() if f != fmt}
    if not others:
        return {}
    same = {k: info.get(k) for k in ("checkpoint_sha256", "fusion")} | {
        "columns": (info.get("outputs") or {}).get("columns")
    }
    if same != origin:
        files = ", ".join(m["model_file"] for m in others.values())
        raise MtlrecError(
            f"--output {out_dir}: holds a {' and '.join(others)} export ({files}) of another "
            f"checkpoint, fusion or outputs than this {fmt} export; export into another --output "
            f"to keep both, or remove {out_dir} first to replace it"
        )
    verify_export(out_dir)  # what is kept is what was checked
    return others


def export_dir_for(run_dir, output) -> Path:
    """The export dir, refused in one line when writing it could replace what is not an export:
    a run dir, a prepared dataset, a dir of other files (mtlrec.outputs); RUN_DIR/export (the
    default) and an earlier export dir may be written again."""
    default = Path(run_dir).expanduser() / "export"
    out_dir = Path(output).expanduser() if output else default
    if out_dir.resolve() != default.resolve():
        check_output_dir(out_dir, "--output", [run_dir], own=EXPORT, what="export")
    if out_dir.is_file():
        raise MtlrecError(f"--output {out_dir}: is a file; name a directory for the export")
    stray = foreign_file(out_dir) if out_dir.is_dir() else None
    if stray is not None:
        raise MtlrecError(
            f"--output {out_dir}: holds {stray}, which is not part of an export; export into a "
            "new or empty directory (or an earlier export's)"
        )
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MtlrecError(f"{out_dir}: cannot create the export dir ({e.strerror})") from None
    return out_dir


def _write_export(out_dir: Path, fmt, payload, ckpt, wrapper, spec, sample_rows, kept) -> dict:
    sparse, dense = sample_inputs(spec, sample_rows)
    with torch.no_grad():
        expected = stack_outputs(wrapper(sparse, dense), wrapper.columns)
    model_file = out_dir / FORMAT_FILES[fmt]
    if fmt == "torchscript":
        got = _export_torchscript(wrapper, sparse, dense, str(model_file))
    else:
        got = _export_onnx(wrapper, sparse, dense, str(model_file))
    diff = float(np.abs(got - expected).max()) if expected.size else 0.0
    if not (got.shape == expected.shape and math.isfinite(diff) and diff <= EXPORT_TOLERANCE):
        raise MtlrecError(
            f"{model_file.name}: the exported {fmt} model differs from the PyTorch model by "
            f"{diff:.2e} > {EXPORT_TOLERANCE:g} on the sample; not written"
        )
    spec_file = spec.save(out_dir)
    copied = copy_encoders(_dataset_dir(payload), out_dir, spec)
    info = export_info(
        fmt, model_file, ckpt, payload["model_name"], spec, wrapper, sample_rows, diff
    )
    info["checkpoint_sha256"] = sha256(Path(ckpt))
    info["models"] = {**kept, fmt: {"model_file": model_file.name, "check": info["check"]}}
    kept_files = [m["model_file"] for m in kept.values()]
    info["files"] = write_checksums(out_dir, [model_file.name, *kept_files, *copied])
    atomic_write_json(out_dir / EXPORT_FILE, info)
    verify_export(out_dir)  # what was written is what was checked
    return {
        "model_file": model_file,
        "spec_file": spec_file,
        "max_abs_diff": diff,
        "sample_rows": sample_rows,
        "outputs": wrapper.columns,
        "files": sorted(info["files"]),
        "encoders": copied,
        "kept": kept_files,
    }


def _dataset_dir(payload: dict) -> Path | None:
    return saved_dataset(payload.get("config")).path


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
    kinds = [wrapper.model.output_types[n] for n in wrapper.names]
    fusion = wrapper.fusion_record
    return {
        "format": fmt,
        "model_file": model_file.name,
        "checkpoint": str(ckpt),
        "model": model_name,
        "inputs": input_layout(spec),
        "outputs": {
            "dtype": "float32",
            "shape": ["batch"],
            "columns": wrapper.columns,
            "names": "one output per column, named by it (TorchScript: a dict; ONNX: named "
            "outputs); the model file's metadata lists them too",
            "kinds": kinds + (["fused"] if fusion is not None else []),
            "note": "probabilities for binary outputs, values for regression outputs"
            + ("; score: the fusion below of the task probabilities" if fusion else ""),
        },
        "fusion": export_info_fusion(wrapper),
        "check": {"sample_rows": sample_rows, "max_abs_diff": diff, "tolerance": EXPORT_TOLERANCE},
    }


def input_layout(spec: DatasetSpec) -> dict[str, Any]:
    """What each column of the exported model's two inputs holds (docs/inference.md)."""
    layout = spec.layout
    names = [""] * layout.sparse_width
    fields = []
    for f in (*spec.sparse, *spec.multi):
        a, b = layout.sparse[f.name]
        names[a:b] = [f.name] if not f.multi else [f"{f.name}[{i}]" for i in range(b - a)]
        fields.append(
            {"name": f.name, "kind": f.kind, "columns": [a, b], "vocab_size": f.vocab_size}
            | {"oov_id": f.oov_id, "pooling": f.pool if f.multi else None}
            | ({"shares_vocab_with": f.shares_vocab_with} if f.shares_vocab_with else {})
            | ({"hash_buckets": f.hash_buckets} if f.hash_buckets else {})
        )
    dense_names = [""] * layout.dense_width
    for f in spec.dense:
        dense_names[layout.dense[f.name][0]] = f.name
    for name, (a, b) in layout.weights.items():
        dense_names[a:b] = [f"{name}{WEIGHT_SUFFIX}[{i}]" for i in range(b - a)]
    return {
        "sparse_ids": {
            "dtype": "int64",
            "shape": ["batch", layout.sparse_width],
            "columns": names,
            "fields": fields,
            "pad_id": PAD_ID,
            "note": "per-field ids in [0, vocab_size) (encoders.json's vocabularies); unseen ids "
            "map to oov_id where the spec has one; bag/sequence columns padded with -1 at the end",
        },
        "dense": {
            "dtype": "float32",
            "shape": ["batch", layout.dense_width],
            "columns": dense_names,
            "note": "dense features as prepared (transformed), then the weights of weighted bags "
            "(0 where padded)",
        },
    }


def write_model_file(path: Path, data: bytes) -> None:
    inject_fault(path)  # tests: a full disk here
    path.write_bytes(data)


def model_metadata(wrapper: ExportedModel) -> dict[str, str]:
    """What the model file itself says about its outputs (ONNX metadata_props, TorchScript extra
    file `mtlrec.json`): a serving stack reads the task names without export.json."""
    kinds = [wrapper.model.output_types[n] for n in wrapper.names]
    kinds += ["fused"] if wrapper.fusion is not None else []
    return {
        "mtlrec.outputs": json.dumps(wrapper.columns),
        "mtlrec.tasks": json.dumps(wrapper.names),
        "mtlrec.output_kinds": json.dumps(kinds),
    }


TORCHSCRIPT_METADATA = "mtlrec.json"  # the extra file of model.pt holding model_metadata


def _export_torchscript(wrapper: ExportedModel, sparse, dense, path: str) -> np.ndarray:
    import io
    import warnings

    half = max(1, len(sparse) // 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice in recent versions
        # strict=False: the outputs are a dict task name -> scores
        traced = torch.jit.trace(
            wrapper, (sparse[:half], dense[:half]), check_trace=False, strict=False
        )
        # Saved to memory, then written by Python: torch.jit.save on a full disk aborts the
        # process from C++ (SIGABRT), where a Python write is an OSError we can report.
        buf = io.BytesIO()
        extra = {TORCHSCRIPT_METADATA: json.dumps(model_metadata(wrapper))}
        torch.jit.save(traced, buf, _extra_files=extra)
        write_model_file(Path(path), buf.getvalue())
        loaded = torch.jit.load(path)
        with torch.no_grad():  # another batch size than traced with
            return stack_outputs(loaded(sparse, dense), wrapper.columns)


def _export_onnx(wrapper: ExportedModel, sparse, dense, path: str) -> np.ndarray:
    try:
        import onnx
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
            input_names=list(EXPORT_INPUTS),
            output_names=wrapper.columns,  # one output per task, named by it
            dynamic_axes={
                **{name: {0: "batch"} for name in (*EXPORT_INPUTS, *wrapper.columns)},
            },
            dynamo=True,  # the TorchScript-based exporter lacks ops the models use (expm1)
            verbose=False,
        )
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    proto = onnx.load_from_string(buf.getvalue())
    onnx.helper.set_model_props(proto, model_metadata(wrapper))
    write_model_file(Path(path), proto.SerializeToString())
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(wrapper.columns, {"sparse_ids": sparse.numpy(), "dense": dense.numpy()})
    return stack_outputs(got, wrapper.columns)
