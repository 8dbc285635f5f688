"""Dense towers: multi-interest routers that turn a behaviour sequence into K interest vectors.

`SelfAttentiveRouter` is ComiRec-SA as REMI trains it; `CapsuleRouter` is MIND-style dynamic
routing; `SASRecEncoder` is the one-interest sequential peer (SASRec). All map item embeddings `h [B, L, D]` and a padding mask `[B, L]` (True = real item)
to `(interests [B, K, D], attn [B, K, L])`, where `attn` is the item-to-interest routing matrix
that routing regularisation (`losses.routing_regularization`) acts on.

Matryoshka levels: routers work on full-dimension item embeddings and the caller slices the
output, `interests[..., :d_l]`, per level (see `SelfAttentiveRouter` for why that is exact).

Imports: torch only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis of `logits [B, K, L]` with padded positions (`mask [B, L]`
    False) excluded.

    Padded logits are set to the dtype's most negative finite value rather than -inf, so that a
    row with no real position stays finite (it becomes uniform over the padding) instead of NaN.
    Such a row is a caller error: the data pipeline must give every user at least one history
    item. Checking for it here would cost a device sync per step, so it is not checked. Where a
    row has a real item, the padded weights come out exactly 0 (exp underflows).
    """
    logits = logits.masked_fill(~mask[:, None, :], torch.finfo(logits.dtype).min)
    return F.softmax(logits, dim=-1)


class SelfAttentiveRouter(nn.Module):
    """ComiRec-SA routing: `A = softmax_L(W2 tanh(W1 (H + P)))`, interests `V = A H`.

    Args:
        dim: item embedding size D.
        num_interests: K.
        hidden_factor: W1 maps D -> hidden_factor * D (4 in ComiRec / REMI).
        max_len: longest sequence L the positional table covers.
        positional: add a learnable positional embedding `P [max_len, D]` to the attention
            input. As in the REMI reference code it enters the attention logits only: the
            interests are A H over the item embeddings without position, so interests live in
            the same space as the item table and can score items by inner product. A position
            is the slot index in the padded `[B, L]` tensor; keep one alignment (left or right
            padding) for training and serving.
        dropout: zeroes history-embedding coordinates while training (ComiRec and REMI have
            none; 0 keeps that). It acts before both the attention and the interest sum, so the
            interests stay `A @ h` over one (dropped-out) `h`, and coordinate-wise dropout
            commutes with slicing: the matryoshka identity below holds in training too.

    Matryoshka: the attention is computed from the full-dimension embeddings and the interests
    are linear in H, so `interests[..., :d] == A @ h[..., :d]`: the prefix of an interest vector
    is exactly the interest obtained by routing the sliced embeddings with the same attention.
    Level l therefore uses `interests[..., :d_l]`; no per-level router is needed.

    Initialisation (`reset_parameters`) follows the reference code, which applies
    `kaiming_normal_` to every parameter: W1, W2 get std sqrt(2 / fan_in); the positional table,
    a `[1, n, D]` tensor there, gets std sqrt(2 / (n D)), i.e. it starts close to zero.
    """

    def __init__(
        self,
        dim: int,
        num_interests: int = 4,
        hidden_factor: int = 4,
        max_len: int = 20,
        positional: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim < 1 or num_interests < 1 or hidden_factor < 1 or max_len < 1:
            raise ValueError("dim, num_interests, hidden_factor and max_len must be >= 1")
        self.dropout = nn.Dropout(dropout)
        self.dim = dim
        self.num_interests = num_interests
        self.max_len = max_len
        self.w1 = nn.Linear(dim, hidden_factor * dim, bias=False)
        self.w2 = nn.Linear(hidden_factor * dim, num_interests, bias=False)
        self.pos_emb = nn.Parameter(torch.empty(max_len, dim)) if positional else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.w1.weight)
        nn.init.kaiming_normal_(self.w2.weight)
        if self.pos_emb is not None:
            nn.init.normal_(self.pos_emb, std=math.sqrt(2.0 / (self.max_len * self.dim)))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`h [B, L, D]`, `mask [B, L]` (True = real item) -> `(interests [B, K, D], attn [B, K, L])`.

        `attn` rows sum to 1 over the real positions and are exactly 0 at padded ones.
        """
        seq_len = h.shape[1]
        if self.pos_emb is not None and seq_len > self.max_len:
            raise ValueError(f"sequence length {seq_len} exceeds the router's max_len={self.max_len}")
        mask = mask.bool()
        # Zero the padding so neither the logits nor the interests depend on what the padding
        # id's embedding happens to hold (the reference multiplies by the mask too).
        h = self.dropout(h.masked_fill(~mask[..., None], 0.0))
        x = h if self.pos_emb is None else h + self.pos_emb[:seq_len]
        logits = self.w2(torch.tanh(self.w1(x))).transpose(1, 2)  # [B, K, L]
        attn = _masked_softmax(logits, mask)
        return attn @ h, attn


def squash(s: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Capsule non-linearity over the last axis: `|s|^2 / (1 + |s|^2) * s / |s|`."""
    sq = s.pow(2).sum(dim=-1, keepdim=True)
    return sq / (1.0 + sq) * s / torch.sqrt(sq + eps)


