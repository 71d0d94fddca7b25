"""Embedding rows carried from one dataset's ids to another's by RAW VALUE (init_from).

An embedded field's rows sit in a fused table (models/features.FieldEmbedding: one table per
embedding size, the fields' rows one after the other) and, with DeepFM's first-order term, in the
columns of `FirstOrder.weight` (the fused id space). When the run that wrote the checkpoint was
trained on another vocabulary (yesterday's dataset; today's was prepared with
`dataset.vocab_from`, or on its own), a row is carried over when its value is in both:
old id -> value (the old dataset's vocab.parquet) -> new id (the new one's). The OOV row 0 is
carried too; a hashed field keeps its ids when its bucket count is the same (else it is skipped
and says why); rows of values the old data never had keep the model's own init.

With the same dataset (the same fingerprint: mtlrec.training.binding) every row keeps its id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtlrec.data.spec import DatasetSpec, FeatureSpec, TaskSpec
from mtlrec.data.vocabulary import id_of, read_vocabularies
from mtlrec.errors import MtlrecError
from mtlrec.models import build_model
from mtlrec.models.features import FieldEmbedding
from mtlrec.models.interaction import FirstOrder
from mtlrec.training import binding
from mtlrec.training.checkpoint import CONFIG_KEY, TASKS_KEY


@dataclass(frozen=True)
class Space:
    """Where each owner field's ids start along `axis` of one parameter."""

    axis: int
    starts: dict[str, int]


def row_spaces(model: nn.Module, spec: DatasetSpec) -> dict[str, Space]:
    """State-dict name -> its id space, for every embedding table and first-order weight."""
    offsets = spec.vocab_offsets
    spaces: dict[str, Space] = {}
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(module, FieldEmbedding):
            multi = {m.name: (m.table, m.delta) for m in module.multi}
            per_table: dict[int, dict[str, int]] = {}
            for f in spec.vocab_owners:
                table, delta = module.single_table.get(f.name) or multi[f.name]
                per_table.setdefault(table, {})[f.name] = delta + offsets[f.name]
            for table, starts in per_table.items():
                spaces[f"{dot}tables.{table}.weight"] = Space(0, starts)
        elif isinstance(module, FirstOrder):
            spaces[f"{dot}weight"] = Space(1, {f.name: offsets[f.name] for f in spec.vocab_owners})
    return spaces


@dataclass
class RowCarry:
    """The id spaces of both models and, per owner field, old ids -> new ids (made on demand)."""

    spaces: dict[str, Space]
    old_spaces: dict[str, Space]
    identity: bool  # the same ids on both sides: tables load as they are
    make_maps: Callable[[], dict[str, tuple[torch.Tensor, torch.Tensor] | str]] | None = None
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)  # the summary per field
    reasons: dict[str, str] = field(default_factory=dict)  # parameter -> why it is not carried
    _maps: dict[str, tuple[torch.Tensor, torch.Tensor] | str] | None = None

    @property
    def maps(self) -> dict[str, tuple[torch.Tensor, torch.Tensor] | str]:
        if self._maps is None:
            self._maps = self.make_maps() if self.make_maps is not None else {}
        return self._maps

    def why_not(self, name: str) -> str:
        return self.reasons.get(name, "not carried")

    def carry(
        self, name: str, old: torch.Tensor, mine: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, int]] | None:
        """`mine` (the model's init) with the rows of `old` whose values both vocabularies
        hold; None (and a reason) when the two cannot be matched row by row."""
        space, old_space = self.spaces[name], self.old_spaces.get(name)
        if old_space is None:
            self.reasons[name] = "no embedding table of that name in the checkpoint's model"
            return None
        rest = [d for i, d in enumerate(mine.shape) if i != space.axis]
        if [d for i, d in enumerate(old.shape) if i != old_space.axis] != rest:
            self.reasons[name] = f"shape differs: {list(old.shape)} here {list(mine.shape)}"
            return None
        if mine.is_meta:  # a preflight (warm_start.preflight): whether it maps, not the values
            return mine, {"carried": len(self.maps), "rows": int(mine.shape[space.axis])}
        out = mine.detach().clone()
        carried = 0
        for f, start in space.starts.items():
            pair = self.maps.get(f)
            if f not in old_space.starts or not isinstance(pair, tuple):
                continue
            old_ids, new_ids = pair
            rows = old.index_select(old_space.axis, old_ids + old_space.starts[f])
            out.index_copy_(space.axis, new_ids + start, rows.to(out.dtype))
            carried += len(new_ids)
        return out, {"carried": carried, "rows": int(mine.shape[space.axis])}


