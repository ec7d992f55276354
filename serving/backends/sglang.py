"""The SGLang backend (GPU): the backend contract over SGLang's offline `Engine` (pinned: sglang 0.5.23).

How the contract maps onto the Engine API (source references are to the 0.5.23 wheel):
- KV: no hand-managed cache. A sequence is its token list; every call sends the full list and
  SGLang's radix cache reuses the cached prefix. `logprob_start_len` = the old length bounds the
  prefix match (`schedule_batch.py::_compute_max_prefix_len`: max_prefix_len = min(.., logprob_start_len)),
  so exactly the appended positions are recomputed and reported. `truncate` cuts the list;
  `close` drops it (the radix cache evicts by LRU).
- Logits: SGLang returns top-k log-probabilities, not full-vocabulary logits. Each appended
  position gets a [vocab] float32 row holding its top-k log-probs and -inf elsewhere
  (`input_top_logprobs` / `output_top_logprobs`: per position a list of (logprob, token_id, text)
  tuples, `tokenizer_manager.py::detokenize_logprob_tokens`). Exact: the argmax, the router's
  top-k log-prob features, and sampling with top_k <= k. Not exact: anything needing the full
  distribution, i.e. sampling without a top-k cut, in particular the speculative acceptance test
  min(1, p/q). `exact_full_distribution = False` says so, and `ModelPair.check_sampling` refuses
  those requests with a clear error instead of approximating. Greedy routing (both modes) is exact.
- Hidden states: `return_hidden_states=True` (engine started with `enable_return_hidden_states`)
  gives `meta_info["hidden_states"]` = [prefill rows (one per recomputed input position), then one
  row per generated token] (`batch_result_processor.py::_append_prefill_hidden_states` and
  `_append_decode_hidden_states`); the model's final norm is applied before the logits processor,
  so these are the post-norm states the router is trained on.
- Next-token row of the last appended position: one generated token (max_new_tokens=1, greedy)
  whose `output_top_logprobs[0]` is the distribution after the last input token.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from serving.backends.base import RowKind, StepOutput, open_by_extending
from serving.backends.fingerprint import model_fingerprint


@dataclass
class SGLangSequence:
    tokens: list[int] = field(default_factory=list)
    closed: bool = False

    @property
    def length(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class SGLangConfig:
    model_dir: str
    tp_size: int = 1
    dp_size: int = 1
    mem_fraction_static: float = 0.4  # two engines share the GPUs: leave room for the other one
    base_gpu_id: int = 0
    top_k: int = 64  # log-probs returned per position
    dtype: str = "auto"
    random_seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.mem_fraction_static < 1.0:
            raise ValueError(f"mem_fraction_static must be in (0, 1), got {self.mem_fraction_static}")
        if min(self.tp_size, self.dp_size, self.top_k) < 1:
            raise ValueError(f"tp_size, dp_size and top_k must be positive: {self}")

    def engine_kwargs(self) -> dict:
        """ServerArgs fields (`arg_groups/field_order.py`) for `sglang.Engine(**kwargs)`."""
        return {"model_path": self.model_dir, "tp_size": self.tp_size, "dp_size": self.dp_size,
                "mem_fraction_static": self.mem_fraction_static, "base_gpu_id": self.base_gpu_id,
                "skip_tokenizer_init": True, "enable_return_hidden_states": True, "dtype": self.dtype,
                "random_seed": self.random_seed}


def build_request(seqs: list[SGLangSequence], new_ids: list[list[int]], top_k: int, want_hidden: bool) -> dict:
    """Keyword arguments of one batched `Engine.generate` call appending new_ids to each sequence."""
    return {
        "input_ids": [s.tokens + ids for s, ids in zip(seqs, new_ids)],
        "sampling_params": [{"max_new_tokens": 1, "temperature": 0.0}] * len(seqs),
        "return_logprob": [True] * len(seqs),
        "logprob_start_len": [s.length for s in seqs],
        "top_logprobs_num": [top_k] * len(seqs),
        "return_hidden_states": want_hidden,
    }


def _row(entries: list | None, vocab: int) -> torch.Tensor:
    """A [vocab] row: the listed (logprob, token_id, text) entries, -inf elsewhere."""
    row = torch.full((vocab,), float("-inf"), dtype=torch.float32)
    for logprob, token_id, *_ in entries or []:
        row[int(token_id)] = float(logprob)
    return row


def parse_response(out: dict, n_new: int, vocab: int, want_hidden: bool) -> StepOutput:
    """One request's Engine output -> rows for each appended position.

    input_top_logprobs covers input positions from logprob_start_len on; its entry j is the
    distribution *of* input token start+j (given what precedes it), so the row after appended
    token i is entry i + 1 for i < n_new - 1, and output_top_logprobs[0] for the last one.
    """
    meta = out["meta_info"]
    inputs = meta["input_top_logprobs"]
    assert len(inputs) >= n_new, f"expected {n_new} input positions of top log-probs, got {len(inputs)}"
    rows = [_row(inputs[i + 1], vocab) for i in range(n_new - 1)] + [_row(meta["output_top_logprobs"][0], vocab)]
    hidden = None
    if want_hidden:
        states = meta["hidden_states"]  # [prefill rows, then one per generated token]
        prefill = torch.tensor(states[0], dtype=torch.float32)
        assert prefill.shape[0] >= n_new, f"{prefill.shape[0]} prefill hidden rows for {n_new} new positions"
        hidden = prefill[-n_new:]
    return StepOutput(logits=torch.stack(rows), hidden=hidden, kind=RowKind.TOPK_LOGPROBS)


def _parameter_count(model_dir: Path) -> int:
    """Parameters from the safetensors headers (the weights live in SGLang's processes, not here)."""
    import json
    import math
    import struct

    total = 0
    for shard in sorted(model_dir.glob("*.safetensors")):
        with shard.open("rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        total += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    return total


class SGLangBackend:
    """Backend over `sglang.Engine`; see the module docstring for what is exact."""

    exact_full_distribution = False

    def __init__(self, cfg: SGLangConfig) -> None:
        try:
            import sglang  # GPU only: sglang needs CUDA
        except ImportError as exc:
            raise ValueError("the sglang backend needs sglang==0.5.23 and a CUDA GPU: pip install -e '.[sglang]'") from exc
        from transformers import AutoConfig

        path = Path(cfg.model_dir)
        text_config = AutoConfig.from_pretrained(path).get_text_config(decoder=True)
        self.cfg = cfg
        self.engine = sglang.Engine(**cfg.engine_kwargs())
        self.model_id = cfg.model_dir
        self.vocab_size = int(text_config.vocab_size)
        self.hidden_size = int(text_config.hidden_size)
        self.max_length = int(getattr(text_config, "max_position_embeddings", 32768))
        self.fingerprint = model_fingerprint(path)
        self.returned_top_k = cfg.top_k
        self.open_sequences = 0
        self.n_parameters = _parameter_count(path)
        self._embeddings: torch.Tensor | None = None

    def open(self, prompts: list[list[int]], want_hidden: bool = False) -> list[tuple[SGLangSequence, StepOutput]]:
        return open_by_extending(self, SGLangSequence, prompts, want_hidden)

    def extend(self, seqs: list[SGLangSequence], new_ids: list[list[int]], want_hidden: bool = False) -> list[StepOutput]:
        assert len(seqs) == len(new_ids) and all(new_ids), "one non-empty token list per sequence"
        for s, ids in zip(seqs, new_ids):
            if s.length + len(ids) > self.max_length:
                raise ValueError(f"sequence would reach {s.length + len(ids)} tokens; the context is {self.max_length}")
        outs = self.engine.generate(**build_request(seqs, new_ids, self.cfg.top_k, want_hidden))
        results = [parse_response(o, len(ids), self.vocab_size, want_hidden) for o, ids in zip(outs, new_ids)]
        for s, ids in zip(seqs, new_ids):
            s.tokens += ids
        return results

    def truncate(self, seq: SGLangSequence, length: int) -> None:
        assert 0 <= length <= seq.length, f"truncate to {length} outside [0, {seq.length}]"
        del seq.tokens[length:]

    def close(self, seq: SGLangSequence) -> None:
        if not seq.closed:
            self.open_sequences -= 1
        seq.tokens, seq.closed = [], True

    def fork(self, seq: SGLangSequence, length: int) -> SGLangSequence:
        """A copy of the token list: the radix cache already shares the prefix's KV."""
        assert not seq.closed and 0 <= length <= seq.length, f"fork at {length} of a {seq.length}-token sequence"
        self.open_sequences += 1
        return SGLangSequence(tokens=seq.tokens[:length])

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The SLM's input embeddings, read once from its safetensors (the engine does not expose them)."""
        if self._embeddings is None:
            self._embeddings = load_input_embeddings(Path(self.cfg.model_dir))
        return self._embeddings[ids]

    def shutdown(self) -> None:
        self.engine.shutdown()


def load_input_embeddings(model_dir: Path) -> torch.Tensor:
    """[vocab, hidden] float32 input embedding table from an HF checkpoint's safetensors."""
    from safetensors import safe_open

    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if name.endswith("embed_tokens.weight"):
                    return f.get_tensor(name).float()
    raise FileNotFoundError(f"no embed_tokens.weight in the safetensors of {model_dir}")
