"""Warm start / fine-tune: a new run starts from another run's weights (`init_from=RUN_DIR`).

    mtlrec train init_from=RUN_DIR                          # its checkpoints/best.pt
    mtlrec train init_from=RUN_DIR init_from_checkpoint=last
    mtlrec train init_from=RUN_DIR 'init.exclude=[towers.*]' 'init.freeze=[embedding.*]'

Every entry of the new model's state dict (parameters and buffers) is taken from the checkpoint
when the name is there with the same shape, after `init.include` / `init.exclude` (fnmatch
patterns on the names); embedding tables whose vocabulary grew (or changed) are carried over row
by row by RAW VALUE (mtlrec.training.carry_rows). Everything else keeps the model's own init.
`init.freeze` patterns name parameters that are not trained (requires_grad False: in no optimizer
group). The optimizer state starts fresh unless `init.optimizer=true` (the model must match
exactly). The checkpoint is loaded like a resume's (weights_only, every tensor's SHA-256, bound
to its run); nothing is ever written into RUN_DIR. A resumed run never applies the init again:
its own last.pt holds its weights (only the freeze, which decides the optimizer groups, is).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtlrec.config_schema import build, check_value
from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError
from mtlrec.models import ModelSettings, build_model
from mtlrec.training import binding
from mtlrec.training.carry_rows import plan_rows
from mtlrec.training.checkpoint import (
    BEST,
    LAST,
    MODEL_KEY,
    MODEL_NAME_KEY,
    OPTIMIZER_KEY,
    SPEC_KEY,
    load_checkpoint,
    load_resumable,
)

log = logging.getLogger("mtlrec")
CHECKPOINT_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass
class InitOptions:
    """`init:` in conf/train.yaml (patterns are fnmatch patterns of state-dict names)."""

    include: list[str] = field(default_factory=list)  # load only these (empty: everything)
    exclude: list[str] = field(default_factory=list)  # never load these
    freeze: list[str] = field(default_factory=list)  # parameters not trained
    optimizer: bool = False  # also the optimizer state (the model must match exactly)


@dataclass(frozen=True)
class InitSettings:
    """init_from, init_from_checkpoint and init.*, checked."""

    run_dir: Path | None = None
    checkpoint: str = "best"
    options: InitOptions = field(default_factory=InitOptions)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> InitSettings:
        run = check_value(str | None, config.get("init_from"), "init_from")
        which = check_value(str, config.get("init_from_checkpoint", "best"), "init_from_checkpoint")
        options = build(InitOptions, config.get("init"), "init")
        if not CHECKPOINT_NAME.fullmatch(which) or which.startswith("."):
            raise MtlrecError(
                f"init_from_checkpoint={which!r}: expected best, last or the name of a file of "
                "RUN_DIR/checkpoints (e.g. best_ctr)"
            )
        if run is None and (options.include or options.exclude or options.optimizer):
            raise MtlrecError(
                "init.include, init.exclude and init.optimizer say what init_from loads; "
                "set init_from=RUN_DIR (init.freeze alone needs none)"
            )
        return cls(Path(run).expanduser() if run else None, which, options)


# -- the checkpoint --------------------------------------------------------------------------
def checkpoint_path(run_dir: Path, which: str) -> Path:
    """RUN_DIR/checkpoints/<which>.pt, after the checks that make each bad init_from one line."""
    where = f"init_from={run_dir}"
    if not run_dir.is_dir():
        raise MtlrecError(
            f"{where}: no such directory; give the run dir of an earlier `mtlrec train`"
        )
    if not (run_dir / "metrics.json").is_file() or not (run_dir / "checkpoints").is_dir():
        raise MtlrecError(
            f"{where}: not a run dir (no metrics.json and checkpoints/); give the run dir of "
            "an earlier `mtlrec train`"
        )
    name = {"best": BEST, "last": LAST}.get(
        which, which if which.endswith(".pt") else f"{which}.pt"
    )
    path = run_dir / "checkpoints" / name
    if which == "last" and (run_dir / "checkpoints" / "last.prev.pt").is_file():
        return path  # a torn last.pt falls back to last.prev.pt, as a resume does
    if not path.is_file():
        hint = "init_from_checkpoint=last" if which == "best" else "init_from_checkpoint=best"
        raise MtlrecError(
            f"{where}: no checkpoints/{name} (the run did not write it); use {hint} or another run"
        )
    return path


def load_init(settings: InitSettings) -> tuple[dict, Path]:
    """The init checkpoint, loaded as a resume loads one: weights_only, every tensor's SHA-256
    checked, bound to the run dir it is in (its metrics.json's model and config hash)."""
    assert settings.run_dir is not None
    path = checkpoint_path(settings.run_dir, settings.checkpoint)
    if settings.checkpoint == "last":
        payload, path = load_resumable(path.parent)
    else:
        payload = load_checkpoint(path)
    try:
        info = json.loads((settings.run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        info = {}
    info = info if isinstance(info, dict) else {}
    binding.check_run(payload, path, settings.run_dir, info.get("model"), info.get("config_hash"))
    return payload, path


# -- what is loaded --------------------------------------------------------------------------
@dataclass
class InitPlan:
    """What the init loads into the model, and the summary of it (metrics.json's `init`)."""

    state: dict[str, torch.Tensor]  # the entries loaded (carried tables already remapped)
    summary: dict[str, Any]
    exact: bool  # every entry loaded as it is: the optimizer state may be loaded too


def matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def check_patterns(options: InitOptions, names: list[str], params: list[str]) -> None:
    """A pattern that matches nothing is a typo: one line with names it could have meant."""
    for key, patterns, pool in (
        ("init.include", options.include, names),
        ("init.exclude", options.exclude, names),
        ("init.freeze", options.freeze, params),
    ):
        for p in patterns:
            if not any(fnmatch.fnmatchcase(n, p) for n in pool):
                shown = ", ".join(pool[:4]) + (", ..." if len(pool) > 4 else "")
                raise MtlrecError(
                    f"{key}: pattern {p!r} matches no parameter name (fnmatch patterns, e.g. "
                    f"'embedding.*', '*experts*'); the names look like: {shown}"
                )


def plan_init(
    model: nn.Module,
    spec: DatasetSpec,
    data_dir: Path | None,
    payload: dict,
    path: Path,
    options: InitOptions,
) -> InitPlan:
    """Match the checkpoint's state against the model's by name and shape (tables by value)."""
    ours = model.state_dict()
    theirs: dict[str, torch.Tensor] = payload[MODEL_KEY]
    check_patterns(
        options, sorted(set(ours) | set(theirs)), [n for n, _ in model.named_parameters()]
    )
    old_spec = DatasetSpec.from_dict(payload[SPEC_KEY], source=f"{path} (its dataset spec)")
    carry = plan_rows(model, spec, data_dir, payload, old_spec, path)
    state: dict[str, torch.Tensor] = {}
    loaded, skipped, excluded, rows = [], {}, [], {}
    for name, mine in ours.items():
        if (options.include and not matches(name, options.include)) or matches(
            name, options.exclude
        ):
            excluded.append(name)
            continue
        if name not in theirs:
            continue
        old = theirs[name]
        if name in carry.spaces and not carry.identity:
            result = carry.carry(name, old, mine)
            if result is None:
                skipped[name] = carry.why_not(name)
                continue
            state[name], rows[name] = result
        elif tuple(old.shape) != tuple(mine.shape):
            skipped[name] = f"shape differs: {list(old.shape)} here {list(mine.shape)}"
            continue
        else:
            state[name] = old
        loaded.append(name)
    new = [n for n in ours if n not in theirs and n not in excluded]
    unused = [n for n in theirs if n not in ours]
    summary = {
        "from": str(path.resolve()),
        "model": payload.get(MODEL_NAME_KEY),
        "epoch": payload.get("epoch"),
        "loaded": loaded,
        "skipped": skipped,
        "new": new,
        "excluded": excluded,
        "not_in_model": unused,
        "rows": rows,
        "fields": carry.fields,
    }
    exact = not (skipped or new or excluded or unused) and (carry.identity or not carry.spaces)
    return InitPlan(state, summary, exact)


def preflight(
    settings: InitSettings,
    model_cfg: ModelSettings,
    spec: DatasetSpec | None,
    data_dir: Path | None,
    selected: tuple,
) -> None:
    """Before a run dir exists: the checkpoint (found, intact, of its run) and, with the spec at
    hand, that something of it fits the model (built on the meta device: names and shapes)."""
    payload, path = load_init(settings)
    if spec is None:
        return
    with torch.device("meta"):
        model, _ = build_model(model_cfg, spec, selected)
    plan = plan_init(model, spec, data_dir, payload, path, settings.options)
    check_loadable(plan, model_cfg.name, path, settings.options)


def check_loadable(plan: InitPlan, model_name: str, path: Path, options: InitOptions) -> None:
    if not plan.state:
        skipped = "; ".join(f"{k}: {v}" for k, v in list(plan.summary["skipped"].items())[:2])
        raise MtlrecError(
            f"init_from: nothing of {path} (model {plan.summary['model']}) fits model "
            f"{model_name}: no parameter with the same name and shape"
            + (f" ({skipped})" if skipped else "")
            + "; check init.include/init.exclude, or start from another run"
        )
    if options.optimizer and not plan.exact:
        raise MtlrecError(
            f"init.optimizer=true loads the optimizer state of {path}, which needs the same "
            "model on the same vocabulary with every parameter loaded; here "
            f"{describe(plan.summary)}: drop init.optimizer (the optimizer starts fresh)"
        )


def describe(summary: dict[str, Any]) -> str:
    """`loaded 24, skipped 2 (shape differs), new 3, excluded 0` and the carried rows."""
    words = (
        f"loaded {len(summary['loaded'])}, skipped {len(summary['skipped'])} (shape differs), "
        f"new {len(summary['new'])}, excluded {len(summary['excluded'])}, not in this model "
        f"{len(summary['not_in_model'])}"
    )
    if summary["rows"]:
        carried = sum(r["carried"] for r in summary["rows"].values())
        total = sum(r["rows"] for r in summary["rows"].values())
        words += f"; embedding rows carried over by value: {carried:,} of {total:,}"
    return words


# -- applying it -----------------------------------------------------------------------------
def freeze(model: nn.Module, patterns: list[str]) -> list[str]:
    """requires_grad False for the parameters `patterns` name; the optimizer leaves them out."""
    frozen = []
    for name, p in model.named_parameters():
        if matches(name, patterns):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


@dataclass
class Started:
    """What `start` did: the summary for metrics.json and the optimizer state to load."""

    summary: dict[str, Any] | None
    optimizer_state: dict | None = None


def start(
    settings: InitSettings,
    resuming: bool,
    model: nn.Module,
    spec: DatasetSpec,
    data_dir: Path | None,
    model_name: str,
) -> Started:
    """Before the optimizer is built: the init's weights (a new run only) and the freeze."""
    options = settings.options
    if settings.run_dir is None or resuming:  # a resume: its last.pt holds the weights
        check_patterns(options, [], [n for n, _ in model.named_parameters()])
        frozen = freeze(model, options.freeze)
        return Started({"frozen": frozen} if frozen and not resuming else None)
    payload, path = load_init(settings)
    plan = plan_init(model, spec, data_dir, payload, path, options)
    check_loadable(plan, model_name, path, options)
    with torch.no_grad():
        params = dict(model.state_dict(keep_vars=True))
        for name, value in plan.state.items():
            params[name].copy_(value.to(params[name].dtype))
    plan.summary["frozen"] = freeze(model, options.freeze)
    plan.summary["optimizer"] = options.optimizer
    log.info(
        "init_from %s (model %s, epoch %s): %s; frozen %d",
        path,
        plan.summary["model"],
        plan.summary["epoch"],
        describe(plan.summary),
        len(plan.summary["frozen"]),
    )
    for name, why in plan.summary["skipped"].items():
        log.info("init_from: %s not loaded (%s)", name, why)
    return Started(plan.summary, payload.get(OPTIMIZER_KEY) if options.optimizer else None)


def finish_start(
    started: Started, optimizer: torch.optim.Optimizer, record: Callable[..., Any]
) -> None:
    """Once the optimizer is built: init.optimizer's state; the summary into metrics.json."""
    summary = started.summary
    if started.optimizer_state is not None and summary is not None:
        load_optimizer(optimizer, started.optimizer_state, summary["from"])
    if summary is not None:
        record(init=summary)


def load_optimizer(optimizer: torch.optim.Optimizer, state: dict, path: str) -> None:
    """init.optimizer=true: the checkpoint's optimizer state (moments, steps) with THIS run's
    hyper-parameters (lr, weight decay: the new run's config decides them)."""
    mine = optimizer.state_dict()
    try:
        merged = _with_groups(state, mine)
        optimizer.load_state_dict(merged)
    except (ValueError, KeyError, TypeError) as e:
        raise MtlrecError(
            f"init.optimizer=true: the optimizer state of {path} does not fit this run's "
            f"optimizer ({e}); drop init.optimizer"
        ) from None


def _with_groups(theirs: Any, mine: Any) -> Any:
    """Their `state`, our `param_groups` (also inside MultiOptimizer's list of parts)."""
    if isinstance(mine, dict) and "optimizers" in mine:
        parts = theirs["optimizers"]
        if len(parts) != len(mine["optimizers"]):
            raise ValueError(f"{len(parts)} optimizer(s) there, {len(mine['optimizers'])} here")
        return {
            "optimizers": [
                _with_groups(a, b) for a, b in zip(parts, mine["optimizers"], strict=True)
            ]
        }
    if len(theirs["param_groups"]) != len(mine["param_groups"]):
        raise ValueError(
            f"{len(theirs['param_groups'])} parameter group(s) there, "
            f"{len(mine['param_groups'])} here"
        )
    groups = [
        {**g, "params": t["params"]}
        for g, t in zip(mine["param_groups"], theirs["param_groups"], strict=True)
    ]
    return {**theirs, "param_groups": groups}


__all__ = [
    "InitOptions",
    "InitSettings",
    "load_init",
    "finish_start",
    "load_optimizer",
    "plan_init",
    "preflight",
    "start",
]
