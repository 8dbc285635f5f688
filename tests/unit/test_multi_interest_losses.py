import math

import pytest
import torch
import torch.nn.functional as F

from distrec.nn import losses
from distrec.nn.towers import SelfAttentiveRouter
from tests import reference


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ihn_closed_form(s_pos: float, s_neg: list[float], beta: float, log_q=None, pos_log_q: float = 0.0) -> float:
    """The paper's non-log formula, scalar by scalar in float64: imp_j = e^{beta s_j},
    Neg = sum_j imp_j e^{s_j - log q_j} / mean_j imp_j, loss = -log(e^{s+} / (e^{s+} + Neg))."""
    log_q = [0.0] * len(s_neg) if log_q is None else log_q
    imp = [math.exp(beta * s) for s in s_neg]
    neg = sum(i * math.exp(s - lq) for i, s, lq in zip(imp, s_neg, log_q)) / (sum(imp) / len(imp))
    p = math.exp(s_pos - pos_log_q)
    return -math.log(p / (p + neg))


def _case(b=5, n=7, d=6, seed=0, dtype=torch.float64, scale=0.5):
    g = _gen(seed)
    user = (torch.randn(b, d, generator=g) * scale).to(dtype)
    pos = (torch.randn(b, d, generator=g) * scale).to(dtype)
    negs = (torch.randn(n, d, generator=g) * scale).to(dtype)
    return user, pos, negs


@pytest.mark.parametrize("beta", [0.0, 0.1, 1.0, 4.0, 10.0])
def test_ihn_matches_the_non_log_closed_form(beta):
    user, pos, negs = _case()
    got = reference.sampled_softmax(user, pos, negs, beta=beta)
    assert got.shape == (5,)
    for b in range(5):
        s_pos = float(user[b] @ pos[b])
        s_neg = [float(user[b] @ negs[j]) for j in range(7)]
        assert got[b].item() == pytest.approx(ihn_closed_form(s_pos, s_neg, beta), rel=1e-10)


def test_ihn_weights_hard_negatives_more():
    # Same negatives, larger beta -> the high-scoring negative dominates -> larger loss here.
    s_pos = torch.tensor([0.0])
    s_neg = torch.tensor([[2.0, -1.0, -1.0, -1.0]])
    l0, l1, l4 = (losses.sampled_softmax_from_scores(s_pos, s_neg, b).item() for b in (0.0, 1.0, 4.0))
    assert l0 < l1 < l4


def test_beta_zero_is_cross_entropy_with_gradients():
    leaves = [t.float().requires_grad_() for t in _case(b=6, n=9, d=8, seed=1, scale=1.0)]
    user, pos, negs = leaves
    got = reference.sampled_softmax(user, pos, negs, beta=0.0)
    grads = torch.autograd.grad(got.sum(), leaves)

    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    u, p, n = ref_leaves
    logits = torch.cat([(u * p).sum(-1, keepdim=True), u @ n.T], dim=1)
    ref = F.cross_entropy(logits, torch.zeros(6, dtype=torch.long), reduction="none")
    ref_grads = torch.autograd.grad(ref.sum(), ref_leaves)

    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, atol=1e-6, rtol=1e-6)


def test_beta_zero_through_the_general_path_is_still_plain_softmax():
    # An all-False hit mask forces the IHN formula (lse((b+1)s) - lse(b s) + log N) at beta = 0.
    user, pos, negs = (t.float() for t in _case(seed=2, scale=1.0))
    ids = torch.arange(7) + 100
    got = reference.sampled_softmax(user, pos, negs, 0.0, pos_id=torch.zeros(5, dtype=torch.long), neg_ids=ids)
    plain = reference.sampled_softmax(user, pos, negs, 0.0)
    torch.testing.assert_close(got, plain, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 1.0, 10.0])
