"""Typed config dataclasses from plain config mappings: one checker for every config group.

Every plug-in (model, balancer, logger, dataset source) and every settings group (trainer,
checkpoint, device, ...) declares a dataclass; `build(Config, mapping, "trainer")` turns the composed
config into an instance, or raises ONE line naming the key, the value and what is allowed:

    trainer.grad_clip_norm='abc': expected a number or null
    model.expert_dims=64: expected a list of integers
    trainer.patiense is not a key of trainer (did you mean trainer.patience?)

Values are never coerced between kinds (`batch_norm=abc` is an error, not `True`); an int is
accepted where a float is expected. After the types, the dataclass's own `validate()` (if any)
checks ranges and combinations. Imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union

from mtlrec.errors import MtlrecError

T = TypeVar("T")


class _Mismatch(Exception):
    pass


def closest(name: str, choices: Sequence[str]) -> str | None:
    """The choice `name` most likely misspells, if any."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def suggest(name: str, choices: Sequence[str]) -> str:
    """' (did you mean X?)' for a near miss, else ''."""
    near = closest(name, choices)
    return f" (did you mean {near}?)" if near else ""


def check_keys(
    values: Mapping[str, Any], known: Sequence[str], prefix: str, owner: str | None = None
) -> None:
    """One line for the first unknown key, with the nearest known key. `owner` names what the
    keys belong to when that is more than the prefix (e.g. `balance=dwa`)."""
    for key in values:
        if key not in known:
            where = f"{prefix}." if prefix else ""
            near = closest(key, known)
            hint = f" (did you mean {where}{near}?)" if near else ""
            raise MtlrecError(
                f"{where}{key} is not a key of {owner or prefix or 'the config'}{hint}; "
                f"its keys are {sorted(known)}"
            )


def build(cls: type[T], values: Mapping[str, Any] | None, prefix: str) -> T:
    """An instance of dataclass `cls` from `values`; unknown keys and wrong types are one line."""
    if values is not None and not isinstance(values, Mapping):
        raise MtlrecError(f"{prefix}={values!r}: expected a mapping of keys")
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    check_keys(values, list(fields), prefix)
    hints = typing.get_type_hints(cls)
    kwargs = {
        k: check_value(hints[k], v, f"{prefix}.{k}" if prefix else k) for k, v in values.items()
    }
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def check_value(tp: Any, value: Any, key: str) -> Any:
    """`value` checked against type `tp` (lists become lists/tuples as annotated)."""
    try:
        return _check(tp, value, key)
    except _Mismatch:
        raise MtlrecError(f"{key}={value!r}: expected {describe(tp)}") from None


def _check(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(arg, value, key)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if tp is Path:  # a path-valued key: `~` expanded once, here; '' is no path (like null)
        if isinstance(value, (str, PurePath)):
            return Path(value).expanduser() if str(value) else None
        raise _Mismatch
    if origin in (list, tuple, Sequence, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        item = args[0] if args else Any
        items = [_check(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping, typing.Mapping):
        if not isinstance(value, Mapping):
            raise _Mismatch
        item = args[1] if len(args) == 2 else Any
        return {k: _check(item, v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise _Mismatch
        return build(tp, value, key)
    return value


def describe(tp: Any) -> str:
    """Human words for a type: 'a number or null', 'one of adam, adamw', 'a list of integers'."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if all(a is bool or typing.get_origin(a) is Literal for a in members):  # choices only
            choices = [
                str(v).lower() if isinstance(v, bool) else str(v)
                for a in members
                for v in ((True, False) if a is bool else typing.get_args(a))
            ]
            return "one of " + ", ".join(choices) + (" or null" if type(None) in args else "")
        words = [describe(a) for a in members]
        if type(None) in args:
            words.append("null")
        return " or ".join(words)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (list, tuple, Sequence, typing.Sequence):
        inner = describe(args[0]) if args else "values"
        return "a list of " + _plural(inner)
    if origin in (dict, Mapping, typing.Mapping):
        return "a mapping"
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Path: "a path",
    }
    if tp in names:
        return names[tp]
    return getattr(tp, "__name__", str(tp))


def _plural(word: str) -> str:
    for single, plural in (
        ("an integer", "integers"),
        ("a number", "numbers"),
        ("a string", "strings"),
        ("true or false", "booleans"),
    ):
        word = word.replace(single, plural)
    return word
