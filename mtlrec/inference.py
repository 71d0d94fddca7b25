"""Using a trained model outside training: `mtlrec evaluate`, `mtlrec predict`, `mtlrec export`.

Everything starts from a run directory: its checkpoint carries the resolved config, the dataset
spec and the trained tasks, so no config file is needed.

    mtlrec evaluate RUN_DIR [--split test | --data PATH] [--json]
    mtlrec predict RUN_DIR --input X.parquet --output Y.parquet [--batch-size N] [--id-columns a b]
    mtlrec export RUN_DIR --format torchscript|onnx [--output DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from mtlrec.data.spec import SPEC_FILE, DatasetSpec
from mtlrec.errors import MtlrecError
from mtlrec.models.base import MultiTaskModel
from mtlrec.runs.run_dir import atomic_write_json
from mtlrec.training.checkpoint import BEST, load_checkpoint, model_from_checkpoint

EXPORT_TOLERANCE = 1e-5


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as MtlrecError (one line, exit 1) instead of exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise MtlrecError(f"{message} (see `mtlrec {self.prog.split()[-1]} --help`)")


def _load_run(run_dir: str, checkpoint: str) -> tuple[dict, Path]:
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise MtlrecError(f"{path}: no such run dir")
    ckpt = path / "checkpoints" / checkpoint
    if not ckpt.is_file():
        raise MtlrecError(
            f"{ckpt}: checkpoint not found; is {path} a run dir of `mtlrec train` that finished an epoch?"
        )
    payload = load_checkpoint(ckpt)
    payload["path"] = str(ckpt)
    return payload, ckpt


# -- evaluate ------------------------------------------------------------------------------------
def evaluate_main(argv: Sequence[str]) -> int:
    p = _Parser(prog="mtlrec evaluate", description="Metrics of a run's best checkpoint.")
    p.add_argument("run_dir")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--split", default=None, help="a split of the run's dataset (default: test)")
    src.add_argument("--data", help="a prepared dataset dir (its test split) or one parquet file")
    p.add_argument("--checkpoint", default=BEST, help="file in RUN_DIR/checkpoints (best.pt)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    args = p.parse_args(list(argv))
    metrics = evaluate(args.run_dir, split=args.split, data=args.data, checkpoint=args.checkpoint)
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    else:
        width = max(len(k) for k in metrics)
        for k in sorted(metrics):
            print(f"{k:<{width}}  {metrics[k]:.6f}")
    return 0


def evaluate(
    run_dir: str | Path, split: str | None = None, data: str | None = None, checkpoint: str = BEST
) -> dict[str, float]:
    """Whole-split metrics of a checkpoint, computed exactly as the run computed its own."""
    from mtlrec.data.datasets import resolve_dataset_dir
    from mtlrec.data.loader import load_split
    from mtlrec.training.metrics import eval_targets
    from mtlrec.training.trainer import Trainer, TrainerConfig, strip_gates

    payload, ckpt = _load_run(str(run_dir), checkpoint)
    model, spec, tasks = model_from_checkpoint(payload)
    config = payload["config"]
    name = split or "test"
    if data is not None:
        path = Path(data).expanduser()
        if path.is_dir():
            other = DatasetSpec.load(path)
            _check_same_features(spec, other, path / SPEC_FILE)
            if name not in other.splits:
                raise MtlrecError(
                    f"{path / SPEC_FILE}: no '{name}' split; it lists {sorted(other.splits)}"
                )
            path = path / other.splits[name]
    else:
        data_dir = resolve_dataset_dir(config["dataset"])
        if name not in spec.splits:
            raise MtlrecError(f"--split {name}: the run's dataset has splits {sorted(spec.splits)}")
        path = data_dir / spec.splits[name]
    targets = eval_targets(tasks, model.output_types, spec)
    tensors = load_split(path, spec, tuple(t.task for t in targets))
    trainer_cfg = TrainerConfig(**config["trainer"])
    trainer = Trainer(
        model,
        spec,
        tasks,
        targets,
        trainer_cfg,
        torch.device("cpu"),
        0,
        None,
        config.get("balance"),
    )
    return strip_gates(trainer.evaluate(tensors, name))


def _check_same_features(spec: DatasetSpec, other: DatasetSpec, where: Path) -> None:
    a = [(f.name, f.kind, f.vocab_size) for f in spec.features]
    b = [(f.name, f.kind, f.vocab_size) for f in other.features]
    if a != b:
        raise MtlrecError(
            f"{where}: its features differ from the ones the model was trained on "
            f"(first difference: {next((x, y) for x, y in zip(a + [None], b + [None], strict=False) if x != y)})"
        )


# -- predict -------------------------------------------------------------------------------------
def predict_main(argv: Sequence[str]) -> int:
    p = _Parser(prog="mtlrec predict", description="Predictions of a run's best checkpoint.")
    p.add_argument("run_dir")
    p.add_argument("--input", required=True, help="parquet file with the feature columns")
    p.add_argument("--output", required=True, help="parquet file to write (atomically)")
    p.add_argument("--batch-size", type=int, default=65536, help="rows read and scored at a time")
    p.add_argument("--id-columns", nargs="*", default=[], help="input columns copied to the output")
    p.add_argument("--checkpoint", default=BEST)
    args = p.parse_args(list(argv))
    rows, outputs = predict(
        args.run_dir, args.input, args.output, args.batch_size, args.id_columns, args.checkpoint
    )
    print(f"{args.output}: {rows:,} rows, columns {[*args.id_columns, *outputs]}")
    return 0


def encode_features(
    batch: pa.RecordBatch | pa.Table, spec: DatasetSpec, source: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature columns -> (fused sparse ids [B, F] int64, dense [B, D] float32) for inference.

    Unseen categorical values (null, negative or >= vocab_size) map to the feature's `oov_id`; a
    feature without one cannot score them and fails naming the column.
    """
    n = batch.num_rows
    sparse = np.empty((n, len(spec.sparse)), dtype=np.int64)
    for j, (f, offset) in enumerate(zip(spec.sparse, spec.field_offsets, strict=True)):
        col = batch.column(f.name)
        valid = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        ids = np.asarray(col.fill_null(0).to_numpy(zero_copy_only=False)).astype(np.int64)
        unseen = ~valid | (ids < 0) | (ids >= f.vocab_size)
        if unseen.any():
            if f.oov_id is None:
                bad = ids[unseen & valid]
                example = "null" if not len(bad) else int(bad[0])
                raise MtlrecError(
                    f"{source}: sparse column '{f.name}' has {int(unseen.sum())} values outside "
                    f"[0, {f.vocab_size}) (e.g. {example}) and the feature spec has no oov_id to map them to"
                )
            ids = np.where(unseen, f.oov_id, ids)
        sparse[:, j] = ids + offset
    dense = np.empty((n, len(spec.dense)), dtype=np.float32)
    for j, f in enumerate(spec.dense):
        values = np.asarray(batch.column(f.name).to_numpy(zero_copy_only=False), dtype=np.float32)
        bad = ~np.isfinite(values)
        if bad.any():
            raise MtlrecError(
                f"{source}: dense column '{f.name}' has {int(bad.sum())} NaN/inf/missing values"
            )
        dense[:, j] = values
    return torch.from_numpy(sparse), torch.from_numpy(dense)