def test_large_scores_are_stable(beta):
    # Shifting every score by c leaves the loss unchanged (imp scales out, Neg and e^{s+} scale
    # by e^c), so a loss at |s| ~ 1e3 can be checked against the small-score closed form.
    s_pos = torch.tensor([0.3, -0.2], dtype=torch.float32)
    s_neg = torch.tensor([[0.1, -0.5, 0.7], [1.2, 0.0, -0.3]], dtype=torch.float32)
    for c in (1000.0, -1000.0):
        got = losses.sampled_softmax_from_scores(s_pos + c, s_neg + c, beta)
        for b in range(2):
            want = ihn_closed_form(float(s_pos[b]), s_neg[b].tolist(), beta)
            assert got[b].item() == pytest.approx(want, rel=1e-3, abs=1e-3)

    # Embeddings whose scores are ~ +-1e3 to 1e4: finite loss and gradients.
    g = _gen(3)
    user = (torch.randn(4, 8, generator=g) * 12).requires_grad_()
    pos = (torch.randn(4, 8, generator=g) * 12).requires_grad_()
    negs = (torch.randn(50, 8, generator=g) * 12).requires_grad_()
    loss = reference.sampled_softmax(user, pos, negs, beta=beta)
    assert (user @ negs.T).abs().max() > 500
    loss.sum().backward()
    assert torch.isfinite(loss).all()
    for t in (user, pos, negs):
        assert torch.isfinite(t.grad).all()


def test_accidental_hits_are_dropped_from_sum_and_importance_mean():
    user, pos, negs = _case(b=4, n=6, seed=4)
    pos_id = torch.tensor([3, 8, 5, 9])
    neg_ids = torch.tensor([3, 5, 3, 7, 8, 1])  # row 0 hits twice, row 1 once, row 2 once, row 3 never
    for beta in (0.0, 2.0):
        got = reference.sampled_softmax(user, pos, negs, beta, pos_id=pos_id, neg_ids=neg_ids)
        for b in range(4):
            kept = [j for j in range(6) if neg_ids[j] != pos_id[b]]
            s_neg = [float(user[b] @ negs[j]) for j in kept]
            want = ihn_closed_form(float(user[b] @ pos[b]), s_neg, beta)
            assert got[b].item() == pytest.approx(want, rel=1e-10)
        unmasked = reference.sampled_softmax(user, pos, negs, beta)
        assert unmasked[3].item() == pytest.approx(got[3].item(), rel=1e-12)
        assert unmasked[0].item() != pytest.approx(got[0].item(), rel=1e-6)


def test_a_row_whose_negatives_are_all_hits_has_zero_loss_and_finite_grads():
    user, pos, negs = (t.float().requires_grad_() for t in _case(b=2, n=3, seed=5))
    loss = reference.sampled_softmax(
        user, pos, negs, 4.0, pos_id=torch.tensor([7, 1]), neg_ids=torch.tensor([7, 7, 7])
    )
    assert loss[0].item() == 0.0 and loss[1].item() > 0
    loss.sum().backward()
    for t in (user, pos, negs):
        assert torch.isfinite(t.grad).all()
    assert user.grad[0].abs().max() == 0


def test_logq_correction_against_direct_computation():
    user, pos, negs = _case(b=3, n=5, seed=6)
    log_q = torch.log(torch.tensor([0.4, 0.1, 0.05, 0.3, 0.15], dtype=torch.float64))
    pos_log_q = torch.log(torch.tensor([0.2, 0.01, 0.5], dtype=torch.float64))
    for beta in (0.0, 1.5):
        neg_only = reference.sampled_softmax(user, pos, negs, beta, neg_log_q=log_q)
        both = reference.sampled_softmax(user, pos, negs, beta, neg_log_q=log_q, pos_log_q=pos_log_q)
        for b in range(3):
            s_pos = float(user[b] @ pos[b])
            s_neg = [float(user[b] @ negs[j]) for j in range(5)]
            assert neg_only[b].item() == pytest.approx(ihn_closed_form(s_pos, s_neg, beta, log_q.tolist()), rel=1e-10)
            assert both[b].item() == pytest.approx(
                ihn_closed_form(s_pos, s_neg, beta, log_q.tolist(), float(pos_log_q[b])), rel=1e-10
            )


def test_uniform_logq_on_both_sides_is_a_no_op():
    user, pos, negs = _case(b=3, n=5, seed=7)
    lq = math.log(1 / 1000)
    for beta in (0.0, 3.0):
        corrected = reference.sampled_softmax(
            user, pos, negs, beta, neg_log_q=torch.full((5,), lq, dtype=torch.float64),
            pos_log_q=torch.full((3,), lq, dtype=torch.float64),
        )
        torch.testing.assert_close(corrected, reference.sampled_softmax(user, pos, negs, beta))


