"""The building blocks of scripts/bad_inputs.py's catalogue (the cases: bad_input_catalogue.py):
`Case`, what a case does to its copy of the base (flip, damage_page, spec_edit, ...) and the
base itself, which `build_base` makes once:

    raw/{train,val,test}.csv   a click -> buy log (600/200/200 rows); raw2/ a copy cases damage
    rawpq/*.parquet            the same as parquet
    conf/dataset/*.yaml        tiny (raw -> data/tiny), rawcase (raw2 -> data/rawcase), rawpq
    data/tiny/                 prepared by `mtlrec prepare` (with checksums.json)
    run/                       `mtlrec train` on it, one epoch (checkpoints, metrics.json)
    exp/                       `mtlrec export run --format torchscript --output exp`
    run_mmoe/                  the same with model=mmoe (its checkpoints are another run's)
    remap/tiny/                data/tiny prepared again from raw values renamed (other ids)
    preds.parquet              `mtlrec predict run --input data/tiny/test.parquet`

Paths in the configs are relative: every command runs in its case's copy.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

W = "{W}"
TRAIN = [
    "train", "--config-dir", f"{W}/conf", "dataset=tiny", "trainer.epochs=1",
    "trainer.batch_size=256", "trainer.num_threads=1", "device=cpu", f"hydra.run.dir={W}/new",
]  # fmt: skip
PREPARE = ["prepare", "--config-dir", f"{W}/conf", "dataset=rawcase"]
RESUME = ["train", f"resume={W}/run"]
PREDICT = ["predict", f"{W}/run", "--input", f"{W}/data/tiny/test.parquet"]
DATASET_YAML = """\
name: {name}
preparer: csv
path: data/{name}
tasks: null
raw_dir: {raw}
files: {{train: train.{ext}, val: val.{ext}, test: test.{ext}}}
sparse: [user, item, city]
dense: [price, age]
targets: {{ctr: {{label: click}}, cvr: {{label: buy, where: click}}}}
funnel: {{click: click, conversion: buy}}
"""
Prep = Callable[[Path], None]


@dataclass
class Case:
    name: str
    argv: list[str]
    prep: Prep | None = None
    says: str | None = None  # text the one line (or, for expect="ok", the output) must hold
    protect: tuple[str, ...] = ()  # paths that must be byte for byte unchanged afterwards
    expect: str = "error"  # or "ok": the input is acceptable (maybe with a warning)
    env: dict[str, str] = field(default_factory=dict)
    check: Callable | None = None  # (root, completed process) -> problem or None


def one_damage(damage: str, prep: Prep | None, says: str, rows: list[tuple]) -> list[Case]:
    """The cases of one damage met by several commands, each refusing it with the same line:
    rows of (command, argv, protect, left) named `damage: command`, where `left` is what the
    refused command must not leave behind (None: nothing to look for)."""
    return [
        Case(
            f"{damage}: {command}",
            argv,
            prep=prep,
            says=says,
            protect=protect,
            check=None if left is None else gone(left),
        )
        for command, argv, protect, left in rows
    ]


# -- the base -------------------------------------------------------------------------------------
def events(n: int = 1000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, size=n)
    item = rng.integers(0, 15, size=n)
    logit = -1.0 + 0.03 * (age - 40) + 0.5 * (item % 3 == 0)
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame(
        {
            "user": [f"u{u}" for u in rng.integers(0, 40, size=n)],
            "item": item,
            "city": np.array(["paris", "rome", "oslo"])[rng.integers(0, 3, size=n)],
            "price": np.round(np.exp(rng.normal(2.0, 1.0, size=n)), 3),
            "age": age,
            "click": click,
            "buy": click * (rng.random(n) < 0.4).astype(int),
        }
    )


def build_base(base: Path, mtlrec) -> Path:
    """The files every case starts from (made once with the real commands)."""
    df = events()
    parts = {"train": df.iloc[:600], "val": df.iloc[600:800], "test": df.iloc[800:]}
    for name in ("raw", "raw2", "rawpq"):
        (base / name).mkdir(parents=True)
    for split, part in parts.items():
        part.to_csv(base / "raw" / f"{split}.csv", index=False)
        part.to_parquet(base / "rawpq" / f"{split}.parquet", index=False)
    shutil.copytree(base / "raw", base / "raw2", dirs_exist_ok=True)
    conf = base / "conf" / "dataset"
    conf.mkdir(parents=True)
    for name, raw, ext in (("tiny", "raw", "csv"), ("rawcase", "raw2", "csv"), ("rawpq", "rawpq", "parquet")):  # fmt: skip
        (conf / f"{name}.yaml").write_text(DATASET_YAML.format(name=name, raw=raw, ext=ext))
    remap_raw(base)
    train = [a.replace(W, str(base)) for a in TRAIN]
    steps = [
        ["prepare", "--config-dir", str(base / "conf"), "dataset=tiny"],
        ["prepare", "--config-dir", str(base / "conf"), "dataset=remap"],
        [a.replace("/new", "/run") for a in train],
        [a.replace("/new", "/run_mmoe") for a in train] + ["model=mmoe"],
        ["export", str(base / "run"), "--format", "torchscript", "--output", str(base / "exp")],
        [a.replace(W, str(base)) for a in PREDICT] + ["--output", str(base / "preds.parquet")],
    ]
    for args in steps:
        out = mtlrec(args, base)
        if out.returncode != 0:
            raise RuntimeError(f"base step {args[:2]} failed: {out.stderr.strip()[-500:]}")
    return base


def remap_raw(base: Path) -> None:
    """raw_remap/: raw/ with every user renamed (u3 -> u36, ...): the same shapes, other ids;
    conf/dataset/remap.yaml prepares it into remap/tiny."""
    (base / "raw_remap").mkdir()
    for split in ("train", "val", "test"):
        df = pd.read_csv(base / "raw" / f"{split}.csv")
        df["user"] = [f"u{39 - int(u[1:])}" for u in df["user"]]
        df.to_csv(base / "raw_remap" / f"{split}.csv", index=False)
    text = DATASET_YAML.format(name="tiny", raw="raw_remap", ext="csv")
    (base / "conf" / "dataset" / "remap.yaml").write_text(
        text.replace("path: data/tiny", "path: remap/tiny")
    )


# -- what cases do to their copy ------------------------------------------------------------------
def chain(*preps: Prep) -> Prep:
    def run(root: Path) -> None:
        for p in preps:
            p(root)

    return run


def flip(rel: str, at: int | None = None, count: int = 1) -> Prep:
    def run(root: Path) -> None:
        data = bytearray((root / rel).read_bytes())
        start = len(data) // 2 if at is None else at
        for i in range(start, start + count):
            data[i] ^= 0xFF
        (root / rel).write_bytes(bytes(data))

    return run


def damage_page(rel: str, column: str) -> Prep:
    """16 bytes flipped in the middle of a column's first data page; the footer stays intact."""

    def run(root: Path) -> None:
        meta = pq.ParquetFile(root / rel).metadata
        names = [meta.row_group(0).column(j).path_in_schema for j in range(meta.num_columns)]
        chunk = meta.row_group(0).column(names.index(column))
        flip(rel, chunk.data_page_offset + chunk.total_compressed_size // 2, 16)(root)

    return run


def remove(rel: str) -> Prep:
    def run(root: Path) -> None:
        path = root / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return run


def write(rel: str, content: str | bytes) -> Prep:
    def run(root: Path) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        (root / rel).write_bytes(data)

    return run


def edit_text(rel: str, fn: Callable[[str], str]) -> Prep:
    return lambda root: (root / rel).write_text(fn((root / rel).read_text()))


def edit_rows(rel: str, fn: Callable[[list[str]], list[str]]) -> Prep:
    return edit_text(rel, lambda t: "\n".join(fn(t.splitlines())) + "\n")


def cell(row: int, col: int, value: str) -> Callable[[list[str]], list[str]]:
    def fn(rows: list[str]) -> list[str]:
        cells = rows[row].split(",")
        cells[col] = value
        rows[row] = ",".join(cells)
        return rows

    return fn


NO_MANIFEST = remove("data/tiny/checksums.json")


def spec_edit(fn: Callable[[dict], None]) -> Prep:
    """An edited spec.json (checksums.json removed, as by someone who edits it on purpose)."""

    def run(root: Path) -> None:
        path = root / "data" / "tiny" / "spec.json"
        d = json.loads(path.read_text())
        fn(d)
        path.write_text(json.dumps(d))

    return chain(NO_MANIFEST, run)


def feature(name: str, key: str, value) -> Callable[[dict], None]:
    def fn(d: dict) -> None:
        next(f for f in d["features"] if f["name"] == name)[key] = value

    return fn


def table_edit(rel: str, fn: Callable[[pa.Table], pa.Table]) -> Prep:
    """A split rewritten with other values (checksums.json removed: a legacy dataset)."""

    def run(root: Path) -> None:
        path = root / rel
        pq.write_table(fn(pq.read_table(path)), path)

    return chain(NO_MANIFEST, run)


def set_column(name: str, values: Callable[[pa.Table], list]) -> Callable[[pa.Table], pa.Table]:
    def fn(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index(name)
        return t.set_column(i, name, pa.array(values(t)))

    return fn


def first_is(value, column: str) -> Callable[[pa.Table], list]:
    return lambda t: [value] + t.column(column).to_pylist()[1:]


def copy_without(src: str, dst: str, columns: list[str]) -> Prep:
    def run(root: Path) -> None:
        pq.write_table(pq.read_table(root / src).drop_columns(columns), root / dst)

    return run


def gone(rel: str) -> Callable:
    return lambda root, out: f"{rel} exists" if (root / rel).exists() else None
