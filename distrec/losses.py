"""Pairwise losses over matryoshka prefix scores: BPR and the MRL (level-weighted) loss.

All functions return per-sample losses `[B]`; the caller normalises by the global batch size
so that gradients of sharded tables (summed over ranks) equal a one-process step.
Imports: torch only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prefix_scores(u: torch.Tensor, items: torch.Tensor, levels: tuple[int, ...]) -> torch.Tensor:
    """Scores at every level: `u [B, D]`, `items [B, J, D]` -> `[B, J, L]`, s_l = <u[:d_l], i[:d_l]>.

    One cumulative sum over the elementwise product gives every prefix at once, since the
    levels are nested slices of the same vectors.
    """
    cum = torch.cumsum(u.unsqueeze(1) * items, dim=-1)
    return cum[..., [d - 1 for d in levels]]


def pairwise_loss(
    u: torch.Tensor,
    pos: torch.Tensor,
    negs: torch.Tensor,
    levels: tuple[int, ...],
    weights: tuple[float, ...],
    kind: str,
) -> torch.Tensor:
    """Per-sample loss `[B]` for `u [B, D]`, `pos [B, D]`, `negs [B, J, D]` with J in {1, L}.

    kind="mrl": sum_l w_l * softplus(s_l(u, j_l) - s_l(u, i)), where j_l = negs[:, l] when
    J = L (MRL-M: one negative per level) and negs[:, 0] at every level when J = 1 (MRL-D).
    kind="bpr": full-dimension BPR, softplus(s_L(u, j) - s_L(u, i)); with J = L negatives
    (BPR-M) the terms are averaged with the level weights.
    """
    num_negs = negs.shape[1]
    if num_negs not in (1, len(levels)):
        raise ValueError(f"need 1 or {len(levels)} negatives per sample, got {num_negs}")
    w = torch.tensor(weights, dtype=u.dtype, device=u.device)
    if kind == "mrl":
        s_pos = prefix_scores(u, pos.unsqueeze(1), levels)[:, 0, :]  # [B, L]
        s_neg = prefix_scores(u, negs, levels)  # [B, J, L]
        s_neg = torch.diagonal(s_neg, dim1=1, dim2=2) if num_negs > 1 else s_neg[:, 0, :]  # [B, L]
        return (F.softplus(s_neg - s_pos) * w).sum(dim=1)
    if kind == "bpr":
        s_pos = (u * pos).sum(dim=-1, keepdim=True)  # [B, 1]
        s_neg = torch.einsum("bd,bjd->bj", u, negs)  # [B, J]
        terms = F.softplus(s_neg - s_pos)
        return (terms * w).sum(dim=1) if num_negs > 1 else terms[:, 0]
    raise ValueError(f"unknown loss {kind!r}")


def l2_penalty(*tables: torch.Tensor) -> torch.Tensor:
    """Half the squared norm of the batch's embeddings, summed (scaled by the caller)."""
    return sum(t.pow(2).sum() for t in tables) / 2
