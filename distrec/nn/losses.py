"""Losses over matryoshka prefix scores: BPR and the MRL (level-weighted) loss; and for
multi-interest models (REMI), sampled softmax with IHN, per level, and routing regularisation.

All functions return per-sample losses `[B]`; the caller normalises by the global batch size
so that gradients of sharded tables (summed over ranks) equal a one-process step.
Imports: torch only.
"""

from __future__ import annotations

import math

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
    per_level: list | None = None,
) -> torch.Tensor:
    """Per-sample loss `[B]` for `u [B, D]`, `pos [B, D]`, `negs [B, J, D]` with J in {1, L}.
    `per_level` (mrl only): a list that receives each level's unweighted loss summed over the
    batch, detached (for logging; the returned loss is unchanged).

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
        terms = F.softplus(s_neg - s_pos)
        if per_level is not None:
            per_level.extend(terms.detach().sum(dim=0))
        return (terms * w).sum(dim=1)
    if kind == "bpr":
        s_pos = (u * pos).sum(dim=-1, keepdim=True)  # [B, 1]
        s_neg = torch.einsum("bd,bjd->bj", u, negs)  # [B, J]
        terms = F.softplus(s_neg - s_pos)
        return (terms * w).sum(dim=1) if num_negs > 1 else terms[:, 0]
    raise ValueError(f"unknown loss {kind!r}")




def gramian_mask(levels: tuple[int, ...], weights: tuple[float, ...]) -> torch.Tensor:
    """`[D, D]` weights M with sum_l w_l <u[:d_l], G[:d_l, :d_l] u[:d_l]> = u^T (M * G) u:
    entry (j, k) is the sum of w_l over the levels whose prefix holds both coordinates
    (d_l > max(j, k)). One product with M * G replaces a product per level."""
    cover = _level_cover(levels, weights)
    j = torch.arange(levels[-1])
    return cover[torch.maximum(j[:, None], j[None, :])].float()


def gramian_user_term(u: torch.Tensor, gram: torch.Tensor, mask: torch.Tensor, num_items: int) -> torch.Tensor:
    """The whole-catalogue term per user `[B]` with the item Gramian `gram [D, D]` held fixed:
    u^T (M * G) u / I, the whole-catalogue term's value and its gradient for the users. Pass G detached:
    the items' share of the gradient is `gramian_item_term`'s."""
    return ((u @ (mask * gram)) * u).sum(dim=1) / num_items


def gramian_item_term(u: torch.Tensor, scale: torch.Tensor | None, gram: torch.Tensor, mask: torch.Tensor,
                      num_items: int) -> torch.Tensor:
    """The items' share of the batch's whole-catalogue term, a scalar: sum_b scale_b u_b^T (M * G) u_b / I
    with the users held fixed, written as sum(M * S * G) / I over S = sum_b scale_b u_b u_b^T, so
    its gradient for every item row (2 V (M * S) / I) costs one D x D matrix, whatever the batch.

    With `gramian_user_term` on G detached, the two gradients sum to the term's (tests/reference.py: gramian_penalty, the per-level formula)."""
    u = u.detach()
    s = (u * scale[:, None]).T @ u if scale is not None else u.T @ u
    return (mask * s * gram).sum() / num_items


