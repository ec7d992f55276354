"""Rows of top-k log-probabilities (SGLang's: the top-k log-probs kept, -inf elsewhere) are read as they are.

Router features, the native router's scores, confidence and entropy from such a row equal those from the full row
of the same distribution (router top-k <= returned k). The distributions here keep clearly less than all their mass
in the returned entries, so renormalising the row (a log_softmax over it, what every consumer did before rows said
what they hold) shifts each log-prob by -log(mass) and fails these tests: each test checks that too.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from r2r.router.checkpoint import LearnedPolicy, load_router, save_router
from r2r.router.features import features_from_outputs, topk_logprobs
from r2r.router.model import FoldedRouter, RouterConfig, RouterNet
from r2r.router.native_router import NativeBuild, native_router
from r2r.router.policies import ConfidencePolicy, PolicyKind, RouteInput
from r2r.router.rows import RowKind, row_logprobs
from r2r.serving.backends.base import StepOutput
from r2r.serving.backends.sglang import parse_response
from r2r.serving.decoding.engine import route_rows
from r2r.serving.decoding.generation import Generation
from r2r.serving.decoding.sequential import record_logprobs
from r2r.serving.pair import ModelPair, PairSpec

from .fakes import FakeBackend

VOCAB, HIDDEN, RETURNED = 50, 16, 8  # RETURNED: log-probs per row, as SGLangConfig.top_k
needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")


def full_and_topk(rows: int, seed: int, tail: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(full logits [rows, VOCAB], the SGLang-shaped rows of the same distribution: its top-RETURNED log-probs,
    -inf elsewhere). `tail=False`: the full rows hold all their mass in those entries (-inf logits elsewhere)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, VOCAB, generator=g) + 2.0  # shifted: logits, not log-probs
    if not tail:
        logits[logits < torch.topk(logits, RETURNED, dim=-1).values[:, -1:]] = float("-inf")
    logp = torch.log_softmax(logits, dim=-1)
    top = torch.topk(logp, RETURNED, dim=-1)
    sglang = torch.full_like(logp, float("-inf")).scatter(-1, top.indices, top.values)
    mass = top.values.exp().sum(-1)
    assert (mass < 0.9).all() if tail else torch.allclose(mass, torch.ones(rows)), f"top-{RETURNED} mass {mass}"
    return logits, sglang


def net(top_k: int, seed: int = 0) -> RouterNet:
    """A router with every weight far from its init, so that every feature moves the score."""
    g = torch.Generator().manual_seed(seed)
    cfg = RouterConfig(hidden_size=HIDDEN, embed_size=12, top_k=top_k, width=24, depth=2)
    out = RouterNet(cfg, torch.randn(VOCAB, 12, generator=g)).eval()
    with torch.no_grad():
        for p in out.parameters():
            p.normal_(0.0, 0.3, generator=g)
    return out


def route_input(rows: torch.Tensor, hidden: torch.Tensor | None, kind: RowKind) -> RouteInput:
    n = rows.shape[0]
    return RouteInput(logits=rows, hidden=hidden, positions=list(range(n)), stream_keys=[0] * n, kind=kind)


@pytest.mark.parametrize("k", [1, 5, RETURNED])
def test_features_from_topk_rows_equal_the_full_rows(k: int) -> None:
    logits, sglang = full_and_topk(6, seed=k)
    hidden = torch.randn(6, HIDDEN)
    want = features_from_outputs(logits, hidden, k, RowKind.LOGITS)
    got = features_from_outputs(sglang, hidden, k, RowKind.TOPK_LOGPROBS)
    assert torch.equal(got.token, want.token), "the argmax is the full row's"
    torch.testing.assert_close(got.topk, want.topk, msg="top-k log-probs are the full distribution's")
    renormalised = topk_logprobs(sglang, k, RowKind.LOGITS)  # the old reading: log_softmax over the top-k row
    assert (renormalised - want.topk).abs().min() > 0.1, "renormalising shifts every feature by -log(mass)"


def test_topk_features_past_the_returned_entries_are_refused() -> None:
    _, sglang = full_and_topk(2, seed=1)
    with pytest.raises(AssertionError, match=f"fewer than {RETURNED + 1}"):
        topk_logprobs(sglang, RETURNED + 1, RowKind.TOPK_LOGPROBS)


@needs_cc
@pytest.mark.parametrize("k", [5, RETURNED])
def test_native_scores_from_topk_rows_equal_the_full_rows(k: int, tmp_path: Path) -> None:
    router = net(k, seed=k)
    native = native_router(FoldedRouter(router), NativeBuild(cache_dir=tmp_path, max_rows=8))
    assert native is not None, "cc exists, so the native router must build"
    logits, sglang = full_and_topk(4, seed=10 + k)
    hidden = torch.randn(4, HIDDEN)
    with torch.no_grad():
        want = torch.sigmoid(router(features_from_outputs(logits, hidden, k, RowKind.LOGITS)))
    torch.testing.assert_close(native(logits, hidden, RowKind.LOGITS), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(native(sglang, hidden, RowKind.TOPK_LOGPROBS), want, rtol=1e-5, atol=1e-6,
                               msg="the native router reads top-k log-prob rows as they are")
    old = native(sglang, hidden, RowKind.LOGITS)  # the native router renormalising, as it did
    assert (old - want).abs().max() > 1e-3, "renormalised features move the score"


@pytest.mark.parametrize("native", [False, pytest.param(True, marks=needs_cc)])
def test_learned_policy_scores_topk_rows_as_the_full_rows(native: bool, tmp_path: Path) -> None:
    """Both paths of the policy (compiled, torch), through the engine's `route_rows` with rows of both kinds in one
    call: each group is scored with its own kind."""
    router = net(5, seed=3)
    built = native_router(FoldedRouter(router), NativeBuild(cache_dir=tmp_path)) if native else None
    policy = LearnedPolicy(router, 0.5, folded=FoldedRouter(router), native=built)
    logits, sglang = full_and_topk(3, seed=4)
    hidden = torch.randn(3, HIDDEN)
    want = policy.scores(route_input(logits, hidden, RowKind.LOGITS))
    got = policy.scores(route_input(sglang, hidden, RowKind.TOPK_LOGPROBS))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert (policy.scores(route_input(sglang, hidden, RowKind.LOGITS)) - want).abs().max() > 1e-3
    rows = [logits[0], sglang[1], logits[2], sglang[0]]
    kinds = [RowKind.LOGITS, RowKind.TOPK_LOGPROBS, RowKind.LOGITS, RowKind.TOPK_LOGPROBS]
    scores, _ = route_rows([policy] * 4, rows, [hidden[0], hidden[1], hidden[2], hidden[0]], [0] * 4, [0] * 4, kinds)
    torch.testing.assert_close(torch.tensor(scores), want[[0, 1, 2, 0]], rtol=1e-5, atol=1e-6)


def test_confidence_from_topk_rows_equals_the_full_rows() -> None:
    logits, sglang = full_and_topk(5, seed=6)
    policy = ConfidencePolicy(threshold=0.5)
    want = policy.scores(route_input(logits, None, RowKind.LOGITS))
    torch.testing.assert_close(policy.scores(route_input(sglang, None, RowKind.TOPK_LOGPROBS)), want)
    old = policy.scores(route_input(sglang, None, RowKind.LOGITS))
    assert (old - want).abs().min() > 0.01, "renormalising raises the top probability"


def test_entropy_of_topk_rows_is_the_returned_mass_entropy() -> None:
    """Equal to the full row's where the full row holds all its mass in the returned entries; elsewhere the entropy
    of the returned entries, -sum p log p with the tail ignored (at most the full entropy)."""
    policy = ConfidencePolicy(threshold=0.5, kind=PolicyKind.ENTROPY)
    logits, sglang = full_and_topk(5, seed=7, tail=False)
    torch.testing.assert_close(policy.scores(route_input(sglang, None, RowKind.TOPK_LOGPROBS)),
                               policy.scores(route_input(logits, None, RowKind.LOGITS)))

    logits, sglang = full_and_topk(5, seed=8)
    got = policy.scores(route_input(sglang, None, RowKind.TOPK_LOGPROBS))
    logp = torch.topk(torch.log_softmax(logits, -1), RETURNED, dim=-1).values
    torch.testing.assert_close(got, -(logp.exp() * logp).sum(-1) / math.log(VOCAB))
    assert (got < policy.scores(route_input(logits, None, RowKind.LOGITS))).all(), "a lower bound of the full one"
    old = policy.scores(route_input(sglang, None, RowKind.LOGITS))
    assert (old - got).abs().min() > 0.01, "renormalising changes the entropy"


def test_reported_logprobs_from_topk_rows_are_the_full_rows() -> None:
    logits, sglang = full_and_topk(1, seed=9)
    token = int(logits[0].argmax())
    full, top = Generation(), Generation()
    for gen, row, kind in ((full, logits[0], RowKind.LOGITS), (top, sglang[0], RowKind.TOPK_LOGPROBS)):
        gen.token_ids.append(token)
        record_logprobs(gen, row, kind, 3)
    assert top.logprobs == pytest.approx(full.logprobs, abs=1e-6)
    assert [i for i, _ in top.top_logprobs[0]] == [i for i, _ in full.top_logprobs[0]]
    assert [v for _, v in top.top_logprobs[0]] == pytest.approx([v for _, v in full.top_logprobs[0]], abs=1e-6)


def test_rows_say_what_they_hold() -> None:
    full = torch.randn(2, VOCAB)
    torch.testing.assert_close(row_logprobs(full, RowKind.LOGITS), torch.log_softmax(full, -1))
    _, sglang = full_and_topk(2, seed=2)
    assert torch.equal(row_logprobs(sglang, RowKind.TOPK_LOGPROBS), sglang), "top-k log-probs as they are"
    with pytest.raises(AssertionError, match="RowKind"):
        StepOutput(logits=full, hidden=None, kind="logits")  # a plain string is not a declared kind
    meta = {"input_top_logprobs": [None], "output_top_logprobs": [[(-0.5, 3, None), (-1.5, 7, None)]]}
    out = parse_response({"meta_info": meta}, 1, VOCAB, want_hidden=False)
    assert out.kind == RowKind.TOPK_LOGPROBS, "the SGLang adapter returns top-k log-prob rows"
    assert FakeBackend(VOCAB, seed=0).open([[1, 2]])[0][1].kind == RowKind.LOGITS


def test_a_router_reading_more_log_probs_than_returned_is_refused_at_load(tmp_path: Path) -> None:
    """load_router refuses it, and so does a pair whose SLM backend returns fewer log-probs (SGLang's top-k)."""
    slm = FakeBackend(VOCAB, seed=0, hidden=HIDDEN)
    cfg = RouterConfig(hidden_size=HIDDEN, embed_size=HIDDEN, top_k=RETURNED, width=8, depth=1)
    table = slm.embed(torch.arange(VOCAB))
    save_router(tmp_path, RouterNet(cfg, table), {"slm_fingerprint": slm.fingerprint, "threshold": 0.5})
    assert load_router(tmp_path, slm.fingerprint, table, RETURNED, native=None).net.cfg.top_k == RETURNED
    with pytest.raises(ValueError, match=f"reads the top-{RETURNED} log-probs but the SLM's backend returns only "
                                         f"the top {RETURNED - 1}"):
        load_router(tmp_path, slm.fingerprint, table, RETURNED - 1, native=None)
    slm.returned_top_k = RETURNED - 1  # as an SGLang SLM serving top-7 log-probs
    pair = ModelPair(PairSpec("fake", Path("slm"), Path("llm"), tmp_path), slm, FakeBackend(VOCAB, seed=1), None)
    with pytest.raises(ValueError, match=f"returns only the top {RETURNED - 1}"):
        pair.learned_policy()
