"""The model registry: config name -> model class, filled by `@register` in each model's file.

`mtlrec.models` imports every module of this package once, so a new model is its code file (with
`@register("name")` on the class) plus its conf/model/<name>.yaml: nothing else names it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from mtlrec.models.base import MultiTaskModel

M = TypeVar("M", bound="type[MultiTaskModel]")

MODELS: dict[str, type[MultiTaskModel]] = {}


def register(name: str) -> Callable[[M], M]:
    """Class decorator: make the model available as `model=<name>`."""

    def add(cls: M) -> M:
        if name in MODELS and MODELS[name] is not cls:
            raise ValueError(f"model name '{name}' is registered twice ({MODELS[name]}, {cls})")
        MODELS[name] = cls
        return cls

    return add