def l2_penalty(*tables: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Half the squared norm of the batch's embeddings, summed (scaled by the caller).

    weights `[D]`: a weight per coordinate (`level_l2_weights`), i.e. sum_l w_l ||x[:d_l]||^2 / 2.
    """
    if weights is None:
        return sum(t.pow(2).sum() for t in tables) / 2
    return sum((t.pow(2) * weights.to(t.device, t.dtype)).sum() for t in tables) / 2


def frequency_l2(rows: torch.Tensor, scale: torch.Tensor, exponent: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Frequency-aware L2 of a batch's rows `[..., D]`, summed (scaled by the caller):
    sum_r scale_r^(1 - exponent) ||x_r||_w^2 / 2, with `scale [...]` = 1 / the row's training
    pairs n_r and ||x||_w^2 = sum_j w_j x_j^2.

    A user sits in the loss once per training pair, n_u times an epoch, so summed over an epoch
    it carries l2 * n_u^exponent * ||u||_w^2 / 2: the frequency scaling of iALS++
    (lambda * |I_u|^nu). exponent 1 is the plain per-occurrence L2.
    """
    sq = rows.pow(2)
    if weights is not None:
        sq = sq * weights.to(rows.device, rows.dtype)
    return (scale.pow(1.0 - exponent) * sq.sum(dim=-1)).sum() / 2


def level_l2_weights(levels: tuple[int, ...], weights: tuple[float, ...]) -> torch.Tensor:
    """Per-coordinate L2 weight `[D]` that regularises each level as much as its loss weighs:
    coordinate j gets sum of w_l over the levels whose prefix holds it (d_l > j), divided by
    the sum of all w_l, so the first block has weight 1 and the last block w_L / sum(w).

    Why: a coordinate of block b receives loss gradient only from levels l >= b, so with a
    uniform L2 the last block (only level L, weight 1/L) is regularised L times harder per unit
    of loss than the first block (all L levels). Its shrinkage then beats its signal and the
    block dies (test metrics at d = 32 and d = 64 were identical). Weighting the penalty like
    the loss, sum_l w_l (loss_l + l2 ||e[:d_l]||^2), gives every block the same trade-off.
    """
    return (_level_cover(levels, weights) / sum(weights)).float()


def _level_cover(levels: tuple[int, ...], weights: tuple[float, ...]) -> torch.Tensor:
    """`[D]` float64: coordinate j's sum of w_l over the levels whose prefix holds it (d_l > j)."""
    cover = torch.zeros(levels[-1], dtype=torch.float64)
    for d, wl in zip(levels, weights):
        cover[:d] += wl
    return cover


# --- Multi-interest losses (REMI): interest selection, sampled softmax with IHN, routing
# regularisation. Same convention as above: per-sample values [B], the caller normalises.


def select_interest(interests: torch.Tensor, pos: torch.Tensor, d: int) -> torch.Tensor:
    """Index `[B]` of the interest closest to the positive on the first d dims:
    `argmax_k <v_k[:d], pos[:d]>` for `interests [B, K, D]`, `pos [B, D]`.

    A hard choice, as in ComiRec / REMI: no gradient flows through it, only through the chosen
    interest. Ties go to the lowest index.
    """
    with torch.no_grad():
        scores = torch.einsum("bkd,bd->bk", interests[..., :d], pos[..., :d])
        return scores.argmax(dim=1)


def sampled_softmax_from_scores(
    s_pos: torch.Tensor,
    s_neg: torch.Tensor,
    beta: float = 0.0,
    neg_log_q: torch.Tensor | None = None,
    pos_log_q: torch.Tensor | None = None,
    hit_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample sampled softmax with IHN, from scores: `s_pos [B]`, `s_neg [B, N]` -> `[B]`.

    loss = -log(e^{s+} / (e^{s+} + Neg)), with IHN importance weights `imp_j = e^{beta s_j}`
    and `Neg = sum_j imp_j e^{s_j} / mean_j imp_j`, computed in log space:
    `log Neg = logsumexp_j((beta + 1) s_j) - logsumexp_j(beta s_j) + log N`.
    beta = 0 is plain sampled softmax, `log Neg = logsumexp_j s_j`. Gradients flow through the
    importance weights (no detach), as in the reference code.

    neg_log_q `[N]` or `[B, N]`: log sampling probability of each negative; the logQ correction
    replaces `e^{s_j}` by `e^{s_j - log q_j}`. The importance weights stay on the raw scores
    (hardness is the model's score, not the corrected one), so beta = 0 is exactly the
    logQ-corrected sampled softmax. (The reference code applies logQ only when beta = 0 and
    drops it otherwise; with uniform sampling, the paper's setting, logQ is constant.)
    pos_log_q `[B]`: also subtract log q of the positive, as TensorFlow's
    `sampled_softmax_loss` and the paper's Eq. 8 do; with uniform q and both corrections the
    loss equals the uncorrected one.
    hit_mask `[B, N]` bool: True where negative j is row b's positive (an accidental hit); it is
    left out of that row's sum and of the mean of the importance weights (N becomes the number
    kept). A row left with no negative has Neg = 0 and loss 0.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if pos_log_q is not None:
        s_pos = s_pos - pos_log_q
    logits = s_neg if neg_log_q is None else s_neg - neg_log_q
    if beta == 0 and hit_mask is None:
        log_neg = torch.logsumexp(logits, dim=1)
    else:
        hard = beta * s_neg
        top = logits + hard
        if hit_mask is None:
            log_n = math.log(s_neg.shape[1])
        else:
            num_kept = (~hit_mask).sum(dim=1)
            has_neg = num_kept > 0
            # A row whose every negative is a hit is computed unmasked and discarded below;
            # masking all of it would give (-inf) - (-inf) = NaN, and NaN gradients through where().
            drop = hit_mask & has_neg[:, None]
            top = top.masked_fill(drop, -math.inf)
            hard = hard.masked_fill(drop, -math.inf)
            log_n = torch.log(num_kept.clamp(min=1).to(s_neg.dtype))
        log_neg = torch.logsumexp(top, dim=1) - torch.logsumexp(hard, dim=1) + log_n
        if hit_mask is not None:
            log_neg = torch.where(has_neg, log_neg, torch.full_like(log_neg, -math.inf))
    # softplus(log Neg - s+) = log(1 + Neg e^{-s+}) = -log(e^{s+} / (e^{s+} + Neg)).
    return F.softplus(log_neg - s_pos)




def _hits(pos_id: torch.Tensor | None, neg_ids: torch.Tensor | None) -> torch.Tensor | None:
    if (pos_id is None) != (neg_ids is None):
        raise ValueError("accidental-hit removal needs both pos_id and neg_ids")
    return None if pos_id is None else neg_ids[None, :] == pos_id[:, None]


def matryoshka_sampled_softmax(
    interests: torch.Tensor,
    pos: torch.Tensor,
    negs: torch.Tensor,
    levels: tuple[int, ...],
    weights: tuple[float, ...],
    beta: float | tuple[float, ...] = 0.0,
    neg_log_q: torch.Tensor | None = None,
    pos_id: torch.Tensor | None = None,
    neg_ids: torch.Tensor | None = None,
    pos_log_q: torch.Tensor | None = None,
    per_level: list | None = None,
) -> torch.Tensor:
    """Per-sample `sum_l w_l * SSM_l` `[B]` for `interests [B, K, D]`, `pos [B, D]`, `negs [N, D]`
    (`per_level`: receives each level's batch sum of SSM_l, detached, as in `pairwise_loss`).

    At level l everything is sliced to the first d_l dims: the interest is chosen by
    `select_interest(..., d_l)` (so it may differ between levels), and the IHN weights use the
    level-l scores, so each level gets negatives that are hard at its own granularity. `beta`
    is one value for all levels or one per level. The same shared negatives serve every level.
    """
    if len(levels) != len(weights):
        raise ValueError(f"{len(levels)} levels but {len(weights)} weights")
    betas = (beta,) * len(levels) if isinstance(beta, (int, float)) else tuple(beta)
    if len(betas) != len(levels):
        raise ValueError(f"{len(levels)} levels but {len(betas)} betas")
    if list(levels) != sorted(set(levels)) or levels[0] < 1 or levels[-1] > interests.shape[-1]:
        raise ValueError(f"levels must increase strictly within [1, {interests.shape[-1]}], got {levels}")
    hits = _hits(pos_id, neg_ids)
    rows = torch.arange(interests.shape[0], device=interests.device)
    total = interests.new_zeros(interests.shape[0])
    for d, w, b in zip(levels, weights, betas):
        user = interests[rows, select_interest(interests, pos, d), :d]  # [B, d]
        s_pos = (user * pos[:, :d]).sum(dim=-1)
        s_neg = user @ negs[:, :d].T
        term = sampled_softmax_from_scores(s_pos, s_neg, b, neg_log_q, pos_log_q, hits)
        if per_level is not None:
            per_level.append(term.detach().sum())
        total = total + w * term
    return total


def matryoshka_softmax(
    u: torch.Tensor,
    pos: torch.Tensor | None,
    negs: torch.Tensor,
    levels: tuple[int, ...],
    weights: tuple[float, ...],
    hit_mask: torch.Tensor | None = None,
    pos_index: torch.Tensor | None = None,
    per_level: list | None = None,
) -> torch.Tensor:
    """Per-sample `sum_l w_l * CE_l` `[B]`: at level l, the softmax cross-entropy of the positive
    against negatives shared by the batch, all scored on the first d_l dims (`per_level`:
    receives each level's batch sum of CE_l, detached, as in `pairwise_loss`).

    u `[B, D]`, pos `[B, D]`, negs `[N, D]`; hit_mask `[B, N]` bool drops negative j from row b
    (where it is row b's positive). Equals `matryoshka_sampled_softmax` with one interest and
    beta = 0, but builds the prefix scores incrementally (all levels cost one full-dimension
    product): ~10x faster on CPU.

    pos_index `[B]`: the negatives are the whole catalogue and row b's positive is negs[pos_index[b]];
    then the loss is the exact full softmax, computed by the fused cross-entropy kernel over the
    catalogue's scores (`pos` and `hit_mask` are not needed).
    """
    total = u.new_zeros(u.shape[0])
    s_pos, s_neg, prev = None, None, 0
    for d, w in zip(levels, weights):
        n_blk = u[:, prev:d] @ negs[:, prev:d].T  # [B, N]
        s_neg = n_blk if s_neg is None else s_neg + n_blk
        if pos_index is not None:
            term = F.cross_entropy(s_neg, pos_index, reduction="none")
        else:
            p_blk = (u[:, prev:d] * pos[:, prev:d]).sum(dim=1)  # [B]
            s_pos = p_blk if s_pos is None else s_pos + p_blk
            kept = s_neg if hit_mask is None else s_neg.masked_fill(hit_mask, -math.inf)
            # -log(e^{s+} / (e^{s+} + sum_j e^{s_j})) = softplus(logsumexp_j s_j - s+)
            term = F.softplus(torch.logsumexp(kept, dim=1) - s_pos)
        if per_level is not None:
            per_level.append(term.detach().sum())
        total = total + w * term
        prev = d
    return total


def matryoshka_catalogue_softmax(
    interests: torch.Tensor,
    catalogue: torch.Tensor,
    pos_id: torch.Tensor,
    levels: tuple[int, ...],
    weights: tuple[float, ...],
    per_level: list | None = None,
) -> torch.Tensor:
    """Per-sample `sum_l w_l * CE_l` `[B]`, the exact full softmax over every item, for
    `interests [B, K, D]`, `catalogue [I, D]` (every item's row, in id order) and the positives'
    ids `pos_id [B]`.

    Equals `matryoshka_sampled_softmax` with beta = 0 and the catalogue as negatives, the
    positive dropped as a hit, but through the fused cross-entropy. With one interest the levels
    share one incremental full-dimension product (`matryoshka_softmax`); with K the chosen
    interest differs per level, so each level costs its own product.
    """
    if interests.shape[1] == 1:
        return matryoshka_softmax(interests[:, 0], None, catalogue, levels, weights, pos_index=pos_id, per_level=per_level)
    rows = torch.arange(interests.shape[0], device=interests.device)
    pos = catalogue[pos_id]
    total = interests.new_zeros(interests.shape[0])
    for d, w in zip(levels, weights):
        user = interests[rows, select_interest(interests, pos, d), :d]
        term = F.cross_entropy(user @ catalogue[:, :d].T, pos_id, reduction="none")
        if per_level is not None:
            per_level.append(term.detach().sum())
        total = total + w * term
    return total


def routing_regularization(attn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REMI's routing regularisation per user `[B]`, for `attn [B, K, L]`, `mask [B, L]`.

    Per user, with A the K x n routing matrix over the user's n real positions and
    `C = (A - mean_n A)(A - mean_n A)^T` (K x K), the value is `||diag(C)||^2 =
    sum_k (sum_l (A_kl - mean_l A_kl)^2)^2` (paper Eq. 13, unnormalised). It is 0 for uniform
    routing and at most K (1 - 1/n)^2, reached when every interest attends to one item.

    Masking: padded positions take no part, neither in the mean nor in the sum. The reference
    code averages and sums over all L slots, padding (weight 0) included, so the two agree
    exactly only on full-length sequences; on short ones the reference also penalises the gap
    between the real weights and the padding zeros.

    Scaling: the reference divides C by the embedding size d (so the value by d^2) and SUMS over
    the batch, while its softmax loss is a batch mean; its lambda = 100 is for that scaling.
    Here the caller takes the batch mean like every other loss, so lambda * mean_b(this) equals
    the reference's term when lambda = lambda_ref * B / d^2 (tests/reference.py: `reference_rr_weight`; 3.125 for
    lambda_ref = 100, B = 128, d = 64). That keeps the regulariser's weight independent of the
    batch size, which the reference's sum does not.
    """
    m = mask[:, None, :].to(attn.dtype)  # [B, 1, L]
    n = m.sum(dim=-1, keepdim=True).clamp(min=1)
    mean = (attn * m).sum(dim=-1, keepdim=True) / n
    var = ((attn - mean) * m).pow(2).sum(dim=-1)  # [B, K] = diag(C)
    return var.pow(2).sum(dim=-1)




def routing_diagnostics(attn: torch.Tensor, mask: torch.Tensor, collapse_at: float = 0.9) -> dict:
    """Routing-collapse monitors for `attn [B, K, L]`, `mask [B, L]`, as Python floats.

    max_weight: mean over users and interests of the largest routing weight (1 = collapsed onto
    one item, 1/n = uniform). entropy: mean routing entropy in nats over real positions.
    entropy_norm: entropy / log(n), over users with n >= 2 real items (0 = collapsed,
    1 = uniform), comparable across sequence lengths. collapsed_frac: share of (user, interest)
    pairs whose largest weight exceeds `collapse_at`. The `_per_interest` lists are [K] means.
    Returns Python floats (a device sync): call it at logging intervals, not every step.
    """
    with torch.no_grad():
        m = mask.bool()
        a = attn.masked_fill(~m[:, None, :], 0.0).float()
        max_w = a.amax(dim=-1)  # [B, K]
        ent = -torch.special.xlogy(a, a).sum(dim=-1)  # [B, K]
        n = m.sum(dim=1)
        long_rows = n >= 2
        ent_norm = ent[long_rows] / torch.log(n[long_rows].float())[:, None]
        return {
            "max_weight": max_w.mean().item(),
            "entropy": ent.mean().item(),
            "entropy_norm": ent_norm.mean().item() if long_rows.any() else float("nan"),
            "collapsed_frac": (max_w > collapse_at).float().mean().item(),
            "max_weight_per_interest": max_w.mean(dim=0).tolist(),
            "entropy_per_interest": ent.mean(dim=0).tolist(),
        }
