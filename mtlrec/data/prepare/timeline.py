"""Logs in time order: a per-user time split, and history sequences built from the event log.

    split: {by: user_time, user: user_id, time: ts, test: 1, val: 1}   (or test_fraction, ...)
    sequences: {history: {from: {user: user_id, item: movie_id, time: ts, max_len: 50}}}

Both need the whole log's user, time (and item) columns at once, so they are read in one extra
pass before the two streaming passes (a few bytes a row) and kept as arrays indexed by a row's
number in the log (its file's offset + its row in the file); the streaming passes then take
their rows' split codes and history cells from here, block by block.

Order: events sorted by (user, time), stably (events at the same time keep their file order).
A row's history is its user's events STRICTLY before the row's time, stored as a sequence is
(newest first, the newest `max_len` kept): events at the same time as the row (itself, or a tie)
are never in it. The items are encoded once with the item column's vocabulary (an empty item is
the item column's empty value, as that column encodes it); each cell is then index arithmetic. The split: a user's last `test` events (by time) test, the `val` before
them val, the rest train; a tie at a boundary goes to the later split, so within a user every
train event is earlier than every val event, and every val event earlier than every test event.
A user with too few events (`test + val` or fewer) is all train.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtlrec.data.prepare.plan import Plan, UserTimeSplit
from mtlrec.data.prepare.reading import Block, header_columns, iter_blocks
from mtlrec.errors import MtlrecError

SPLIT_KEYS = ("user", "time", "test", "test_fraction", "val", "val_fraction")
FROM_KEYS = ("user", "item", "time", "max_len")


def parse_user_time(split: Mapping[str, Any]) -> UserTimeSplit:
    """dataset.split with by: user_time, checked (one line per mistake)."""
    for key in ("user", "time"):
        if not isinstance(split.get(key), str) or not split[key]:
            raise MtlrecError(
                f"dataset.split.by=user_time needs dataset.split.{key} (the {key} column), got {split.get(key)!r}"
            )
    counts: dict[str, Any] = {}
    for what in ("test", "val"):
        n, share = split.get(what), split.get(f"{what}_fraction")
        if (n is None) == (share is None):
            raise MtlrecError(
                f"dataset.split.by=user_time: give one of dataset.split.{what} (the last n events of each user) or dataset.split.{what}_fraction (a share of them)"
            )
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise MtlrecError(f"dataset.split.{what} must be an integer >= 1, got {n!r}")
        if share is not None and (
            isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1
        ):
            raise MtlrecError(f"dataset.split.{what}_fraction must be in (0, 1), got {share!r}")
        counts[what], counts[f"{what}_fraction"] = n, None if share is None else float(share)
    if (counts["test_fraction"] or 0) + (counts["val_fraction"] or 0) >= 1:
        raise MtlrecError(
            "dataset.split: test_fraction + val_fraction must be < 1 (train keeps the rest)"
        )
    return UserTimeSplit(user=split["user"], time=split["time"], **counts)


def parse_from(prefix: str, opts: Any, max_len: Any) -> dict[str, Any]:
    """The `from:` of a sequence built from the log -> MultiField keys (log_*, max_len)."""
    if not isinstance(opts, Mapping):
        raise MtlrecError(f"{prefix}.from must map user, item, time to columns, got {opts!r}")
    unknown = sorted(set(opts) - set(FROM_KEYS))
    if unknown:
        raise MtlrecError(f"{prefix}.from: unknown key(s) {unknown}; use {list(FROM_KEYS)}")
    for key in ("user", "item", "time"):
        if not isinstance(opts.get(key), str) or not opts[key]:
            raise MtlrecError(f"{prefix}.from.{key} must name a column, got {opts.get(key)!r}")
    out: dict[str, Any] = {f"log_{k}": opts[k] for k in ("user", "item", "time")}
    n = opts.get("max_len")
    if n is not None:
        if max_len is not None:
            raise MtlrecError(f"{prefix}: give max_len once (in from, or beside it)")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise MtlrecError(f"{prefix}.from.max_len must be an integer >= 1, got {n!r}")
        out["max_len"] = n
    return out


def check_built(plan: Plan) -> None:
    """A built sequence is encoded with its item column's vocabulary (and embedding rows)."""
    for m in plan.built:
        key = f"dataset.sequences.{m.name}"
        if m.log_item not in plan.sparse:
            raise MtlrecError(
                f"{key}.from.item '{m.log_item}' is not a sparse column; the history is encoded with that column's vocabulary: add it to dataset.sparse"
            )
        if m.shares_vocab_with not in (None, m.log_item):
            raise MtlrecError(
                f"{key}: shares_vocab_with '{m.shares_vocab_with}' differs from from.item '{m.log_item}'; a built history uses its item column's vocabulary (drop shares_vocab_with)"
            )