def test_select_interest_uses_the_level_slice():
    interests = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0]]])
    pos = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    assert losses.select_interest(interests, pos, 2).tolist() == [0]  # scores 1 vs 0
    assert losses.select_interest(interests, pos, 4).tolist() == [1]  # scores 1 vs 5


def _brute_force_mrl_ssm(interests, pos, negs, levels, weights, betas):
    out = []
    for b in range(interests.shape[0]):
        total = 0.0
        for d, w, beta in zip(levels, weights, betas):
            scores = [float(interests[b, k, :d] @ pos[b, :d]) for k in range(interests.shape[1])]
            k = max(range(len(scores)), key=lambda i: scores[i])
            v = interests[b, k, :d]
            s_neg = [float(v @ negs[j, :d]) for j in range(negs.shape[0])]
            total += w * ihn_closed_form(float(v @ pos[b, :d]), s_neg, beta)
        out.append(total)
    return out


def test_matryoshka_sampled_softmax_against_brute_force():
    g = _gen(8)
    interests = torch.randn(16, 4, 8, generator=g, dtype=torch.float64)
    pos = torch.randn(16, 8, generator=g, dtype=torch.float64)
    negs = torch.randn(11, 8, generator=g, dtype=torch.float64)
    levels, weights = (2, 4, 8), (0.5, 0.3, 0.2)
    chosen = torch.stack([losses.select_interest(interests, pos, d) for d in levels], dim=1)
    assert (chosen[:, 0] != chosen[:, 2]).any(), "the case must make the choice differ between levels"
    for beta in (0.0, 2.0, (0.5, 1.0, 4.0)):
        betas = beta if isinstance(beta, tuple) else (beta,) * 3
        got = losses.matryoshka_sampled_softmax(interests, pos, negs, levels, weights, beta)
        want = _brute_force_mrl_ssm(interests, pos, negs, levels, weights, betas)
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-10, atol=1e-12)


def test_matryoshka_gradient_reaches_only_the_chosen_interests():
    g = _gen(9)
    interests = torch.randn(16, 4, 8, generator=g).requires_grad_()
    pos, negs = torch.randn(16, 8, generator=g), torch.randn(11, 8, generator=g)
    levels = (2, 8)
    losses.matryoshka_sampled_softmax(interests, pos, negs, levels, (0.5, 0.5), 1.0).sum().backward()
    chosen = torch.zeros(16, 4, dtype=torch.bool)
    for d in levels:
        chosen[torch.arange(16), losses.select_interest(interests, pos, d)] = True
    grad_norm = interests.grad.abs().sum(-1)
    assert (grad_norm[~chosen] == 0).all() and (grad_norm[chosen] > 0).all()
    # A level-2-only choice sees gradient on its first 2 coordinates only.
    only_coarse = chosen.clone()
    only_coarse[torch.arange(16), losses.select_interest(interests, pos, 8)] = False
    assert only_coarse.any()
    assert (interests.grad[only_coarse][:, 2:] == 0).all()


def test_matryoshka_rejects_bad_levels():
    x = torch.zeros(2, 3, 8)
    with pytest.raises(ValueError, match="levels"):
        losses.matryoshka_sampled_softmax(x, x[:, 0], x[0], (4, 2), (0.5, 0.5))
    with pytest.raises(ValueError, match="weights"):
        losses.matryoshka_sampled_softmax(x, x[:, 0], x[0], (2, 4), (1.0,))


def _random_attn(b, k, length, lengths, seed):
    g = _gen(seed)
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    logits = torch.randn(b, k, length, generator=g, dtype=torch.float64) * 2
    attn = torch.softmax(logits.masked_fill(~mask[:, None, :], -1e30), dim=-1)
    return attn, mask


def test_routing_regularization_against_a_per_user_loop():
    attn, mask = _random_attn(5, 3, 10, [10, 4, 1, 7, 2], seed=10)
    got = losses.routing_regularization(attn, mask)
    for b in range(5):
        a = attn[b][:, mask[b]]  # K x n over real positions
        centred = a - a.mean(dim=1, keepdim=True)
        c = centred @ centred.T
        assert got[b].item() == pytest.approx(float((torch.diagonal(c) ** 2).sum()), rel=1e-10, abs=1e-15)
    assert got[2].item() == 0.0  # one real item: nothing to spread


