"""Routing policies: scores, thresholds and determinism."""
from __future__ import annotations

import math

import pytest
import torch

from r2r.router.policies import (
    AlwaysLLM,
    AlwaysSLM,
    ConfidencePolicy,
    PolicyKind,
    RandomPolicy,
    RouteInput,
    flags,
    make_policy,
)
from r2r.router.rows import RowKind


def inputs(logits: torch.Tensor, positions: list[int] | None = None, keys: list[int] | None = None) -> RouteInput:
    n = logits.shape[0]
    return RouteInput(logits=logits, hidden=None, positions=positions or list(range(n)), stream_keys=keys or [0] * n,
                      kind=RowKind.LOGITS)


def test_always_policies() -> None:
    x = inputs(torch.randn(4, 10))
    assert not flags(AlwaysSLM(), x)[1].any()
    assert flags(AlwaysLLM(), x)[1].all()


def test_confidence_and_entropy_scores() -> None:
    peaked = torch.tensor([[10.0, 0.0, 0.0, 0.0]])
    uniform = torch.zeros(1, 4)
    logits = torch.cat([peaked, uniform])
    conf = ConfidencePolicy(threshold=0.5).scores(inputs(logits))
    assert conf[0] < 1e-3 and abs(conf[1] - 0.75) < 1e-6, "1 - max prob"
    ent = ConfidencePolicy(threshold=0.5, kind=PolicyKind.ENTROPY).scores(inputs(logits))
    assert ent[0] < 0.01 and abs(ent[1] - 1.0) < 1e-6, "entropy / log(vocab)"
    assert flags(ConfidencePolicy(threshold=0.5, kind=PolicyKind.ENTROPY), inputs(logits))[1].tolist() == [False, True]


def test_random_policy_rate_and_determinism() -> None:
    n = 20000
    x = inputs(torch.zeros(n, 2), positions=list(range(n)), keys=[3] * n)
    policy = RandomPolicy(rate=0.2, seed=5)
    f1 = flags(policy, x)[1]
    assert abs(f1.float().mean().item() - 0.2) < 4 * math.sqrt(0.2 * 0.8 / n), "rate within 4 sigma"
    assert torch.equal(f1, flags(RandomPolicy(rate=0.2, seed=5), x)[1]), "a pure function of (seed, key, position)"
    assert not torch.equal(f1, flags(RandomPolicy(rate=0.2, seed=6), x)[1])


def test_make_policy_errors() -> None:
    with pytest.raises(ValueError, match="rate"):
        make_policy("random")
    with pytest.raises(ValueError, match="threshold"):
        make_policy("entropy", threshold=1.5)
    with pytest.raises(ValueError):
        make_policy("nonsense")
