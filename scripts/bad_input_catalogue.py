"""The catalogue of scripts/bad_inputs.py: every case a user can meet, as a `Case`.

Groups: train configs, run dirs / resume / checkpoints / full disks, evaluate / predict / export
/ compare here; a damaged or edited prepared dataset and bad raw files for `mtlrec prepare` in
bad_input_data_catalogue.py. `says` is text the one line must hold; `protect` lists what must not change.
"""

from __future__ import annotations

from bad_input_cases import (
    PREDICT,
    RESUME,
    TRAIN,
    Case,
    W,
    chain,
    copy_without,
    flip,
    gone,
    remove,
    write,
)

T, D = TRAIN, ("data/tiny",)
NO_SPACE = "No space left on device"
MISMATCH = "checksum mismatch"  # bad_input_data_catalogue.py uses the same text

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
        "prepared dataset path is a file",
        [*T[:3], "dataset=prepared", f"dataset.path={W}/raw/train.csv", *T[4:]],
        says="train.csv",
    ),
    Case(
        "a task list the model ignores",
        [*T, "model=cvr_base", "dataset.tasks=[ctr]"],
        says="cvr_base",
    ),  # fmt: skip
    Case("devices abc", [*T, "trainer.devices=abc"], says="trainer.devices"),
    Case("seed abc", [*T, "seed=abc"], says="seed"),
    Case(
        "train into an existing run dir",
        [*T[:-1], f"hydra.run.dir={W}/run"],
        says="already holds a run",
        protect=("run",),
    ),
]

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
        "predict on the raw CSV the dataset was prepared from",
        ["predict", f"{W}/run", "--input", f"{W}/raw/test.csv", "--output", f"{W}/p2.parquet"],
        says="raw values encoded with",
        expect="ok",
    ),
    Case(
        "predict input named .parquet that is not parquet",
        ["predict", f"{W}/run", "--input", f"{W}/fake.parquet", "--output", f"{W}/p2.parquet"],
        prep=write("fake.parquet", "user,item\nu1,3\n"),
        says="not a readable parquet file",
        check=gone("p2.parquet"),
    ),
    Case(
        "predict input missing",
        ["predict", f"{W}/run", "--input", f"{W}/none.parquet", "--output", f"{W}/p2.parquet"],
        says="none.parquet",
        check=gone("p2.parquet"),
    ),
    Case(
        "predict with batch size 0",
        [*PREDICT, "--output", f"{W}/p2.parquet", "--batch-size", "0"],
        says="batch",
        check=gone("p2.parquet"),
    ),
    Case(
        "export to an unknown format",
        ["export", f"{W}/run", "--format", "tflite"],
        says="invalid choice",
    ),  # fmt: skip
    Case("compare of nothing", ["compare", f"{W}/nowhere"], says="no such file or directory"),
]

from bad_input_data_catalogue import DAMAGED, RAW_CASES  # noqa: E402
from bad_input_runs_catalogue import CASES as BOUND  # noqa: E402

CASES: list[Case] = [*CONFIG, *DAMAGED, *RAW_CASES, *RUNS, *INFERENCE, *BOUND]
