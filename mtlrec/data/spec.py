"""Typed specs of a prepared dataset: its features, label columns, tasks and (for CTR->CVR data) funnel.

A prepared dataset on disk is a directory with `spec.json` (this module's `DatasetSpec`), one
parquet file per split and `checksums.json` (size and SHA-256 of every file, verified on load:
mtlrec.data.prepare.manifest). Sparse columns hold per-field ids in [0, vocab_size); the loader offsets
them into one fused id space (see `DatasetSpec.field_offsets`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mtlrec.config_schema import build, check_value
from mtlrec.errors import MtlrecError

SPEC_FILE = "spec.json"
SPEC_VERSION = 1

FeatureKind = Literal["sparse", "dense", "bag", "sequence"]
TaskType = Literal["binary", "regression"]
MULTI_KINDS = ("bag", "sequence")
POOLINGS = ("sum", "mean", "max", "weighted_sum", "target_attention")
# Parquet column of a weighted bag's per-value weights (a list column parallel to its ids).
WEIGHT_SUFFIX = "__weights"
PAD_ID = -1  # padding of bag/sequence id columns in the `sparse` tensor


@dataclass(frozen=True)
class FeatureSpec:
    """One input column.

    sparse: one integer id in [0, vocab_size). dense: one float32 value. bag: up to `max_len` ids
    (a parquet list column; with `weighted`, per-value weights in the list column NAME__weights).
    sequence: a bag ordered newest first, usually sharing the vocabulary and embedding rows of a
    single-id field (`shares_vocab_with`). `pooling` says how the field becomes one vector
    (target_attention: DIN attention of the single-id field `target` over the sequence).
    """

    name: str
    kind: FeatureKind
    vocab_size: int = 0
    # Id that unknown or out-of-range ids map to; None means such ids are an error.
    oov_id: int | None = None
    # Per-field embedding size; None means the model's `embedding_dim`.
    embedding_dim: int | None = None
    max_len: int = 0
    weighted: bool = False
    shares_vocab_with: str | None = None
    pooling: str | None = None  # None: mean (weighted_sum for weighted bags)
    target: str | None = None
    hash_buckets: int | None = None  # ids are a stable hash of the value (no vocabulary)

    @property
    def multi(self) -> bool:
        return self.kind in MULTI_KINDS

    @property
    def pool(self) -> str:
        if self.pooling:
            return self.pooling
        return "weighted_sum" if self.weighted else "mean"


@dataclass(frozen=True)
class ColumnLayout:
    """Which columns of the model's `sparse` [B, C] and `dense` [B, E] tensors belong to which field.

    sparse: the single-id fields (spec order), then `max_len` columns per bag/sequence field (spec
    order, padded with -1). dense: the dense features, then `max_len` weight columns per weighted
    bag (0 where padded).
    """

    sparse: dict[str, tuple[int, int]]  # field -> [start, stop) in the sparse tensor
    dense: dict[str, tuple[int, int]]  # dense feature -> [start, stop) in the dense tensor
    weights: dict[str, tuple[int, int]]  # weighted bag -> its weight columns in the dense tensor
    sparse_width: int
    dense_width: int


@dataclass(frozen=True)
class TaskSpec:
    """A learning (or evaluation) target.

    `where` is the sample space: None = every row; a label column name = only rows where that
    column is 1 (e.g. CVR is learned/evaluated on clicked rows only). `weight` is the task's loss
    weight (a number); `sample_weight` a column of per-row weights of this task only (loaded with
    the labels; None: the dataset's `sample_weight`, if any).
    """

    name: str
    label: str
    type: TaskType = "binary"
    where: str | None = None
    weight: float = 1.0
    output: str = ""  # model output this task reads; "" means the output named like the task
    sample_weight: str | None = None

    @property
    def output_name(self) -> str:
        return self.output or self.name


@dataclass(frozen=True)
class FunnelSpec:
    """Impression -> click -> conversion label columns, for ESMM-style models and metrics.

    `conversion` is defined over all impressions (1 only if clicked and converted), so it is the
    CTCVR label; on clicked rows it is the CVR label. `conversion_if_clicked` (synthetic data only)
    is the counterfactual label for every impression, which lets CVR be evaluated over the entire
    impression space. `action` (optional) is the D-action label of ESM²'s funnel (cart or wish,
    Wen et al. SIGIR 2020): 1 only on clicked rows, between the click and the conversion.
    """

    click: str
    conversion: str
    conversion_if_clicked: str | None = None
    action: str | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """The funnel's label columns (all binary), in funnel order; undeclared ones left out."""
        named = (self.click, self.conversion, self.conversion_if_clicked, self.action)
        return tuple(c for c in named if c)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    features: tuple[FeatureSpec, ...]
    labels: tuple[str, ...]  # columns loaded into the labels tensor, in this order
    tasks: tuple[TaskSpec, ...]  # default tasks for generic multi-task models
    funnel: FunnelSpec | None = None
    splits: dict[str, str] = field(default_factory=dict)  # split name -> parquet file name
    info: dict = field(default_factory=dict)  # free-form provenance (generator, protocol, ...)
    # Group name -> embedded fields whose vectors are summed into one (the ESMM paper's pooling).
    feature_groups: dict[str, list[str]] = field(default_factory=dict)
    # A column of per-row weights (non-negative, loaded with the labels) for every task's loss
    # and, with metrics.weighted, metrics; a task's own `sample_weight` column replaces it.
    sample_weight: str | None = None

    @property
    def weight_columns(self) -> tuple[str, ...]:
        """The sample weight columns among the labels: the dataset's, then the tasks' own."""
        cols = [self.sample_weight] + [t.sample_weight for t in self.tasks]
        return tuple(dict.fromkeys(c for c in cols if c))

    def weight_column(self, task: TaskSpec) -> str | None:
        """The weight column of a task: its own, that of the dataset task of the same name (a
        model's copy of it, e.g. ESMM's ctr), else the dataset's; None: every row weighs 1."""
        if task.sample_weight:
            return task.sample_weight
        own = next((t.sample_weight for t in self.tasks if t.name == task.name), None)
        return own or self.sample_weight

    @property
    def sparse(self) -> tuple[FeatureSpec, ...]:
        """The single-id fields."""
        return tuple(f for f in self.features if f.kind == "sparse")

    @property
    def multi(self) -> tuple[FeatureSpec, ...]:
        """The bag and sequence fields, in spec order."""
        return tuple(f for f in self.features if f.multi)

    @property
    def vocab_owners(self) -> tuple[FeatureSpec, ...]:
        """Fields with embedding rows of their own: single-id fields, then unshared bags/sequences."""
        return self.sparse + tuple(f for f in self.multi if not f.shares_vocab_with)

    @property
    def vocab_offsets(self) -> dict[str, int]:
        """Start of each embedded field's ids in the fused id space (a shared one: its owner's)."""
        out, total = {}, 0
        for f in self.vocab_owners:
            out[f.name] = total
            total += f.vocab_size
        for f in self.multi:
            if f.shares_vocab_with:
                out[f.name] = out[f.shares_vocab_with]
        return out

    @property
    def layout(self) -> ColumnLayout:
        sparse = {}
        for j, f in enumerate(self.sparse):
            sparse[f.name] = (j, j + 1)
        at = len(self.sparse)
        for f in self.multi:
            sparse[f.name] = (at, at + f.max_len)
            at += f.max_len
        dense = {f.name: (j, j + 1) for j, f in enumerate(self.dense)}
        weights, dat = {}, len(self.dense)
        for f in self.multi:
            if f.weighted:
                weights[f.name] = (dat, dat + f.max_len)
                dat += f.max_len
        return ColumnLayout(sparse, dense, weights, at, dat)

    def feature(self, name: str) -> FeatureSpec:
        return next(f for f in self.features if f.name == name)

    @property
    def parquet_columns(self) -> list[str]:
        """Every column a split file holds: features, weight lists of weighted bags, labels."""
        cols = [f.name for f in self.features]
        cols += [f.name + WEIGHT_SUFFIX for f in self.multi if f.weighted]
        return cols + list(self.labels)

    @property
    def dense(self) -> tuple[FeatureSpec, ...]:
        return tuple(f for f in self.features if f.kind == "dense")

    @property
    def field_offsets(self) -> list[int]:
        """Start of each sparse field's ids in the fused id space."""
        offsets, total = [], 0
        for f in self.sparse:
            offsets.append(total)
            total += f.vocab_size
        return offsets

    @property
    def total_vocab(self) -> int:
        return sum(f.vocab_size for f in self.vocab_owners)

    def label_index(self, column: str) -> int:
        return self.labels.index(column)

    def select_tasks(self, names: list[str] | None) -> tuple[TaskSpec, ...]:
        """The dataset's tasks, or the named subset in the given order."""
        if names is None:
            return self.tasks
        known = {t.name: t for t in self.tasks}
        missing = [n for n in names if n not in known]
        if missing:
            raise MtlrecError(
                f"dataset.tasks: unknown task(s) {missing} for dataset '{self.name}'; "
                f"valid tasks: {sorted(known)}"
            )
        return tuple(known[n] for n in names)

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["version"] = SPEC_VERSION
        # Without sample weights spec.json stays as it was before they existed.
        for part in (d, *d["tasks"]):
            if part["sample_weight"] is None:
                del part["sample_weight"]
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "spec") -> DatasetSpec:
        """The spec of a parsed spec.json; a missing key or a wrong type is one line naming it."""
        if not isinstance(d, dict):
            raise MtlrecError(f"{source}: malformed dataset spec (not a JSON object); re-create it")
        try:
            spec = cls(
                name=check_value(str, d["name"], f"{source}: name"),
                features=tuple(
                    build(FeatureSpec, f, f"{source}: features[{i}]")
                    for i, f in enumerate(_items(d["features"], f"{source}: features"))
                ),
                labels=tuple(check_value(list[str], d["labels"], f"{source}: labels")),
                tasks=tuple(
                    build(TaskSpec, t, f"{source}: tasks[{i}]")
                    for i, t in enumerate(_items(d["tasks"], f"{source}: tasks"))
                ),
                funnel=build(FunnelSpec, d["funnel"], f"{source}: funnel")
                if d.get("funnel")
                else None,
                splits=check_value(dict[str, str], d.get("splits", {}), f"{source}: splits"),
                info=check_value(dict[str, Any], d.get("info", {}), f"{source}: info"),
                feature_groups=check_value(
                    dict[str, list[str]],
                    d.get("feature_groups") or {},
                    f"{source}: feature_groups",
                ),
                sample_weight=check_value(
                    str | None, d.get("sample_weight"), f"{source}: sample_weight"
                ),
            )
        except (KeyError, TypeError) as e:
            raise MtlrecError(f"{source}: malformed dataset spec ({e}); re-create it") from None
        spec.validate(source)
        return spec

    def save(self, directory: Path) -> Path:
        path = Path(directory) / SPEC_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path, sample_weight: str | None = None) -> DatasetSpec:
        """The spec of a prepared dataset dir, checked against the dir's checksums.json first
        (with the other small files; the split files are checked when they are read), and
        against a training run's `dataset.sample_weight` when given (check_configured_weight)."""
        from mtlrec.data.prepare.manifest import verify_all_but, verify_files

        path = Path(directory) / SPEC_FILE
        if not path.is_file():
            raise MtlrecError(
                f"{path}: no dataset spec; point dataset.path at a prepared dataset directory"
            )
        verify_files(path.parent, [SPEC_FILE])  # a damaged spec.json says so, not a JSON error
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MtlrecError(f"{path}: not valid JSON ({e}); re-create the dataset") from None
        spec = cls.from_dict(d, source=str(path))
        verify_all_but(path.parent, [SPEC_FILE, *spec.splits.values()])
        check_configured_weight(spec, sample_weight, f"dataset '{spec.name}' ({path.parent})")
        return spec

    def validate(self, source: str = "spec") -> None:
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise MtlrecError(f"{source}: feature(s) listed twice: {dupes}")
        overlap = sorted(set(names) & set(self.labels))
        if overlap:
            raise MtlrecError(f"{source}: column(s) {overlap} are both a feature and a label")
        for f in self.features:
            if f.kind not in ("sparse", "dense", *MULTI_KINDS):
                raise MtlrecError(
                    f"{source}: feature '{f.name}' has kind '{f.kind}'; use sparse|dense|bag|sequence"
                )
            if f.kind != "dense" and f.vocab_size < 1:
                raise MtlrecError(f"{source}: {f.kind} feature '{f.name}' needs vocab_size >= 1")
            if f.multi:
                check_multi(self, f, source)
            if f.oov_id is not None and not 0 <= f.oov_id < f.vocab_size:
                raise MtlrecError(
                    f"{source}: feature '{f.name}' oov_id {f.oov_id} is outside [0, {f.vocab_size})"
                )
            if f.embedding_dim is not None and f.embedding_dim < 1:
                raise MtlrecError(f"{source}: feature '{f.name}' embedding_dim must be >= 1")
        if not self.features:
            raise MtlrecError(f"{source}: the dataset has no features")
        for t in self.tasks:
            check_task(t, self.labels, source)
        check_groups(self, source)
        check_weight_columns(self, source)
        if self.funnel is not None:
            for col in (
                self.funnel.click,
                self.funnel.conversion,
                self.funnel.conversion_if_clicked,
                self.funnel.action,
            ):
                if col is not None and col not in self.labels:
                    raise MtlrecError(
                        f"{source}: funnel column '{col}' is not among labels {list(self.labels)}"
                    )


