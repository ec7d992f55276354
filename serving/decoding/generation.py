"""What a routed generation returns: tokens, which model wrote each, and statistics."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum


class Source(str, Enum):
    SLM = "slm"
    LLM = "llm"


class RoutingMode(str, Enum):
    SEQUENTIAL = "sequential"  # the reference: the LLM writes each flagged token in its own step
    SPECULATIVE = "speculative"  # the SLM drafts a block; one LLM pass verifies its flagged positions


class FinishReason(str, Enum):
    STOP = "stop"  # EOS or a stop string
    LENGTH = "length"  # max_tokens or the context limit


@dataclass
class GenerationStats:
    llm_tokens: int = 0
    slm_passes: int = 0  # forward passes this sequence took part in
    llm_passes: int = 0
    blocks: int = 0  # speculative rounds this sequence took part in (0 under sequential routing)
    seconds: float = 0.0

    def as_dict(self, n_tokens: int) -> dict[str, float | int]:
        out = asdict(self)
        out["tokens"] = n_tokens
        out["llm_share"] = self.llm_tokens / n_tokens if n_tokens else 0.0
        return out


@dataclass
class Generation:
    token_ids: list[int] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # the router's score at each generated position
    text: str = ""
    pieces: list[bytes] | None = None  # byte-level decoding (serving.byte_level.cross_tokenizer): the bytes each step wrote
    logprobs: list[float] = field(default_factory=list)  # when asked for: each token's log-prob under its writer
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)  # and its top alternatives
    finish_reason: FinishReason = FinishReason.LENGTH
    prompt_tokens: int = 0
    stats: GenerationStats = field(default_factory=GenerationStats)

    def as_json(self) -> dict:
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "sources": [s.value for s in self.sources],
            "finish_reason": self.finish_reason.value,
            "stats": self.stats.as_dict(len(self.token_ids)),
        }
