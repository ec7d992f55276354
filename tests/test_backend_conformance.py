"""One conformance suite for every backend: the contract's equivalences checked on the backend's own outputs
(batched = one at a time, k at once = k singles, truncate + extend = fresh, a fork = a fresh open of its prefix,
a branch = a fresh open of its prefix and tokens, a drafted block = extending token by token, open/close
bookkeeping), comparing argmax and the top-k
log-probabilities so that backends returning only top-k (SGLang) are held to the same bar. The HF backend runs it
in `make test`; the SGLang backend (on the testbed SLM, its engine shared with the other sglang tests) in
`make test-sglang`."""
from __future__ import annotations

import pytest
import torch

PROMPTS = [[5, 17, 40, 41, 42, 7], [9, 9], [12, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39]]
NEW = [[50], [51, 52, 53], [54, 55]]
K = 5


def same(a: torch.Tensor, b: torch.Tensor) -> None:
    la, lb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    assert torch.equal(la.argmax(-1), lb.argmax(-1))
    torch.testing.assert_close(torch.topk(la, K, -1).values, torch.topk(lb, K, -1).values, atol=2e-3, rtol=0)


def declares_the_protocol(backend) -> None:
    """Every attribute the Backend protocol declares is set (callers read them directly, never with defaults)."""
    from typing import get_type_hints

    from r2r.serving.backends.base import Backend

    missing = [name for name in get_type_hints(Backend) if not hasattr(backend, name)]
    assert not missing, f"{type(backend).__name__} lacks {missing}"
    assert isinstance(backend.n_parameters, int) and backend.returned_top_k >= 1


def conformance(backend) -> None:
    declares_the_protocol(backend)
    before = backend.open_sequences
    opened = backend.open(PROMPTS)
    batched = backend.extend([s for s, _ in opened], NEW)
    for ids, new, b in zip(PROMPTS, NEW, batched):
        (seq, _), = backend.open([ids])
        same(b.logits, backend.extend([seq], [new])[0].logits)
        backend.close(seq)
    ids, new = PROMPTS[0], [60, 61, 62, 63]
    (a, _), (b, _) = backend.open([ids, ids])
    same(backend.extend([a], [new])[0].logits, torch.cat([backend.extend([b], [[t]])[0].logits for t in new]))
    backend.truncate(a, len(ids) + 1)
    (fresh, _), = backend.open([ids + new[:1]])
    same(backend.extend([a], [[70]])[0].logits, backend.extend([fresh], [[70]])[0].logits)
    for seq in (a, b, fresh, *(s for s, _ in opened)):
        backend.close(seq)
    assert backend.open_sequences == before, "every open is matched by its close"
    fork_conforms(backend)
    branches_conform(backend)
    draft_conforms(backend, [[5, 17, 40, 41], [9, 9], [12, 30, 31, 32, 33, 34]], [4, 1, 7])
    assert backend.open_sequences == before, "every open and fork is matched by its close"


def fork_conforms(backend) -> None:
    """A fork holds its parent's first positions: extending it = extending a fresh open of that prefix; it is
    counted open until closed (once: a second close changes nothing), and its parent goes on unchanged."""
    before = backend.open_sequences
    (parent, _), = backend.open([PROMPTS[2]])
    child = backend.fork(parent, 5)
    assert child.length == 5 and backend.open_sequences == before + 2
    (fresh, _), = backend.open([PROMPTS[2][:5]])
    same(backend.extend([child], [[80, 81]])[0].logits, backend.extend([fresh], [[80, 81]])[0].logits)
    (whole, _), = backend.open([PROMPTS[2]])
    same(backend.extend([parent], [[82]])[0].logits, backend.extend([whole], [[82]])[0].logits)
    for seq in (child, child, parent, fresh, whole):
        backend.close(seq)
    assert backend.open_sequences == before


