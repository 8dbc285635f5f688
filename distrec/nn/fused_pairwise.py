"""The pairwise matryoshka losses (MRL, BPR) and their L2 in one autograd function with a
hand-written backward: the MF step's loss arithmetic in a few large passes.

`losses.pairwise_loss` + `losses.l2_penalty` / `frequency_l2` are the reference (and the tests'
oracle, tests/unit/test_fused_pairwise.py). Written with autograd they cost ~50 elementwise passes
over `[B, D]` and `[B, J, D]` tensors per step (cumsum, its flipped backward, slice and index
backwards that zero-fill whole tensors, pow backwards); at batch 32,768 that was most of a CPU
step (docs/benchmarks.md, "Where the step's time goes"). Here each score is one slice product,
and the backward writes each gradient once, straight into the lookup's row layout, so no
`[positives; negatives]` split has to be stitched back. Imports: torch only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_SOFTPLUS_THRESHOLD = 20.0  # F.softplus's default: above it softplus(x) = x


def terms_of(kind: str, levels: tuple[int, ...], weights: tuple[float, ...], num_negs: int
             ) -> list[tuple[int, int, float]]:
    """The loss's terms as (negative index, prefix length, weight): per-sample loss =
    sum_t w_t softplus(<u[:d_t], neg_{n_t}[:d_t]> - <u[:d_t], pos[:d_t]>), as
    `losses.pairwise_loss` defines each kind (MRL-M / MRL-D / BPR / BPR-M)."""
    if num_negs not in (1, len(levels)):
        raise ValueError(f"need 1 or {len(levels)} negatives per sample, got {num_negs}")
    if kind == "mrl":
        return [(l if num_negs > 1 else 0, d, w) for l, (d, w) in enumerate(zip(levels, weights))]
    if kind == "bpr":
        full = levels[-1]
        return [(l, full, w) for l, w in enumerate(weights)] if num_negs > 1 else [(0, full, 1.0)]
    raise ValueError(f"unknown loss {kind!r}")


def pairwise_with_l2(u: torch.Tensor, rows: torch.Tensor, num_negs: int, terms: list[tuple[int, int, float]],
                     l2: float, l2_weights: torch.Tensor | None = None, user_l2_scale: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-sample loss `[B]`, L2 scalar, each term's softplus `[B, T]` detached).

    u: `[B, D]` users; rows: `[B + B * J, D]` the positives then each sample's J negatives (the
    one lookup the step makes); terms: `terms_of(...)`. The L2 scalar is
    l2 / 2 * (sum_b s_b ||u_b||_w^2 + ||rows||_w^2), s = `user_l2_scale` (1 when None; the
    frequency-aware user L2 passes scale^(1 - exponent)), w = `l2_weights` per coordinate.
    """
    return _PairwiseL2.apply(u, rows, num_negs, tuple(terms), float(l2), l2_weights, user_l2_scale)


class _PairwiseL2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, rows, num_negs, terms, l2, l2_weights, user_l2_scale):
        b, dim = u.shape
        pos, negs = rows[:b], rows[b:].view(b, num_negs, dim)
        prefixes = sorted({d for _, d, _ in terms})
        # <u[:d], pos[:d]> for every prefix d the terms use: one product, one cumulative sum.
        cum_pos = torch.cumsum(u * pos, dim=1)
        s_pos = {d: cum_pos[:, d - 1] for d in prefixes}
        margins = torch.stack([(u[:, :d] * negs[:, n, :d]).sum(dim=1) - s_pos[d] for n, d, _ in terms], dim=1)  # [B, T]
        soft = F.softplus(margins)
        w = torch.tensor([wt for _, _, wt in terms], dtype=u.dtype, device=u.device)
        per_sample = soft @ w
        w_col = _coordinate_weights(l2_weights, dim, u)
        sq_u = (u * u) @ w_col  # [B]
        if user_l2_scale is not None:
            sq_u = sq_u * user_l2_scale
        reg = l2 / 2 * (sq_u.sum() + ((rows * rows) @ w_col).sum())
        ctx.save_for_backward(u, rows, margins, w, w_col, user_l2_scale)
        ctx.num_negs, ctx.terms, ctx.l2 = num_negs, terms, l2
        ctx.mark_non_differentiable(soft)
        return per_sample, reg, soft

    @staticmethod
    def backward(ctx, grad_sample, grad_reg, _grad_soft):
        u, rows, margins, w, w_col, user_scale = ctx.saved_tensors
        b, dim = u.shape
        num_negs, terms = ctx.num_negs, ctx.terms
        # d loss / d margin_t: softplus' = sigmoid, and 1 above softplus's linear threshold (20), as F.softplus's own.
        slope = torch.where(margins > _SOFTPLUS_THRESHOLD, 1.0, torch.sigmoid(margins))
        g = slope * w * grad_sample[:, None]  # [B, T]
        # L2 first: it touches every coordinate, so the loss terms can be added in place after.
        l2_rate = ctx.l2 * grad_reg * w_col  # [D]
        user_rate = l2_rate if user_scale is None else l2_rate * user_scale[:, None]
        grad_u = u * user_rate
        grad_rows = rows * l2_rate
        pos, negs = rows[:b], rows[b:].view(b, num_negs, dim)
        grad_pos, grad_negs = grad_rows[:b], grad_rows[b:].view(b, num_negs, dim)
        # Positives: each term pulls <u[:d_t], pos[:d_t]> with -g_t, i.e. a per-coordinate rate
        # sum over terms whose prefix holds it: g @ cover, cover[t, j] = 1 if j < d_t.
        cover = (torch.arange(dim, device=u.device)[None, :] < torch.tensor([d for _, d, _ in terms], device=u.device)[:, None]).to(u.dtype)
        pos_rate = g @ cover  # [B, D]
        grad_u.addcmul_(pos_rate, pos, value=-1.0)
        grad_pos.addcmul_(pos_rate, u, value=-1.0)
        # Negatives: a negative several terms share (MRL-D: every level on one) gets their
        # summed rate in one pass; a negative of one term (MRL-M) only its prefix's slice.
        for n in range(num_negs):
            mine = [t for t, (tn, _, _) in enumerate(terms) if tn == n]
            if not mine:
                continue
            if len(mine) == 1:
                t, d = mine[0], terms[mine[0]][1]
                grad_u[:, :d].addcmul_(negs[:, n, :d], g[:, t : t + 1])
                grad_negs[:, n, :d].addcmul_(u[:, :d], g[:, t : t + 1])
            else:
                rate = g[:, mine] @ cover[mine]
                grad_u.addcmul_(rate, negs[:, n])
                grad_negs[:, n].addcmul_(rate, u)
        return grad_u, grad_rows, None, None, None, None, None


def _coordinate_weights(l2_weights: torch.Tensor | None, dim: int, like: torch.Tensor) -> torch.Tensor:
    if l2_weights is None:
        return like.new_ones(dim)
    return l2_weights.to(like.device, like.dtype)
