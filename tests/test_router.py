"""Router training, calibration, checkpoints and the learned policy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from r2r.router.checkpoint import LearnedPolicy, load_router, save_router, share_curve
from r2r.router.features import features_from_outputs, topk_logprobs
from r2r.router.model import FoldedRouter, RouterConfig, RouterNet
from r2r.router.policies import RouteInput, flags
from r2r.router.rows import RowKind
from r2r.router.train import LabelTensors, TrainConfig, calibrate, metrics, predict, split_by_prompt, train_router

HIDDEN, VOCAB, K = 16, 40, 8


def synthetic(n_prompts: int = 120, per_prompt: int = 30, seed: int = 0) -> LabelTensors:
    """Divergent iff the first hidden feature is large: a rule a router must learn (~10% positives)."""
    g = torch.Generator().manual_seed(seed)
    n = n_prompts * per_prompt
    hidden = torch.randn(n, HIDDEN, generator=g)
    logits = torch.randn(n, VOCAB, generator=g)
    label = (hidden[:, 0] > 1.3).float()
    return LabelTensors(hidden, logits.argmax(-1), topk_logprobs(logits, K, RowKind.LOGITS), label,
                        [f"p{i // per_prompt}" for i in range(n)])


def test_topk_logprobs_are_sorted_logprobs() -> None:
    logits = torch.randn(3, VOCAB)
    got = topk_logprobs(logits, K, RowKind.LOGITS)
    want = torch.sort(torch.log_softmax(logits, -1), dim=-1, descending=True).values[:, :K]
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(topk_logprobs(logits + 5.0, K, RowKind.LOGITS), got, msg="invariant to a logit shift")


def test_split_is_by_prompt_and_deterministic() -> None:
    data = synthetic()
    train, val = split_by_prompt(data, 0.2, seed=1)
    assert not set(train.data_id) & set(val.data_id)
    assert len(train) + len(val) == len(data)
    assert split_by_prompt(data, 0.2, seed=1)[1].data_id == val.data_id


def test_calibrate_recall_and_share_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    probs, labels = rng.random(2000), (rng.random(2000) < 0.1).astype(int)
    t = calibrate(probs, labels, 0.95, None)
    routed = probs > t
    recall = (routed & (labels == 1)).sum() / labels.sum()
    assert recall >= 0.95
    # brute force: no higher threshold among the scores reaches the recall target
    better = [s for s in np.unique(probs) if s > t and ((probs > s) & (labels == 1)).sum() / labels.sum() >= 0.95]
    assert not better, "the calibrated threshold is the largest that meets the recall target"
    share = calibrate(probs, labels, None, 0.2)
    assert abs((probs > share).mean() - 0.2) < 0.01


def test_training_learns_the_rule_and_is_reproducible() -> None:
    data = synthetic()
    rcfg = RouterConfig(hidden_size=HIDDEN, embed_size=HIDDEN, top_k=K, width=32, depth=2)
    table = torch.randn(VOCAB, HIDDEN, generator=torch.Generator().manual_seed(3))
    tcfg = TrainConfig(epochs=15, batch_size=256, lr=3e-3, seed=4)
    net, report = train_router(data, table, rcfg, tcfg)
    assert report["validation"]["roc_auc"] > 0.95, report["validation"]
    assert report["validation"]["recall"] >= 0.95
    net2, report2 = train_router(data, table, rcfg, tcfg)
    assert report2["validation"] == report["validation"], "same seed, same router"


def test_checkpoint_round_trip_and_slm_check(tmp_path) -> None:
    rcfg = RouterConfig(hidden_size=HIDDEN, embed_size=HIDDEN, top_k=K, width=16, depth=1)
    table = torch.randn(VOCAB, HIDDEN)
    net = RouterNet(rcfg, table)
    data = synthetic(20, 10)
    save_router(tmp_path, net, {"slm_fingerprint": "abc", "threshold": 0.3,
                                "share_curve": share_curve(predict(net, data).numpy())})
    policy = load_router(tmp_path, "abc", table, K)
    torch.testing.assert_close(predict(policy.net, data), predict(net, data))
    with pytest.raises(ValueError, match="trained for SLM abc"):
        load_router(tmp_path, "other", table, K)
    with pytest.raises(FileNotFoundError):
        load_router(tmp_path / "none", "abc", table, K)


def test_learned_policy_scores_and_share_budget() -> None:
    rcfg = RouterConfig(hidden_size=HIDDEN, embed_size=HIDDEN, top_k=K, width=16, depth=1)
    net = RouterNet(rcfg, torch.randn(VOCAB, HIDDEN)).eval()
    logits, hidden = torch.randn(500, VOCAB), torch.randn(500, HIDDEN)
    probs = torch.sigmoid(net(features_from_outputs(logits, hidden, K, RowKind.LOGITS))).detach()
    policy = LearnedPolicy(net, 0.5, share_curve(probs.numpy()))
    inputs = RouteInput(logits, hidden, list(range(500)), [0] * 500, RowKind.LOGITS)
    torch.testing.assert_close(policy.scores(inputs), probs)
    budget = policy.with_threshold(policy.threshold_for_share(0.2))
    assert abs(flags(budget, inputs)[1].float().mean().item() - 0.2) < 0.02
    m = metrics(probs.numpy(), (probs.numpy() > 0.5).astype(int), 0.5)
    assert m["recall"] == 1.0 and m["precision"] == 1.0


def test_folded_router_equals_the_network() -> None:
    """The decoding form (embedding and top-k projection folded into the input layer) computes the same
    logits as the trained modules, on weights far from their init so every folded term matters."""
    g = torch.Generator().manual_seed(3)
    net = RouterNet(RouterConfig(hidden_size=HIDDEN, embed_size=12, top_k=K, width=24, depth=2),
                    torch.randn(VOCAB, 12, generator=g)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3, generator=g)
    logits, hidden = torch.randn(64, VOCAB, generator=g), torch.randn(64, HIDDEN, generator=g)
    feats = features_from_outputs(logits, hidden, K, RowKind.LOGITS)
    with torch.no_grad():
        torch.testing.assert_close(FoldedRouter(net)(feats.hidden, feats.token, feats.topk), net(feats),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"batch_size": 0}, {"lr": 0.0}, {"target_recall": 1.5},
                                 {"val_fraction": 1.0}, {"target_share": 0.0}])
def test_train_config_rejects_what_cannot_train(bad: dict) -> None:
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_label_tensors_take_the_chosen_positives() -> None:
    from r2r.router.fit import label_tensors

    columns = {"hidden": np.zeros((3, 2)), "slm_token": np.array([1, 2, 3]), "topk": np.zeros((3, 4)),
               "data_id": np.array(["a", "a", "b"]), "divergent": np.array([0, 1, 0]),
               "mismatch": np.array([1, 1, 0])}
    assert label_tensors(columns).label.tolist() == [0.0, 1.0, 0.0]
    assert label_tensors(columns, "mismatch").label.tolist() == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="positives"):
        label_tensors(columns, "verified")
