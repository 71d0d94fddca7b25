"""Model registry: config name -> model class. Each model lives in its own file."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models.aitm import AITM
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.cvr_base import CvrBase
from mtlrec.models.esmm import Esmm
from mtlrec.models.layers import CommonConfig
from mtlrec.models.mmoe import MMoE
from mtlrec.models.omoe import OMoE
from mtlrec.models.ple import PLE
from mtlrec.models.shared_bottom import SharedBottom
from mtlrec.models.single_task import SingleTask

MODELS: dict[str, type[MultiTaskModel]] = {
    "esmm": Esmm,
    "mmoe": MMoE,
    "shared_bottom": SharedBottom,
    "single_task": SingleTask,
    "cvr_base": CvrBase,
    "omoe": OMoE,
    "ple": PLE,
    "aitm": AITM,
}


def model_config(model_cfg: Mapping[str, Any]) -> tuple[type[MultiTaskModel], CommonConfig]:
    """The model class and its validated typed config, from the `model` config group."""
    name = model_cfg.get("name")
    if name not in MODELS:
        raise MtlrecError(f"model.name '{name}' is unknown; valid models: {sorted(MODELS)}")
    cls = MODELS[name]
    known = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(model_cfg) - known)
    if unknown:
        raise MtlrecError(f"model '{name}' has no key(s) {unknown}; its keys are {sorted(known)}")
    cfg = cls.Config(**dict(model_cfg))  # a plain dict: OmegaConf.to_container(resolve=True)
    cfg.validate()
    return cls, cfg


def build_model(
    model_cfg: Mapping[str, Any], spec: DatasetSpec, selected_tasks: tuple[TaskSpec, ...]
) -> tuple[MultiTaskModel, tuple[TaskSpec, ...]]:
    """Build the configured model for a dataset; returns it with the tasks it trains on."""
    cls, cfg = model_config(model_cfg)
    tasks = cls.loss_tasks(spec, selected_tasks, cfg)
    return cls(spec, tasks, cfg), tasks
