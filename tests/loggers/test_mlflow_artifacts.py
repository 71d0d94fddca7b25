"""The MLflow run's checkpoint artifact loads: best.pt goes with the files it names (its table
files, its DCP folders' files), under the same paths, and nothing else of checkpoints/."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from mtlrec.loggers.mlflow_logger import MlflowLogger
from mtlrec.training import dcp_files
from mtlrec.training.table_files import REF_KEY, TABLES_KEY, assemble, file_digest

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from test_dcp_files import _folder, _payload  # noqa: E402

pytest.importorskip("mlflow")


class _ArtifactStore:
    """What MLflow's log_artifact does with a local store: the file copied under its folder."""

    def __init__(self, root: Path):
        self.root = root

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None) -> None:
        folder = self.root / (artifact_path or "")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(local_path, folder)


def _log(run_dir: Path, store: Path) -> None:
    logger = MlflowLogger.__new__(MlflowLogger)  # no tracking server: only the artifact part
    logger.client, logger.run_id = _ArtifactStore(store), "run"
    logger._log_artifacts(run_dir)


def test_best_pt_is_logged_with_its_dcp_folders(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    payload, state, best = _payload(checkpoints)
    _folder(checkpoints, "c", 2)  # a folder best.pt does not name
    torch.save(payload, checkpoints / "best.pt")
    _log(tmp_path / "run", tmp_path / "store")

    copy = tmp_path / "store" / "checkpoints"
    assert sorted(p.name for p in (copy / "sharded").iterdir()) == ["a", "b"]
    out = dcp_files.gather(torch.load(copy / "best.pt", weights_only=True), copy / "best.pt")
    table = "embedding.tables.0.weight"
    assert torch.equal(out["model_state"][table], state[f"model_state/{table}"])
    assert torch.equal(out["train_state"]["best_state"][table], best[f"model_state/{table}"])


def test_best_pt_is_logged_with_its_table_files(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / "tables").mkdir(parents=True)
    values = torch.randn(6, 4)
    base = checkpoints / "tables" / "e1-0a1b2c3d4e5f.base.pt"
    torch.save({"format": "mtlrec-table-rows", "kind": "base", "values": {"t": values}}, base)
    torch.save({}, checkpoints / "tables" / "e1-ffffffffffff.base.pt")  # named by none
    entry = {"file": base.name, "kind": "base", "rows": 0, "sha256": file_digest(base)}
    payload = {
        "model_state": {"t": {REF_KEY: "t", "chain": "last"}},
        TABLES_KEY: {"chains": {"last": [entry]}, "best": None, "shapes": {"t": [6, 4]}},
    }
    outside = {"file": "../../../secret.txt", "kind": "delta", "rows": 0, "sha256": ""}
    (tmp_path / "secret.txt").write_text("not the run's")
    best = {**payload, TABLES_KEY: {**payload[TABLES_KEY], "chains": {"last": [entry, outside]}}}
    torch.save(best, checkpoints / "best.pt")
    _log(tmp_path / "run", tmp_path / "store")
    assert not list((tmp_path / "store").rglob("secret.txt"))  # a name out of checkpoints/
    torch.save(payload, checkpoints / "best.pt")
    _log(tmp_path / "run", tmp_path / "store")

    copy = tmp_path / "store" / "checkpoints"
    assert [p.name for p in (copy / "tables").iterdir()] == [base.name]
    out = assemble(torch.load(copy / "best.pt", weights_only=True), copy / "best.pt")
    assert torch.equal(out["model_state"]["t"], values)
