"""Next-token rows from chosen hidden states: a causal LM's head applied only where a pass asks for rows.

A transformers causal LM computes logits for every position of its input. The HF backend runs the model's decoder
instead and applies the head itself to the hidden states of the positions the caller reads (`Positions`): a
catch-up over n tokens makes no row, a decode step one per sequence. The head is the model's output embeddings
followed by what its causal-LM class does to their output: final logit softcapping (Gemma 2 and 3: cap *
tanh(logits / cap)). `check_head` proves on a short input that this reproduces the model's own logits, so a model
whose class transforms its logits in another way is refused instead of served wrong rows.
"""
from __future__ import annotations

import torch

from r2r.serving.backends.base import RowKind


class LMHead:
    """The output embeddings of a causal LM, and its final logit softcapping where its config has one."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.proj = model.get_output_embeddings()
        assert self.proj is not None, f"{type(model).__name__} has no output embeddings"
        text_config = model.config.get_text_config(decoder=True)
        self.softcap: float | None = getattr(text_config, "final_logit_softcapping", None)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [n, hidden] (post-norm, the model's dtype) -> logits [n, vocab] in the model's dtype."""
        assert hidden.dim() == 2, f"hidden must be [n, hidden], got {tuple(hidden.shape)}"
        logits = self.proj(hidden)
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def rows(self, hidden: torch.Tensor, top_k: int | None) -> tuple[torch.Tensor, RowKind]:
        """hidden [n, hidden] on the model's device -> ([n, vocab] float32 rows on the CPU, their kind).

        Full rows: logits. `top_k`: the k largest log-probabilities, computed where the logits are; only k values
        and ids per row cross to the CPU, where the row is -inf elsewhere."""
        logits = self(hidden).float()  # [n, vocab]
        if top_k is None:
            return logits.cpu(), RowKind.LOGITS
        top = torch.topk(torch.log_softmax(logits, dim=-1), top_k, dim=-1)  # [n, k]
        rows = torch.full(logits.shape, float("-inf"), dtype=torch.float32)
        rows.scatter_(1, top.indices.cpu(), top.values.cpu())
        return rows, RowKind.TOPK_LOGPROBS


def check_head(model: torch.nn.Module, decoder: torch.nn.Module, head: LMHead) -> None:
    """ValueError unless `head` over the decoder's last hidden state gives the model's own logits (two tokens)."""
    ids = torch.tensor([[0, 1]], device=next(model.parameters()).device)
    with torch.inference_mode():
        want = model(input_ids=ids).logits[0].float()  # [2, vocab]
        got = head(decoder(input_ids=ids).last_hidden_state[0]).float()
    if not torch.allclose(got, want, rtol=1e-2, atol=1e-2 * float(want.abs().max()) + 1e-6):
        raise ValueError(f"{type(model).__name__}: its logits are not its output embeddings over the last hidden "
                         f"state (with final logit softcapping, where configured): the HF backend cannot compute "
                         f"rows for chosen positions of this model")
