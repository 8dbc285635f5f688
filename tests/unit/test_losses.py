import math

import pytest
import torch

from distrec.nn import losses


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_prefix_scores_are_nested_dot_products():
    g = torch.Generator().manual_seed(0)
    u, items = torch.randn(3, 8, generator=g), torch.randn(3, 2, 8, generator=g)
    got = losses.prefix_scores(u, items, (2, 4, 8))
    for b in range(3):
        for j in range(2):
            for li, d in enumerate((2, 4, 8)):
                assert got[b, j, li].item() == pytest.approx(float(u[b, :d] @ items[b, j, :d]), abs=1e-5)


def test_mrl_loss_with_one_negative_per_level_by_hand():
    u = torch.tensor([[1.0, 2.0, 0.5, -1.0]])
    pos = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    negs = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 2.0, 0.0]]])  # j_1 for level 2, j_2 for level 4
    # level 2: s_pos = 0.5 + 1 = 1.5, s_neg(j_1) = 1.0; level 4: s_pos = 1.5 + 0.5 - 1 = 1.0, s_neg(j_2) = 2 + 1 = 3
    expected = 0.25 * softplus(1.0 - 1.5) + 0.75 * softplus(3.0 - 1.0)
    got = losses.pairwise_loss(u, pos, negs, (2, 4), (0.25, 0.75), "mrl")
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_mrl_loss_with_a_shared_negative_uses_it_at_every_level():
    u = torch.tensor([[1.0, 2.0, 0.5, -1.0]])
    pos = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    neg = torch.tensor([[[0.0, 1.0, 2.0, 0.0]]])
    # level 2: s_neg = 2; level 4: s_neg = 3
    expected = 0.5 * softplus(2.0 - 1.5) + 0.5 * softplus(3.0 - 1.0)
    got = losses.pairwise_loss(u, pos, neg, (2, 4), (0.5, 0.5), "mrl")
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_bpr_uses_the_full_dimension_only():
    u = torch.tensor([[1.0, 2.0, 0.5, -1.0]])
    pos = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    negs = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 2.0, 0.0]]])
    one = losses.pairwise_loss(u, pos, negs[:, :1], (2, 4), (0.5, 0.5), "bpr")
    assert one.item() == pytest.approx(softplus(1.0 - 1.0), rel=1e-6)
    many = losses.pairwise_loss(u, pos, negs, (2, 4), (0.25, 0.75), "bpr")  # BPR-M: weighted over MNS negatives
    assert many.item() == pytest.approx(0.25 * softplus(1.0 - 1.0) + 0.75 * softplus(3.0 - 1.0), rel=1e-6)


def test_wrong_number_of_negatives_is_an_error():
    u = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="negatives"):
        losses.pairwise_loss(u, u, torch.zeros(1, 3, 4), (2, 4), (0.5, 0.5), "mrl")


def test_loss_gradient_matches_autograd_of_direct_formula():
    g = torch.Generator().manual_seed(1)
    u = torch.randn(5, 8, generator=g, requires_grad=True)
    pos = torch.randn(5, 8, generator=g)
    negs = torch.randn(5, 3, 8, generator=g)
    levels, w = (2, 4, 8), (0.2, 0.3, 0.5)
    got = losses.pairwise_loss(u, pos, negs, levels, w, "mrl").sum()
    (grad,) = torch.autograd.grad(got, u)
    u2 = u.detach().clone().requires_grad_(True)
    direct = sum(
        w[l] * torch.nn.functional.softplus((u2[:, :d] * negs[:, l, :d]).sum(1) - (u2[:, :d] * pos[:, :d]).sum(1))
        for l, d in enumerate(levels)
    ).sum()
    (grad2,) = torch.autograd.grad(direct, u2)
    torch.testing.assert_close(grad, grad2)


def test_l2_weights_follow_the_embeddings_device():
    # The model keeps its per-coordinate weights on the CPU; on a GPU the embeddings are on
    # cuda, which once failed the first training step (seen on an H200, 2026-11-27). The meta
    # device stands in for cuda here: mixing it with a CPU tensor fails the same way.
    weights = losses.level_l2_weights((2, 4), (1.0, 1.0))
    emb = torch.ones(3, 4, device="meta")
    assert losses.l2_penalty(emb, weights=weights).device.type == "meta"
    cpu = torch.ones(3, 4)
    assert losses.l2_penalty(cpu, weights=weights).item() == pytest.approx(
        (cpu.pow(2) * weights).sum().item() / 2)


def test_per_level_terms_weight_up_to_the_loss_and_leave_it_unchanged():
    """Each loss's per-level batch sums (logged as loss/train/dim<d>) are its unweighted level
    terms: weighted by the level weights they add up to the loss, which is bitwise the same
    with or without asking for them."""
    g = torch.Generator().manual_seed(1)
    levels, weights = (2, 4, 8), (0.2, 0.3, 0.5)
    u, pos = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    negs3, shared = torch.randn(5, 3, 8, generator=g), torch.randn(7, 8, generator=g)
    interests = torch.randn(5, 2, 8, generator=g)
    catalogue, pos_id = torch.randn(6, 8, generator=g), torch.tensor([0, 3, 5, 1, 2])
    cases = {
        "mrl": lambda **k: losses.pairwise_loss(u, pos, negs3, levels, weights, "mrl", **k),
        "softmax": lambda **k: losses.matryoshka_softmax(u, pos, shared, levels, weights, **k),
        "catalogue": lambda **k: losses.matryoshka_softmax(u, None, catalogue, levels, weights, pos_index=pos_id, **k),
        "sampled_ihn": lambda **k: losses.matryoshka_sampled_softmax(interests, pos, shared, levels, weights, beta=1.0, **k),
        "catalogue_interests": lambda **k: losses.matryoshka_catalogue_softmax(interests, catalogue, pos_id, levels, weights, **k),
    }
    for name, loss in cases.items():
        per_level: list = []
        with_terms, without = loss(per_level=per_level), loss()
        assert torch.equal(with_terms, without), name
        assert len(per_level) == len(levels), name
        weighted = sum(w * float(t) for w, t in zip(weights, per_level))
        assert weighted == pytest.approx(float(without.sum()), rel=1e-5), name
        assert all(float(t) > 0 for t in per_level), name  # softplus / cross-entropy terms are positive
