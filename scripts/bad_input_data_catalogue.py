"""The data cases of scripts/bad_inputs.py's catalogue: a damaged or edited prepared dataset
(checksums, legacy datasets without them, wrong types in spec.json, bad values in a split) and bad
raw files for `mtlrec prepare` (missing, empty, malformed, 10 MB cells, damaged pages, ...)."""

from __future__ import annotations

from bad_input_cases import (
    NO_MANIFEST,
    PREPARE,
    TRAIN,
    Case,
    W,
    cell,
    chain,
    damage_page,
    edit_rows,
    feature,
    first_is,
    flip,
    remove,
    set_column,
    spec_edit,
    table_edit,
    write,
)

T, D = TRAIN, ("data/tiny",)
MISMATCH = "checksum mismatch"


def first_train_value(column: str, value):
    """The first row of the prepared train split holds `value` in `column`."""
    return table_edit("data/tiny/train.parquet", set_column(column, first_is(value, column)))


def zeros(t):
    return [0] * t.num_rows


GZ_YAML = """\
name: gz
preparer: csv
path: data/gz
raw_dir: raw3
files: {train: train.csv.gz, val: val.csv.gz, test: test.csv.gz}
sparse: [user, item, city]
dense: [price, age]
targets: {ctr: {label: click}, cvr: {label: buy, where: click}}
"""

DAMAGED = [
    Case(
        "flipped byte in a split", T, prep=flip("data/tiny/train.parquet"), says=MISMATCH, protect=D
    ),  # fmt: skip
    Case(
        "flipped byte in spec.json",
        T,
        prep=flip("data/tiny/spec.json", 40),
        says=MISMATCH,
        protect=D,
    ),  # fmt: skip
    Case(
        "flipped bytes in encoders.json",
        T,
        prep=flip("data/tiny/encoders.json", 20, 4),
        says=MISMATCH,
        protect=D,
    ),  # fmt: skip
    Case(
        "flipped byte in vocab.parquet",
        T,
        prep=flip("data/tiny/vocab.parquet"),
        says=MISMATCH,
        protect=D,
    ),  # fmt: skip
    Case(
        "flipped split while streaming",
        [*T, "streaming=enabled"],
        prep=flip("data/tiny/train.parquet", count=64),
        says=MISMATCH,
        protect=D,
    ),
    Case(
        "truncated split",
        T,
        prep=lambda r: (r / "data/tiny/val.parquet").write_bytes(
            (r / "data/tiny/val.parquet").read_bytes()[:-10]
        ),
        says="bytes, but checksums.json recorded",
        protect=D,
    ),
    Case("deleted split", T, prep=remove("data/tiny/val.parquet"), says="val.parquet", protect=D),
    Case(
        "damaged checksums.json",
        T,
        prep=write("data/tiny/checksums.json", '{"version": 1, "files": ['),
        says="not a valid checksum manifest",
        protect=D,
    ),
    Case(
        "dataset prepared before checksums",
        T,
        prep=NO_MANIFEST,
        expect="ok",
        says="no checksums.json (published before datasets carried checksums)",
    ),
    Case(
        "damaged page, no checksums",
        T,
        prep=chain(NO_MANIFEST, damage_page("data/tiny/train.parquet", "user")),
        says="not a readable parquet file",
        protect=D,
    ),
    Case(
        "damaged page, no checksums, streaming",
        [*T, "streaming=enabled"],
        prep=chain(NO_MANIFEST, damage_page("data/tiny/train.parquet", "user")),
        says="not readable",
        protect=D,
    ),
    Case(
        "spec vocab_size '1001'",
        T,
        prep=spec_edit(feature("user", "vocab_size", "1001")),
        says="vocab_size",
    ),  # fmt: skip
    Case(
        "spec vocab_size 1001.5",
        T,
        prep=spec_edit(feature("user", "vocab_size", 1001.5)),
        says="vocab_size",
    ),  # fmt: skip
    Case("spec oov_id '0'", T, prep=spec_edit(feature("user", "oov_id", "0")), says="oov_id"),
    Case(
        "spec labels a string", T, prep=spec_edit(lambda d: d.update(labels="click")), says="labels"
    ),  # fmt: skip
    Case(
        "spec splits a list", T, prep=spec_edit(lambda d: d.update(splits=["train"])), says="splits"
    ),  # fmt: skip
    Case(
        "spec.json not JSON",
        T,
        prep=chain(NO_MANIFEST, write("data/tiny/spec.json", "{")),
        says="not valid JSON",
    ),  # fmt: skip
    Case("spec.json deleted", T, prep=remove("data/tiny/spec.json"), says="spec.json"),
    *(
        Case(name, T, prep=first_train_value(column, value), says=says)
        for name, column, value, says in [
            ("label 2 in a binary task", "click", 2, "outside {0,1}"),
            ("NaN label", "click", float("nan"), "NaN/inf/missing"),
            ("negative id", "item", -3, "negative ids"),
            ("inf in a dense column", "price", float("inf"), "NaN/inf/missing"),
        ]
    ),
    Case(
        "ids as strings",
        T,
        prep=table_edit(
            "data/tiny/train.parquet",
            set_column("item", lambda t: [str(v) for v in t["item"].to_pylist()]),
        ),
        says="must hold integer ids",
    ),
    Case(
        "missing column in a split",
        T,
        prep=table_edit("data/tiny/train.parquet", lambda t: t.drop_columns(["item"])),
        says="missing column(s) ['item']",
    ),
    Case(
        "labels all one class",
        T,
        prep=table_edit(
            "data/tiny/val.parquet",
            lambda t: set_column("buy", zeros)(set_column("click", zeros)(t)),
        ),
        says="all 200 rows have label click=0",
        expect="ok",
    ),
    Case(
        "ids beyond the vocabulary, with an oov id",
        T,
        prep=spec_edit(feature("user", "vocab_size", 3)),
        says="beyond the vocabulary",
        expect="ok",
    ),
    Case(
        "empty split",
        T,
        prep=table_edit("data/tiny/val.parquet", lambda t: t.slice(0, 0)),
        says="the split is empty",
    ),
]