# -- reading the log ------------------------------------------------------------------------


def _where(plan: Plan, block: Block, i: int) -> str:
    source = plan.sources[block.source_index]
    return f"{source.path}: {block.where(source, i)}"


def _first_null(arr: pa.Array) -> int:
    return int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])


def key_values(plan: Plan, block: Block, col: str, role: str) -> pa.Array:
    """A user or item column as strings (the vocabulary's keys); an empty user is an error."""
    arr = block.table.column(col).combine_chunks()
    if arr.type != pa.string():  # one type over every block (parquet may hold large_string)
        arr = pc.cast(arr, pa.string())
    if role == "user" and arr.null_count:
        raise MtlrecError(
            f"{_where(plan, block, _first_null(arr))}: user column '{col}' is empty; every event of a log in time order needs its user"
        )
    return pc.fill_null(arr, "")


@dataclass
class TimeKind:
    """Which kind of time value a column holds (numbers or dates), fixed by its first values."""

    kinds: dict[str, str] = field(default_factory=dict)

    def check(self, col: str, kind: str, where: str, value: Any) -> None:
        seen = self.kinds.setdefault(col, kind)
        if seen != kind:
            raise MtlrecError(
                f"{where}: time column '{col}' holds {value!r}, {'a date' if kind == 'date' else 'a number'}, where earlier rows hold {seen}s; use one kind of time value throughout"
            )


def time_values(plan: Plan, block: Block, col: str, kinds: TimeKind) -> np.ndarray:
    """A time column as float64 (numbers as they are; dates: microseconds since 1970 UTC)."""
    arr = block.table.column(col).combine_chunks()
    if arr.null_count:
        raise MtlrecError(
            f"{_where(plan, block, _first_null(arr))}: time column '{col}' is empty; every event needs a time"
        )
    if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
        kinds.check(col, "date", _where(plan, block, 0), str(arr[0]))
        us = pc.cast(pc.cast(arr, pa.timestamp("us")), pa.int64())
        return us.to_numpy(zero_copy_only=False).astype(np.float64)
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        t = arr.to_numpy(zero_copy_only=False).astype(np.float64)
        kind = "number"
    elif pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        t, kind = _parse_text_times(plan, block, col, pc.utf8_trim_whitespace(arr))
    else:
        raise MtlrecError(
            f"{plan.sources[block.source_index].path}: time column '{col}' has type {arr.type}; it must hold numbers or dates"
        )
    if np.isnan(t).any():
        i = int(np.flatnonzero(np.isnan(t))[0])
        raise _unsortable(_where(plan, block, i), col, arr[i].as_py())
    kinds.check(col, kind, _where(plan, block, 0), arr[0].as_py())
    return t


def _parse_text_times(plan: Plan, block: Block, col: str, arr: pa.Array) -> tuple[np.ndarray, str]:
    import pandas as pd  # here only: pandas stays off the path of a run that reads prepared data

    try:
        return pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False), "number"
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    text = pd.Series(arr.to_numpy(zero_copy_only=False), dtype=object)
    stamps = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    numbers = pd.to_numeric(text, errors="coerce")
    # The kind most values have is the column's; the first value not of that kind is reported.
    dates = stamps.notna().sum() > numbers.notna().sum()
    bad = stamps.isna() if dates else numbers.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise _unsortable(_where(plan, block, i), col, text.iloc[i])
    if not dates:  # numbers only pandas parses
        return numbers.to_numpy(dtype=np.float64), "number"
    us = stamps.to_numpy(dtype="datetime64[us]").astype(np.int64)
    return us.astype(np.float64), "date"


def _unsortable(where: str, col: str, value: Any) -> MtlrecError:
    return MtlrecError(
        f"{where}: time column '{col}' holds {value!r}: not a number or an ISO 8601 date/time, so the events cannot be put in time order; fix the value or name another time column"
    )


BlockReader = Callable[[int, list[str]], Iterable[Block]]


