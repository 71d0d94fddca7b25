"""Which config keys and metrics tell a set of runs apart (used by compare, plots and sweeps).

* `differing_keys(runs)`: the config keys whose values differ between the runs, override keys
  first; model.* / dataset.* defaults that only follow from picking another model or dataset
  are left out (model.name says it in one column);
* `short_names(keys)`: the shortest unambiguous dotted suffix (`num_experts` for
  `model.num_experts`), `model` for `model.name`;
* `default_metrics(runs)`: the test metrics of the monitored family, mean first;
* `filter_runs(filters, runs, names)`: `--filter key=value` (full key, column name or suffix).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from mtlrec.errors import MtlrecError
from mtlrec.metric_registry import parse
from mtlrec.runs.records import Run

SEED_KEYS = ("seed", "data_order_seed")
# Config keys that never explain a difference in results: where files live, how progress shows.
IGNORED_KEYS = ("data_dir", "dataset.path", "trainer.progress", "resume")


def same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _varies(values: list[Any]) -> bool:
    return any(not same(v, values[0]) for v in values[1:])


def differing_keys(runs: list[Run]) -> list[str]:
    """Config keys whose values are not the same in every run, override keys first."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.config if k not in keys]
    differing = []
    for key in keys:
        if key in IGNORED_KEYS or key.startswith("hydra."):
            continue
        # A key only some runs have (model.num_experts next to an ESMM run, a key added by a
        # newer mtlrec) counts when its value differs among the runs that have it.
        if _varies([run.config[key] for run in runs if key in run.config]):
            differing.append(key)
    for group in ("model", "dataset"):
        _drop_group_defaults(differing, runs, group)
    _drop_derived(differing, runs)
    # data_order_seed follows seed by default (${seed}): a second column would say nothing new.
    if "data_order_seed" in differing and all(
        same(r.config.get("data_order_seed"), r.config.get("seed")) for r in runs
    ):
        differing.remove("data_order_seed")
    order = []
    for run in runs:
        for o in run.overrides:
            key = o.split("=", 1)[0].lstrip("+~")
            if key in differing and key not in order:
                order.append(key)
    return order + [k for k in differing if k not in order]


def _drop_group_defaults(differing: list[str], runs: list[Run], group: str) -> None:
    """Runs of different models differ in every model.* default; keep only the keys that also
    vary within one model (same for datasets)."""
    if f"{group}.name" not in differing:
        return
    by_name: dict[str, list[Run]] = {}
    for run in runs:
        by_name.setdefault(str(run.config.get(f"{group}.name")), []).append(run)
    for key in [k for k in differing if k.startswith(f"{group}.") and k != f"{group}.name"]:
        varies = any(
            _varies([r.config[key] for r in members if key in r.config])
            for members in by_name.values()
        )
        if not varies:
            differing.remove(key)


def _override_keys(runs: list[Run]) -> set[str]:
    return {o.split("=", 1)[0].lstrip("+~") for run in runs for o in run.overrides}


def _one_to_one(runs: list[Run], a: str, b: str) -> bool:
    """Whether each value of `a` goes with one value of `b` and back, in every run having both."""
    forward: dict[str, set[str]] = {}
    backward: dict[str, set[str]] = {}
    for run in runs:
        if a in run.config and b in run.config:
            va = json.dumps(run.config[a], sort_keys=True, default=str)
            vb = json.dumps(run.config[b], sort_keys=True, default=str)
            forward.setdefault(va, set()).add(vb)
            backward.setdefault(vb, set()).add(va)
    return bool(forward) and all(len(v) == 1 for v in [*forward.values(), *backward.values()])


def _drop_derived(differing: list[str], runs: list[Run]) -> None:
    """A key nobody overrode whose value follows one-to-one from an overridden key (e.g.
    `dataset.files: synth_p${dataset.p}.csv` with `dataset.p=1,2` swept) is no axis of its own.
    Keys inside an overridden config group (`model=mmoe` -> model.*) are left alone."""
    overridden = _override_keys(runs)
    swept = [k for k in differing if k in overridden]
    for key in [k for k in differing if k not in overridden]:
        if any(key.startswith(o + ".") for o in overridden):
            continue
        if any(_one_to_one(runs, axis, key) for axis in swept):
            differing.remove(key)


