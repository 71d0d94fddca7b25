"""`movielens`: MovieLens 100K (GroupLens) as a multi-task dataset with a bag and a sequence field.

    mtlrec prepare dataset=movielens dataset.raw_dir=~/data/ml-100k
    mtlrec train model=mmoe dataset=movielens

Raw files (the ml-100k download, Latin-1 text):
    u.data   user id \\t item id \\t rating \\t timestamp          (100,000 ratings)
    u.user   user id | age | gender | occupation | zip code
    u.item   movie id | title | release date | video release date | IMDb URL | 19 genre flags

Each rating is a row: sparse user_id, item_id, gender, occupation, zip3 (first 3 digits of the zip
code); dense age; genres, the movie's genres, as a bag; history, the items the user rated strictly
before this rating's timestamp (oldest first in the converted parquet file, a list column, at
most `history_len`), as a
sequence sharing item_id's vocabulary and embedding rows, pooled by target attention over the
candidate item (DIN). Ratings at the same second as the row are not in its history, so no row sees
its own or a simultaneous label (no leakage).

Tasks: rating (regression, 1-5) and like = [rating >= like_threshold] (binary).
Split by time: the oldest `split.fractions.train` of the ratings train, then val, then test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mtlrec.data.sources import register
from mtlrec.data.sources.base import DatasetSource, RawFilesConfig
from mtlrec.data.spec import TaskSpec
from mtlrec.errors import MtlrecError

# numpy, pandas, pyarrow and the prepare pipeline are imported where they are used: the registry
# imports every source to know its Config, and a run that only reads prepared data needs none.
if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from mtlrec.data.prepare import Plan, Result

GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)  # fmt: skip
ITEM_COLUMNS = ("item_id", "title", "release", "video_release", "url", *GENRES)
USER_COLUMNS = ("user_id", "age", "gender", "occupation", "zip")
RATING_COLUMNS = ("user_id", "item_id", "rating", "ts")
CONVERTED = (
    "user_id",
    "item_id",
    "gender",
    "occupation",
    "zip3",
    "age",
    "genres",
    "history",
    "rating",
    "like",
    "ts",
)


@dataclass
class MovielensConfig(RawFilesConfig):
    ratings_file: str = "u.data"
    users_file: str = "u.user"
    items_file: str = "u.item"
    history_len: int = 50  # items of the user's history kept (the newest)
    history_pooling: Literal["sum", "mean", "max", "target_attention"] = "target_attention"
    like_threshold: float = 4.0  # like = rating >= this
    split: dict[str, Any] | None = None  # fractions of the time split
    feature_groups: dict[str, list[str]] | None = None

    def validate(self) -> None:
        super().validate()
        if self.history_len < 1:
            raise MtlrecError(f"dataset.history_len must be >= 1, got {self.history_len}")


def read_table(
    path: Path, sep: str, names: tuple[str, ...], numeric: tuple[str, ...]
) -> pd.DataFrame:
    """A raw file as strings; a row with the wrong field count or a non-number is one line."""
    import numpy as np
    import pandas as pd

    rows = []
    with open(path, encoding="latin-1", newline="") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split(sep)
            if len(parts) != len(names):
                raise MtlrecError(
                    f"{path}: line {number}: malformed row, expected {len(names)} fields separated by {sep!r}, got {len(parts)}"
                )
            rows.append(parts)
    if not rows:
        raise MtlrecError(f"{path}: the raw file has no rows")
    df = pd.DataFrame(rows, columns=list(names))
    for col in numeric:
        values = pd.to_numeric(df[col], errors="coerce")
        if values.isna().any():
            i = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise MtlrecError(f"{path}: line {i + 1}: {col} {df[col].iloc[i]!r} is not a number")
        df[col] = values.astype(np.int64)
    return df


def histories(ratings: pd.DataFrame, max_len: int) -> pa.ListArray:
    """Per rating: the user's items rated strictly earlier, oldest first, at most max_len.

    Whole-array index arithmetic: ratings sorted by (user, time, item); a row's history is the
    slice from max(user's first row, first row of its (user, second) run - max_len) up to that
    run's first row, so ratings in the same second never see each other.
    """
    import numpy as np
    import pyarrow as pa

    users, ts, items = (ratings[c].to_numpy() for c in ("user_id", "ts", "item_id"))
    order = np.lexsort((items, ts, users))
    users, ts, n = users[order], ts[order], len(order)
    new_user = np.r_[True, users[1:] != users[:-1]]
    new_run = new_user | np.r_[True, ts[1:] != ts[:-1]]
    user_start = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(n), 0))
    lo_sorted = np.maximum(user_start, run_start - max_len)
    lo, lengths = np.empty(n, np.int64), np.empty(n, np.int64)
    lo[order], lengths[order] = lo_sorted, run_start - lo_sorted  # back to the file's row order
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = np.repeat(lo - offsets[:-1], lengths) + np.arange(offsets[-1])
    values = pa.array(items[order].astype(str)).take(pa.array(flat))
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)


def genre_lists(items: pd.DataFrame, item_ids: pd.Series) -> pa.ListArray:
    """The genres of each rated item (from u.item's 0/1 flags, in u.item's genre order)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    flags = items[list(GENRES)].to_numpy() == 1
    _, cols = np.nonzero(flags)  # row-major: each item's genres in order
    offsets = np.concatenate([[0], np.cumsum(flags.sum(1))]).astype(np.int32)
    per_item = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.array(GENRES)[cols]))
    position = pd.Index(items["item_id"]).get_indexer(item_ids)
    return per_item.take(pa.array(position))