class CapsuleRouter(nn.Module):
    """MIND-style dynamic routing (behaviour-to-interest capsules), ComiRec-DR layout.

    One bilinear map S shared by all capsules (MIND), `u_hat = S h`; routing logits
    `b [B, K, L]`, `c = softmax_L(b)` over real positions, `v = squash(c u_hat)`,
    `b += <v, u_hat>`, `num_iters` times (3). As in the ComiRec / REMI reference the routing
    iterations before the last see `u_hat` detached, so gradients reach S only through the final
    `v = squash(c u_hat)`, and the softmax runs over positions (MIND's paper normalises over
    capsules), so `attn` has the same meaning as `SelfAttentiveRouter`'s.

    Choices that differ from the reference: MIND draws the initial logits from N(0, 1) at every
    forward (needed: with a shared S and b = 0 all capsules would be identical); here they are
    drawn once at construction from the global RNG and kept as a buffer, so a forward is
    deterministic and evaluation repeats. The reference zeroes the padded weights after a softmax
    over all positions; here the softmax is masked, so rows sum to 1 over real positions.

    Matryoshka: unlike the self-attentive router, S mixes dimensions and squash uses the
    full norm, so `interests[..., :d]` is the prefix of the full interest, not a routing of the
    sliced embeddings. That is still what a truncated deployment would serve.
    """

    def __init__(self, dim: int, num_interests: int = 4, max_len: int = 20, num_iters: int = 3) -> None:
        super().__init__()
        if num_iters < 1:
            raise ValueError("num_iters must be >= 1")
        self.dim = dim
        self.num_interests = num_interests
        self.max_len = max_len
        self.num_iters = num_iters
        self.bilinear = nn.Linear(dim, dim, bias=False)
        self.register_buffer("init_logits", torch.randn(num_interests, max_len))
        nn.init.kaiming_normal_(self.bilinear.weight)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`h [B, L, D]`, `mask [B, L]` -> `(interests [B, K, D], attn [B, K, L])`."""
        batch, seq_len, _ = h.shape
        if seq_len > self.max_len:
            raise ValueError(f"sequence length {seq_len} exceeds the router's max_len={self.max_len}")
        mask = mask.bool()
        u_hat = self.bilinear(h.masked_fill(~mask[..., None], 0.0))  # [B, L, D]
        u_iter = u_hat.detach()
        b = self.init_logits[:, :seq_len].expand(batch, -1, -1)
        for _ in range(self.num_iters - 1):
            c = _masked_softmax(b, mask)
            v = squash(c @ u_iter)  # [B, K, D]
            b = b + v @ u_iter.transpose(1, 2)
        c = _masked_softmax(b, mask)
        return squash(c @ u_hat), c


class SASRecEncoder(nn.Module):
    """SASRec (Kang & McAuley, ICDM 2018) as a one-interest router: the peer that teams try
    first for next-item retrieval, in the same seam as the multi-interest routers.

    Item embeddings plus learnable positions, dropout, then `num_blocks` blocks of causal
    self-attention and a point-wise feed-forward net, laid out as the reference PyTorch port
    (pmixer/SASRec.pytorch): `Q = LN(x)`, `x = Q + MHA(Q, x, x)`, `x = x + FFN(LN(x))`, padded
    positions zeroed after every block, a last LayerNorm. The user's vector is the output at
    the last real position, `interests [B, 1, D]`; `attn [B, 1, L]` is the last block's
    attention from that position (head mean), which the routing diagnostics read. One change
    from the port: the feed-forward residual adds to the block's input rather than to its
    normalised input (the usual pre-norm block).

    Windows are left-aligned (`history_windows`' default: real items first, padding after), so
    causal attention never lets a real position see padding, and every query has at least
    column 0 to attend to. Matryoshka: the output mixes dimensions, so `interests[..., :d]` is
    the prefix of the full vector, as for `CapsuleRouter`.
    """

    def __init__(self, dim: int, max_len: int = 20, num_blocks: int = 2, num_heads: int = 1, dropout: float = 0.2) -> None:
        super().__init__()
        if num_blocks < 1 or num_heads < 1 or dim % num_heads:
            raise ValueError(f"need num_blocks >= 1 and num_heads >= 1 dividing dim={dim}")
        self.dim = dim
        self.num_interests = 1
        self.max_len = max_len
        self.pos_emb = nn.Parameter(torch.empty(max_len, dim))
        self.drop = nn.Dropout(dropout)
        self.attn_norms = nn.ModuleList(nn.LayerNorm(dim, eps=1e-8) for _ in range(num_blocks))
        self.attns = nn.ModuleList(nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True) for _ in range(num_blocks))
        self.ffn_norms = nn.ModuleList(nn.LayerNorm(dim, eps=1e-8) for _ in range(num_blocks))
        self.ffns = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim), nn.Dropout(dropout))
            for _ in range(num_blocks)
        )
        self.last_norm = nn.LayerNorm(dim, eps=1e-8)
        nn.init.normal_(self.pos_emb, std=dim**-0.5)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`h [B, L, D]`, `mask [B, L]` (left-aligned) -> `(interests [B, 1, D], attn [B, 1, L])`."""
        batch, seq_len, _ = h.shape
        if seq_len > self.max_len:
            raise ValueError(f"sequence length {seq_len} exceeds the encoder's max_len={self.max_len}")
        keep = mask.bool()[..., None]
        causal = torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool, device=h.device), diagonal=1)
        x = self.drop(h.masked_fill(~keep, 0.0) + self.pos_emb[:seq_len]).masked_fill(~keep, 0.0)
        weights = None
        for attn_norm, attn, ffn_norm, ffn in zip(self.attn_norms, self.attns, self.ffn_norms, self.ffns):
            q = attn_norm(x)
            out, weights = attn(q, x, x, attn_mask=causal, need_weights=True, average_attn_weights=True)
            x = q + out
            x = x + ffn(ffn_norm(x))
            x = x.masked_fill(~keep, 0.0)
        x = self.last_norm(x)
        last = mask.sum(dim=1).clamp(min=1) - 1  # [B] column of the most recent real item
        rows = torch.arange(batch, device=h.device)
        return x[rows, last][:, None, :], weights[rows, last][:, None, :]


