"""The files of an export dir and their integrity: the dataset encoders copied next to the model,
the SHA-256 of every file in export.json's `files`, checked by `mtlrec export` after writing and
by everything that loads an export (`load_export`, `exported_inputs`, `mtlrec export --verify`).

Raw rows reach an exported model as `exported_inputs(rows, EXPORT_DIR)`: the copied encoders
turn them into the model's per-field id layout exactly as `mtlrec prepare` encoded its rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlrec.data.encoders import ENCODERS_FILE
from mtlrec.data.spec import PAD_ID, SPEC_FILE, DatasetSpec
from mtlrec.errors import MtlrecError

EXPORT_FILE = "export.json"
VOCAB_FILE = "vocab.parquet"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_encoders(dataset_dir: Path | None, out_dir: Path, spec: DatasetSpec) -> list[str]:
    """Copy encoders.json and the vocabulary it names from the run's dataset dir; the names
    copied ([] when the dataset has none, e.g. a generated one, its dir is gone, or it was
    prepared again with other features than the model's `spec`)."""
    for stale in (ENCODERS_FILE, VOCAB_FILE):  # an earlier export's, into the same dir
        (out_dir / stale).unlink(missing_ok=True)
    if dataset_dir is None or not (dataset_dir / ENCODERS_FILE).is_file():
        return []
    try:
        if DatasetSpec.load(dataset_dir).features != spec.features:
            return []
    except MtlrecError:
        return []
    doc = json.loads((dataset_dir / ENCODERS_FILE).read_text())
    names = [ENCODERS_FILE, str(doc.get("vocab_file") or VOCAB_FILE)]
    for name in names:
        if (dataset_dir / name).is_file():
            shutil.copyfile(dataset_dir / name, out_dir / name)
    return [n for n in names if (out_dir / n).is_file()]


def read_manifest(export_dir: Path) -> dict[str, Any]:
    path = export_dir / EXPORT_FILE
    if not path.is_file():
        raise MtlrecError(f"{path}: not found; is {export_dir} a dir written by mtlrec export?")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MtlrecError(f"{path}: not valid JSON ({e}); export again") from None
    if not isinstance(info, dict) or not isinstance(info.get("files"), dict):
        raise MtlrecError(f"{path}: lists no file checksums (`files`); export again")
    odd = [
        n for n in info["files"] if not isinstance(n, str) or Path(n).name != n or n in ("", "..")
    ]
    if odd:
        raise MtlrecError(
            f"{path}: `files` names {odd[0]!r}, not a file of the export dir; export again"
        )
    models = models_of(info) if info.get("format") in FORMAT_FILES else {}
    if not models or any(
        fmt not in FORMAT_FILES
        or not isinstance(m, dict)
        or m.get("model_file") not in info["files"]
        for fmt, m in models.items()
    ):
        raise MtlrecError(f"{path}: names no model file of a known format; export again")
    return info


FORMAT_FILES = {"torchscript": "model.pt", "onnx": "model.onnx"}


def models_of(info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """format -> {"model_file", "check"} of every model an export dir holds (one per format, of
    one checkpoint); an export.json written before `models` existed holds its one model."""
    models = info.get("models")
    if isinstance(models, dict) and models:
        return models
    return {info["format"]: {"model_file": info["model_file"], "check": info.get("check")}}


def verify_export(export_dir: str | Path) -> dict[str, Any]:
    """export.json, once every file it lists has its recorded SHA-256 (one line if not)."""
    export_dir = Path(export_dir).expanduser()
    if not export_dir.is_dir():
        raise MtlrecError(f"{export_dir}: no such export dir")
    info = read_manifest(export_dir)
    for name, want in info["files"].items():
        path = export_dir / name
        if not path.is_file():
            raise MtlrecError(f"{path}: missing, though {EXPORT_FILE} lists it; export again")
        got = sha256(path)
        if got != want:
            raise MtlrecError(
                f"{path}: SHA-256 {got[:16]}... differs from {EXPORT_FILE}'s {str(want)[:16]}...; "
                "the file is corrupt or was changed: export again"
            )
    return info


def stack_outputs(outputs: Any, columns: list[str]) -> np.ndarray:
    """[B, K] numpy from an exported model's outputs: a dict name -> [B] (TorchScript), a list
    in `columns` order (ONNX), or the one [B, K] matrix of an export written before outputs
    were named."""
    if isinstance(outputs, dict):
        outputs = [outputs[c] for c in columns]
    if isinstance(outputs, (list, tuple)):
        if len(outputs) == 1 and np.ndim(outputs[0]) == 2:  # an older export's one matrix
            return np.asarray(outputs[0])
        return np.stack([np.asarray(o) for o in outputs], axis=1)
    return np.asarray(outputs)


def load_export(
    export_dir: str | Path, fmt: str | None = None
) -> tuple[Callable[..., np.ndarray], dict[str, Any]]:
    """(score(sparse_ids, dense) -> [B, K] numpy, export.json) of a checked export dir; `fmt`
    picks the model where the dir holds both (default: the one exported last)."""
    export_dir = Path(export_dir).expanduser()
    info = verify_export(export_dir)
    models = models_of(info)
    fmt = fmt or info["format"]
    if fmt not in models:
        raise MtlrecError(
            f"{export_dir}: holds no {fmt} model (it holds {', '.join(models)}); export it first"
        )
    path = export_dir / models[fmt]["model_file"]
    columns = list((info.get("outputs") or {}).get("columns") or [])
    if fmt == "torchscript":
        try:  # a TorchScript archive holds no pickled Python objects: loading it runs no code
            module = torch.jit.load(str(path))
        except Exception as e:  # a file that is no TorchScript archive (a pickle, a torn file)
            raise _unloadable(path, "TorchScript", e) from None

        def score(sparse_ids, dense):
            with torch.no_grad():
                out = module(torch.as_tensor(sparse_ids), torch.as_tensor(dense))
            return stack_outputs(out, columns)

        return score, info
    try:
        import onnxruntime as ort
    except ImportError:
        raise MtlrecError(
            f"{path}: scoring an ONNX export needs onnxruntime: pip install 'mtlrec[onnx]'"
        ) from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own error types: not a valid ONNX model
        raise _unloadable(path, "ONNX", e) from None

    named = bool(columns) and {o.name for o in session.get_outputs()} >= set(columns)
    wanted = columns if named else None  # an export written before outputs were named: its one

    def score_onnx(sparse_ids, dense):
        feeds = {"sparse_ids": np.asarray(sparse_ids), "dense": np.asarray(dense)}
        return stack_outputs(session.run(wanted, feeds), columns)

    return score_onnx, info


def _unloadable(path: Path, kind: str, e: Exception) -> MtlrecError:
    first = (str(e).strip().splitlines() or [""])[0][:120]
    return MtlrecError(
        f"{path}: not a loadable {kind} model ({type(e).__name__}: {first}), though its "
        f"SHA-256 matches {EXPORT_FILE} (both were replaced?); export again"
    )


def field_ids(sparse: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """Fused ids (the loader's, encode_raw's) -> the exported model's per-field ids (-1 padding)."""
    offsets = torch.zeros(spec.layout.sparse_width, dtype=torch.long)
    for name, (a, b) in spec.layout.sparse.items():
        offsets[a:b] = spec.vocab_offsets[name]
    return torch.where(sparse == PAD_ID, sparse, sparse - offsets)


def exported_inputs(rows: Any, export_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw rows (a CSV/parquet path, a DataFrame, an arrow Table) -> (sparse_ids, dense) for the
    exported model, encoded with the encoders kept in the (checked) export dir."""
    from mtlrec.data.encoders import encode_raw

    export_dir = Path(export_dir).expanduser()
    info = verify_export(export_dir)
    if ENCODERS_FILE not in info["files"]:
        raise MtlrecError(
            f"{export_dir}: the export holds no {ENCODERS_FILE} (its dataset had none); "
            "encode the inputs as its export.json describes"
        )
    sparse, dense, _ = encode_raw(rows, export_dir)
    return field_ids(sparse, DatasetSpec.load(export_dir)), dense


def foreign_file(export_dir: Path) -> str | None:
    """The first entry of an existing dir that is not part of the export there (an export dir may
    hold export.json and the files it lists; any other dir may hold nothing), or None."""
    try:
        listed = set(read_manifest(export_dir)["files"]) | {EXPORT_FILE}
    except MtlrecError:
        listed = set()
    return next((p.name for p in sorted(export_dir.iterdir()) if p.name not in listed), None)


def replace_dir(stage: Path, out_dir: Path) -> None:
    """Put the finished `stage` dir at `out_dir`; an earlier export there is moved aside first
    and removed only once the new one is in place (moved back if that fails)."""
    if not out_dir.exists() or not any(out_dir.iterdir()):
        os.replace(stage, out_dir)  # a missing or empty dir is simply replaced
        return
    old = stage.with_name(stage.name.replace(".tmp-", ".old-", 1))
    os.rename(out_dir, old)
    try:
        os.rename(stage, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_checksums(out_dir: Path, names: list[str]) -> dict[str, str]:
    return {
        name: sha256(out_dir / name) for name in [*names, SPEC_FILE] if (out_dir / name).is_file()
    }


def sample_inputs(spec: DatasetSpec, rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random in-vocabulary ids (bags/sequences of random lengths, -1 padded, weights > 0 where
    filled) and standard-normal dense values, in the export layout (what the check scores)."""
    g = torch.Generator().manual_seed(seed)
    layout = spec.layout
    sparse = torch.full((rows, layout.sparse_width), PAD_ID, dtype=torch.long)
    dense = torch.zeros((rows, layout.dense_width))
    for f in spec.sparse:
        sparse[:, layout.sparse[f.name][0]] = torch.randint(0, f.vocab_size, (rows,), generator=g)
    for f in spec.multi:
        a, b = layout.sparse[f.name]
        lengths = torch.randint(0, f.max_len + 1, (rows, 1), generator=g)
        filled = torch.arange(f.max_len).unsqueeze(0) < lengths
        ids = torch.randint(0, f.vocab_size, (rows, f.max_len), generator=g)
        sparse[:, a:b] = torch.where(filled, ids, torch.full_like(ids, PAD_ID))
        if f.weighted:
            c, d = layout.weights[f.name]
            weights = 0.1 + 2 * torch.rand((rows, f.max_len), generator=g)
            dense[:, c:d] = torch.where(filled, weights, torch.zeros_like(weights))
    for f in spec.dense:
        dense[:, layout.dense[f.name][0]] = torch.randn((rows,), generator=g)
    return sparse, dense


def verify_and_score(export_dir: str | Path, rows: int = 1024) -> tuple[int, int, list[str]]:
    """(files checked, rows scored, the model files scored): an export's checksums, then each of
    its models (TorchScript and/or ONNX) on sample rows of its input layout, giving one finite
    output per listed output (probabilities in [0, 1])."""
    if rows < 1:
        raise MtlrecError(f"--sample-rows must be >= 1, got {rows}")
    export_dir = Path(export_dir).expanduser()
    info = verify_export(export_dir)
    for fmt in models_of(info):
        _score_sample(export_dir, fmt, rows)
    return len(info["files"]), rows, [m["model_file"] for m in models_of(info).values()]


def _score_sample(export_dir: Path, fmt: str, rows: int) -> None:
    score, info = load_export(export_dir, fmt)
    model_file = models_of(info)[fmt]["model_file"]
    sparse, dense = sample_inputs(DatasetSpec.load(export_dir), rows)
    out = score(sparse.numpy(), dense.numpy())
    kinds = info["outputs"]["kinds"]
    binary = np.array([k == "binary" for k in kinds])
    if out.shape != (rows, len(kinds)) or not np.isfinite(out).all():
        raise MtlrecError(
            f"{export_dir / model_file}: scores sample rows as {out.shape} with "
            f"non-finite values or the wrong shape (want ({rows}, {len(kinds)})); export again"
        )
    if ((out[:, binary] < 0) | (out[:, binary] > 1)).any():
        raise MtlrecError(
            f"{export_dir / model_file}: gives probabilities outside [0, 1]; export again"
        )
