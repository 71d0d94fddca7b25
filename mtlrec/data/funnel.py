"""Funnel consistency: a later step of a chain (conversion) never happens without the earlier (click).

One rule for every path that brings labels in (prepare, the Ali-CCP raw converter, the in-memory
loader and the streaming reader): rows where a later label is 1 but the earlier one is 0 are
either one error line with their counts (`dataset.funnel_violations: error`, the default) or
dropped with a logged count (`dataset.funnel_violations: drop`). Which pairs are checked:
`funnel_pairs` (the funnel's click -> conversion, click -> action when the funnel declares ESM²'s
D-action label `action`, and every binary task learned on the rows where another label is 1).
A purchase without a D-action is allowed (ESM²'s other-action path), so action -> conversion is
no pair.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from mtlrec.errors import MtlrecError

Pair = tuple[str, str]
POLICIES = ("error", "drop")


def funnel_pairs(funnel: Any, tasks: Iterable[Any]) -> list[Pair]:
    """(earlier, later) label columns where `later` = 1 needs `earlier` = 1.

    The funnel's click -> conversion, and every binary task learned on the rows where another
    label is 1 (`where: click`): its label is a later step of that chain. The counterfactual
    `conversion_if_clicked` is exempt: it is defined on every impression.
    """
    pairs: list[Pair] = []
    if funnel is not None:
        pairs.append((funnel.click, funnel.conversion))
        if getattr(funnel, "action", None):
            pairs.append((funnel.click, funnel.action))
    for t in tasks:
        if t.type == "binary" and t.where and (t.where, t.label) not in pairs:
            pairs.append((t.where, t.label))
    return pairs


def require_action(spec: Any, model: str) -> str:
    """The funnel's D-action label column (ESM²), or one line saying how to declare one."""
    action = getattr(spec.funnel, "action", None)
    if not action:
        raise MtlrecError(
            f"model={model} needs a D-action label (cart or wish) in the funnel, but dataset "
            f"'{spec.name}' declares no funnel.action; set funnel.action to that label column "
            "(on synthetic_ccp: dataset=synthetic_ccp_action has one)"
        )
    return str(action)


def check_policy(policy: Any) -> str:
    if policy not in POLICIES:
        raise MtlrecError(
            f"dataset.funnel_violations={policy!r}: expected one of {', '.join(POLICIES)}"
        )
    return policy


def violation_mask(
    values: Callable[[str], np.ndarray], pairs: Sequence[Pair], n: int
) -> tuple[np.ndarray, dict[Pair, int]]:
    """(rows breaking any pair, count per pair) of `n` rows; `values(col)` gives a label column."""
    bad = np.zeros(n, dtype=bool)
    counts: dict[Pair, int] = {}
    for earlier, later in pairs:
        hit = (values(later) == 1) & (values(earlier) != 1)
        counts[(earlier, later)] = int(hit.sum())
        bad |= hit
    return bad, counts


def add_counts(total: dict[Pair, int], counts: dict[Pair, int]) -> None:
    for pair, k in counts.items():
        total[pair] = total.get(pair, 0) + k


def describe(counts: dict[Pair, int]) -> str:
    """'3 rows with buy=1 but click=0' (pairs with violations only, joined by '; ')."""
    return "; ".join(
        f"{k} row{'s' if k != 1 else ''} with {later}=1 but {earlier}=0"
        for (earlier, later), k in counts.items()
        if k
    )


def raise_violations(where: str, counts: dict[Pair, int], rows: int) -> None:
    """The one error line, if any row broke a pair."""
    if any(counts.values()):
        raise MtlrecError(
            f"{where}: funnel violated: {describe(counts)} (of {rows:,} rows); a later step needs "
            "the earlier one: fix the labels, or set dataset.funnel_violations=drop to drop these rows"
        )
