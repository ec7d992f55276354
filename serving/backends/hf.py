"""The transformers backend: any HF causal LM directory, CPU or CUDA.

Each sequence keeps its own per-layer K/V tensors. A batched `extend` lays the sequences
out in one padded batch, left-padding the cached past and right-padding the new tokens:

    [ pad .. pad | past_i | new_i | pad .. pad ]
      max_past - past_i      W - new_i

so every query row (real or padding) can attend to at least one real key and no softmax
row is fully masked (which would produce NaNs that leak through 0 * NaN). Positions are
passed explicitly, so padding never shifts RoPE.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from serving.backends.base import StepOutput

log = logging.getLogger(__name__)


@dataclass
class HFSequence:
    """Per-sequence KV cache in one growable buffer.

    `kv` is [layers, 2, kv_heads, capacity, head_dim]; positions past `length` are stale.
    """

    kv: torch.Tensor | None = None
    length: int = 0
    closed: bool = False

    def append(self, new_kv: torch.Tensor) -> None:
        """Write new_kv [layers, 2, kv_heads, n, head_dim] after the current length."""
        n = new_kv.shape[3]
        if self.kv is None or self.length + n > self.kv.shape[3]:
            capacity = max(64, 2 * (self.length + n))
            grown = new_kv.new_empty((*new_kv.shape[:3], capacity, new_kv.shape[4]))
            if self.kv is not None:
                grown[:, :, :, : self.length] = self.kv[:, :, :, : self.length]
            self.kv = grown
        self.kv[:, :, :, self.length : self.length + n] = new_kv
        self.length += n


def pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class HFBackend:
    """Backend over a `transformers` AutoModelForCausalLM."""

    def __init__(self, model_dir: str | Path, device: str | None = None, dtype: torch.dtype = torch.float32) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        path = Path(model_dir)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no model at {path}: config.json is missing")
        self.device = pick_device(device)
        self.model_id = str(model_dir)
        config = AutoConfig.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        text_config = config.get_text_config(decoder=True)
        self.config = text_config
        self.vocab_size = int(text_config.vocab_size)
        self.hidden_size = int(text_config.hidden_size)
        self.num_layers = int(text_config.num_hidden_layers)
        self.max_length = int(getattr(text_config, "max_position_embeddings", 2048))
        self.forward_passes = 0

    # -- contract ---------------------------------------------------------------------------
    def open(self, prompts: list[list[int]], want_hidden: bool = False) -> list[tuple[HFSequence, StepOutput]]:
        if any(len(p) == 0 for p in prompts):
            raise ValueError("cannot open a sequence with an empty prompt")
        seqs = [HFSequence() for _ in prompts]
        outs = self.extend(seqs, prompts, want_hidden)
        return list(zip(seqs, outs))

    def extend(self, seqs: list[HFSequence], new_ids: list[list[int]], want_hidden: bool = False) -> list[StepOutput]:
        assert len(seqs) == len(new_ids), f"{len(seqs)} sequences but {len(new_ids)} token lists"
        assert all(len(ids) > 0 for ids in new_ids), "every sequence must get at least one new token"
        assert not any(s.closed for s in seqs), "extend on a closed sequence"
        for seq, ids in zip(seqs, new_ids):
            if seq.length + len(ids) > self.max_length:
                raise ValueError(f"sequence would reach {seq.length + len(ids)} tokens; the context is {self.max_length}")
        with torch.inference_mode():
            return self._forward(seqs, new_ids, want_hidden)

    def truncate(self, seq: HFSequence, length: int) -> None:
        assert 0 <= length <= seq.length, f"truncate to {length} outside [0, {seq.length}]"
        seq.length = length

    def close(self, seq: HFSequence) -> None:
        seq.kv = None
        seq.closed = True

    # -- internals --------------------------------------------------------------------------
    def _forward(self, seqs: list[HFSequence], new_ids: list[list[int]], want_hidden: bool) -> list[StepOutput]:
        from transformers import DynamicCache

        batch = len(seqs)
        max_past = max(s.length for s in seqs)
        width = max(len(ids) for ids in new_ids)
        input_ids = torch.zeros((batch, width), dtype=torch.long)
        position_ids = torch.zeros((batch, width), dtype=torch.long)
        mask = torch.zeros((batch, max_past + width), dtype=torch.long)
        for i, (seq, ids) in enumerate(zip(seqs, new_ids)):
            n = len(ids)
            input_ids[i, :n] = torch.tensor(ids)
            position_ids[i, :n] = torch.arange(seq.length, seq.length + n)
            position_ids[i, n:] = seq.length + n - 1  # padding rows reuse the last real position
            mask[i, max_past - seq.length : max_past + n] = 1
        cache = DynamicCache()
        if max_past > 0:
            template = next(s.kv for s in seqs if s.length)
            past = template.new_zeros((*template.shape[:2], batch, template.shape[2], max_past, template.shape[4]))
            for i, seq in enumerate(seqs):  # past: [layers, 2, batch, kv_heads, max_past, head_dim]
                if seq.length:
                    past[:, :, i, :, max_past - seq.length :] = seq.kv[:, :, :, : seq.length]
            for layer in range(self.num_layers):
                cache.update(past[layer, 0], past[layer, 1], layer)
        dev = self.device
        out = self.model(
            input_ids=input_ids.to(dev), position_ids=position_ids.to(dev), attention_mask=mask.to(dev),
            cache=cache, use_cache=True, output_hidden_states=want_hidden,
        )
        self.forward_passes += 1
        logits = out.logits.float()  # [batch, width, vocab]
        hidden = out.hidden_states[-1].float() if want_hidden else None  # [batch, width, hidden]
        new_kv = torch.stack(  # [layers, 2, batch, kv_heads, width, head_dim]
            [torch.stack([layer.keys[:, :, max_past:], layer.values[:, :, max_past:]]) for layer in cache.layers]
        )
        results: list[StepOutput] = []
        for i, (seq, ids) in enumerate(zip(seqs, new_ids)):
            n = len(ids)
            seq.append(new_kv[:, :, i, :, :n])
            results.append(StepOutput(logits=logits[i, :n].cpu(), hidden=None if hidden is None else hidden[i, :n].cpu()))
        return results