def _log_roles(plan: Plan) -> dict[str, tuple[str, str]]:
    """column -> (role, config key naming it): the first role a column has decides its kind."""
    roles: dict[str, tuple[str, str]] = {}
    if plan.user_time is not None:
        roles.setdefault(plan.user_time.user, ("user", "dataset.split.user"))
        roles.setdefault(plan.user_time.time, ("time", "dataset.split.time"))
    for m in plan.built:
        for role in ("user", "time", "item"):
            col = str(getattr(m, f"log_{role}"))
            roles.setdefault(col, (role, f"dataset.sequences.{m.name}.from.{role}"))
    return roles


def check_columns(plan: Plan, source_index: int, have: list[str]) -> None:
    """Each log column is in the file, or one line naming the config key that wants it."""
    path = plan.sources[source_index].path
    for col, (_, key) in _log_roles(plan).items():
        if col not in have:
            raise MtlrecError(
                f"{path}: column '{col}' ({key}) not found; the file has {len(have)} columns: {have[:12]}{' ...' if len(have) > 12 else ''}"
            )


def read_log(plan: Plan, blocks: BlockReader) -> tuple[dict[str, Any], list[int]]:
    """column -> its values over every source in order (time: float64, user/item: strings), and
    the first log row of each source."""
    roles = _log_roles(plan)
    parts: dict[str, list] = {c: [] for c in roles}
    kinds, offsets, total = TimeKind(), [], 0
    for i in range(len(plan.sources)):
        offsets.append(total)
        for block in blocks(i, list(roles)):
            for col, (role, _) in roles.items():
                if role == "time":
                    parts[col].append(time_values(plan, block, col, kinds))
                else:
                    parts[col].append(key_values(plan, block, col, role))
            total += block.table.num_rows
    log: dict[str, Any] = {}
    for col, (role, _) in roles.items():
        if role == "time":
            log[col] = np.concatenate(parts[col]) if parts[col] else np.zeros(0)
        else:
            log[col] = pa.chunked_array(parts[col], pa.string()).combine_chunks()
    return log, offsets


# -- the order, the split and the histories ----------------------------------------------------


