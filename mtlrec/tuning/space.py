"""A hyper-parameter search as a yaml file (conf/search/*.yaml), typed and checked in one place.

    metric: val/mean_auc          # what the study optimizes; its direction comes from the registry
    trials: 20                    # finished trials wanted (completed + pruned + failed)
    overrides: [model=mmoe]       # `mtlrec train` overrides every trial gets
    sampler: {name: tpe, seed: 1234}
    pruner: {name: median, warmup_epochs: 1}
    params:
      trainer.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      model.num_experts: {type: categorical, choices: [1, 2, 4, 8]}
      model.embedding_dim: {type: int, low: 8, high: 32, step: 8}
      model.expert_dims: {type: widths, layers: [1, 2], choices: [16, 32, 64]}

A `widths` parameter is a list of layer widths: Optuna picks the number of layers in `layers`
([min, max]) and one width per layer from `choices`; the trial gets `model.expert_dims=[64,32]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mtlrec import metric_registry
from mtlrec.config_schema import build
from mtlrec.errors import MtlrecError


def search_dir() -> Path:
    """conf/search/ as shipped inside the package (mtlrec.conf)."""
    from importlib.resources import files

    return Path(str(files("mtlrec.conf") / "search"))


@dataclass
class ParamSpec:
    type: Literal["float", "int", "categorical", "widths"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    layers: list[int] | None = None  # widths: [min layers, max layers]


@dataclass
class SamplerSpec:
    name: Literal["tpe", "random"] = "tpe"
    seed: int | None = None


@dataclass
class PrunerSpec:
    """median: stop a trial whose epoch value is worse than the median of earlier trials at that
    epoch; hyperband: successive halving over epochs; threshold: stop below `lower` / above
    `upper`; none: never prune."""

    name: Literal["median", "hyperband", "threshold", "none"] = "median"
    warmup_epochs: int = 1  # epochs every trial runs before it can be pruned
    startup_trials: int = 2  # median: trials that run in full before any pruning
    lower: float | None = None
    upper: float | None = None


@dataclass
class SearchConfig:
    name: str = ""
    metric: str = "val/mean_auc"
    trials: int = 20
    jobs: int = 1
    timeout_s: float | None = None
    overrides: list[str] = field(default_factory=list)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    params: dict[str, ParamSpec] = field(default_factory=dict)
    # A multi-objective study (`mtlrec tune --metrics a,b [--directions maximize,minimize]`):
    # every metric here, the first also the runs' trainer.monitor; empty = `metric` alone.
    objectives: list[str] = field(default_factory=list)
    objective_directions: list[str] = field(default_factory=list)

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        return "maximize" if metric_registry.direction(self.metric) == "max" else "minimize"

    @property
    def metrics(self) -> list[str]:
        return list(self.objectives) or [self.metric]

    @property
    def directions(self) -> list[str]:
        """One direction per metric: as given, else the metric registry's."""
        if self.objective_directions:
            return list(self.objective_directions)
        return [
            "maximize" if metric_registry.direction(m) == "max" else "minimize"
            for m in self.metrics
        ]

    def validate(self) -> None:
        for metric in self.metrics:
            if metric_registry.direction(metric) is None:
                known = ", ".join(sorted(metric_registry.METRICS))
                raise MtlrecError(
                    f"search.metric={metric!r} is not a metric mtlrec reports; use a key such as "
                    f"val/mean_auc or val/ctr_logloss (metrics: {known})"
                )
        given = self.objective_directions
        if given and (len(given) != len(self.metrics) or set(given) - {"maximize", "minimize"}):
            raise MtlrecError(
                f"--directions {','.join(given)}: give maximize or minimize for each of the "
                f"{len(self.metrics)} metric(s) {','.join(self.metrics)}"
            )
        for key, value in (("trials", self.trials), ("jobs", self.jobs)):
            if value < 1:
                raise MtlrecError(f"search.{key} must be >= 1, got {value}")
        if not self.params:
            raise MtlrecError("search.params is empty: name at least one parameter to search")
        for name, spec in self.params.items():
            check_param(f"search.params.{name}", spec)


def check_param(key: str, spec: ParamSpec) -> None:
    if spec.type in ("float", "int"):
        if spec.low is None or spec.high is None or not spec.low < spec.high:
            raise MtlrecError(f"{key}: a {spec.type} parameter needs low < high")
        if spec.log and spec.low <= 0:
            raise MtlrecError(f"{key}: log=true needs low > 0, got {spec.low}")
        if spec.type == "int" and not (
            float(spec.low).is_integer() and float(spec.high).is_integer()
        ):
            raise MtlrecError(f"{key}: an int parameter needs integer low and high")
        return
    if not spec.choices:
        raise MtlrecError(f"{key}: a {spec.type} parameter needs a non-empty choices list")
    if spec.type == "widths":
        layers = spec.layers or [1, 1]
        if len(layers) != 2 or not 1 <= layers[0] <= layers[1]:
            raise MtlrecError(f"{key}.layers must be [min, max] with 1 <= min <= max, got {layers}")
        if not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in spec.choices):
            raise MtlrecError(f"{key}.choices must be positive integers (layer widths)")


def load_search(name_or_path: str) -> SearchConfig:
    """A search by name (conf/search/NAME.yaml) or by path to a yaml file."""
    import yaml

    path = Path(name_or_path).expanduser()
    if not path.suffix:
        path = search_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in search_dir().glob("*.yaml"))
        raise MtlrecError(
            f"search '{name_or_path}' not found ({path}); built-in searches: {', '.join(known)}, "
            "or give the path of a yaml file"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise MtlrecError(f"{path}: not valid yaml ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise MtlrecError(f"{path}: a search file is a mapping of keys (metric, params, ...)")
    raw.setdefault("name", path.stem)
    try:
        return build(SearchConfig, raw, "search")
    except MtlrecError as e:
        raise MtlrecError(f"{path}: {e}") from None


def suggest(trial: Any, params: dict[str, ParamSpec]) -> list[str]:
    """The `key=value` train overrides of one trial (optuna.Trial asks each parameter)."""
    out = []
    for key, spec in params.items():
        out.append(f"{key}={render(suggest_one(trial, key, spec))}")
    return out


def suggest_one(trial: Any, key: str, spec: ParamSpec) -> Any:
    if spec.type == "float":
        step = None if spec.log else spec.step
        return trial.suggest_float(key, spec.low, spec.high, log=spec.log, step=step)
    if spec.type == "int":
        step = 1 if spec.log or spec.step is None else int(spec.step)
        return trial.suggest_int(
            key, int(spec.low or 0), int(spec.high or 0), log=spec.log, step=step
        )
    if spec.type == "categorical":
        return trial.suggest_categorical(key, list(spec.choices or []))
    low, high = spec.layers or [1, 1]
    n = trial.suggest_int(f"{key}.layers", low, high)
    return [trial.suggest_categorical(f"{key}.{i}", list(spec.choices or [])) for i in range(n)]


def render(value: Any) -> str:
    """A Hydra override value: lists as [a,b], floats without losing digits, null for None."""
    if isinstance(value, list):
        return "[" + ",".join(render(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)
