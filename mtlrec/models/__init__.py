"""Model registry: config name -> model class. Each model lives in its own file.

Every module of this package is imported here once, so each model's `@register("name")` runs;
`MODELS` is then the full list (tests and docs take it from here, never from a hand-written list).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any, NamedTuple, cast

from omegaconf import DictConfig, ListConfig, OmegaConf

from mtlrec.config_schema import build
from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.layers import CommonConfig, apply_hidden_init
from mtlrec.models.registry import MODELS, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MODELS", "ModelSettings", "build_model", "model_config", "register"]


class ModelSettings(NamedTuple):
    """The `model` group typed: the model class and its checked Config (`cls, cfg = ...`)."""

    cls: type[MultiTaskModel]
    config: CommonConfig

    @property
    def name(self) -> str:
        return registered_name(self.cls)


def registered_name(cls: type[MultiTaskModel]) -> str:
    """The config name a model class is registered under."""
    return next(k for k, v in MODELS.items() if v is cls)


def _plain(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict of plain values: OmegaConf nodes (the whole mapping or its values, as in
    `dict(cfg.model)`) are resolved and converted, so type checks see lists, not ListConfigs."""
    if isinstance(model_cfg, DictConfig):
        return cast(dict[str, Any], OmegaConf.to_container(model_cfg, resolve=True))
    return {
        k: OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v
        for k, v in model_cfg.items()
    }


def model_config(model_cfg: Mapping[str, Any]) -> ModelSettings:
    """The model class and its typed config, from the `model` config group: the ONE place a
    model's raw mapping becomes its typed Config (a run does it once, in mtlrec.settings.check).

    Every key and type is checked by `config_schema.build` (one line naming key, value and what
    is allowed; never coerced), then the Config's `validate()` checks ranges.
    """
    values = _plain(model_cfg)
    name = values.get("name")
    if name not in MODELS:
        raise MtlrecError(f"model.name '{name}' is unknown; valid models: {sorted(MODELS)}")
    cls = MODELS[name]
    return ModelSettings(cls, build(cls.Config, values, "model"))


def build_model(
    settings: ModelSettings | Mapping[str, Any],
    spec: DatasetSpec,
    selected_tasks: tuple[TaskSpec, ...],
) -> tuple[MultiTaskModel, tuple[TaskSpec, ...]]:
    """Build the configured model for a dataset; returns it with the tasks it trains on.

    A run passes its typed ModelSettings (built once); a raw mapping (a checkpoint's saved
    config, a test's dict) is typed here first, at that edge."""
    cls, cfg = settings if isinstance(settings, ModelSettings) else model_config(settings)
    tasks = cls.loss_tasks(spec, selected_tasks, cfg)
    chosen = {t.name for t in selected_tasks}
    if (
        tuple(selected_tasks) != tuple(spec.tasks)
        and not cls.trains_dataset_tasks
        and chosen != {t.name for t in tasks}
    ):
        # An explicit dataset.tasks this model cannot honour: the run is refused, and says so.
        raise MtlrecError(
            f"dataset.tasks={[t.name for t in selected_tasks]}: model {registered_name(cls)} "
            f"trains a fixed set of tasks ({', '.join(t.name for t in tasks)}), not a selection, "
            "so the run is refused; drop dataset.tasks, or use a model that trains the "
            "dataset's tasks (e.g. model=mmoe, shared_bottom or single_task)"
        )
    model = cls(spec, tasks, cfg)
    apply_hidden_init(model, cfg.hidden_init)
    return model, tasks
