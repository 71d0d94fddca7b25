"""The catalogue's cases about what a command may write over (scripts/bad_inputs.py runs them).

Every writer (prepare, predict, compare --output / --plot, export) against a read-only dir, a
full disk, a path inside a run dir / prepared dataset / export and a path equal to an input;
`prepare overwrite=true` against what it must never delete; non-finite dense values; unused raw
columns; an unquoted run dir with spaces; a CSV header longer than a read block. Importing this
module adds its cases to bad_input_catalogue.CASES.
"""

from __future__ import annotations

from bad_input_cases import PREDICT, PREPARE, TRAIN, Case, W, cell, chain, edit_rows, gone, write
from bad_input_catalogue import CASES

NO_SPACE = "No space left on device"
READ_ONLY = "Read-only file system"
IN_RUN = "lies in the run dir"
IN_DATA = "lies in the prepared dataset"
RUN, DATA, RAW = ("run",), ("data/tiny",), ("raw2",)
TINY = ["prepare", "--config-dir", f"{W}/conf", "dataset=tiny", "overwrite=true"]
RO = {"MTLREC_FAULT_READ_ONLY": "ro"}
MKRO = write("ro/.keep", "")


def full(name: str) -> dict[str, str]:
    return {"MTLREC_FAULT_NO_SPACE": name}


def unwritable(
    what: str, argv: list[str], flag: str, out: str, fills: str, ro_out: str | None = None
) -> list[Case]:
    """`what` writing `flag W/out` on a full disk (writing a file named `fills` fails) and to
    `ro/ro_out` in a read-only dir: one line each, and nothing of the output is left."""
    ro = f"ro/{ro_out or out}"
    return [
        Case(
            f"safety: {what} on a full disk",
            [*argv, flag, f"{W}/{out}"],
            env=full(fills),
            says=NO_SPACE,
            check=gone(out),
        ),
        Case(
            f"safety: {what} into a read-only dir",
            [*argv, flag, f"{W}/{ro}"],
            prep=MKRO,
            env=RO,
            says=READ_ONLY,
            check=gone(ro),
        ),
    ]


def add_column(name: str):
    def fn(rows: list[str]) -> list[str]:
        return [rows[0] + f",{name}"] + [r + f",{i}" for i, r in enumerate(rows[1:])]

    return fn


def in_every_split(name: str):
    return chain(*(edit_rows(f"raw2/{s}.csv", add_column(name)) for s in ("train", "val", "test")))


PREPARE_CASES = [
    Case(
        "safety: prepare overwrite=true onto the raw dir",
        [*PREPARE, "overwrite=true", "dataset.path=raw2"],
        says="is or holds the raw input",
        protect=RAW,
    ),
    Case(
        "safety: prepare overwrite=true onto a raw file",
        [*PREPARE, "overwrite=true", "dataset.path=raw2/train.csv"],
        says="is or holds the raw input",
        protect=RAW,
    ),
    Case(
        "safety: prepare overwrite=true onto the current dir",
        [*PREPARE, "overwrite=true", "dataset.path=."],
        says="is the current directory or one of its parents",
        protect=(*RAW, *RUN, *DATA),
    ),
    Case(
        "safety: prepare overwrite=true onto a run dir",
        [*PREPARE, "overwrite=true", "dataset.path=run"],
        says="holds no spec.json",
        protect=RUN,
    ),
    Case(
        "safety: prepare overwrite=true onto a dataset holding a user's file",
        TINY,
        prep=write("data/tiny/notes.txt", "mine"),
        says="holds notes.txt, which mtlrec did not write there",
        protect=DATA,
    ),
    Case(
        "safety: prepare overwrite=true onto a dataset holding a .git",
        TINY,
        prep=write("data/tiny/.git/HEAD", "ref: refs/heads/main\n"),
        says="holds .git",
        protect=DATA,
    ),
    Case(
        "safety: prepare overwrite=true of a prepared dataset",
        TINY,
        says="prepared tiny at",
        expect="ok",
        protect=("raw",),
    ),
    Case(
        "safety: prepare on a full disk",
        PREPARE,
        env=full("train.parquet"),
        says=NO_SPACE,
        check=gone("data/rawcase"),
    ),
    Case(
        "safety: prepare overwrite=true on a full disk keeps the old dataset",
        TINY,
        env=full("val.parquet"),
        says=NO_SPACE,
        protect=DATA,
    ),
    Case(
        "safety: prepare into a read-only data dir",
        PREPARE,
        env={"MTLREC_FAULT_READ_ONLY": "data"},
        says=READ_ONLY,
        check=gone("data/rawcase"),
    ),
    *(  # the line names the file, its line, the column and the value
        Case(
            f"safety: {what} in a dense CSV column",
            PREPARE,
            prep=edit_rows(f"raw2/{split}.csv", cell(row, column, value)),
            says=f"raw2/{split}.csv: line {row + 1}: dense column {name!r} holds {shown}",
            check=gone("data/rawcase"),
        )
        for what, split, row, column, value, name, shown in [
            ("1e308", "train", 2, 3, "1e308", "price", "1e+308"),
            ("inf", "val", 5, 4, "-inf", "age", "-inf"),
            ("NaN", "test", 1, 3, "NaN", "price", "nan"),
        ]
    ),
    Case(
        "safety: 1e308 with dense_nonfinite=clip",
        [*PREPARE, "+dataset.dense_nonfinite=clip"],
        prep=edit_rows("raw2/train.csv", cell(2, 3, "1e308")),
        says="prepared rawcase at",
        expect="ok",
    ),
    Case(
        "safety: a raw column the config does not list",
        PREPARE,
        prep=in_every_split("timestamp"),
        says="unused raw columns (not in the dataset config, not prepared): timestamp",
        expect="ok",
    ),
    Case(
        "safety: a CSV header longer than one read block",
        [*PREPARE, "+dataset.block_size_mb=0.0001"],
        prep=in_every_split("a_column_name_" * 20),
        says="line 1 (the header) is",
        check=gone("data/rawcase"),
    ),
    Case(
        "safety: an unquoted run dir with spaces and non-ASCII letters",
        [*TRAIN[:-1], f"hydra.run.dir={W}/ü n i ☃"],
        says="quote the value",
        check=gone("ü n i ☃"),
    ),
]

