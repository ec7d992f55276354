"""When a routed generation ends: EOS ids, stop strings (on decoded text) and length limits."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from r2r.serving.decoding.generation import FinishReason
from r2r.serving.decoding.sampling import SamplingParams
from r2r.serving.decoding.stop_scan import StopScan


@dataclass
class StopRule:
    """A model's end of text: its EOS ids, how its ids decode (for stop strings), its context length."""

    eos_ids: frozenset[int]
    decode: Callable[[list[int]], str]
    context_length: int

    def watch(self, prompt_tokens: int, params: SamplingParams) -> TokenStops:
        """The stop check of one request's output, as it grows (`TokenStops`)."""
        scan = StopScan(params.stop, self.decode) if params.stop else None
        return TokenStops(self, params, prompt_tokens, scan)

    def text_of(self, ids: list[int], stop: tuple[str, ...] = ()) -> str:
        """Decoded text without a final EOS, cut before the first stop string (once per output: O(its length))."""
        if ids and ids[-1] in self.eos_ids:
            ids = ids[:-1]
        return cut_at_stop(self.decode(ids), stop)


@dataclass
class TokenStops:
    """One request's stop rule over its output ids, checked at each token in O(1) amortised: stop strings are
    searched in the text a few tokens add (`StopScan`), not in the whole output re-decoded. Same outcome as
    decoding the whole output each time (`tests/test_stop_scan.py` checks it)."""

    rule: StopRule
    params: SamplingParams
    prompt_tokens: int
    scan: StopScan | None  # None: no stop strings

    def commit(self, ids: list[int]) -> FinishReason | None:
        """Why generation must end after `ids`, the output (only ever appended to since the last commit)."""
        if ids and ids[-1] in self.rule.eos_ids:
            return FinishReason.STOP
        return stop_or_length(self.params, lambda: self.scan.found(ids, len(ids), commit=True), len(ids),
                              self.prompt_tokens + len(ids), self.rule.context_length)

    def peek(self, ids: list[int], drafts: list[int]) -> FinishReason | None:
        """Why generation would end after `ids` (as last committed) + `drafts`; nothing is kept."""
        if drafts and drafts[-1] in self.rule.eos_ids:
            return FinishReason.STOP
        n = len(ids) + len(drafts)
        return stop_or_length(self.params, lambda: self.scan.found(ids, len(ids), drafts, commit=False), n,
                              self.prompt_tokens + n, self.rule.context_length)


def stop_or_length(params: SamplingParams, stop_found: Callable[[], bool], generated: int, context_used: int,
                   context_length: int) -> FinishReason | None:
    """The stop rule both engines apply (EOS aside): a stop string in the output text (`stop_found` is called
    only when there are stop strings, and always then: a commit's scan keeps its state), `max_tokens` outputs
    (tokens or byte-level pieces), or a full context."""
    if params.stop and stop_found():
        return FinishReason.STOP
    if generated >= params.max_tokens or context_used >= context_length:
        return FinishReason.LENGTH
    return None


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """The text before the first occurrence of any stop string."""
    cuts = [text.index(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text
