"""The catalogue of scripts/bad_inputs.py: every case a user can meet, as a `Case`.

Groups: train configs (found before Hydra starts), a damaged or edited prepared dataset, bad raw
files for `mtlrec prepare`, run dirs / resume / checkpoints / full disks, evaluate / predict /
export / compare. `says` is text the one line must hold; `protect` lists what must not change.
"""

from __future__ import annotations

from bad_input_cases import (
    NO_MANIFEST,
    PREDICT,
    PREPARE,
    RESUME,
    TRAIN,
    Case,
    W,
    cell,
    chain,
    copy_without,
    damage_page,
    edit_rows,
    feature,
    first_is,
    flip,
    gone,
    remove,
    set_column,
    spec_edit,
    table_edit,
    write,
)

T, D = TRAIN, ("data/tiny",)
NO_SPACE = "No space left on device"
MISMATCH = "checksum mismatch"

CONFIG = [
    Case("unknown model", [*T, "model=foo"], says="unknown model 'foo'"),
    Case("unknown dataset", ["train", "dataset=foo"], says="unknown dataset 'foo'"),
    Case("override key typo", [*T, "trainer.lrr=0.1"], says="did you mean 'trainer.lr'"),
    Case("unparsable override", [*T, "trainer.lr=[1"], says="cannot parse the override"),
    Case("batch size 0", [*T, "trainer.batch_size=0"], says="trainer.batch_size"),
    Case("batch size 1.5", [*T, "trainer.batch_size=1.5"], says="trainer.batch_size"),
    Case("no experts", [*T, "model=mmoe", "model.num_experts=0"], says="model.num_experts"),
    Case("experts abc", [*T, "model=mmoe", "model.num_experts=abc"], says="model.num_experts"),
    Case("grad clip abc", [*T, "trainer.grad_clip_norm=abc"], says="expected a number or null"),
    Case("empty expert dims", [*T, "model=mmoe", "model.expert_dims=[]"], says="expert_dims"),
    Case("negative tower dims", [*T, "model=mmoe", "model.tower_dims=[-1]"], says="tower_dims"),
    Case("embedding dim 0", [*T, "model.embedding_dim=0"], says="model.embedding_dim"),
    Case("lr 0", [*T, "trainer.lr=0"], says="trainer.lr"),
    Case("lr negative", [*T, "trainer.lr=-0.1"], says="trainer.lr"),
    Case("checkpoint every 0", [*T, "checkpoint.every_n_steps=0"], says="every_n_steps"),
    Case("epochs negative", [*T, "trainer.epochs=-1"], says="trainer.epochs"),
    Case("unknown task", [*T, "dataset.tasks=[foo]"], says="unknown task(s) ['foo']"),
    Case(
        "streaming buffer 0",
        [*T, "streaming=enabled", "streaming.shuffle_buffer=0"],
        says="streaming.shuffle_buffer",
    ),
    Case("resume of a missing dir", ["train", "resume=nowhere"], says="no such run dir"),
    Case("resume with -m", ["train", "-m", f"resume={W}/run"], says="cannot be combined"),
    Case(
        "config dir missing",
        ["train", "--config-dir", "my_cnf", "dataset=tiny"],
        says="no such directory",
    ),
    Case(
        "config dir is a file",
        ["train", "--config-dir", "conf/dataset/tiny.yaml", "dataset=tiny"],
        says="is a file, not a directory",
    ),
    Case(
        "dataset typo in your config dir",
        ["train", "--config-dir", f"{W}/conf", "dataset=tny"],
        says="unknown dataset 'tny'",
    ),
    Case(
        "run dir under a file",
        [*T, f"hydra.run.dir={W}/afile/run"],
        prep=write("afile", "x"),
        says="cannot create the run dir",
    ),
    Case(
        "prepared dataset dir missing",
        [*T[:3], "dataset=prepared", f"dataset.path={W}/nowhere", *T[4:]],
        says="does not exist",
    ),
    Case(
        "prepared dataset dir without spec",
        [*T[:3], "dataset=prepared", f"dataset.path={W}/raw", *T[4:]],
        says="holds no spec.json",
    ),
    Case("unknown command", ["evaluat"], says="did you mean 'evaluate'"),
    Case(
        "train into an existing run dir",
        [*T[:-1], f"hydra.run.dir={W}/run"],
        says="already holds a run",
        protect=("run",),
    ),
]

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
    Case(
        "label 2 in a binary task",
        T,
        prep=table_edit("data/tiny/train.parquet", set_column("click", first_is(2, "click"))),
        says="outside {0,1}",
    ),
    Case(
        "NaN label",
        T,
        prep=table_edit(
            "data/tiny/train.parquet", set_column("click", first_is(float("nan"), "click"))
        ),
        says="NaN/inf/missing",
    ),
    Case(
        "negative id",
        T,
        prep=table_edit("data/tiny/train.parquet", set_column("item", first_is(-3, "item"))),
        says="negative ids",
    ),
    Case(
        "inf in a dense column",
        T,
        prep=table_edit(
            "data/tiny/train.parquet", set_column("price", first_is(float("inf"), "price"))
        ),
        says="NaN/inf/missing",
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

RUN = ("run",)
RUNS = [
    Case(
        "resume with another lr",
        [*RESUME, "trainer.lr=0.01"],
        says="differ from the run's config",
        protect=RUN,
    ),  # fmt: skip
    Case("resume with another model", [*RESUME, "model=mmoe"], says="model", protect=RUN),
    Case(
        "last.pt is a directory",
        [*RESUME, "trainer.epochs=2"],
        prep=chain(
            remove("run/checkpoints/last.pt"), lambda r: (r / "run/checkpoints/last.pt").mkdir()
        ),
        says="is a directory",
        protect=RUN,
    ),
    Case(
        "resume of a dir that is no run",
        ["train", f"resume={W}/raw"],
        says="not a run dir",
        protect=("raw",),
    ),  # fmt: skip
    Case(
        "flipped bytes in last.pt",
        [*RESUME, "trainer.epochs=2"],
        prep=flip("run/checkpoints/last.pt", count=64),
        says="last.pt",
        protect=RUN,
    ),
    Case(
        "flipped bytes in best.pt",
        ["evaluate", f"{W}/run"],
        prep=flip("run/checkpoints/best.pt", count=64),
        says="best.pt",
        protect=RUN,
    ),
    Case(
        "full disk during a checkpoint write",
        T,
        env={"MTLREC_FAULT_NO_SPACE": "last.pt"},
        says=NO_SPACE,
    ),
    Case(
        "full disk at the start", T, env={"MTLREC_FAULT_NO_SPACE": "metrics.json:0"}, says=NO_SPACE
    ),  # fmt: skip
    Case(
        "full disk while Hydra writes its config",
        T,
        env={"MTLREC_FAULT_NO_SPACE": "config.yaml:0"},
        says=NO_SPACE,
        check=gone("new"),
    ),
    Case(
        "full disk while a resume writes its config",
        [*RESUME, "trainer.epochs=2"],
        env={"MTLREC_FAULT_NO_SPACE": "config.yaml:0"},
        says=NO_SPACE,
        protect=RUN,
    ),
]

OUT = f"{W}/preds.parquet"
INFERENCE = [
    Case("evaluate a missing dir", ["evaluate", f"{W}/nowhere"], says="no such run dir"),
    Case("evaluate a dir that is no run", ["evaluate", f"{W}/raw"], says="checkpoint not found"),
    Case(
        "evaluate on damaged data",
        ["evaluate", f"{W}/run", "--data", f"{W}/data/tiny"],
        prep=flip("data/tiny/test.parquet"),
        says=MISMATCH,
        protect=D,
    ),
    Case(
        "predict onto an existing output",
        [*PREDICT, "--output", OUT],
        says="already exists",
        protect=("preds.parquet",),
    ),  # fmt: skip
    Case(
        "predict onto its input",
        [*PREDICT, "--output", f"{W}/data/tiny/test.parquet", "--overwrite"],
        says="is the --input file",
        protect=D,
    ),
    Case(
        "predict onto a directory",
        [*PREDICT, "--output", f"{W}/raw"],
        says="is a directory",
        protect=("raw",),
    ),  # fmt: skip
    Case(
        "predict input without a feature column",
        ["predict", f"{W}/run", "--input", f"{W}/in.parquet", "--output", f"{W}/p2.parquet"],
        prep=copy_without("data/tiny/test.parquet", "in.parquet", ["item"]),
        says="missing column(s) ['item']",
        check=gone("p2.parquet"),
    ),
    Case(
        "predict input that is not parquet",
        ["predict", f"{W}/run", "--input", f"{W}/raw/test.csv", "--output", f"{W}/p2.parquet"],
        says="test.csv",
        check=gone("p2.parquet"),
    ),
    Case(
        "predict input missing",
        ["predict", f"{W}/run", "--input", f"{W}/none.parquet", "--output", f"{W}/p2.parquet"],
        says="none.parquet",
        check=gone("p2.parquet"),
    ),
    Case(
        "export to an unknown format",
        ["export", f"{W}/run", "--format", "tflite"],
        says="invalid choice",
    ),  # fmt: skip
    Case("compare of nothing", ["compare", f"{W}/nowhere"], says="no such file or directory"),
]

CASES: list[Case] = [*CONFIG, *DAMAGED, *RAW_CASES, *RUNS, *INFERENCE]
