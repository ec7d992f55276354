"""Terminal rendering of a routed generation: LLM-written tokens highlighted, then a stats line."""
from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.text import Text

from r2r.serving.decoding.generation import Generation, Source

LLM_STYLE = "bold black on yellow"


def print_generation(gen: Generation, decode: Callable[[Generation, int], str], console: Console | None = None) -> None:
    """`decode(gen, n)`: the text of the first n steps (`ModelPair.decode_output`; pieces for cross pairs)."""
    console = console or Console()
    text = Text()
    decoded = ""
    for i, source in enumerate(gen.sources):  # decode growing prefixes: a character may span tokens
        current = decode(gen, i + 1)[: len(gen.text)]
        text.append(current[len(decoded) :], style=LLM_STYLE if source == Source.LLM else "")
        decoded = current
    console.print(text)
    s = gen.stats.as_dict(len(gen.token_ids))
    console.print(f"[dim]{s['tokens']} tokens, {s['llm_tokens']} from the LLM ({s['llm_share']:.1%}), "
                  f"SLM passes {s['slm_passes']}, LLM passes {s['llm_passes']}, {s['seconds']:.2f} s, "
                  f"finish: {gen.finish_reason.value}[/dim]")
