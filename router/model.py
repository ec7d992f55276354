"""The router network: a residual MLP over [hidden, embed(top token), proj(top-k log-probs)].

Sized to the SLM (the published 1024-wide, 6-block router for a 1.5B SLM is the reference
point): width, depth and expansion are configs. The defaults (128 wide, 2 blocks) were chosen
on validation: larger routers classified no better and cost more per decoding step, which the
router pays at every SLM step (docs/perf-notes.md, "Decode step and backend"). The token
embedding table is the SLM's, frozen, and supplied at construction; it is excluded from
`trainable_state_dict`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from r2r.router.features import RouterFeatures


@dataclass(frozen=True)
class RouterConfig:
    hidden_size: int  # the SLM's hidden size
    embed_size: int  # the SLM's input embedding size
    top_k: int = 32
    width: int = 128
    depth: int = 2
    expansion: int = 4
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if min(self.hidden_size, self.embed_size, self.top_k, self.width, self.depth, self.expansion) < 1:
            raise ValueError(f"router sizes must be positive: {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_json(self) -> dict:
        return asdict(self)


class _Block(nn.Module):
    """Pre-LN residual MLP block."""

    def __init__(self, width: int, expansion: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, width * expansion), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(width * expansion, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class RouterNet(nn.Module):
    def __init__(self, cfg: RouterConfig, embeddings: torch.Tensor) -> None:
        super().__init__()
        assert embeddings.dim() == 2 and embeddings.shape[1] == cfg.embed_size, (
            f"embedding table {tuple(embeddings.shape)} does not match embed_size {cfg.embed_size}")
        self.cfg = cfg
        self.register_buffer("embeddings", embeddings.float(), persistent=False)  # [vocab, embed] frozen
        self.topk_proj = nn.Linear(cfg.top_k, cfg.hidden_size)
        self.inp = nn.Linear(2 * cfg.hidden_size + cfg.embed_size, cfg.width)
        self.blocks = nn.ModuleList(_Block(cfg.width, cfg.expansion, cfg.dropout) for _ in range(cfg.depth))
        self.out_norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, 1)

    def forward(self, feats: RouterFeatures) -> torch.Tensor:
        """Divergence logits [batch]."""
        x = torch.cat([feats.hidden, self.embeddings[feats.token], self.topk_proj(feats.topk)], dim=-1)
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.out_norm(x)).squeeze(-1)

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class FoldedRouter:
    """A trained `RouterNet` in the form decoding calls it: the top-token embedding and the top-k projection
    folded into the input layer, and the blocks called through `torch.nn.functional` without module calls.

    Why: at batch 1 on a CPU the router is a couple of dozen tiny ops, each costing its dispatch, not its
    arithmetic. The input layer sees [hidden, E[token], P topk + p], so W [h; e; t] + b equals
    W_h hidden + (E W_e^T)[token] + (W_t P) topk + (b + W_t p): one table lookup and one matmul replace the
    embedding gather, the projection, the concatenation of three parts and the input layer. Likewise each
    layer norm's scale and shift fold into the layer after it, weights are stored transposed for `addmm`
    (`F.linear` multiplies by a transposed view, a slower path at batch 1), and each block's residual is the
    `addmm`'s input. Equal to the network up to float rounding; eval mode only (no dropout)."""

    def __init__(self, net: RouterNet) -> None:
        cfg, h, e = net.cfg, net.cfg.hidden_size, net.cfg.embed_size
        with torch.no_grad():
            w = net.inp.weight  # [width, 2 * hidden + embed]: hidden | embed | projected top-k
            w_h, w_e, w_t = w[:, :h], w[:, h : h + e], w[:, h + e :]
            # [vocab, width]: each token's embedding through the input layer, plus every constant of that layer
            self.token_rows = (net.embeddings @ w_e.T + net.inp.bias + w_t @ net.topk_proj.bias).detach()
            self.w_in = torch.cat([w_h, w_t @ net.topk_proj.weight], dim=1).T.contiguous().detach()  # [h + k, width]
            # per block (w1 [width, hidden'] with the norm's scale in it, b1 with its shift, w2 [hidden', width], b2)
            self.blocks = [_fold_norm(b.norm, b.mlp[0]) + (b.mlp[3].weight.T.contiguous().detach(),
                                                           b.mlp[3].bias.detach()) for b in net.blocks]
            self.head = _fold_norm(net.out_norm, net.head)  # ([width, 1], [1])
        self.eps = [b.norm.eps for b in net.blocks] + [net.out_norm.eps]
        self.width, self.top_k = cfg.width, cfg.top_k

    def __call__(self, hidden: torch.Tensor, token: torch.Tensor, topk: torch.Tensor) -> torch.Tensor:
        """hidden [batch, hidden], token [batch] int64, topk [batch, k] -> divergence logits [batch]."""
        assert hidden.shape[0] == token.shape[0] == topk.shape[0] and topk.shape[1] == self.top_k, (
            f"feature shapes disagree: {tuple(hidden.shape)}, {tuple(token.shape)}, {tuple(topk.shape)}")
        shape = (self.width,)
        x = torch.addmm(self.token_rows[token], torch.cat([hidden, topk], dim=1), self.w_in)  # [batch, width]
        for (w1, b1, w2, b2), eps in zip(self.blocks, self.eps):
            x = torch.addmm(x + b2, F.gelu(torch.addmm(b1, F.layer_norm(x, shape, None, None, eps), w1)), w2)
        w, b = self.head
        return torch.addmm(b, F.layer_norm(x, shape, None, None, self.eps[-1]), w).squeeze(-1)


def _fold_norm(norm: nn.LayerNorm, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """`linear(norm(x))` as `addmm(b, layer_norm(x) without affine, w)`: W (g n + s) + c = (W diag g) n + (W s + c).
    Returns (w [in, out], b [out])."""
    w = (linear.weight * norm.weight).T.contiguous().detach()
    return w, (linear.bias + linear.weight @ norm.bias).detach()
