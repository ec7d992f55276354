"""What a response carries, read from a ticket's snapshots: text, per-token routing info, log-probs, usage.

An `OutputReader` follows one choice through its snapshots and turns only the steps it has not read yet
into text and extras (O(new steps) per chunk), so a stream costs O(its length) in all, never O(length^2).
The non-streaming answer reads its one final snapshot with the same reader, so a stream's chunks join into
exactly the non-streaming answer.
"""
from __future__ import annotations

import json

from r2r.serving.decoding.generation import Generation
from r2r.serving.decoding.sampling import SamplingParams
from r2r.serving.http.scheduler import Snapshot
from r2r.serving.http.text_stream import ByteDetokenizer, TextStream, TokenDetokenizer, token_texts
from r2r.serving.pair import ModelPair


class OutputReader:
    """One choice's output, read incrementally from its snapshots."""

    def __init__(self, pair: ModelPair, params: SamplingParams, byte_level: bool, chat: bool, token_info: bool,
                 logprobs: bool) -> None:
        """`byte_level`: the output's steps are byte pieces (a cross pair, or an exact prompt boundary)."""
        self.byte_level, self.chat, self.token_info, self.want_logprobs = byte_level, chat, token_info, logprobs
        tokenizer = pair.tokenizer
        self.eos_ids = frozenset() if byte_level else pair.eos_ids
        if byte_level:
            self.text: TokenDetokenizer | ByteDetokenizer = ByteDetokenizer()
            self.token_text: TokenDetokenizer | ByteDetokenizer = ByteDetokenizer()
        else:
            self.text = TokenDetokenizer(lambda ids: tokenizer.decode(ids))
            self.token_text = TokenDetokenizer(lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
        self.decode_token = lambda t: tokenizer.decode([t])
        self.stream = TextStream(params.stop)
        self.read = 0  # steps read so far
        self.offset = 0  # completions' text_offset of the next token

    def advance(self, snap: Snapshot) -> tuple[str, dict]:
        """(text to send, extras: `r2r` token info and `logprobs` when asked for) for the steps in `snap` past
        those read; with a result, the text is everything left to send."""
        start, end = self.read, len(snap.token_ids)
        if self.byte_level:
            steps = snap.pieces[start:end] if snap.pieces is not None else ()
            text = self.stream.push(self.text.push(steps))
        else:
            steps = snap.token_ids[start:end]
            text = self.stream.push(self.text.push([i for i in steps if i not in self.eos_ids]))
        if snap.result is not None:
            text += self.stream.finish(snap.result.text)
        extra: dict = {}
        if self.token_info:
            extra["r2r"] = {"tokens": token_texts(self.token_text, steps), "token_ids": list(snap.token_ids[start:end]),
                            "sources": list(snap.sources[start:end]), "scores": list(snap.scores[start:end])}
        if self.want_logprobs:
            extra["logprobs"] = self._logprobs(snap, start, end)
        self.read = end
        return text, extra

    def _logprobs(self, snap: Snapshot, start: int, end: int) -> dict:
        """OpenAI `logprobs` for steps start..end (the EOS token is not reported)."""
        rows = [(i, snap.token_ids[i]) for i in range(start, min(end, len(snap.logprobs)))
                if snap.token_ids[i] not in self.eos_ids]
        decode = self.decode_token
        if self.chat:
            def entry(tok: int, lp: float) -> dict:
                text = decode(tok)
                return {"token": text, "logprob": lp, "bytes": list(text.encode())}

            return {"content": [entry(t, snap.logprobs[i]) | {"top_logprobs": [entry(a, b) for a, b in
                                                                                 snap.top_logprobs[i]]}
                                for i, t in rows]}
        tokens = [decode(t) for _, t in rows]
        offsets = []
        for text in tokens:
            offsets.append(self.offset)
            self.offset += len(text)
        return {"tokens": tokens, "token_logprobs": [snap.logprobs[i] for i, _ in rows],
                "top_logprobs": [{decode(a): b for a, b in snap.top_logprobs[i]} for i, _ in rows],
                "text_offset": offsets}


def usage(gen: Generation) -> dict[str, int]:
    n = len(gen.token_ids)
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": n, "total_tokens": gen.prompt_tokens + n,
            "llm_tokens": gen.stats.llm_tokens}


def total_usage(gens: list[Generation]) -> dict[str, int]:
    """Usage of n choices of one prompt: the prompt counted once."""
    out = usage(gens[0])
    for gen in gens[1:]:
        extra = usage(gen)
        for k in ("completion_tokens", "total_tokens", "llm_tokens"):
            out[k] += extra[k] - (extra["prompt_tokens"] if k == "total_tokens" else 0)
    return out


def sse(body: dict) -> str:
    return "data: " + json.dumps(body) + "\n\n"
