"""The compiled router (router/native_router.py) against the trained network it was folded from."""
from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import pytest
import torch

from r2r.router.checkpoint import LearnedPolicy, load_router, save_router
from r2r.router.features import features_from_outputs
from r2r.router.model import FoldedRouter, RouterConfig, RouterNet
from r2r.router.native_router import MAX_BLOCKS, NativeBuild, build_library, native_router
from r2r.router.policies import RouteInput
from r2r.router.rows import RowKind

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")

VOCAB, HIDDEN = 50, 16


def _net(cfg: RouterConfig, seed: int) -> RouterNet:
    """A router with every weight far from its init, so that every folded term matters."""
    g = torch.Generator().manual_seed(seed)
    net = RouterNet(cfg, torch.randn(VOCAB, cfg.embed_size, generator=g)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3, generator=g)
    return net


def _assert_network_scores(scores: torch.Tensor, net: RouterNet, logits: torch.Tensor, hidden: torch.Tensor,
                           msg: str | None = None) -> None:
    """`scores` are the trained network's on these rows, sigmoid applied: the reference every path is held to."""
    with torch.no_grad():
        expected = torch.sigmoid(net(features_from_outputs(logits, hidden, net.cfg.top_k, RowKind.LOGITS)))
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6, msg=msg)


@pytest.mark.parametrize("cfg", [
    RouterConfig(hidden_size=HIDDEN, embed_size=12, top_k=5, width=24, depth=2),
    RouterConfig(hidden_size=HIDDEN, embed_size=8, top_k=1, width=7, depth=1, expansion=1),
    RouterConfig(hidden_size=HIDDEN, embed_size=12, top_k=VOCAB, width=32, depth=3, expansion=2),
])
def test_native_scores_equal_the_network(cfg: RouterConfig, tmp_path: Path) -> None:
    net = _net(cfg, seed=cfg.depth)
    native = native_router(FoldedRouter(net), NativeBuild(cache_dir=tmp_path, max_rows=8))
    assert native is not None, "cc exists, so the native router must build"
    g = torch.Generator().manual_seed(7)
    for rows in (1, 3, 8):
        logits, hidden = torch.randn(rows, VOCAB, generator=g) * 3, torch.randn(rows, HIDDEN, generator=g)
        _assert_network_scores(native(logits, hidden, RowKind.LOGITS), net, logits, hidden)


def test_native_features_break_ties_as_torch(tmp_path: Path) -> None:
    """Tied top logits: the token is the first maximum (torch.argmax's rule); each token's embedding row differs,
    so another choice would change the score."""
    cfg = RouterConfig(hidden_size=HIDDEN, embed_size=12, top_k=4, width=24, depth=1)
    net = _net(cfg, seed=5)
    native = native_router(FoldedRouter(net), NativeBuild(cache_dir=tmp_path))
    logits, hidden = torch.zeros(2, VOCAB), torch.randn(2, HIDDEN, generator=torch.Generator().manual_seed(1))
    logits[0, [3, 9, 40]] = 2.0
    logits[1, [44, 45]] = 1.5  # and the rest tied at 0
    _assert_network_scores(native(logits, hidden, RowKind.LOGITS), net, logits, hidden)


def test_native_applies_to_few_float32_rows_of_its_sizes(tmp_path: Path) -> None:
    cfg = RouterConfig(hidden_size=HIDDEN, embed_size=12, top_k=5, width=24, depth=1)
    native = native_router(FoldedRouter(_net(cfg, seed=1)), NativeBuild(cache_dir=tmp_path, max_rows=2))
    assert native.applies(torch.zeros(2, VOCAB), torch.zeros(2, HIDDEN))
    assert not native.applies(torch.zeros(3, VOCAB), torch.zeros(3, HIDDEN)), "more rows than max_rows"
    assert not native.applies(torch.zeros(1, VOCAB, dtype=torch.bfloat16), torch.zeros(1, HIDDEN))
    assert not native.applies(torch.zeros(1, VOCAB + 1), torch.zeros(1, HIDDEN)), "another vocabulary"
    assert not native.applies(torch.zeros(2, VOCAB), torch.zeros(1, HIDDEN)), "a hidden row per logits row"


def test_library_is_built_once_per_cache(tmp_path: Path) -> None:
    first = build_library(NativeBuild(cache_dir=tmp_path))
    assert first is not None and first.exists()
    stamp = first.stat().st_mtime_ns
    assert build_library(NativeBuild(cache_dir=tmp_path)) == first and first.stat().st_mtime_ns == stamp
    other = build_library(NativeBuild(cache_dir=tmp_path, flags=("-O2", "-shared", "-fPIC")))
    assert other is not None and other != first, "other flags, another library"
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".so")] == [], "no temporary left behind"