@torch.no_grad()
def score(
    model: MultiTaskModel, sparse: torch.Tensor, dense: torch.Tensor
) -> dict[str, np.ndarray]:
    """Every model output for a batch: probabilities for binary outputs, values for regression."""
    out = model(sparse, dense)
    return {
        name: (torch.sigmoid(out[name].float()) if kind == "binary" else out[name].float()).numpy()
        for name, kind in model.output_types.items()
    }


def predict(
    run_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    batch_size: int = 65536,
    id_columns: Sequence[str] = (),
    checkpoint: str = BEST,
) -> tuple[int, list[str]]:
    """Score a parquet file in streamed batches (memory bounded by `batch_size` rows)."""
    if batch_size < 1:
        raise MtlrecError(f"--batch-size must be >= 1, got {batch_size}")
    payload, _ = _load_run(str(run_dir), checkpoint)
    model, spec, _ = model_from_checkpoint(payload)
    input_path, output_path = Path(input_path).expanduser(), Path(output_path).expanduser()
    if not input_path.is_file():
        raise MtlrecError(f"{input_path}: input file not found")
    try:
        reader = pq.ParquetFile(input_path)
    except (pa.ArrowInvalid, OSError) as e:
        raise MtlrecError(f"{input_path}: not a readable parquet file ({e})") from None
    names = reader.schema_arrow.names
    needed = [f.name for f in spec.features]
    outputs = list(model.output_types)
    clash = sorted(set(id_columns) & set(outputs))
    if clash:
        raise MtlrecError(f"--id-columns {clash} clash with the model's output columns {outputs}")
    missing = [c for c in needed if c not in names]
    if missing:
        raise MtlrecError(
            f"{input_path}: missing column(s) {missing} that the model needs as input features"
        )
    missing = [c for c in id_columns if c not in names]
    if missing:
        raise MtlrecError(f"{input_path}: has no column(s) {missing} asked for by --id-columns")
    for f in spec.features:
        typ = reader.schema_arrow.field(f.name).type
        ok = (
            pa.types.is_integer(typ)
            if f.kind == "sparse"
            else pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)
        )
        if not ok:
            need = "integer ids" if f.kind == "sparse" else "numbers"
            raise MtlrecError(
                f"{input_path}: {f.kind} column '{f.name}' has type {typ}; it must hold {need}"
            )
    if not output_path.parent.is_dir():
        raise MtlrecError(f"{output_path.parent}: output directory does not exist")

    fd, tmp = tempfile.mkstemp(
        dir=output_path.parent, prefix=f".{output_path.name}.", suffix=".tmp"
    )
    os.close(fd)
    rows, writer = 0, None
    try:
        columns = list(dict.fromkeys([*needed, *id_columns]))
        for batch in reader.iter_batches(batch_size=batch_size, columns=columns):
            sparse, dense = encode_features(batch, spec, f"{input_path} (rows from {rows})")
            preds = score(model, sparse, dense)
            table = pa.table(
                {
                    **{c: batch.column(c) for c in id_columns},
                    **{name: pa.array(preds[name], type=pa.float32()) for name in outputs},
                }
            )
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            rows += batch.num_rows
        if writer is None:  # an empty input: an empty output with the right columns
            schema = pa.schema(
                [reader.schema_arrow.field(c) for c in id_columns]
                + [pa.field(n, pa.float32()) for n in outputs]
            )
            writer = pq.ParquetWriter(tmp, schema)
        writer.close()
        writer = None
        os.replace(tmp, output_path)
    except BaseException:
        if writer is not None:
            writer.close()
        Path(tmp).unlink(missing_ok=True)
        raise
    return rows, outputs


