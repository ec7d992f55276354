"""Start a testbed model from another model's weights, possibly across tokenizers.

With the same tokenizer this is a plain weight copy (continued training). With another
tokenizer the transformer body is copied and each new token's embedding starts as the mean
of the source embeddings of that token's bytes re-encoded by the source tokenizer (the
usual vocabulary-transplant initialisation); fine-tuning then adapts the model to the new
segmentation far faster than training from scratch.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def init_from_pretrained(model: torch.nn.Module, tokenizer, source_dir: Path) -> None:
    """Load `source_dir` weights into `model` (same shape), mapping embeddings if vocabularies differ."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32)
    source_tok = AutoTokenizer.from_pretrained(source_dir)
    state = {k: v for k, v in source.state_dict().items() if "embed_tokens" not in k and "lm_head" not in k}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any("embed_tokens" not in k and "lm_head" not in k for k in missing):
        raise ValueError(f"{source_dir} does not have this model's shape (missing {missing}, unexpected {unexpected})")
    src_emb = source.get_input_embeddings().weight.detach()
    new_emb = model.get_input_embeddings().weight
    if source_tok.get_vocab() == tokenizer.get_vocab():
        with torch.no_grad():
            new_emb.copy_(src_emb)
        return
    src_vocab = source_tok.get_vocab()
    mapped = 0
    with torch.no_grad():
        for token, new_id in tokenizer.get_vocab().items():
            if token in tokenizer.all_special_tokens and token in src_vocab:
                new_emb[new_id] = src_emb[src_vocab[token]]
                mapped += 1
                continue
            text = tokenizer.convert_tokens_to_string([token])
            ids = source_tok(text, add_special_tokens=False)["input_ids"] if text and "\ufffd" not in text else []
            if ids:
                new_emb[new_id] = src_emb[ids].mean(0)
                mapped += 1
    log.info("transplanted %d/%d embeddings from %s", mapped, len(tokenizer), source_dir)