def test_build_config_rejects_no_rows() -> None:
    with pytest.raises(ValueError):
        NativeBuild(max_rows=0)


@pytest.mark.parametrize("build", [NativeBuild(compiler="no-such-cc"),
                                   NativeBuild(flags=(*NativeBuild().flags, "-no-such-flag")),
                                   NativeBuild(cache_dir=Path("/proc/no-such-cache"))])
def test_where_the_library_cannot_be_built_the_router_runs_on_torch(build: NativeBuild, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    cfg = RouterConfig(hidden_size=HIDDEN, embed_size=12, top_k=5, width=24, depth=1)
    net = _net(cfg, seed=2)
    save_router(tmp_path / "r", net, {"threshold": 0.5, "slm_fingerprint": "abc"})
    if build.cache_dir is None:
        build = dataclasses.replace(build, cache_dir=tmp_path / "cache")
    with caplog.at_level(logging.WARNING):
        policy = load_router(tmp_path / "r", "abc", net.embeddings, cfg.top_k, native=build)
    assert policy.native is None and "torch ops" in caplog.text
    logits, hidden = torch.randn(2, VOCAB), torch.randn(2, HIDDEN)
    scores = policy.scores(RouteInput(logits=logits, hidden=hidden, positions=[0, 0], stream_keys=[0, 1],
                                      kind=RowKind.LOGITS))
    _assert_network_scores(scores, net, logits, hidden)


def test_loaded_router_carries_its_native_form(tmp_path: Path) -> None:
    cfg = RouterConfig(hidden_size=HIDDEN, embed_size=12, top_k=5, width=24, depth=2)
    net = _net(cfg, seed=4)
    save_router(tmp_path / "r", net, {"threshold": 0.5, "slm_fingerprint": "abc"})
    policy = load_router(tmp_path / "r", "abc", net.embeddings, cfg.top_k, native=NativeBuild(cache_dir=tmp_path))
    assert policy.native is not None and policy.with_threshold(0.2).native is policy.native
    logits, hidden = torch.randn(1, VOCAB), torch.randn(1, HIDDEN)
    _assert_network_scores(policy.native(logits, hidden, RowKind.LOGITS), net, logits, hidden)


def test_policy_scores_few_rows_natively_and_more_on_torch(tmp_path: Path) -> None:
    """The native form is built from another network here, so each path's scores show which one ran."""
    cfg = RouterConfig(hidden_size=HIDDEN, embed_size=12, top_k=5, width=24, depth=2)
    net, other = _net(cfg, seed=4), _net(cfg, seed=8)
    native = native_router(FoldedRouter(other), NativeBuild(cache_dir=tmp_path, max_rows=2))
    policy = LearnedPolicy(net, 0.5, native=native)
    g = torch.Generator().manual_seed(3)
    for rows, scorer in ((1, other), (2, other), (5, net)):
        logits, hidden = torch.randn(rows, VOCAB, generator=g), torch.randn(rows, HIDDEN, generator=g)
        inputs = RouteInput(logits=logits, hidden=hidden, positions=[0] * rows, stream_keys=list(range(rows)),
                            kind=RowKind.LOGITS)
        path = "native" if scorer is other else "torch"
        _assert_network_scores(policy.scores(inputs), scorer, logits, hidden,
                               msg=f"{rows} rows should be scored by the {path} path")


def test_routers_the_native_form_cannot_take_run_on_torch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    deep = RouterConfig(hidden_size=HIDDEN, embed_size=4, top_k=2, width=4, depth=MAX_BLOCKS + 1, expansion=1)
    with caplog.at_level(logging.WARNING):
        assert native_router(FoldedRouter(_net(deep, seed=1)), NativeBuild(cache_dir=tmp_path)) is None
    assert "torch ops" in caplog.text


def test_a_damaged_library_leaves_the_router_on_torch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    build = NativeBuild(cache_dir=tmp_path)
    library = build_library(build)
    library.write_bytes(library.read_bytes()[:100])
    cfg = RouterConfig(hidden_size=HIDDEN, embed_size=12, top_k=5, width=24, depth=1)
    with caplog.at_level(logging.WARNING):
        assert native_router(FoldedRouter(_net(cfg, seed=1)), build) is None
    assert "delete it to rebuild" in caplog.text