# -- export --------------------------------------------------------------------------------------
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
        unseen = ((sparse_ids < 0) | (sparse_ids >= self.vocab)) & (self.oov >= 0)
        ids = torch.where(unseen, self.oov.expand_as(sparse_ids), sparse_ids)
        out = self.model(ids + self.offsets, dense)
        cols = [
            torch.sigmoid(out[n].float()) if b else out[n].float()
            for n, b in zip(self.names, self.binary, strict=True)
        ]
        return torch.stack(cols, dim=1)


def export_main(argv: Sequence[str]) -> int:
    p = _Parser(prog="mtlrec export", description="Export a run's best model for serving.")
    p.add_argument("run_dir")
    p.add_argument("--format", required=True, choices=["torchscript", "onnx"])
    p.add_argument("--output", default=None, help="directory to write (default RUN_DIR/export)")
    p.add_argument("--checkpoint", default=BEST)
    p.add_argument("--sample-rows", type=int, default=1024, help="rows of the equivalence check")
    args = p.parse_args(list(argv))
    result = export(args.run_dir, args.format, args.output, args.checkpoint, args.sample_rows)
    print(f"wrote {result['model_file']} and {result['spec_file']}")
    print(
        f"check: {args.format} vs PyTorch on {result['sample_rows']:,} sample rows: max |diff| "
        f"{result['max_abs_diff']:.2e} <= {EXPORT_TOLERANCE:g}: OK"
    )
    return 0


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
    payload, ckpt = _load_run(str(run_dir), checkpoint)
    model, spec, _ = model_from_checkpoint(payload)
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
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{model_file.name}.", suffix=".tmp")
    os.close(fd)
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
    info = {
        "format": fmt,
        "model_file": model_file.name,
        "checkpoint": str(ckpt),
        "model": payload["model_name"],
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
            "kinds": [model.output_types[n] for n in wrapper.names],
            "note": "probabilities for binary outputs, values for regression outputs",
        },
        "check": {"sample_rows": sample_rows, "max_abs_diff": diff, "tolerance": EXPORT_TOLERANCE},
    }
    atomic_write_json(out_dir / "export.json", info)
    return {
        "model_file": model_file,
        "spec_file": spec_file,
        "max_abs_diff": diff,
        "sample_rows": sample_rows,
        "outputs": wrapper.names,
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
            buf,
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
