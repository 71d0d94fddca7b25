"""Task balancing: how the per-task losses of a step become one backward pass (`balance=` group).

    fixed        sum_k w_k L_k with the tasks' (or balance.weights') weights      fixed.py
    uncertainty  Kendall, Gal & Cipolla, CVPR 2018: learned log-variances          uncertainty.py
    gradnorm     Chen et al., ICML 2018: weights from gradient norms               gradnorm.py
    dwa          Liu, Johns & Davison, CVPR 2019: weights from loss ratios         dwa.py
    pcgrad       Yu et al., NeurIPS 2020: gradient surgery on shared parameters    pcgrad.py
    metabalance  He et al., WWW 2022: auxiliary gradients rescaled to the target's metabalance.py
    rlw          Lin et al., TMLR 2022: random loss weights every step             rlw.py
    cagrad       Liu et al., NeurIPS 2021: conflict-averse update near the mean    cagrad.py
    nash_mtl     Navon et al., ICML 2022: Nash bargaining of the task gradients    nash_mtl.py
    aligned_mtl  Senushkin et al., CVPR 2023: gradients aligned (condition 1)      aligned_mtl.py
    famo         Liu et al., NeurIPS 2023: logits following the log-loss rates     famo.py

Each module holds one balancer class (formula and paper in its docstring) with its `Config`
dataclass and `writes_grads` flag (base.py); the shared-parameter detection of the balancers
that work on shared parameters is in sharing.py, the common step of those that combine the task
gradients (PCGrad, MetaBalance, CAGrad, Nash-MTL, Aligned-MTL) in geometry.py. Every module of this package is imported here, so a balancer registers
itself: adding one is its code file plus conf/balance/<name>.yaml.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, NamedTuple

from torch import nn

from mtlrec.config_schema import build, check_keys, suggest
from mtlrec.data.spec import TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.training.balance.base import BALANCERS, Balancer, register
from mtlrec.training.balance.sharing import (
    SharedLayout,
    find_shared,
    shared_rows,
    structural_layout,
    task_gradients,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from mtlrec.training.balance.aligned_mtl import AlignedMTL  # noqa: E402
from mtlrec.training.balance.cagrad import CAGrad  # noqa: E402
from mtlrec.training.balance.dwa import DynamicWeightAverage  # noqa: E402
from mtlrec.training.balance.famo import FAMO  # noqa: E402
from mtlrec.training.balance.fixed import Fixed  # noqa: E402
from mtlrec.training.balance.gradnorm import GradNorm  # noqa: E402
from mtlrec.training.balance.metabalance import MetaBalance  # noqa: E402
from mtlrec.training.balance.nash_mtl import NashMTL  # noqa: E402
from mtlrec.training.balance.pcgrad import PCGrad  # noqa: E402
from mtlrec.training.balance.rlw import RandomLossWeighting  # noqa: E402
from mtlrec.training.balance.uncertainty import Uncertainty  # noqa: E402


class BalanceSettings(NamedTuple):
    """The `balance` group typed: the balancer class and its checked Config (`cls, cfg = ...`)."""

    cls: type[Balancer]
    config: Any

    @property
    def name(self) -> str:
        return self.cls.name


def balance_config(cfg: Mapping[str, Any] | None) -> BalanceSettings:
    """(the balancer class, its typed Config) from the `balance` mapping; one line per error
    (unknown name, unknown key, wrong type, value out of range). Builds nothing. A run types its
    `balance` group once (mtlrec.settings.check) and passes the result on."""
    values = dict(cfg or {"name": "fixed"})
    name = values.pop("name", "fixed")
    if name not in BALANCERS:
        raise MtlrecError(
            f"balance.name '{name}' is unknown{suggest(str(name), sorted(BALANCERS))}; "
            f"valid: {sorted(BALANCERS)}"
        )
    cls = BALANCERS[name]
    known = ["name", *(f.name for f in fields(cls.Config))]
    check_keys(values, known, "balance", owner=f"balance={name}")
    return BalanceSettings(cls, build(cls.Config, values, "balance"))


def balance_settings(cfg: BalanceSettings | Mapping[str, Any] | None) -> BalanceSettings:
    """Typed balance settings as they are, a raw mapping (a checkpoint's saved config, a test's
    dict) typed at that edge."""
    return cfg if isinstance(cfg, BalanceSettings) else balance_config(cfg)


def make_balancer(
    cfg: BalanceSettings | Mapping[str, Any] | None, tasks: tuple[TaskSpec, ...], model: nn.Module
) -> Balancer:
    """The balancer of the run's typed `balance` settings (None = fixed task weights)."""
    cls, config = balance_settings(cfg)
    return cls(tasks, model, config)


__all__ = [
    "BALANCERS",
    "BalanceSettings",
    "balance_settings",
    "FAMO",
    "AlignedMTL",
    "Balancer",
    "CAGrad",
    "DynamicWeightAverage",
    "Fixed",
    "GradNorm",
    "MetaBalance",
    "NashMTL",
    "PCGrad",
    "RandomLossWeighting",
    "SharedLayout",
    "Uncertainty",
    "balance_config",
    "find_shared",
    "make_balancer",
    "register",
    "shared_rows",
    "structural_layout",
    "task_gradients",
]
