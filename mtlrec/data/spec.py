"""Typed specs of a prepared dataset: its features, label columns, tasks and (for CTR->CVR data) funnel.

A prepared dataset on disk is a directory with `spec.json` (this module's `DatasetSpec`) and one
parquet file per split. Sparse columns hold per-field ids in [0, vocab_size); the loader offsets
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

FeatureKind = Literal["sparse", "dense"]
TaskType = Literal["binary", "regression"]


@dataclass(frozen=True)
class FeatureSpec:
    """One input column. Sparse: integer ids in [0, vocab_size). Dense: one float32 value."""

    name: str
    kind: FeatureKind
    vocab_size: int = 0
    # Id that unknown or out-of-range ids map to; None means such ids are an error.
    oov_id: int | None = None
    # Per-field embedding size; None means the model's `embedding_dim`.
    embedding_dim: int | None = None


@dataclass(frozen=True)
class TaskSpec:
    """A learning (or evaluation) target.

    `where` is the sample space: None = every row; a label column name = only rows where that
    column is 1 (e.g. CVR is learned/evaluated on clicked rows only).
    """

    name: str
    label: str
    type: TaskType = "binary"
    where: str | None = None
    weight: float = 1.0
    output: str = ""  # model output this task reads; "" means the output named like the task

    @property
    def output_name(self) -> str:
        return self.output or self.name


@dataclass(frozen=True)
class FunnelSpec:
    """Impression -> click -> conversion label columns, for ESMM-style models and metrics.

    `conversion` is defined over all impressions (1 only if clicked and converted), so it is the
    CTCVR label; on clicked rows it is the CVR label. `conversion_if_clicked` (synthetic data only)
    is the counterfactual label for every impression, which lets CVR be evaluated over the entire
    impression space.
    """

    click: str
    conversion: str
    conversion_if_clicked: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    features: tuple[FeatureSpec, ...]
    labels: tuple[str, ...]  # columns loaded into the labels tensor, in this order
    tasks: tuple[TaskSpec, ...]  # default tasks for generic multi-task models
    funnel: FunnelSpec | None = None
    splits: dict[str, str] = field(default_factory=dict)  # split name -> parquet file name
    info: dict = field(default_factory=dict)  # free-form provenance (generator, protocol, ...)

    @property
    def sparse(self) -> tuple[FeatureSpec, ...]:
        return tuple(f for f in self.features if f.kind == "sparse")

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
        return sum(f.vocab_size for f in self.sparse)

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
    def load(cls, directory: Path) -> DatasetSpec:
        path = Path(directory) / SPEC_FILE
        if not path.is_file():
            raise MtlrecError(
                f"{path}: no dataset spec; point dataset.path at a prepared dataset directory"
            )
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise MtlrecError(f"{path}: not valid JSON ({e}); re-create the dataset") from None
        return cls.from_dict(d, source=str(path))

    def validate(self, source: str = "spec") -> None:
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise MtlrecError(f"{source}: feature(s) listed twice: {dupes}")
        overlap = sorted(set(names) & set(self.labels))
        if overlap:
            raise MtlrecError(f"{source}: column(s) {overlap} are both a feature and a label")
        for f in self.features:
            if f.kind not in ("sparse", "dense"):
                raise MtlrecError(
                    f"{source}: feature '{f.name}' has kind '{f.kind}'; use sparse|dense"
                )
            if f.kind == "sparse" and f.vocab_size < 1:
                raise MtlrecError(f"{source}: sparse feature '{f.name}' needs vocab_size >= 1")
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
        if self.funnel is not None:
            for col in (
                self.funnel.click,
                self.funnel.conversion,
                self.funnel.conversion_if_clicked,
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
