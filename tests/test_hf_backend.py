"""The transformers backend against independent references: a plain full forward pass,
one-at-a-time extends, and fresh sequences."""
from __future__ import annotations

import pytest
import torch

from r2r.serving.backends.hf import HFBackend

ATOL = 2e-4
PROMPTS = [[5, 17, 40, 41, 42, 7], [9, 9], [12, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39]]
NEW = [[50], [51, 52, 53], [54, 55]]


def full_forward(backend: HFBackend, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: logits and post-norm hidden of one uncached pass over the whole sequence."""
    with torch.inference_mode():
        out = backend.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.logits[0].float(), out.hidden_states[-1][0].float()


def check_backend(backend: HFBackend) -> None:
    # batched open == full forward, per prompt
    opened = backend.open(PROMPTS, want_hidden=True)
    for (seq, out), ids in zip(opened, PROMPTS):
        ref_logits, ref_hidden = full_forward(backend, ids)
        assert seq.length == len(ids)
        torch.testing.assert_close(out.logits, ref_logits, atol=ATOL, rtol=0)
        torch.testing.assert_close(out.hidden, ref_hidden, atol=ATOL, rtol=0)
    # batched extend (different past lengths, different numbers of new tokens) == one-at-a-time extend
    batched = backend.extend([s for s, _ in opened], NEW, want_hidden=True)
    singles = []
    for ids, new in zip(PROMPTS, NEW):
        (seq, _), = backend.open([ids])
        singles.append(backend.extend([seq], [new], want_hidden=True)[0])
    for b, s, ids, new in zip(batched, singles, PROMPTS, NEW):
        torch.testing.assert_close(b.logits, s.logits, atol=ATOL, rtol=0)
        torch.testing.assert_close(b.hidden, s.hidden, atol=ATOL, rtol=0)
        torch.testing.assert_close(b.logits, full_forward(backend, ids + new)[0][-len(new):], atol=ATOL, rtol=0)
    # extending k tokens at once == k single extends
    ids, new = PROMPTS[0], [60, 61, 62, 63, 64]
    (seq_a, _), (seq_b, _) = backend.open([ids, ids])
    at_once = backend.extend([seq_a], [new])[0].logits
    one_by_one = torch.cat([backend.extend([seq_b], [[t]])[0].logits for t in new])
    torch.testing.assert_close(at_once, one_by_one, atol=ATOL, rtol=0)
    # truncate then extend == a fresh sequence with the same tokens
    backend.truncate(seq_a, len(ids) + 2)
    after = backend.extend([seq_a], [[70, 71]])[0].logits
    (fresh, _), = backend.open([ids + new[:2]])
    torch.testing.assert_close(after, backend.extend([fresh], [[70, 71]])[0].logits, atol=ATOL, rtol=0)
    assert seq_a.length == len(ids) + 4
    # a fork (of a resident row, and of an evicted one) == a fresh sequence; the source is untouched
    for source in (seq_a, seq_b):
        child = backend.fork(source, len(ids) + 1)
        got = backend.extend([child], [[72, 73]])[0].logits
        torch.testing.assert_close(got, full_forward(backend, ids + new[:1] + [72, 73])[0][-2:], atol=ATOL, rtol=0)
    assert backend.extend([seq_b], [[74]])[0].logits.shape[0] == 1
    torch.testing.assert_close(backend.extend([seq_b], [[75]])[0].logits,
                               full_forward(backend, ids + new + [74, 75])[0][-1:], atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_backend_matches_references_on_tiny_models(tiny_models, arch: str) -> None:
    check_backend(HFBackend(tiny_models[arch]))


@pytest.mark.parametrize("role", ["slm", "llm"])
def test_backend_matches_references_on_testbed(testbed_dirs, role: str) -> None:
    check_backend(HFBackend(testbed_dirs[role]))


def test_extend_past_context_is_a_clear_error(tiny_models) -> None:
    backend = HFBackend(tiny_models["llama"])
    (seq, _), = backend.open([[1, 2, 3]])
    with pytest.raises(ValueError, match="context"):
        backend.extend([seq], [[4] * backend.max_length])


def test_open_rejects_empty_prompt(tiny_models) -> None:
    with pytest.raises(ValueError, match="empty"):
        HFBackend(tiny_models["llama"]).open([[]])


def test_missing_model_dir_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        HFBackend(tmp_path / "nowhere")


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_resident_batch_with_truncation_and_ragged_steps(tiny_models, arch: str) -> None:
    """A batch kept resident across steps of different widths and in-place truncations
    (speculative rejection) gives the same logits as fresh sequences with the same tokens."""
    backend = HFBackend(tiny_models[arch])
    prompts = [[3, 4, 5, 6, 7, 8, 9], [10, 11]]
    seqs = [s for s, _ in backend.open(prompts)]
    tokens = [list(p) for p in prompts]
    steps = [([20, 21, 22], [23]), ([24], [25, 26, 27, 28]), ([29, 30], [31])]
    for step, (a, b) in enumerate(steps):
        outs = backend.extend(seqs, [a, b])
        tokens[0] += a
        tokens[1] += b
        if step == 1:  # reject the last two tokens of row 1 while it stays resident
            backend.truncate(seqs[1], seqs[1].length - 2)
            tokens[1] = tokens[1][:-2]
    for ids, out, new in zip(tokens, outs, steps[-1]):
        want = full_forward(backend, ids)[0][-len(new):]
        torch.testing.assert_close(out.logits, want, atol=ATOL, rtol=0)


def test_subset_calls_keep_the_batch_resident(tiny_models) -> None:
    """Extending a subset of the resident batch (the others idle, one closed) gives the fresh-sequence logits."""
    backend = HFBackend(tiny_models["gemma3"])
    prompts = [[3, 4, 5], [6, 7, 8, 9, 10], [11, 12], [13]]
    seqs = [s for s, _ in backend.open(prompts)]
    backend.close(seqs[3])
    slots, held = [s.slot for s in seqs[:3]], backend.kv_bytes
    out = backend.extend(seqs[:2], [[20, 21], [22]])
    assert [s.slot for s in seqs[:3]] == slots and backend.kv_bytes == held, \
        "a subset call runs in place: no row moves, nothing is reallocated"
    torch.testing.assert_close(out[0].logits, full_forward(backend, prompts[0] + [20, 21])[0][-2:], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1].logits, full_forward(backend, prompts[1] + [22])[0][-1:], atol=ATOL, rtol=0)
    later = backend.extend(seqs[:3], [[23], [24], [25]])
    torch.testing.assert_close(later[2].logits, full_forward(backend, prompts[2] + [25])[0][-1:], atol=ATOL, rtol=0)
    torch.testing.assert_close(later[0].logits, full_forward(backend, prompts[0] + [20, 21, 23])[0][-1:],
                               atol=ATOL, rtol=0)


def test_prefill_groups_minimize_padding_plus_passes() -> None:
    """Against brute force over every way to cut the length-sorted prompts into consecutive passes."""
    import itertools
    import random

    from r2r.serving.backends.hf import prefill_groups

    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 120) for _ in range(rng.randint(1, 8))]
        pass_positions = rng.choice([0, 8, 32, 500])
        groups = prefill_groups(lengths, pass_positions)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))

        def cost(parts: list[list[int]]) -> int:
            return sum(pass_positions + len(p) * max(lengths[i] for i in p) for p in parts)

        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        best = min(cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))])
                   for r in range(len(order)) for cuts in itertools.combinations(range(1, len(order)), r))
        assert cost(groups) == best


def test_open_of_mixed_lengths_runs_in_groups(tiny_models) -> None:
    """Short and long prompts prefill in separate passes; each output is still its own prompt's, in order."""
    backend = HFBackend(tiny_models["llama"])
    prompts = [[3, 4, 5], list(range(10, 70)), [6, 7, 8, 9], list(range(100, 158))]
    passes = backend.forward_passes
    opened = backend.open(prompts, want_hidden=True)
    assert backend.forward_passes - passes == 2
    for (seq, out), ids in zip(opened, prompts):
        ref_logits, ref_hidden = full_forward(backend, ids)
        assert seq.length == len(ids)
        torch.testing.assert_close(out.logits, ref_logits, atol=ATOL, rtol=0)
        torch.testing.assert_close(out.hidden, ref_hidden, atol=ATOL, rtol=0)
    later = backend.extend([s for s, _ in opened], [[1], [2], [3], [4]])
    for ids, out, new in zip(prompts, later, [1, 2, 3, 4]):
        torch.testing.assert_close(out.logits, full_forward(backend, ids + [new])[0][-1:], atol=ATOL, rtol=0)


def test_wide_passes_borrow_threads_and_give_them_back(testbed_dirs) -> None:
    """Under `PassThreads` a pass estimated at `wide_flops` or more runs on `threads` threads, a smaller one
    on one; torch's count is back afterwards, and the backend still matches the references."""
    from r2r.serving.backends.threads import PassThreads

    probe = HFBackend(testbed_dirs["llm"], "cpu")
    params = sum(p.numel() for p in probe.model.parameters())
    backend = HFBackend(testbed_dirs["llm"], "cpu", pass_threads=PassThreads(2, wide_flops=2 * params * 12))
    seen: list[int] = []
    backend.model.get_decoder().register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (seq, _), = backend.open([PROMPTS[2]])  # 11 positions: narrow
        backend.extend([seq], [list(range(60, 80))])  # 20 positions: wide
        backend.extend([seq], [[81]])  # narrow
        assert seen == [1, 2, 1]
        assert torch.get_num_threads() == 1
        check_backend(backend)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("layer_type, window", [("chunked_attention", 4), ("linear_attention", 4),
                                                ("sliding_attention", None)])
def test_a_layer_without_its_mask_is_refused(layer_type: str, window: int | None) -> None:
    """A layer type the backend builds no mask for (or a sliding layer with no window) would get a full mask:
    inexact, so refused at load."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=4,
                           layer_types=["sliding_attention", "full_attention", "full_attention"])
    model = Gemma3ForCausalLM(cfg).eval()
    HFBackend.from_model(model, "tiny", "fp")  # the types it masks: loads
    model.config.layer_types[1], model.config.sliding_window = layer_type, window
    with pytest.raises(ValueError, match="layer types .* are not supported"):
        HFBackend.from_model(model, "tiny", "fp")