def branches_conform(backend) -> None:
    """`extend_with_branches`: a sequence's rows are those of a fresh open of its tokens, each branch's those of
    a fresh open of the sequence's first `at` tokens and the branch's (at the end, inside the new tokens, inside
    the prompt); the sequence then holds its own tokens only and goes on as a fresh open of them."""
    from r2r.serving.backends.base import Branch

    before = backend.open_sequences
    prompts, new = [PROMPTS[2], PROMPTS[0]], [[50, 51, 52], [53]]
    branches = [[Branch(14, [60, 61, 62]), Branch(12, [63]), Branch(4, [64, 65])], [Branch(6, [66, 67])]]
    seqs = [s for s, _ in backend.open(prompts)]
    outs = backend.extend_with_branches(seqs, new, branches)
    for prompt, ids, bs, seq, (own, branch_outs) in zip(prompts, new, branches, seqs, outs):
        full = prompt + ids
        assert seq.length == len(full) and len(branch_outs) == len(bs)
        for tokens, start, out in [(full, len(prompt), own)] + [(full[: b.at] + b.ids, b.at, o)
                                                               for b, o in zip(bs, branch_outs)]:
            (ref, ref_out), = backend.open([tokens])
            same(out.logits, ref_out.logits[start:])
            backend.close(ref)
        (ref, _), = backend.open([full])
        same(backend.extend([seq], [[70, 71]])[0].logits, backend.extend([ref], [[70, 71]])[0].logits)
        backend.close(ref)
        backend.close(seq)
    assert backend.open_sequences == before


def draft_conforms(backend, prompts: list[list[int]], n_tokens: list[int]) -> None:
    """`draft` = extend the new ids, then extend each row's argmax, n - 1 times, in any batch; the sequence ends
    holding all but the last draft, and goes on as a fresh one would."""
    opened = backend.open([p[:-1] for p in prompts])
    blocks = backend.draft([s for s, _ in opened], [p[-1:] for p in prompts], n_tokens, want_hidden=True)
    for prompt, n, (seq, _), block in zip(prompts, n_tokens, opened, blocks):
        assert len(block.tokens) == n and block.out.logits.shape[0] == n and block.out.hidden.shape[0] == n
        assert seq.length == len(prompt) + n - 1, "the last draft is not fed"
        (ref, out), = backend.open([prompt], want_hidden=True)
        steps = [out] + [backend.extend([ref], [[t]], want_hidden=True)[0] for t in block.tokens[:-1]]
        rows = torch.stack([o.logits[-1] for o in steps])  # [n, vocab]
        hidden = torch.stack([o.hidden[-1] for o in steps])  # [n, hidden]
        assert block.tokens == rows.argmax(-1).tolist(), "each draft is the argmax of the row before it"
        same(block.out.logits, rows)
        torch.testing.assert_close(block.out.hidden, hidden, atol=1e-4, rtol=1e-4)
        last = [[block.tokens[-1]]]
        same(backend.extend([seq], last)[0].logits, backend.extend([ref], last)[0].logits)
        backend.close(seq)
        backend.close(ref)


@pytest.fixture(params=["hf", pytest.param("sglang", marks=pytest.mark.sglang)])
def backend(request, tiny_models):
    """The HF backend on a tiny random Qwen2; the SGLang backend on the testbed SLM (its shared engine)."""
    if request.param == "sglang":
        return request.getfixturevalue("sglang_pair").slm
    from r2r.serving.backends.hf import HFBackend

    return HFBackend(tiny_models["qwen2"])


def test_backend_conforms(backend) -> None:
    conformance(backend)
    if backend.exact_full_distribution:
        assert backend.returned_top_k == backend.vocab_size and not backend.drafts_in_one_call
    else:
        assert backend.returned_top_k < backend.vocab_size and backend.drafts_in_one_call


def test_hf_backend_counts_its_parameters(tiny_models) -> None:
    from r2r.serving.backends.hf import HFBackend

    backend = HFBackend(tiny_models["qwen2"])
    assert backend.n_parameters == sum(p.numel() for p in backend.model.parameters())


def test_test_fakes_declare_the_protocol() -> None:
    from tests.byte_oracle import TableLM
    from tests.fakes import FakeBackend

    declares_the_protocol(FakeBackend(vocab=8, seed=0))
    declares_the_protocol(TableLM(vocab_size=8, allowed=[1, 2], eos=0, context_len=1, max_new=2))


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_hf_branches_conform_with_other_attention(tiny_models, arch: str) -> None:
    """The HF backend's one-pass tree on a Llama and on a Gemma 3 whose 4-token sliding window the branches
    cross (conformance runs the Qwen2)."""
    from r2r.serving.backends.hf import HFBackend

    branches_conform(HFBackend(tiny_models[arch]))