P2 = f"{W}/p2.parquet"
PREDICT_CASES = [
    Case(
        "safety: predict --output onto best.pt with --overwrite",
        [*PREDICT, "--output", f"{W}/run/checkpoints/best.pt", "--overwrite"],
        says=IN_RUN,
        protect=RUN,
    ),
    Case(
        "safety: predict --output onto metrics.json with --overwrite",
        [*PREDICT, "--output", f"{W}/run/metrics.json", "--overwrite"],
        says=IN_RUN,
        protect=RUN,
    ),
    Case(
        "safety: predict --output a new file in a prepared dataset",
        [*PREDICT, "--output", f"{W}/data/tiny/scores.parquet"],
        says=IN_DATA,
        protect=DATA,
        check=gone("data/tiny/scores.parquet"),
    ),
    *unwritable("predict", PREDICT, "--output", "p2.parquet", "p2.parquet", "p.parquet"),
]

COMPARE = ["compare", f"{W}/run"]
COMPARE_CASES = [
    Case(
        "safety: compare --output onto a run's metrics.json",
        [*COMPARE, "--output", f"{W}/run/metrics.json"],
        says=IN_RUN,
        protect=RUN,
    ),
    Case(
        "safety: compare --output onto the compared metrics.json with --overwrite",
        ["compare", f"{W}/run/metrics.json", "--output", f"{W}/run/metrics.json", "--overwrite"],
        says="is the compared",
        protect=RUN,
    ),
    Case(
        "safety: compare --output onto an existing file",
        [*COMPARE, "--output", f"{W}/preds.parquet"],
        says="already exists; pass --overwrite to replace it",
        protect=("preds.parquet",),
    ),
    *unwritable("compare --output", COMPARE, "--output", "t.md", "t.md"),
    Case(
        "safety: compare --plot into a run dir",
        [*COMPARE, "--plot", f"{W}/run/plots"],
        says=IN_RUN,
        protect=RUN,
        check=gone("run/plots"),
    ),
    Case(
        "safety: compare --plot onto the compared run dir",
        [*COMPARE, "--plot", f"{W}/run"],
        says="is the input",
        protect=RUN,
    ),
    *unwritable("compare --plot", COMPARE, "--plot", "plots", "learning_curves.png"),
]

EXPORT = ["export", f"{W}/run", "--format", "torchscript", "--sample-rows", "64"]
EXPORT_CASES = [
    Case(
        "safety: export --output into a run's checkpoints",
        [*EXPORT, "--output", f"{W}/run/checkpoints"],
        says=IN_RUN,
        protect=RUN,
    ),
    Case(
        "safety: export --output onto the run dir itself",
        [*EXPORT, "--output", f"{W}/run"],
        says="is the input",
        protect=RUN,
    ),
    Case(
        "safety: export --output onto a prepared dataset",
        [*EXPORT, "--output", f"{W}/data/tiny"],
        says=IN_DATA,
        protect=DATA,
    ),
    Case(
        "safety: export --output onto a dir of the user's files",
        [*EXPORT, "--output", f"{W}/raw"],
        says="which is not part of an export",
        protect=("raw",),
    ),
    Case(
        "safety: export into a run dir on a full disk",
        EXPORT,
        env=full("model.pt"),
        says=NO_SPACE,
        protect=RUN,
        check=gone("run/export"),
    ),
    *unwritable("export", EXPORT, "--output", "ex", "model.pt"),
]

SAFETY_CASES = [*PREPARE_CASES, *PREDICT_CASES, *COMPARE_CASES, *EXPORT_CASES]
CASES.extend(SAFETY_CASES)  # registered: bad_inputs.py runs them with the rest
