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
        if params.stop and any(s in self.decode(ids) for s in params.stop):
            return FinishReason.STOP
        if len(ids) >= params.max_tokens or len(prompt) + len(ids) >= self.context_length:
            return FinishReason.LENGTH
        return None

    def text_of(self, ids: list[int], stop: tuple[str, ...] = ()) -> str:
        """Decoded text without a final EOS, cut before the first stop string."""
        if ids and ids[-1] in self.eos_ids:
            ids = ids[:-1]
        return cut_at_stop(self.decode(ids), stop)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """The text before the first occurrence of any stop string."""
    cuts = [text.index(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text
