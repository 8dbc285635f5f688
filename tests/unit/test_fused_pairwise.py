"""The fused pairwise loss + L2 (distrec.nn.fused_pairwise) against autograd through the
reference formulas (losses.pairwise_loss, l2_penalty, frequency_l2): values and gradients."""

import pytest
import torch

from distrec.nn import fused_pairwise, losses

LEVELS, WEIGHTS = (4, 8, 16, 32, 64), (1.0, 0.8, 1.2, 0.5, 1.5)


def reference(u, pos, negs, kind, l2, l2_weights, user_scale, exponent):
    per_sample = losses.pairwise_loss(u, pos, negs, LEVELS, WEIGHTS, kind)
    if user_scale is None:
        reg = l2 * losses.l2_penalty(u, pos, negs, weights=l2_weights)
    else:
        reg = l2 * (losses.frequency_l2(u, user_scale, exponent, l2_weights) + losses.l2_penalty(pos, negs, weights=l2_weights))
    return per_sample, reg


@pytest.mark.parametrize("kind,num_negs", [("mrl", 5), ("mrl", 1), ("bpr", 1), ("bpr", 5)])
@pytest.mark.parametrize("weighted_l2", [False, True])
@pytest.mark.parametrize("frequency", [False, True])
def test_fused_equals_autograd_reference(kind, num_negs, weighted_l2, frequency):
    gen = torch.Generator().manual_seed(7)
    b, d = 37, LEVELS[-1]
    u = torch.randn(b, d, generator=gen, dtype=torch.float64, requires_grad=True)
    rows = torch.randn(b * (1 + num_negs), d, generator=gen, dtype=torch.float64, requires_grad=True)
    l2_weights = losses.level_l2_weights(LEVELS, WEIGHTS).double() if weighted_l2 else None
    scale = torch.rand(b, generator=gen, dtype=torch.float64) + 0.1 if frequency else None
    exponent = 0.5
    coeff = torch.randn(b, generator=gen, dtype=torch.float64)  # an arbitrary upstream gradient per sample

    ref_sample, ref_reg = reference(u, rows[:b], rows[b:].view(b, num_negs, d), kind, 0.3, l2_weights, scale, exponent)
    ref_grads = torch.autograd.grad((ref_sample * coeff).sum() + 2.5 * ref_reg, (u, rows))

    terms = fused_pairwise.terms_of(kind, LEVELS, WEIGHTS, num_negs)
    user_l2 = scale.pow(1 - exponent) if frequency else None
    sample, reg, soft = fused_pairwise.pairwise_with_l2(u, rows, num_negs, terms, 0.3, l2_weights, user_l2)
    grads = torch.autograd.grad((sample * coeff).sum() + 2.5 * reg, (u, rows))

    torch.testing.assert_close(sample, ref_sample, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(reg, ref_reg, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert soft.shape == (b, len(terms)) and not soft.requires_grad


def test_per_level_terms_match_reference_logging():
    """The MRL per-level losses the logs show: the fused terms' column sums."""
    gen = torch.Generator().manual_seed(3)
    u, rows = torch.randn(9, 64, generator=gen), torch.randn(9 * 6, 64, generator=gen)
    logged: list = []
    losses.pairwise_loss(u, rows[:9], rows[9:].view(9, 5, 64), LEVELS, WEIGHTS, "mrl", logged)
    _, _, soft = fused_pairwise.pairwise_with_l2(u, rows, 5, fused_pairwise.terms_of("mrl", LEVELS, WEIGHTS, 5), 0.0)
    torch.testing.assert_close(soft.sum(0), torch.stack(logged))


def test_gradcheck_small():
    gen = torch.Generator().manual_seed(5)
    levels, weights = (2, 4), (1.0, 0.5)
    u = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    rows = torch.randn(3 * 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    terms = fused_pairwise.terms_of("mrl", levels, weights, 2)
    assert torch.autograd.gradcheck(
        lambda a, r: sum(x.sum() for x in fused_pairwise.pairwise_with_l2(a, r, 2, terms, 0.1)[:2]), (u, rows))


def test_bad_negative_count():
    with pytest.raises(ValueError, match="need 1 or 5 negatives"):
        fused_pairwise.terms_of("mrl", LEVELS, WEIGHTS, 3)