def _items(value: object, key: str) -> list:
    """A list of JSON objects (features, tasks)."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, dict) for v in value):
        raise MtlrecError(f"{key}={value!r:.80}: expected a list of objects")
    return list(value)


def check_task(task: TaskSpec, labels: tuple[str, ...], source: str) -> None:
    if task.type not in ("binary", "regression"):
        raise MtlrecError(
            f"{source}: task '{task.name}' has type '{task.type}'; use binary|regression"
        )
    if task.label not in labels:
        raise MtlrecError(
            f"{source}: task '{task.name}' label '{task.label}' is not among labels {list(labels)}"
        )
    if task.where is not None and task.where not in labels:
        raise MtlrecError(
            f"{source}: task '{task.name}' where='{task.where}' is not among labels {list(labels)}"
        )
    if not (math.isfinite(task.weight) and task.weight >= 0):
        raise MtlrecError(
            f"{source}: task '{task.name}' weight must be a finite number >= 0, got {task.weight}"
        )


def check_weight_columns(spec: DatasetSpec, source: str) -> None:
    """Sample weight columns are loaded label columns that no task or funnel reads as a label."""
    targets = {c for t in spec.tasks for c in (t.label, t.where) if c}
    targets |= set(spec.funnel.columns) if spec.funnel is not None else set()
    for col in spec.weight_columns:
        if col not in spec.labels:
            raise MtlrecError(
                f"{source}: sample weight column '{col}' is not among labels {list(spec.labels)}; re-create the dataset"
            )
        if col in targets:
            raise MtlrecError(
                f"{source}: column '{col}' is both a sample weight and a task's label/where column; use a separate weight column"
            )


def check_configured_weight(spec: DatasetSpec, configured: str | None, where: str) -> None:
    """`dataset.sample_weight` of a training run names the column the dataset was prepared with
    (or nothing: the prepared data's own weights are used); `where` names the prepared data."""
    if not configured or configured == spec.sample_weight:
        return
    if spec.sample_weight is None:
        raise MtlrecError(
            f"dataset.sample_weight={configured!r}: {where} has no sample weight column; add sample_weight: {configured} to a `preparer: csv` dataset config and run `mtlrec prepare` (overwrite=true to prepare it again)"
        )
    raise MtlrecError(
        f"dataset.sample_weight={configured!r}: {where} was prepared with sample_weight '{spec.sample_weight}'; set dataset.sample_weight={spec.sample_weight} or prepare it again (overwrite=true)"
    )


def check_multi(spec: DatasetSpec, f: FeatureSpec, source: str) -> None:
    """A bag/sequence field's keys are consistent with the rest of the spec."""
    where = f"{source}: {f.kind} feature '{f.name}'"
    if f.max_len < 1:
        raise MtlrecError(f"{where} needs max_len >= 1, got {f.max_len}")
    if f.pool not in POOLINGS:
        raise MtlrecError(f"{where}: pooling '{f.pool}' is unknown; use one of {list(POOLINGS)}")
    if f.pool == "weighted_sum" and not f.weighted:
        raise MtlrecError(f"{where}: pooling weighted_sum needs weighted: true (id:weight values)")
    singles = {s.name: s for s in spec.sparse}
    for key, other in (("shares_vocab_with", f.shares_vocab_with), ("target", f.target)):
        if other is not None and other not in singles:
            raise MtlrecError(
                f"{where}: {key} '{other}' is not a single-id sparse feature; use one of {sorted(singles)}"
            )
    if f.shares_vocab_with and singles[f.shares_vocab_with].vocab_size != f.vocab_size:
        raise MtlrecError(
            f"{where}: vocab_size {f.vocab_size} differs from its shared field '{f.shares_vocab_with}' ({singles[f.shares_vocab_with].vocab_size})"
        )
    if (f.pool == "target_attention") != (f.target is not None):
        raise MtlrecError(
            f"{where}: pooling target_attention and `target: <sparse field>` go together"
        )


def check_groups(spec: DatasetSpec, source: str) -> None:
    embedded = {f.name for f in spec.features if f.kind != "dense"}
    seen: dict[str, str] = {}
    for group, names in spec.feature_groups.items():
        if not names:
            raise MtlrecError(f"{source}: feature_groups.{group} lists no fields")
        for n in names:
            if n not in embedded:
                raise MtlrecError(
                    f"{source}: feature_groups.{group}: '{n}' is not a sparse/bag/sequence feature; use one of {sorted(embedded)}"
                )
            if n in seen:
                raise MtlrecError(
                    f"{source}: feature_groups: '{n}' is in both '{seen[n]}' and '{group}'"
                )
            seen[n] = group
