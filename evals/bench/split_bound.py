"""How much faster than lossless speculative decoding routing can be, given a pair's token statistics.

The split of answer tokens (off-policy labels): identical (the SLM's top token is the LLM's), neutral (a mismatch
that does not change the answer) and divergent (one that does). Greedy lossless speculative decoding must end a
block at every mismatch, rate m = neutral + divergent per token; routed speculative decoding ends one at every
flagged token. A router that flags every divergent token with precision P flags at rate f = divergent / P. With
blocks cut at k tokens, a run of stops at rate r costs g(r) = r / (1 - (1 - r)^k) LLM passes per token, so a token
costs c_d + c_L g(r) (c_d: an SLM step and the router; c_L: an LLM pass) and

    routed / lossless <= (c_d + c_L g(m)) / (c_d + c_L g(f)),

which tends to m / f = m P / divergent as drafting gets free and blocks unbounded. Engine overheads and the
growth of a verification pass with its tokens are left out: measured ratios can only be lower.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TokenSplit:
    """Fractions of answer tokens; they sum to 1 with `unverifiable` (mismatches the verifier could not judge)."""

    identical: float
    neutral: float
    divergent: float
    unverifiable: float = 0.0

    @property
    def mismatch(self) -> float:
        return self.neutral + self.divergent + self.unverifiable

    @classmethod
    def from_label_summary(cls, summary: dict) -> TokenSplit:
        """From a label set's summary (`data_gen.pipeline`: tokens, mismatches, neutral, divergent, unverifiable)."""
        n = summary["tokens"]
        if n < 1:
            raise ValueError("the label set has no tokens")
        return cls(identical=1 - summary["mismatches"] / n, neutral=summary["neutral"] / n,
                   divergent=summary["divergent"] / n, unverifiable=summary.get("unverifiable", 0) / n)

    def as_dict(self) -> dict[str, float]:
        return asdict(self) | {"mismatch": self.mismatch,
                               "neutral_of_mismatches": self.neutral / self.mismatch if self.mismatch else 0.0}


def passes_per_token(stop_rate: float, k_max: int) -> float:
    """LLM passes per token when a block ends at each stop (independent, rate `stop_rate`) or after k_max tokens."""
    if not 0.0 <= stop_rate <= 1.0 or k_max < 1:
        raise ValueError(f"need a stop rate in [0, 1] and k_max >= 1, got {stop_rate}, {k_max}")
    if stop_rate == 0.0:
        return 1.0 / k_max
    return stop_rate / (1.0 - (1.0 - stop_rate) ** k_max)


def routed_over_lossless_bound(split: TokenSplit, flag_rate: float, draft_ms: float, llm_pass_ms: float,
                               k_max: int) -> dict[str, float]:
    """The bound above for a router flagging `flag_rate` of tokens (every divergent one among them: precision
    divergent / flag_rate), and its limit m / f with free drafts and unbounded blocks."""
    if not split.divergent <= flag_rate <= 1.0 or flag_rate == 0.0:
        raise ValueError(f"a router that flags every divergent token ({split.divergent:.4f} of tokens) flags at "
                         f"least that share, at most all; got {flag_rate}")
    lossless_ms = draft_ms + llm_pass_ms * passes_per_token(split.mismatch, k_max)
    routed_ms = draft_ms + llm_pass_ms * passes_per_token(flag_rate, k_max)
    return {"flag_rate": flag_rate, "precision": split.divergent / flag_rate, "k_max": k_max,
            "routed_over_lossless": lossless_ms / routed_ms, "limit_free_drafts": split.mismatch / flag_rate}


def split_meta(split: TokenSplit, measured_share: float, draft_ms: float, llm_pass_ms: float,
               k_max: int) -> dict:
    """What a headline reports per family: the split, the bound for a perfect router (flags exactly the divergent
    tokens) and for one flagging the share the routed run measured."""
    perfect = routed_over_lossless_bound(split, max(split.divergent, 1e-9), draft_ms, llm_pass_ms, k_max)
    at_share = (routed_over_lossless_bound(split, measured_share, draft_ms, llm_pass_ms, k_max)
                if measured_share >= split.divergent else None)  # below it the router must miss divergent tokens
    return {"split": split.as_dict(), "bound_perfect_router": perfect, "bound_at_measured_share": at_share,
            "costs": {"draft_ms": draft_ms, "llm_pass_ms": llm_pass_ms}}
