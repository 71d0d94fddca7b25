"""Parsers of the files in a run dir (config.yaml, overrides.yaml, history.csv), tolerant of
what hand edits and other mtlrec versions leave. Imports nothing heavy at module level."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"model": {"num_experts": 4}} -> {"model.num_experts": 4}; lists stay values."""
    if not isinstance(obj, dict):
        return {prefix[:-1]: obj} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def load_config(path: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:
        # An interpolation that needs the original environment (a custom resolver, a missing
        # env var): keep the unresolved text rather than failing.
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def _number(text: str) -> Any:
    if text == "":
        return math.nan
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def read_history(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def read_overrides(path: Path) -> list[str]:
    import yaml

    return [str(o) for o in yaml.safe_load(path.read_text()) or []]