def plan_rows(
    model: nn.Module,
    spec: DatasetSpec,
    data_dir: Path | None,
    payload: dict,
    old_spec: DatasetSpec,
    path: Path,
) -> RowCarry:
    """How the checkpoint's embedding rows reach this model's tables."""
    spaces = row_spaces(model, spec)
    if not spaces:
        return RowCarry({}, {}, True)
    with torch.device("meta"):  # the old model's table layout: shapes only
        tasks = tuple(TaskSpec(**t) for t in payload[TASKS_KEY])
        old_model, _ = build_model(payload[CONFIG_KEY]["model"], old_spec, tasks)
    old_spaces = row_spaces(old_model, old_spec)
    if same_ids(payload, data_dir, spec, old_spec):
        return RowCarry(spaces, old_spaces, True)
    carry = RowCarry(spaces, old_spaces, False)
    carry.make_maps = lambda: id_maps(payload, path, spec, old_spec, data_dir, carry.fields)
    return carry


def same_ids(
    payload: dict, data_dir: Path | None, spec: DatasetSpec, old_spec: DatasetSpec
) -> bool:
    """The checkpoint's dataset and this run's give every value the same id."""
    want = payload.get(binding.DATASET_KEY)
    if data_dir is not None and want is not None and binding.dataset_fingerprint(data_dir) == want:
        return True
    generated = [s.info.get(k) for s in (spec, old_spec) for k in ("generator", "generator_seed")]
    # a generated dataset (no vocabulary): the generator and its seed give the ids their meaning
    return (
        generated[0] is not None
        and generated[:2] == generated[2:]
        and features_equal(spec, old_spec)
    )


def features_equal(a: DatasetSpec, b: DatasetSpec) -> bool:
    return [(f.name, f.kind, f.vocab_size) for f in a.features] == [
        (f.name, f.kind, f.vocab_size) for f in b.features
    ]


def old_dataset_dir(payload: dict, path: Path) -> Path:
    """The checkpoint's dataset dir, as it was when the checkpoint was written (fingerprint)."""
    where = (payload[CONFIG_KEY].get("dataset") or {}).get("path")
    want = payload.get(binding.DATASET_KEY)
    old = Path(str(where)).expanduser() if where else None
    if old is not None and want is not None and binding.dataset_fingerprint(old) == want:
        return old
    shown = old if old is not None else "(none recorded)"
    state = "is not there" if old is None or not old.exists() else "was prepared again since"
    raise MtlrecError(
        f"init_from: {path} was trained on the dataset at {shown}, which {state}: its "
        "vocabulary is needed to carry the embedding rows over by value; bring that dataset "
        "back, or leave the tables out with 'init.exclude=[*embedding*]'"
    )


def id_maps(
    payload: dict,
    path: Path,
    spec: DatasetSpec,
    old_spec: DatasetSpec,
    data_dir: Path | None,
    summary: dict[str, dict[str, Any]],
) -> dict[str, tuple[torch.Tensor, torch.Tensor] | str]:
    """Per owner field of this dataset: (old ids, new ids) of the values both have, or why not."""
    old_dir = old_dataset_dir(payload, path)
    if data_dir is None:
        raise MtlrecError(
            f"init_from: the vocabulary of this run's dataset is not at hand ({spec.name})"
        )
    old_vocab, new_vocab = read_vocabularies(old_dir), read_vocabularies(data_dir)
    old_owners = {f.name: f for f in old_spec.vocab_owners}
    maps: dict[str, tuple[torch.Tensor, torch.Tensor] | str] = {}
    for f in spec.vocab_owners:
        result = field_map(f, old_owners.get(f.name), old_vocab, new_vocab)
        maps[f.name] = result
        if isinstance(result, str):
            summary[f.name] = {"skipped": result, "rows": f.vocab_size}
        else:
            summary[f.name] = {"carried": len(result[1]), "rows": f.vocab_size}
    return maps


def field_map(
    new: FeatureSpec,
    old: FeatureSpec | None,
    old_vocab: dict[str, list[str]],
    new_vocab: dict[str, list[str]],
) -> tuple[torch.Tensor, torch.Tensor] | str:
    if old is None:
        return "a field the checkpoint's dataset does not have: its rows start as initialised"
    if new.hash_buckets or old.hash_buckets:
        if new.hash_buckets != old.hash_buckets:
            return (
                f"hashed into {old.hash_buckets or 'no'} buckets there, {new.hash_buckets or 'no'}"
                " here: its ids cannot be matched, its rows start as initialised"
            )
        ids = torch.arange(new.vocab_size)  # the same hash, the same buckets: the same ids
        return ids, ids
    index = id_of(new_vocab.get(new.name, []))
    pairs = [(0, 0)]  # the OOV row: what the old run learned for unseen values
    pairs += [(i + 1, index[v]) for i, v in enumerate(old_vocab.get(old.name, [])) if v in index]
    old_ids, new_ids = zip(*pairs, strict=True)
    return torch.tensor(old_ids), torch.tensor(new_ids)
