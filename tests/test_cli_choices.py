"""Closed sets at the edges: every CLI `choices` list and the wire's routing fields are their enum's values, so a
new member reaches the flags and the HTTP API without anyone listing it again."""
from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from r2r.data_gen.pipeline import ContinueWith
from r2r.data_gen.verifiers import VerifierKind
from r2r.evals.bench.budget_search import BudgetSearch
from r2r.evals.sweep import GRID
from r2r.cli import build_parser
from r2r.router.fit import Positives
from r2r.router.policies import PolicyKind
from r2r.serving.decoding.generation import RoutingMode
from r2r.serving.pair import BackendKind
from r2r.serving.real_models import Fetchable
from r2r.testbed.splits import FAMILIES
from r2r.testbed.train import SHAPES

# flag (or positional's name) -> the closed set its choices must list, in order: an enum or a registry's keys
CLOSED_SETS: dict[str, list[str]] = {
    "--backend": [k.value for k in BackendKind],
    "--policy": [k.value for k in PolicyKind],
    "--policies": [k.value for k in PolicyKind],
    "--mode": [m.value for m in RoutingMode],
    "--verifier": [v.value for v in VerifierKind],
    "--continue-with": [c.value for c in ContinueWith],
    "--positives": [p.value for p in Positives],
    "--search": [s.value for s in BudgetSearch],
    "--family": list(FAMILIES),
    "--size": list(SHAPES),
    "name": [f.value for f in Fetchable],  # r2r models fetch NAME
}


def _choice_actions(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("r2r",)) -> Iterator[tuple]:
    """(command path, flag, choices) for every argument with choices, subcommands walked recursively."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _choice_actions(sub, (*path, name))
        elif action.choices is not None:
            yield path, (action.option_strings or [action.dest])[0], list(action.choices)


def test_every_cli_choices_list_is_its_closed_sets_values() -> None:
    seen = set()
    for path, flag, choices in _choice_actions(build_parser()):
        where = f"`{' '.join(path)} {flag}`"
        assert flag in CLOSED_SETS, (f"{where} has choices {choices}: derive them from their enum and add the flag "
                                     "to CLOSED_SETS here")
        assert choices == CLOSED_SETS[flag], f"{where} offers {choices}, its closed set is {CLOSED_SETS[flag]}"
        seen.add(flag)
    assert seen == set(CLOSED_SETS), f"flags with no choices list any more: {sorted(set(CLOSED_SETS) - seen)}"


def test_eval_sweeps_any_policy_it_is_given() -> None:
    """`r2r eval --policies` takes every policy (entropy was once left out) and the sweep has settings for each."""
    args = build_parser().parse_args(["eval", "testbed-math", "--policies", *(k.value for k in PolicyKind)])
    assert args.policies == [k.value for k in PolicyKind]
    assert build_parser().parse_args(["eval", "testbed-math", "--policies", "entropy"]).policies == ["entropy"]
    assert set(GRID) == set(PolicyKind), f"policies with no sweep settings: {set(PolicyKind) - set(GRID)}"


def test_wire_mode_is_the_routing_mode_enum() -> None:
    """The HTTP `mode` extra takes exactly RoutingMode's values, as the same JSON strings."""
    from pydantic import ValidationError

    from r2r.serving.http.protocol import CompletionRequest

    for mode in RoutingMode:
        req = CompletionRequest(prompt="x", mode=mode.value)
        assert req.mode is mode
        assert req.model_dump(mode="json")["mode"] == mode.value
    with pytest.raises(ValidationError, match="mode"):
        CompletionRequest(prompt="x", mode="fastest")
