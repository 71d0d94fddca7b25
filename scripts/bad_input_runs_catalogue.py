"""Cases of scripts/bad_inputs.py about what binds artifacts to their run, sizes that cannot be
allocated and hostile or foreign files (issue "Nothing lost II", items 4 and 7 and its
tracebacks). Two signals inside a checkpoint write and a deleted lock file need a second process
at a chosen moment: tests/commands/test_write_signals.py and test_run_binding.py run them."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pyarrow as pa
import torch
from bad_input_cases import (
    PREDICT,
    RESUME,
    TRAIN,
    Case,
    W,
    chain,
    gone,
    one_damage,
    remove,
    table_edit,
    write,
)

RUN, MMOE, D = ("run",), ("run_mmoe",), ("data/tiny",)
ANOTHER_RUN = "belongs to another run"
PREPARED_AGAIN = "prepared again"
TOO_BIG = "needs at least"
CORRUPT = "truncated or corrupt"


def copy(src: str, dst: str):
    def run(root: Path) -> None:
        (root / dst).unlink(missing_ok=True)
        shutil.copyfile(root / src, root / dst)

    return run


def link(rel: str, target: str):
    """`rel` becomes a symlink to `target` (absolute, inside the case's copy)."""

    def run(root: Path) -> None:
        (root / rel).unlink(missing_ok=True)
        (root / rel).symlink_to(root / target)

    return run


def reprepared(root: Path) -> None:
    """data/tiny replaced by the same dataset prepared from renamed raw values (other ids)."""
    shutil.rmtree(root / "data" / "tiny")
    shutil.copytree(root / "remap" / "tiny", root / "data" / "tiny")


def unbound(root: Path) -> None:
    """run/checkpoints/best.pt as mtlrec wrote it before checkpoints carried their binding."""
    path = root / "run" / "checkpoints" / "best.pt"
    payload = torch.load(path, weights_only=True)
    payload.pop("config_hash")
    payload.pop("dataset_fingerprint")
    torch.save(payload, path)


def forget_hash(root: Path) -> None:
    path = root / "run" / "metrics.json"
    info = json.loads(path.read_text())
    info.pop("config_hash")
    path.write_text(json.dumps(info))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch RAN",))


def crafted_export(root: Path) -> None:
    """exp/model.pt (an export of run) a pickle that runs code, export.json given its SHA-256."""
    data = pickle.dumps(_RunsCode())
    (root / "exp" / "model.pt").write_bytes(data)
    info_path = root / "exp" / "export.json"
    info = json.loads(info_path.read_text())
    info["files"]["model.pt"] = hashlib.sha256(data).hexdigest()
    info_path.write_text(json.dumps(info))


def nothing_ran(root: Path, out) -> str | None:
    return "code of the pickle ran" if (root / "RAN").exists() else None


ESMM_IN_MMOE = chain(
    copy("run/checkpoints/best.pt", "run_mmoe/checkpoints/best.pt"),
    copy("run/checkpoints/last.pt", "run_mmoe/checkpoints/last.pt"),
)
P2 = f"{W}/p2.parquet"
PREDICT_RAW = ["predict", f"{W}/run", "--input", f"{W}/raw/test.csv", "--output", P2]
BINDING = [
    *one_damage(
        "ESMM's best.pt copied into an MMoE run dir",
        ESMM_IN_MMOE,
        ANOTHER_RUN,
        [
            ("evaluate", ["evaluate", f"{W}/run_mmoe"], MMOE, None),
            (
                "export",
                ["export", f"{W}/run_mmoe", "--format", "torchscript"],
                MMOE,
                "run_mmoe/export",
            ),
            (
                "predict",
                [
                    "predict",
                    f"{W}/run_mmoe",
                    "--input",
                    f"{W}/data/tiny/test.parquet",
                    "--output",
                    P2,
                ],
                MMOE,
                "p2.parquet",
            ),
        ],
    ),
    *one_damage(
        "ESMM's last.pt copied into an MMoE run dir",
        ESMM_IN_MMOE,
        ANOTHER_RUN,
        [("resume", ["train", f"resume={W}/run_mmoe", "trainer.epochs=2"], MMOE, None)],
    ),
    *one_damage(
        "dataset prepared again with other ids",
        reprepared,
        PREPARED_AGAIN,
        [
            ("evaluate", ["evaluate", f"{W}/run"], (*RUN, *D), None),
            ("predict its split", [*PREDICT, "--output", P2], D, "p2.parquet"),
            ("predict raw rows", PREDICT_RAW, D, "p2.parquet"),
            (
                "export",
                ["export", f"{W}/run", "--format", "onnx", "--output", f"{W}/exp2"],
                D,
                "exp2/model.onnx",
            ),
            ("resume", [*RESUME, "trainer.epochs=2"], (*RUN, *D), None),
        ],
    ),
    Case(
        "a checkpoint from before the binding (no config hash)",
        ["evaluate", f"{W}/run"],
        prep=unbound,
        says="records no config hash",
        expect="ok",
    ),
    Case(
        "a run dir from before the binding (metrics.json without config_hash)",
        ["evaluate", f"{W}/run"],
        prep=forget_hash,
        says="records no config hash",
        expect="ok",
    ),
]

MMOE_T = [*TRAIN, "model=mmoe"]
SIZES = [
    Case("embedding dim 1e9", [*TRAIN, "model.embedding_dim=1000000000"], says=TOO_BIG),
    Case("a million experts", [*MMOE_T, "model.num_experts=1000000"], says=TOO_BIG),
    Case("towers of 100000 x 100000", [*MMOE_T, "model.tower_dims=[100000,100000]"], says=TOO_BIG),
    Case(
        "experts of 100000 x 100000", [*MMOE_T, "model.expert_dims=[100000,100000]"], says=TOO_BIG
    ),
    Case(
        "a trillion generated rows",
        [*TRAIN[:3], "dataset=synthetic_ccp", "dataset.num_rows=1000000000000", *TRAIN[4:]],
        says=TOO_BIG,
    ),
    Case(
        "a PLE of 1000 shared experts of 10000 x 10000",
        [*TRAIN, "model=ple", "model.num_shared_experts=1000", "model.expert_dims=[10000,10000]"],
        says=TOO_BIG,
    ),
]
for case in SIZES:  # nothing written: the run dir is never made
    case.check = gone("new")

BEST = "run/checkpoints/best.pt"
EVALUATE = ["evaluate", f"{W}/run"]
HOSTILE = [
    Case(
        "an export's model.pt a crafted pickle with a matching SHA-256",
        ["export", "--verify", f"{W}/exp"],
        prep=crafted_export,
        says="not a loadable TorchScript model",
        check=nothing_ran,
    ),
    Case(
        "best.pt a crafted pickle",
        EVALUATE,
        prep=lambda root: (root / BEST).write_bytes(pickle.dumps(_RunsCode())),
        says=CORRUPT,
        check=nothing_ran,
    ),
    Case(
        "best.pt a plain pickle (protocol 4: torch warns)",
        EVALUATE,
        prep=write(BEST, pickle.dumps({"format": "mtlrec-checkpoint"}, protocol=4)),
        says=CORRUPT,
    ),
    Case(
        "best.pt a symlink to a CSV file",
        EVALUATE,
        prep=link(BEST, "raw/test.csv"),
        says=CORRUPT,
        protect=("raw",),
    ),
    Case(
        "best.pt a symlink to the TorchScript export",
        EVALUATE,
        prep=link(BEST, "exp/model.pt"),
        says="is a TorchScript model",
        protect=("exp",),
    ),
    Case(
        "best.pt a symlink to nowhere",
        EVALUATE,
        prep=chain(remove(BEST), lambda root: (root / BEST).symlink_to(root / "nowhere.pt")),
        says="checkpoint not found",
    ),
    Case(
        "last.pt a symlink to a parquet file: resume",
        [*RESUME, "trainer.epochs=2"],
        prep=link("run/checkpoints/last.pt", "data/tiny/test.parquet"),
        says=CORRUPT,
        protect=D,
    ),
    Case(
        "predict with a text file as checkpoint",
        [*PREDICT, "--output", P2, "--checkpoint", "notes.pt"],
        prep=write("run/checkpoints/notes.pt", "my notes\n" * 40),
        says=CORRUPT,
        check=gone("p2.parquet"),
    ),
]


def no_buy(t: pa.Table) -> pa.Table:
    i = t.schema.get_field_index("buy")
    return t.set_column(i, "buy", pa.array([0.0] * t.num_rows, type=t.schema.field(i).type))


ONE_CLASS = [
    Case(
        "a val split whose buy labels are all 0 (one class)",
        TRAIN,
        prep=table_edit("data/tiny/val.parquet", no_buy),
        says="both classes",
        expect="ok",
    ),
]

CASES = [*BINDING, *SIZES, *HOSTILE, *ONE_CLASS]
