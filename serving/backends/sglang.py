"""The SGLang backend: the backend contract over SGLang's offline `Engine` (pinned: sglang 0.5.23), on CUDA GPUs,
or on a CPU (functional, not fast: `make test-sglang` runs the contract tests that way).

How the contract maps onto the Engine API (source references are to the 0.5.23 wheel):
- KV: no hand-managed cache. A sequence is its token list; every call sends the full list and
  SGLang's radix cache reuses the cached prefix. `logprob_start_len` = the old length bounds the
  prefix match (`schedule_batch.py::_compute_max_prefix_len`: max_prefix_len = min(.., logprob_start_len)),
  so exactly the appended positions are recomputed and reported. `truncate` cuts the list;
  `close` drops it (the radix cache evicts by LRU).
- Logits: SGLang returns top-k log-probabilities, not full-vocabulary logits. Each appended
  position the caller asks for (`rows_at`) gets a [vocab] float32 row holding its top-k log-probs and -inf elsewhere
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
- Drafting (`draft`): one `generate` call with max_new_tokens = n, greedy, EOS ignored (the decoder's stop
  rule cuts the block): `output_ids` are d_1..d_n, `output_top_logprobs[j]` the row d_{j+1} was chosen from,
  and the hidden states the last prefill row then one row per decode step (n - 1 of them: d_n is never fed).
  Every call crosses the tokenizer-manager and scheduler processes, so a block costs one such trip, not n.
- CPU (`SGLangDevice.CPU`): `SGLANG_USE_CPU_ENGINE=1` in the environment, torch-native attention, no CUDA graphs,
  float32. SGLang's CPU kernels (`sgl_kernel` built for CPUs) are not on PyPI; its dense layers fall back to
  plain torch when they are absent, and the tests put a stand-in `sgl_kernel` first on the path
  (tests/sglang_stub/README.md) so that the CUDA build of it is never loaded.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import torch

from r2r.serving.backends.base import (Branch, DraftedBlock, Positions, RowKind, StepOutput, branch_by_forking,
                                       open_by_extending, resolve_rows)
from r2r.serving.backends.fingerprint import model_fingerprint
from r2r.serving.backends.shared_body import materialize_weights

INSTALL_HINT = ("`make test-sglang` builds .venv-sglang with it (or `pip install -e '.[sglang]'` in a venv of its own: "
                "it pins torch==2.14.1)")


@dataclass
class SGLangSequence:
    tokens: list[int] = field(default_factory=list)
    closed: bool = False

    @property
    def length(self) -> int:
        return len(self.tokens)


CPU_KV_TOKENS = 32_768  # the KV pool on a CPU (the testbed LLM: 36 KB a token in float32, 1.2 GB)


class SGLangDevice(str, Enum):
    CUDA = "cuda"  # the deployment: GPUs, SGLang's CUDA kernels
    CPU = "cpu"  # functional, not fast: torch-native paths, what `make test-sglang` runs


@dataclass(frozen=True)
class SGLangConfig:
    model_dir: str
    device: SGLangDevice = SGLangDevice.CUDA
    tp_size: int = 1  # CUDA only
    dp_size: int = 1  # CUDA only
    mem_fraction_static: float = 0.4  # CUDA: two engines share the GPUs, leave room for the other one
    base_gpu_id: int = 0  # CUDA only
    max_total_tokens: int | None = None  # KV pool in tokens; None: CUDA sizes it from memory, CPU takes CPU_KV_TOKENS
    top_k: int = 64  # log-probs returned per position
    dtype: str | None = None  # None: the checkpoint's ("auto") on CUDA, float32 on a CPU (as the HF backend runs)
    random_seed: int = 0
    log_level: str = "warning"
    # An idle scheduler blocks on its sockets instead of polling them: the pair's two engines take turns, and a
    # polling one keeps a whole CPU core busy that the other engine's scheduler and the routing loop need
    # (bench/sglang_cpu_polling.json); a request still wakes it at once.
    sleep_on_idle: bool = True

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "device", SGLangDevice(self.device))
        except ValueError as exc:
            raise ValueError(f"unknown SGLang device {self.device!r}; use "
                             f"{' or '.join(d.value for d in SGLangDevice)}") from exc
        if not 0.0 < self.mem_fraction_static < 1.0:
            raise ValueError(f"mem_fraction_static must be in (0, 1), got {self.mem_fraction_static}")
        if min(self.tp_size, self.dp_size, self.top_k) < 1:
            raise ValueError(f"tp_size, dp_size and top_k must be positive: {self}")
        if self.device == SGLangDevice.CPU and (self.tp_size, self.dp_size) != (1, 1):
            raise ValueError(f"tensor/data parallelism is for GPUs; on a CPU tp_size and dp_size are 1: {self}")
        if self.max_total_tokens is not None and self.max_total_tokens < 1:
            raise ValueError(f"max_total_tokens must be positive, got {self.max_total_tokens}")

    def engine_kwargs(self) -> dict:
        """ServerArgs fields (`arg_groups/field_order.py`) for `sglang.Engine(**kwargs)`."""
        common = {"model_path": self.model_dir, "device": self.device.value, "skip_tokenizer_init": True,
                  "enable_return_hidden_states": True, "random_seed": self.random_seed, "log_level": self.log_level,
                  "sleep_on_idle": self.sleep_on_idle}
        if self.device == SGLangDevice.CPU:
            return {**common, "dtype": self.dtype or "float32", "attention_backend": "torch_native",
                    "disable_cuda_graph": True, "disable_overlap_schedule": True,
                    "max_total_tokens": self.max_total_tokens or CPU_KV_TOKENS}
        cuda = {**common, "dtype": self.dtype or "auto", "tp_size": self.tp_size, "dp_size": self.dp_size,
                "mem_fraction_static": self.mem_fraction_static, "base_gpu_id": self.base_gpu_id}
        return cuda if self.max_total_tokens is None else {**cuda, "max_total_tokens": self.max_total_tokens}


def require_sglang(device: SGLangDevice) -> None:
    """ValueError (one line for the CLI) where SGLang cannot start here, before any model is loaded."""
    if importlib.util.find_spec("sglang") is None:
        raise ValueError(f"--backend sglang needs sglang==0.5.23, which is not installed in this Python: "
                         f"{INSTALL_HINT}")
    if device == SGLangDevice.CPU and os.environ.get("SGLANG_USE_CPU_ENGINE") != "1":
        raise ValueError("SGLang on a CPU needs SGLANG_USE_CPU_ENGINE=1 and a CPU build of sgl_kernel (`make "
                         "test-sglang` runs it with a test-only stand-in); on a GPU pass --device cuda")


def build_request(seqs: list[SGLangSequence], new_ids: list[list[int]], top_k: int, want_hidden: bool,
                  n_drafts: list[int] | None = None) -> dict:
    """Keyword arguments of one batched `Engine.generate` call appending new_ids to each sequence: one generated
    token for its next-token row (`extend`), or n_drafts[i] greedy ones (`draft`; EOS does not end them)."""
    sampling = ([{"max_new_tokens": 1, "temperature": 0.0}] * len(seqs) if n_drafts is None else
                [{"max_new_tokens": n, "temperature": 0.0, "ignore_eos": True} for n in n_drafts])
    return {
        "input_ids": [s.tokens + ids for s, ids in zip(seqs, new_ids)],
        "sampling_params": sampling,
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


def parse_response(out: dict, n_new: int, vocab: int, want_hidden: bool, at: list[int] | None = None) -> StepOutput:
    """One request's Engine output -> rows for the appended positions `at` (None: every one), in that order.

    input_top_logprobs covers input positions from logprob_start_len on; its entry j is the
    distribution *of* input token start+j (given what precedes it), so the row after appended
    token i is entry i + 1 for i < n_new - 1, and output_top_logprobs[0] for the last one.
    """
    meta = out["meta_info"]
    inputs = meta["input_top_logprobs"]
    assert len(inputs) >= n_new, f"expected {n_new} input positions of top log-probs, got {len(inputs)}"
    at = list(range(n_new)) if at is None else at
    rows = [_row(inputs[i + 1] if i < n_new - 1 else meta["output_top_logprobs"][0], vocab) for i in at]
    hidden = None
    if want_hidden:
        states = meta["hidden_states"]  # [prefill rows, then one per generated token]
        prefill = torch.tensor(states[0], dtype=torch.float32)
        assert prefill.shape[0] >= n_new, f"{prefill.shape[0]} prefill hidden rows for {n_new} new positions"
        hidden = prefill[-n_new:][at]
    logits = torch.stack(rows) if rows else torch.empty((0, vocab))
    return StepOutput(logits=logits, hidden=hidden, kind=RowKind.TOPK_LOGPROBS)


def parse_draft(out: dict, n: int, vocab: int, hidden_size: int, want_hidden: bool) -> DraftedBlock:
    """One request's output of a drafting call -> its n greedy tokens and the rows they were chosen from.

    output_top_logprobs[j] is the distribution d_{j+1} was drawn from (j = 0: after the last input token);
    hidden_states = [prefill rows (the last one is after the last input token), then one row per decode step]."""
    meta = out["meta_info"]
    tokens = [int(t) for t in out["output_ids"]]
    assert len(tokens) == n == len(meta["output_top_logprobs"]), \
        f"asked for {n} drafts, got {len(tokens)} tokens and {len(meta['output_top_logprobs'])} rows"
    logits = torch.stack([_row(entries, vocab) for entries in meta["output_top_logprobs"]])  # [n, vocab]
    for j, t in enumerate(tokens):  # greedy: each draft is its row's top entry (a tie may pick either)
        assert logits[j, t] == logits[j].max(), f"draft {j} ({t}) is not the argmax of its row"
    hidden = None
    if want_hidden:
        states = meta["hidden_states"]
        assert len(states) == n, f"{len(states)} hidden-state entries for {n} drafts (prefill, then n - 1 decodes)"
        prefill = torch.tensor(states[0], dtype=torch.float32).reshape(-1, hidden_size)
        decode = [torch.tensor(h, dtype=torch.float32).reshape(hidden_size) for h in states[1:]]
        hidden = torch.stack([prefill[-1], *decode])  # [n, hidden]
    return DraftedBlock(tokens, StepOutput(logits=logits, hidden=hidden, kind=RowKind.TOPK_LOGPROBS))


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
    drafts_in_one_call = True  # one `generate` call drafts a whole block

    def __init__(self, cfg: SGLangConfig) -> None:
        require_sglang(cfg.device)
        import sglang
        from transformers import AutoConfig

        path = Path(cfg.model_dir)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no model at {path}: config.json is missing")
        materialize_weights(path)  # SGLang reads a plain safetensors directory
        text_config = AutoConfig.from_pretrained(path).get_text_config(decoder=True)
        self.cfg = cfg
        self.engine = sglang.Engine(**cfg.engine_kwargs())
        self.model_id = cfg.model_dir
        self.vocab_size = int(text_config.vocab_size)
        self.hidden_size = int(text_config.hidden_size)
        # SGLang refuses an input as long as the context (it always generates one token after it): one less
        self.max_length = int(getattr(text_config, "max_position_embeddings", 32768)) - 1
        self.fingerprint = model_fingerprint(path)
        self.returned_top_k = cfg.top_k
        self.open_sequences = 0
        self.n_parameters = _parameter_count(path)
        self._embeddings: torch.Tensor | None = None

    def open(self, prompts: list[list[int]], want_hidden: bool = False, *, rows_at: list[Positions] | None = None,
             top_k: int | None = None) -> list[tuple[SGLangSequence, StepOutput]]:
        return open_by_extending(self, SGLangSequence, prompts, want_hidden, rows_at, top_k)

    def extend(self, seqs: list[SGLangSequence], new_ids: list[list[int]], want_hidden: bool = False, *,
               rows_at: list[Positions] | None = None, top_k: int | None = None) -> list[StepOutput]:
        """Rows only at the positions asked for: the engine returns top-k entries for every appended position (its
        prefix match is bounded by where they start), only the asked ones become rows here."""
        assert len(seqs) == len(new_ids) and all(new_ids), "one non-empty token list per sequence"
        if top_k is not None and not 1 <= top_k <= self.returned_top_k:
            raise ValueError(f"top_k {top_k}: this SGLang backend returns the top {self.returned_top_k} log-probs")
        for s, ids in zip(seqs, new_ids):
            if s.length + len(ids) > self.max_length:
                raise ValueError(f"sequence would reach {s.length + len(ids)} tokens; the context is {self.max_length}")
        outs = self.engine.generate(**build_request(seqs, new_ids, top_k or self.cfg.top_k, want_hidden))
        results = [parse_response(o, len(ids), self.vocab_size, want_hidden, at)
                   for o, ids, at in zip(outs, new_ids, resolve_rows(rows_at, new_ids))]
        for s, ids in zip(seqs, new_ids):
            s.tokens += ids
        return results

    def draft(self, seqs: list[SGLangSequence], new_ids: list[list[int]], n_tokens: list[int],
              want_hidden: bool = False) -> list[DraftedBlock]:
        """One `generate` call for every sequence's block (see the module docstring)."""
        assert len(seqs) == len(new_ids) == len(n_tokens) and all(new_ids), "new ids and a draft count per sequence"
        assert all(n >= 1 for n in n_tokens), f"at least one draft each: {n_tokens}"
        for s, ids, n in zip(seqs, new_ids, n_tokens):
            if s.length + len(ids) + n > self.max_length:
                raise ValueError(f"drafting would reach {s.length + len(ids) + n} tokens; the context is "
                                 f"{self.max_length}")
        outs = self.engine.generate(**build_request(seqs, new_ids, self.cfg.top_k, want_hidden, n_tokens))
        blocks = [parse_draft(o, n, self.vocab_size, self.hidden_size, want_hidden) for o, n in zip(outs, n_tokens)]
        for s, ids, block in zip(seqs, new_ids, blocks):
            s.tokens += ids + block.tokens[:-1]
        return blocks

    def extend_with_branches(self, seqs: list[SGLangSequence], new_ids: list[list[int]],
                             branches: list[list[Branch]], want_hidden: bool = False
                             ) -> list[tuple[StepOutput, list[StepOutput]]]:
        """By forking: a fork is a token list here, and the radix cache shares the prefix's KV."""
        return branch_by_forking(self, seqs, new_ids, branches, want_hidden)

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