def short_names(keys: list[str]) -> dict[str, str]:
    """Shortest dotted suffix that is unique among the keys: model.num_experts -> num_experts."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            clash = [k for k in keys if k != key and k.split(".")[-n:] == parts[-n:]]
            if not clash:
                names[key] = ".".join(parts[-n:])
                break
        else:
            names[key] = key
    for key in names:  # model.name -> model, device.type -> device
        parts = key.split(".")
        if len(parts) == 2 and parts[1] in ("name", "type") and parts[0] not in names.values():
            names[key] = parts[0]
    return names


def metric_kind(monitor: str) -> str:
    """val/mean_auc -> auc; val/mean_mse -> mse; val/loss -> loss (the registry's metric name)."""
    parsed = parse(monitor)
    if parsed is not None:
        return parsed.metric.name
    return monitor.split("/", 1)[-1].split("_")[-1]


def default_metrics(runs: list[Run]) -> list[str]:
    """Test metrics of the monitored family, e.g. test/*_auc* for val/mean_auc, mean first."""
    monitors = [r.monitor for r in runs if r.monitor]
    names: list[str] = []
    for run in runs:
        names += [k for k in run.metric_names if k not in names]
    if not monitors:
        return sorted(k for k in names if k.startswith("test/"))[:6]
    kinds = list(dict.fromkeys(metric_kind(m) for m in monitors))
    chosen = [
        k
        for k in names
        if k.startswith("test/") and any(kind in k.split("/", 1)[1].split("_") for kind in kinds)
    ]
    chosen += [k for k in task_main_metrics(names, chosen) if k not in chosen]
    return sorted(chosen, key=lambda k: (not k.split("/", 1)[1].startswith("mean_"), k))


MAIN_METRICS = ("auc", "rmse", "mse")  # a task's main metric: AUC if binary, else (R)MSE


def task_main_metrics(names: list[str], chosen: list[str]) -> list[str]:
    """`test/<task>_<main metric>` for each task the chosen columns leave out (a rating task next
    to a monitored AUC: `test/rating_rmse`), so every task has a column."""
    shown = {p.task for p in map(parse, chosen) if p is not None}
    by_task: dict[str, set[str]] = {}
    for key in names:
        p = parse(key)
        if (
            key.startswith("test/")
            and p is not None
            and p.task
            and p.task != "mean"
            and not p.suffix
        ):
            by_task.setdefault(p.task, set()).add(p.metric.name)
    out = []
    for task, have in by_task.items():
        main = next((m for m in MAIN_METRICS if m in have), None)
        if task not in shown and main is not None:
            out.append(f"test/{task}_{main}")
    return out


METRIC_FILTER = re.compile(r"^([\w./-]+?)(>=|<=|>|<|=)(.+)$")
COMPARE = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    "=": lambda a, b: a == b,
}


def filter_runs(filters: list[str], runs: list[Run], names: dict[str, str]) -> list[Run]:
    """Keep the runs matching every `key=value` (`status=failed` filters on the status) and every
    metric condition (`test/cvr_auc>=0.7`, any metric of the runs; runs without it are dropped)."""
    import yaml

    metrics = {m for r in runs for m in r.metrics}
    for item in filters:
        m = METRIC_FILTER.match(item)
        if m and m.group(1) in metrics:
            key, op, bound = m.groups()
            try:
                limit = float(bound)
            except ValueError:
                raise MtlrecError(f"--filter {item}: {bound!r} is not a number") from None
            runs = [r for r in runs if _number(r.metrics.get(key)) is not None]
            runs = [r for r in runs if COMPARE[op](float(r.metrics[key]), limit)]
            continue
        if "=" not in item:
            raise MtlrecError(
                f"--filter {item}: expected key=value (a config key) or a metric condition such as "
                "test/mean_auc>=0.7, e.g. --filter model.num_experts=4"
            )
        key, value = item.split("=", 1)
        if key == "status":
            runs = [r for r in runs if r.status == value]
            continue
        full = resolve_key(key, runs, names)
        wanted = yaml.safe_load(value) if value else ""
        runs = [r for r in runs if full in r.config and _same_value(r.config[full], wanted)]
    return runs


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not math.isnan(float(v)) else None


def _same_value(have: Any, wanted: Any) -> bool:
    if isinstance(have, (int, float)) and isinstance(wanted, (int, float)):
        return float(have) == float(wanted)
    return same(have, wanted) or str(have) == str(wanted)


def resolve_key(key: str, runs: list[Run], names: dict[str, str]) -> str:
    """A full config key from a full key, a column name, `model` (model.name) or a suffix."""
    all_keys = {k for r in runs for k in r.config}
    if key in all_keys:
        return key
    for full, short in names.items():  # the column names of the table work too
        if short == key:
            return full
    for suffix in (".name", ".type"):  # model -> model.name, device -> device.type
        if key + suffix in all_keys:
            return key + suffix
    matches = [k for k in all_keys if k.endswith("." + key)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise MtlrecError(f"--filter {key}: ambiguous, matches {', '.join(sorted(matches))}")
    raise MtlrecError(
        f"--filter {key}: no compared run has this config key (e.g. model.num_experts, seed, "
        "trainer.lr, or status)"
    )
