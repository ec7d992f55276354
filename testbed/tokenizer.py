"""The testbed tokenizer: byte-level BPE (GPT-2 style) with digits split one per token.

Saved as a standard HF tokenizer directory with a chat template, so `AutoTokenizer` and the
chat endpoint work with the testbed pair like with any hub model.
"""
from __future__ import annotations

import random
from pathlib import Path

from r2r.testbed.splits import FAMILIES, sample_train

SPECIAL_TOKENS = ["<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
EOS_TOKEN = "<|end|>"
PAD_TOKEN = "<|pad|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def chat_text(prompt: str, solution: str | None = None) -> str:
    """The chat-formatted training text, identical to what CHAT_TEMPLATE renders for one user turn."""
    text = f"<|user|>\n{prompt}<|end|>\n<|assistant|>\n"
    return text if solution is None else text + solution + EOS_TOKEN


def train_tokenizer(out_dir: Path, vocab_size: int = 512, corpus_size: int = 20000, seed: int = 0) -> None:
    """Train the BPE on training-split problems of every family and save an HF tokenizer dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    texts = [chat_text(p.prompt, p.solution) for p in sample_train(rng, corpus_size, list(FAMILIES))]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    fast.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)


def train_tokenizer_x(out_dir: Path, vocab_size: int = 1024, corpus_size: int = 20000, seed: int = 1) -> None:
    """The second testbed tokenizer (for `llm-x`): SentencePiece-style BPE, a different vocabulary.

    U+2581 marks spaces and starts a piece, unseen characters fall back to `<0xNN>` byte pieces,
    merges are learned over twice the vocabulary of the shared tokenizer; specials and the chat
    template are the same, so both models read the same conversations."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    texts = [chat_text(p.prompt, p.solution) for p in sample_train(rng, corpus_size, list(FAMILIES))]
    pre = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.Metaspace(prepend_scheme="never")])
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre
    trained.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size - 256, special_tokens=SPECIAL_TOKENS,
                                                            show_progress=False))
    spec = json.loads(trained.to_str())["model"]
    vocab = dict(spec["vocab"])
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, byte_fallback=True))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Sequence([decoders.Metaspace(prepend_scheme="never"), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    fast.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
