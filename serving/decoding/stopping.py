"""When a routed generation ends: EOS ids, stop strings (on decoded text) and length limits."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from serving.decoding.generation import FinishReason
from serving.decoding.sampling import SamplingParams


@dataclass
class StopRule:
    eos_ids: frozenset[int]
    decode: Callable[[list[int]], str]
    context_length: int

    def check_tokens(self, prompt: list[int], ids: list[int], params: SamplingParams) -> FinishReason | None:
        """Why generation must end after `ids`, or None to go on."""
        if ids and ids[-1] in self.eos_ids:
            return FinishReason.STOP
        return stop_or_length(params, lambda: self.decode(ids), len(ids), len(prompt) + len(ids), self.context_length)

    def text_of(self, ids: list[int], stop: tuple[str, ...] = ()) -> str:
        """Decoded text without a final EOS, cut before the first stop string."""
        if ids and ids[-1] in self.eos_ids:
            ids = ids[:-1]
        return cut_at_stop(self.decode(ids), stop)


def stop_or_length(params: SamplingParams, text: Callable[[], str], generated: int, context_used: int,
                   context_length: int) -> FinishReason | None:
    """The stop rule both engines apply (EOS aside): a stop string in the output text (decoded only when
    there are stop strings), `max_tokens` outputs (tokens or byte-level pieces), or a full context."""
    if params.stop and any(s in text() for s in params.stop):
        return FinishReason.STOP
    if generated >= params.max_tokens or context_used >= context_length:
        return FinishReason.LENGTH
    return None


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """The text before the first occurrence of any stop string."""
    cuts = [text.index(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text