def test_routing_regularization_extremes():
    length, k = 6, 4
    mask = torch.tensor([[True] * 4 + [False] * 2])
    uniform = torch.zeros(1, k, length)
    uniform[..., :4] = 0.25
    assert losses.routing_regularization(uniform, mask).item() == pytest.approx(0.0, abs=1e-12)
    collapsed = torch.zeros(1, k, length)
    collapsed[0, torch.arange(k), torch.tensor([0, 1, 1, 3])] = 1.0
    assert losses.routing_regularization(collapsed, mask).item() == pytest.approx(k * (1 - 1 / 4) ** 2)


def test_reference_scaling_on_full_sequences():
    # The REMI reference: mean over all slots, C / d, squared norm of the diagonal, batch SUM.
    attn, mask = _random_attn(8, 4, 12, [12] * 8, seed=11)
    dim, lam_ref = 64, 100.0
    centred = attn - attn.mean(dim=2, keepdim=True)
    c = torch.bmm(centred, centred.transpose(1, 2)) / dim
    ref = lam_ref * (torch.norm(torch.diagonal(c, dim1=-2, dim2=-1), dim=1) ** 2).sum()
    ours = reference.reference_rr_weight(lam_ref, batch_size=8, dim=dim) * losses.routing_regularization(attn, mask).mean()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10)
    assert reference.reference_rr_weight() == pytest.approx(3.125)


def test_routing_regularization_gradient_reaches_the_router():
    torch.manual_seed(12)
    router = SelfAttentiveRouter(dim=8, num_interests=3, max_len=6)
    h = torch.randn(4, 6, 8)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 3, 5, 2])[:, None]
    _, attn = router(h, mask)
    losses.routing_regularization(attn, mask).mean().backward()
    for p in (router.w1.weight, router.w2.weight, router.pos_emb):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_routing_diagnostics_by_hand():
    mask = torch.tensor([[True, True, False], [True, True, True]])
    attn = torch.tensor(
        [
            [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]],
            [[1 / 3, 1 / 3, 1 / 3], [0.95, 0.05, 0.0]],
        ]
    )
    d = losses.routing_diagnostics(attn, mask)
    ent_095 = -(0.95 * math.log(0.95) + 0.05 * math.log(0.05))
    assert d["max_weight"] == pytest.approx((1.0 + 0.5 + 1 / 3 + 0.95) / 4)
    assert d["entropy"] == pytest.approx((0.0 + math.log(2) + math.log(3) + ent_095) / 4)
    assert d["entropy_norm"] == pytest.approx((0.0 + 1.0 + 1.0 + ent_095 / math.log(3)) / 4)
    assert d["collapsed_frac"] == pytest.approx(0.5)
    assert d["max_weight_per_interest"] == pytest.approx([(1 + 1 / 3) / 2, (0.5 + 0.95) / 2])
    assert d["entropy_per_interest"] == pytest.approx([math.log(3) / 2, (math.log(2) + ent_095) / 2])


def test_the_whole_catalogue_with_hits_dropped_is_the_exact_softmax():
    # What model.router=sasrec with train.num_sampled >= the item count trains: every item as a
    # negative, the row's own positive dropped as an accidental hit.
    g = torch.Generator().manual_seed(0)
    num_items, levels, weights = 30, (2, 4), (0.25, 0.75)
    items = torch.randn(num_items, 4, generator=g)
    users = torch.randn(6, 1, 4, generator=g)
    pos_id = torch.randint(0, num_items, (6,), generator=g)
    got = losses.matryoshka_sampled_softmax(users, items[pos_id], items, levels, weights,
                                            pos_id=pos_id, neg_ids=torch.arange(num_items))
    want = sum(w * torch.nn.functional.cross_entropy(users[:, 0, :d] @ items[:, :d].T, pos_id, reduction="none")
               for d, w in zip(levels, weights))
    torch.testing.assert_close(got, want)
    for k in (1, 3):  # the fused path, one vector (incremental prefixes) and K interests
        interests = torch.randn(6, k, 4, generator=g)
        fast = losses.matryoshka_catalogue_softmax(interests, items, pos_id, levels, weights)
        general = losses.matryoshka_sampled_softmax(interests, items[pos_id], items, levels, weights,
                                                    pos_id=pos_id, neg_ids=torch.arange(num_items))
        torch.testing.assert_close(fast, general)