@dataclass
class Order:
    """The log sorted by (user, time), stably: `order[k]` is the log row at sorted position k."""

    order: np.ndarray
    time: np.ndarray  # sorted
    new_user: np.ndarray  # bool: sorted position k starts a user

    @classmethod
    def of(cls, users: pa.Array, time: np.ndarray) -> Order:
        codes = pc.dictionary_encode(users).indices.to_numpy(zero_copy_only=False)
        order = np.lexsort((time, codes))  # stable: ties keep their log order
        codes = codes[order]
        new_user = np.r_[True, codes[1:] != codes[:-1]] if len(codes) else np.zeros(0, bool)
        return cls(order, time[order], new_user)

    def starts(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted position of each user's first event, events per user)."""
        first = np.flatnonzero(self.new_user)
        return first, np.diff(np.r_[first, len(self.order)])


def user_time_codes(split: UserTimeSplit, order: Order) -> tuple[np.ndarray, dict[str, int]]:
    """Split code (0 train, 1 val, 2 test) per log row, and counts for spec.info."""
    first, sizes = order.starts()
    k_test = _events(sizes, split.test, split.test_fraction)
    k_val = _events(sizes, split.val, split.val_fraction)
    enough = k_test + k_val < sizes  # otherwise the user's events all train
    t, last = order.time, len(order.time) - 1
    # The time of the user's first test (val) event; every event at or after it goes there.
    t_test = np.where(enough & (k_test > 0), t[np.minimum(first + sizes - k_test, last)], np.inf)
    t_val = np.where(
        enough & (k_val > 0), t[np.minimum(first + sizes - k_test - k_val, last)], t_test
    )
    per_row_test, per_row_val = np.repeat(t_test, sizes), np.repeat(t_val, sizes)
    sorted_codes = np.where(t >= per_row_test, 2, np.where(t >= per_row_val, 1, 0)).astype(np.int8)
    codes = np.empty_like(sorted_codes)
    codes[order.order] = sorted_codes
    info = {"users": int(len(sizes)), "users_all_train": int((~enough).sum())}
    return codes, info


def _events(sizes: np.ndarray, n: int | None, share: float | None) -> np.ndarray:
    """Events per user: n for each, or the share of each user's events rounded down."""
    if n is not None:
        return np.full(len(sizes), n, dtype=np.int64)
    return np.floor(float(share or 0.0) * sizes).astype(np.int64)


@dataclass
class History:
    """Per log row, its earlier events as a slice [lo, lo + length) of the log sorted by (user,
    time); length is capped at max_len + 1 (one more: the row is then counted as cut)."""

    items: pa.Array  # item values in sorted order
    lo: np.ndarray  # int64, by log row
    length: np.ndarray  # int32, by log row
    max_len: int
    ids: np.ndarray | None = None  # the items' ids, once the vocabulary is known

    @classmethod
    def of(cls, order: Order, items: pa.Array, max_len: int) -> History:
        """Ties with the row (the same user and time) are not before it."""
        n, t = len(order.order), order.time
        # A run: the events of one user at one time; a row's history ends where its run starts.
        new_run = order.new_user | np.r_[True, t[1:] != t[:-1]][:n]
        index = np.arange(n)
        user_start = np.maximum.accumulate(np.where(order.new_user, index, 0))
        run_start = np.maximum.accumulate(np.where(new_run, index, 0))
        lo_sorted = np.maximum(user_start, run_start - (max_len + 1))
        lo, length = np.empty(n, np.int64), np.empty(n, np.int32)
        lo[order.order], length[order.order] = lo_sorted, run_start - lo_sorted
        return cls(items.take(pa.array(order.order)), lo, length, max_len)

    def cells(
        self, rows: slice, to_ids: Callable[[pa.Array], pa.Array]
    ) -> tuple[pa.ListArray, np.ndarray]:
        """(ids of log rows `rows`' histories, newest first, at most max_len; cut flags).

        The items are encoded once (N lookups), then each cell is index arithmetic over them.
        """
        if self.ids is None:
            self.ids = to_ids(self.items).to_numpy(zero_copy_only=False).astype(np.int32)
        length = self.length[rows].astype(np.int64)
        keep = np.minimum(length, self.max_len)
        offsets = np.r_[0, np.cumsum(keep)]
        newest = np.repeat(self.lo[rows] + length - 1, keep)  # each cell's newest event
        flat = newest - (np.arange(offsets[-1]) - np.repeat(offsets[:-1], keep))
        cells = pa.ListArray.from_arrays(
            pa.array(offsets.astype(np.int32)), pa.array(self.ids[flat])
        )
        return cells, length > self.max_len


@dataclass
class Timeline:
    """What the streaming passes take per block: split codes and built histories."""

    offsets: list[int]
    codes: np.ndarray | None = None
    histories: dict[str, History] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def split_codes(self, source_index: int, first_row: int, n: int) -> np.ndarray:
        assert self.codes is not None
        start = self.offsets[source_index] + first_row
        return self.codes[start : start + n]

    def history(
        self,
        name: str,
        source_index: int,
        first_row: int,
        n: int,
        to_ids: Callable[[pa.Array], pa.Array],
    ) -> tuple[pa.ListArray, np.ndarray]:
        start = self.offsets[source_index] + first_row
        return self.histories[name].cells(slice(start, start + n), to_ids)


def build_timeline(plan: Plan, blocks: BlockReader | None = None) -> Timeline:
    """Reads the log columns of every source once and computes the split and the histories."""
    if blocks is None:

        def blocks(i: int, cols: list[str]) -> Iterator[Block]:
            check_columns(plan, i, header_columns(plan.sources[i].path, plan.read))
            return iter_blocks(plan, i, cols)

    log, offsets = read_log(plan, blocks)
    orders: dict[tuple[str, str], Order] = {}

    def order_of(user: str, time: str) -> Order:
        if (user, time) not in orders:
            orders[user, time] = Order.of(log[user], log[time])
        return orders[user, time]

    timeline = Timeline(offsets)
    if plan.user_time is not None:
        s = plan.user_time
        timeline.codes, counts = user_time_codes(s, order_of(s.user, s.time))
        timeline.info["split"] = {k: v for k, v in vars(s).items() if v is not None} | counts
    for m in plan.built:
        order = order_of(str(m.log_user), str(m.log_time))
        timeline.histories[m.name] = History.of(order, log[str(m.log_item)], m.max_len)
        timeline.info.setdefault("sequences_from_log", {})[m.name] = {
            "user": m.log_user,
            "item": m.log_item,
            "time": m.log_time,
            "max_len": m.max_len,
        }
    return timeline


def timeline_for_table(plan: Plan, table: pa.Table) -> Timeline:
    """The timeline of one in-memory table of raw rows (encode_raw of a DataFrame)."""
    check_columns(plan, 0, table.column_names)
    return build_timeline(plan, lambda i, cols: [Block(table.select(cols), 0, 0, 1)])


__all__ = [
    "Timeline",
    "build_timeline",
    "check_built",
    "parse_from",
    "parse_user_time",
    "timeline_for_table",
]