RAW = "raw2/train.csv"
RAW_CASES = [
    Case("raw file missing", PREPARE, prep=remove("raw2/val.csv"), says="val.csv"),
    Case("raw file empty", PREPARE, prep=write(RAW, ""), says="empty"),
    Case(
        "raw file header only", PREPARE, prep=edit_rows(RAW, lambda r: r[:1]), says="no data rows"
    ),  # fmt: skip
    Case(
        "raw column missing",
        PREPARE,
        prep=edit_rows(RAW, lambda r: [",".join(x.split(",")[:-3] + x.split(",")[-2:]) for x in r]),
        says="not found",
    ),
    Case(
        "malformed row",
        PREPARE,
        prep=edit_rows(RAW, lambda r: r[:5] + [r[5] + ",7"] + r[6:]),
        says="malformed row",
    ),  # fmt: skip
    Case(
        "not a number in a dense column",
        PREPARE,
        prep=edit_rows(RAW, cell(5, 3, "abc")),
        says="not a number",
    ),  # fmt: skip
    Case("binary label 2", PREPARE, prep=edit_rows(RAW, cell(5, 5, "2")), says="click"),
    Case(
        "column named twice",
        PREPARE,
        prep=edit_rows(RAW, lambda r: [r[0].replace("city", "item")] + r[1:]),
        says="appears twice",
    ),
    Case(
        "10 MB cell",
        PREPARE,
        prep=edit_rows(RAW, cell(5, 0, "u" + "x" * (10 << 20))),
        says="+dataset.block_size_mb=",
    ),  # fmt: skip
    Case(
        "damaged raw parquet page",
        ["prepare", "--config-dir", f"{W}/conf", "dataset=rawpq"],
        prep=damage_page("rawpq/train.parquet", "user"),
        says="the file is damaged",
        protect=("data/rawpq",),
    ),
    Case(
        "CSV with a byte-order mark",
        PREPARE,
        prep=lambda r: (r / RAW).write_bytes(b"\xef\xbb\xbf" + (r / RAW).read_bytes()),
        expect="ok",
        says="prepared rawcase",
    ),
    Case(
        "raw file not UTF-8",
        PREPARE,
        prep=write(RAW, b"\xff\xfeu\x00s\x00\n\x00"),
        says="train.csv",
    ),  # fmt: skip
    Case(
        "prepare over an existing dataset",
        ["prepare", "--config-dir", f"{W}/conf", "dataset=tiny"],
        says="overwrite=true",
        protect=D,
    ),
    Case("prepare without a dataset", ["prepare"], says="say which dataset"),
    Case(
        "corrupt gzip raw file",
        ["prepare", "--config-dir", f"{W}/conf", "dataset=gz"],
        prep=chain(
            write("conf/dataset/gz.yaml", GZ_YAML),
            write("raw3/train.csv.gz", b"\x1f\x8b\x08\x00garbage" * 50),
            write("raw3/val.csv.gz", b"\x1f\x8b\x08\x00garbage"),
            write("raw3/test.csv.gz", b"\x1f\x8b\x08\x00garbage"),
        ),
        says="train.csv.gz",
        protect=("data/gz",),
    ),
    Case(
        "prepare with a block size of 0",
        [*PREPARE, "+dataset.block_size_mb=0"],
        says="block_size_mb",
    ),  # fmt: skip
    Case(
        "prepare a generated dataset",
        ["prepare", "dataset=synthetic_ccp"],
        says="generated on first use",
    ),  # fmt: skip
    Case(
        "dataset yaml that does not parse",
        ["prepare", "--config-dir", f"{W}/conf", "dataset=broken"],
        prep=write("conf/dataset/broken.yaml", "name: [broken\n"),
        says="not valid YAML",
    ),
]
for case in RAW_CASES:  # nothing may be published by a failed prepare
    if case.expect == "error" and not case.protect:
        case.protect = ("data/rawcase",)