def router_spec(kind: str, dim: int, num_interests: int, max_len: int, *, hidden_factor: int, positional: bool,
                num_blocks: int, num_heads: int, dropout: float) -> dict:
    """Everything that builds a router, as plain JSON values: what a run's manifest stores so
    that serving rebuilds the tower from its weights alone (`build_router`). No defaults here:
    they are ModelConfig's, the one place they are written."""
    spec = {"kind": kind, "dim": dim, "num_interests": num_interests, "max_len": max_len}
    if kind == "self_attentive":
        spec.update(hidden_factor=hidden_factor, positional=positional, dropout=dropout)
    elif kind == "sasrec":
        spec.update(num_blocks=num_blocks, num_heads=num_heads, dropout=dropout)
    elif kind != "capsule":
        raise ValueError(f"unknown router kind {kind!r}: self_attentive, capsule or sasrec")
    return spec


def build_router(spec: dict) -> nn.Module:
    """The router a `router_spec` describes, freshly initialised (load its state dict next)."""
    kind = spec["kind"]
    if kind == "self_attentive":
        return SelfAttentiveRouter(spec["dim"], spec["num_interests"], spec["hidden_factor"], spec["max_len"],
                                   spec["positional"], spec["dropout"])
    if kind == "sasrec":
        return SASRecEncoder(spec["dim"], spec["max_len"], spec["num_blocks"], spec["num_heads"], spec["dropout"])
    if kind == "capsule":
        return CapsuleRouter(spec["dim"], spec["num_interests"], spec["max_len"])
    raise ValueError(f"unknown router kind {kind!r}: self_attentive, capsule or sasrec")
