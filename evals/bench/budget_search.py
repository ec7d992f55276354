"""Walks over a learned router's LLM-share budgets: which budgets a validation run measures, and in what order.

Separate from `router_bar` (which decodes) so that the CLI can name the walks without importing the decoding stack.
"""
from __future__ import annotations

from collections.abc import Callable
from enum import Enum


class BudgetSearch(str, Enum):
    """How `search_budgets` walks a validation run's budgets. The two early-stopping walks run every budget that
    could change the full sweep's answer and stop there, so they choose what the full sweep would, on fewer
    routed runs."""
    FULL = "full"  # every budget
    DOWN_TO_FIT = "down-to-fit"  # largest first, up to the first whose routed share fits: the sweep's `chosen`
    UP_TO_PLATEAU = "up-to-plateau"  # smallest first, up to the first within tolerance of a plateau run's
    # accuracy: the budget `operating_point` would take from the full sweep


def plateau_accuracy(plateau: dict) -> float:
    """Validation accuracy at a plateau run's chosen budget (the largest whose routed share fits)."""
    if plateau["chosen"] is None:
        raise ValueError(f"{plateau['family']}: no budget fits the {plateau['max_share']:.0%} share cap")
    rows = [row for b, row in plateau["budgets"].items() if float(b) == plateau["chosen"]]
    if not rows:
        raise ValueError(f"{plateau['family']}: the plateau run has no row for its chosen budget {plateau['chosen']}")
    return rows[0]["accuracy"]


def search_budgets(evaluate: Callable[[float], dict], budgets: list[float], search: BudgetSearch, max_share: float,
                   target_accuracy: float | None = None,
                   on_row: Callable[[dict[str, dict]], None] | None = None) -> dict[str, dict]:
    """Rows ({"accuracy", "llm_share", ...} by budget) of the budgets `search` walks; `on_row` sees the rows
    after each one (to save progress). UP_TO_PLATEAU stops at the first budget reaching `target_accuracy`."""
    if search is BudgetSearch.UP_TO_PLATEAU and target_accuracy is None:
        raise ValueError("an up-to-plateau search needs the plateau's accuracy")
    rows: dict[str, dict] = {}
    for budget in sorted(budgets, reverse=search is BudgetSearch.DOWN_TO_FIT):
        row = rows[str(budget)] = evaluate(budget)
        if on_row is not None:
            on_row(rows)
        if (search is BudgetSearch.DOWN_TO_FIT and row["llm_share"] <= max_share
                or search is BudgetSearch.UP_TO_PLATEAU and row["accuracy"] >= target_accuracy):
            break
    return dict(sorted(rows.items(), key=lambda item: float(item[0])))
