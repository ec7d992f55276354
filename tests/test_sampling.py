"""Token choice against brute-force references."""
from __future__ import annotations

import pytest
import torch

from r2r.serving.decoding.sampling import SamplingParams, choose_token, make_generator, processed_probs


def brute_force_probs(logits: list[float], temperature: float, top_k: int, top_p: float) -> list[float]:
    """Reference: sort by logit, keep top-k, keep the smallest prefix whose mass reaches top_p."""
    import math

    scaled = [x / temperature for x in logits]
    order = sorted(range(len(scaled)), key=lambda i: -scaled[i])
    if top_k:
        order = order[:top_k]
    z = sum(math.exp(scaled[i]) for i in order)
    kept, mass = [], 0.0
    for i in order:
        if mass >= top_p:
            break
        kept.append(i)
        mass += math.exp(scaled[i]) / z
    z2 = sum(math.exp(scaled[i]) for i in kept)
    return [math.exp(scaled[i]) / z2 if i in kept else 0.0 for i in range(len(logits))]


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 3, 1.0), (1.3, 0, 0.8), (1.0, 4, 0.5)])
def test_processed_probs_match_brute_force(temperature: float, top_k: int, top_p: float) -> None:
    logits = [2.0, -1.0, 0.5, 3.0, 0.0, 1.5, -2.0]
    got = processed_probs(torch.tensor(logits), SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p))
    want = torch.tensor(brute_force_probs(logits, temperature, top_k, top_p))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_greedy_is_argmax_and_seed_reproduces() -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(1))
    assert choose_token(logits, SamplingParams(), None) == int(logits.argmax())
    params = SamplingParams(temperature=1.0)
    draws_a = [choose_token(logits, params, g) for g in [make_generator(7)] for _ in range(20)]
    gen_b = make_generator(7)
    assert draws_a == [choose_token(logits, params, gen_b) for _ in range(20)], "same seed, same draws"


@pytest.mark.parametrize("field,value", [("max_tokens", 0), ("temperature", -1.0), ("top_p", 0.0), ("top_k", -1)])
def test_invalid_params_are_rejected(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})