def convert(raw_dir: Path, cfg: MovielensConfig, out_path: Path) -> dict[str, int]:
    """The three raw files -> one parquet file of rating rows (genres, history: list columns)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mtlrec.data.prepare import raw_file

    files = {
        k: raw_file(raw_dir, name, f"dataset.{k}_file")
        for k, name in (
            ("ratings", cfg.ratings_file),
            ("users", cfg.users_file),
            ("items", cfg.items_file),
        )
    }
    ratings = read_table(files["ratings"], "\t", RATING_COLUMNS, RATING_COLUMNS)
    users = read_table(files["users"], "|", USER_COLUMNS, ("user_id", "age"))
    items = read_table(files["items"], "|", ITEM_COLUMNS, ("item_id", *GENRES))
    for what, ids, known, path in (
        ("user_id", ratings.user_id, users.user_id, files["users"]),
        ("item_id", ratings.item_id, items.item_id, files["items"]),
    ):
        missing = ~ids.isin(known)
        if missing.any():
            i = int(np.flatnonzero(missing.to_numpy())[0])
            raise MtlrecError(
                f"{files['ratings']}: line {i + 1}: {what} {ids.iloc[i]} is not in {path.name}"
            )
    df = ratings.merge(users, on="user_id", how="left")  # keeps the ratings' order
    df["zip3"] = df["zip"].str[:3]
    threshold = cfg.like_threshold
    df["like"] = (df["rating"] >= threshold).astype(np.int64)
    plain = [c for c in CONVERTED if c not in ("genres", "history")]
    table = pa.Table.from_pandas(df[plain], preserve_index=False)
    table = table.append_column("genres", genre_lists(items, ratings["item_id"]))
    table = table.append_column("history", histories(ratings, cfg.history_len))
    pq.write_table(table.select(list(CONVERTED)), out_path)
    return {
        "ratings": len(df),
        "users": int(users.user_id.nunique()),
        "items": int(items.item_id.nunique()),
    }


def build_plan(cfg: MovielensConfig, out_dir: Path) -> Plan:
    from mtlrec.data.prepare import Plan, RawSource, ReadOptions, check_fractions, set_dense_options
    from mtlrec.data.prepare.plan import MultiField

    raw_dir = cfg.raw_dir or Path(".")
    converted = out_dir / "_converted"
    converted.mkdir(exist_ok=True)
    counts = convert(raw_dir, cfg, converted / "ratings.parquet")
    fractions = check_fractions(
        "dataset.split.fractions",
        (cfg.split or {}).get("fractions") or {"train": 0.8, "val": 0.1, "test": 0.1},
    )
    history_len = cfg.history_len
    pooling = cfg.history_pooling
    plan = Plan(
        name=cfg.name or "movielens",
        path=cfg.path or Path("."),
        sources=[RawSource(converted / "ratings.parquet", fractions=fractions)],
        read=ReadOptions(format="parquet", block_size_mb=cfg.block_size_mb),
        sparse=["user_id", "item_id", "gender", "occupation", "zip3"],
        dense=["age"],
        targets=[TaskSpec("rating", "rating", "regression"), TaskSpec("like", "like", "binary")],
        min_count=cfg.min_count,
        split_by="column",
        split_column="ts",
        split_fractions=fractions,
        info={"preparer": "movielens", "source": "MovieLens 100K", "raw": counts},
        source_names=[f"{raw_dir} (u.data + u.user + u.item)"],
        multi=[
            MultiField("genres", "bag", max_len=len(GENRES)),
            MultiField(
                "history",
                "sequence",
                max_len=history_len,
                shares_vocab_with="item_id",
                pooling=pooling,
                target="item_id" if pooling == "target_attention" else None,
            ),
        ],
        feature_groups=dict(cfg.feature_groups or {}),
    )
    set_dense_options(plan, cfg.as_mapping())
    return plan


def prepare(cfg: MovielensConfig, out_dir: Path) -> Result:
    from mtlrec.data.prepare import run_plan

    try:
        return run_plan(build_plan(cfg, out_dir), out_dir)
    finally:
        converted = out_dir / "_converted"
        if converted.exists():
            import shutil

            shutil.rmtree(converted)


@register
class Movielens(DatasetSource):
    name = "movielens"
    Config = MovielensConfig
    preparable = True

    def prepare(self, cfg, out_dir):
        return prepare(cfg, out_dir)
