"""Short Python snippets whose printed output is derived by a line-by-line trace.

The trace substitutes the current value of every variable and writes each result, so a
model that can add small numbers and track three variables can answer; the reference is
confirmed by actually running the snippet (`run_snippet`).

Tried and reverted: traces that restate each statement before substituting
(`b = a + 6 -> 32 + 6 = 38`), since the LLM's wrong answers mostly go wrong at a
substitution. Retrained on them (SLM from scratch, LLM 600 more steps), the SLM rose from
13.0% to 20.8% on code and the LLM stayed at 25.8%: the gap shrank from 13.4 to 5.0 points.
Also tried and reverted: numbered source lines and traces keyed by them, carrying the whole
variable state on every line (`3: x = y + y = 28 + 28 = 56 | x=56 y=28`), so each step is a
lookup by key. After 250 more steps (code-heavy) the LLM scored 24% on 200 test problems: it
still copied the wrong variable name from a numbered line (`1: y = 2` traced as `1: n = 2`).
Trained from scratch on that keyed format, though, the LLM reaches 88.0% on code and the SLM
22.4% (500 test problems): branch `keyed-testbed` holds it while the downstream artifacts
(labels, router, benches) are rebuilt for the new pair.
"""
from __future__ import annotations

import contextlib
import io
import random

from evals.testbed.problem import FINAL_MARK, Problem

VARS = ["a", "b", "c", "x", "y", "n", "s", "t"]
_OPS = {"+": lambda p, q: p + q, "-": lambda p, q: p - q, "*": lambda p, q: p * q}


def _operand(rng: random.Random, env: dict[str, int]) -> str:
    if env and rng.random() < 0.6:
        return rng.choice(sorted(env))
    return str(rng.randint(1, 9))


def _expr(rng: random.Random, env: dict[str, int]) -> tuple[str, str, int]:
    """(source, source with values substituted, value) for `p op q`; keeps values in [-99, 199]."""
    while True:
        left, right = _operand(rng, env), _operand(rng, env)
        op = rng.choice("+-*")
        lv = env[left] if left in env else int(left)
        rv = env[right] if right in env else int(right)
        value = _OPS[op](lv, rv)
        if -99 <= value <= 199 and not (op == "*" and abs(lv) > 20 and abs(rv) > 9):
            return f"{left} {op} {right}", f"{lv} {op} {rv}", value


def generate_code(rng: random.Random) -> Problem:
    """A 3-5 statement snippet (assignments, at most one if/else) ending in print()."""
    names = rng.sample(VARS, 3)
    env: dict[str, int] = {}
    code: list[str] = []
    trace: list[str] = []
    first = names[0]
    env[first] = rng.randint(1, 9)
    code.append(f"{first} = {env[first]}")
    trace.append(f"{first} = {env[first]}")
    used_if = False
    for _ in range(rng.randint(2, 4)):
        target = rng.choice(names)
        if not used_if and len(env) >= 2 and rng.random() < 0.3:
            used_if = True
            p, q = rng.sample(sorted(env), 2)
            then_src, then_sub, then_val = _expr(rng, env)
            else_src, else_sub, else_val = _expr(rng, env)
            cond = env[p] > env[q]
            code += [f"if {p} > {q}:", f"    {target} = {then_src}", "else:", f"    {target} = {else_src}"]
            trace.append(f"{p} > {q} is {env[p]} > {env[q]}: {cond}")
            sub, val = (then_sub, then_val) if cond else (else_sub, else_val)
            trace.append(f"{target} = {sub} = {val}")
            env[target] = val
            continue
        src, sub, val = _expr(rng, env)
        code.append(f"{target} = {src}")
        trace.append(f"{target} = {sub} = {val}")
        env[target] = val
    shown = rng.choice(sorted(env))
    code.append(f"print({shown})")
    trace.append(f"print({shown}) shows {env[shown]}")
    trace.append(f"{FINAL_MARK} {env[shown]}")
    source = "\n".join(code)
    prompt = f"What does this code print?\n{source}"
    return Problem("code", prompt, "\n".join(trace), str(env[shown]))


def run_snippet(prompt: str) -> str:
    """Execute the snippet of a generated code prompt and return what it prints.

    Only for the generator's own snippets (straight-line integer code it wrote itself);
    untrusted code goes through the evals sandbox instead.
    """
    source = prompt.split("\n", 1)[1]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, "<snippet>", "exec"), {"__builtins__": {"print": print}})  # noqa: S102
    return out.getvalue().strip()
