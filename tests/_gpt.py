"""A small GPT in plain torch for front-end tests (>= 100 parameter tensors, deterministic)."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True, bias=False)  # a key bias has a zero gradient: its
        # Adam update is the sign of rounding noise, which makes any two implementations diverge
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """``layers`` blocks of 10 tensors each, plus embeddings, final norm and head (5 tensors)."""

    def __init__(self, vocab: int = 50, d: int = 16, heads: int = 2, layers: int = 10, ctx: int = 16) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


def make(seed: int = 0, **kw: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(**kw)


def batch(step: int, vocab: int = 50, ctx: int = 16, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randint(0, vocab, (n, ctx + 1), generator=g)
    return x[:, :-1], x[:, 1:]


def loss_of(model: GPT, step: int) -> torch.Tensor:
    x, y = batch(step, model.tok.num_embeddings, model.pos.num_embeddings)
    logits = model(x)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
