import math

import pytest
import torch

from distrec.nn import losses
from distrec.nn.towers import CapsuleRouter, SASRecEncoder, SelfAttentiveRouter, squash


def _batch(b=4, length=7, d=8, lengths=(7, 3, 5, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, length, d, generator=g)
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    return h, mask


def test_router_shapes_masking_and_normalisation():
    torch.manual_seed(0)
    router = SelfAttentiveRouter(dim=8, num_interests=3, max_len=10)
    h, mask = _batch()
    interests, attn = router(h, mask)
    assert interests.shape == (4, 3, 8) and attn.shape == (4, 3, 7)
    pad = ~mask[:, None, :].expand_as(attn)
    assert (attn[pad] == 0).all()
    torch.testing.assert_close(attn.sum(-1), torch.ones(4, 3))
    torch.testing.assert_close(interests, attn @ h)
    assert (attn[3, :, 0] == 1).all()  # one real item takes all the weight


def test_router_matches_an_independent_per_user_computation():
    torch.manual_seed(1)
    router = SelfAttentiveRouter(dim=8, num_interests=3, max_len=10)
    with torch.no_grad():
        router.pos_emb.normal_()  # make position matter
    h, mask = _batch(seed=1)
    interests, attn = router(h, mask)
    w1, w2, p = router.w1.weight, router.w2.weight, router.pos_emb
    for b in range(4):
        n = int(mask[b].sum())
        x = h[b, :n] + p[:n]  # [n, D]; only real positions
        a = torch.softmax(torch.tanh(x @ w1.T) @ w2.T, dim=0).T  # [K, n]
        torch.testing.assert_close(attn[b, :, :n], a)
        # Interests use the embeddings without position.
        torch.testing.assert_close(interests[b], a @ h[b, :n])


def test_router_ignores_padding_content_and_prefixes_are_level_interests():
    torch.manual_seed(2)
    router = SelfAttentiveRouter(dim=8, num_interests=4, max_len=7)
    h, mask = _batch(seed=2)
    interests, attn = router(h, mask)
    for junk in (1e4, float("nan")):  # even a non-finite padding row must not leak (0 * nan = nan)
        interests2, attn2 = router(h.masked_fill(~mask[..., None], junk), mask)
        torch.testing.assert_close(interests2, interests)
        torch.testing.assert_close(attn2, attn)
    for d in (2, 4):
        torch.testing.assert_close(interests[..., :d], attn @ h[..., :d])


def test_positional_embedding_changes_attention_not_the_value_space():
    torch.manual_seed(3)
    router = SelfAttentiveRouter(dim=8, num_interests=2, max_len=7)
    h, mask = _batch(seed=3)
    _, attn0 = router(h, mask)
    with torch.no_grad():
        router.pos_emb.normal_(std=3.0)
    interests, attn1 = router(h, mask)
    assert not torch.allclose(attn0[0], attn1[0])
    torch.testing.assert_close(interests, attn1 @ h)
    plain = SelfAttentiveRouter(dim=8, num_interests=2, max_len=7, positional=False)
    assert plain.pos_emb is None
    out, a = plain(h, mask)
    torch.testing.assert_close(out, a @ h)


def test_router_gradients_and_length_check():
    torch.manual_seed(4)
    router = SelfAttentiveRouter(dim=8, num_interests=3, max_len=7)
    h, mask = _batch(seed=4)
    h.requires_grad_()
    interests, _ = router(h, mask)
    (interests * torch.randn_like(interests)).sum().backward()
    for p in (router.w1.weight, router.w2.weight, router.pos_emb, h):
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert (h.grad[~mask] == 0).all()
    with pytest.raises(ValueError, match="max_len"):
        router(torch.randn(1, 8, 8), torch.ones(1, 8, dtype=torch.bool))


def test_a_row_without_items_stays_finite():
    router = SelfAttentiveRouter(dim=4, num_interests=2, max_len=3)
    interests, attn = router(torch.randn(1, 3, 4), torch.zeros(1, 3, dtype=torch.bool))
    assert torch.isfinite(attn).all() and torch.isfinite(interests).all()


def test_diagnostics_tell_a_collapsed_router_from_a_uniform_one():
    dim, length, k = 8, 6, 3
    h = -torch.ones(2, length, dim)
    h[0, 2] = 1.0  # one item every interest can lock onto
    h[1, 4] = 1.0
    mask = torch.ones(2, length, dtype=torch.bool)
    collapsing = SelfAttentiveRouter(dim=dim, num_interests=k, max_len=length, positional=False)
    with torch.no_grad():
        collapsing.w1.weight.zero_()
        collapsing.w1.weight[:dim] = 10 * torch.eye(dim)
        collapsing.w2.weight.fill_(1.0)
    _, attn = collapsing(h, mask)
    diag = losses.routing_diagnostics(attn, mask)
    assert diag["max_weight"] > 0.99 and diag["collapsed_frac"] == 1.0 and diag["entropy_norm"] < 0.01
    rr = losses.routing_regularization(attn, mask)
    torch.testing.assert_close(rr, torch.full((2,), k * (1 - 1 / length) ** 2), atol=1e-4, rtol=1e-4)

    uniform = SelfAttentiveRouter(dim=dim, num_interests=k, max_len=length, positional=False)
    with torch.no_grad():
        uniform.w2.weight.zero_()
    _, attn_u = uniform(h, mask)
    diag_u = losses.routing_diagnostics(attn_u, mask)
    assert diag_u["max_weight"] == pytest.approx(1 / length)
    assert diag_u["entropy"] == pytest.approx(math.log(length))
    assert diag_u["entropy_norm"] == pytest.approx(1.0) and diag_u["collapsed_frac"] == 0.0


def test_capsule_router_against_a_per_user_loop():
    torch.manual_seed(5)
    router = CapsuleRouter(dim=8, num_interests=3, max_len=7, num_iters=3)
    h, mask = _batch(seed=5)
    interests, attn = router(h, mask)
    assert interests.shape == (4, 3, 8) and attn.shape == (4, 3, 7)
    assert (attn[~mask[:, None, :].expand_as(attn)] == 0).all()
    torch.testing.assert_close(attn.sum(-1), torch.ones(4, 3))
    s = router.bilinear.weight
    for b in range(4):
        n = int(mask[b].sum())
        u = h[b, :n] @ s.T  # [n, D]
        logits = router.init_logits[:, :n].clone()
        for it in range(3):
            c = torch.softmax(logits, dim=1)  # [K, n]
            v = c @ u
            norm = v.norm(dim=1, keepdim=True)
            v = norm**2 / (1 + norm**2) * v / norm
            if it < 2:
                logits = logits + v @ u.T
        torch.testing.assert_close(attn[b, :, :n], c)
        torch.testing.assert_close(interests[b], v, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(interests, squash(attn @ (h.masked_fill(~mask[..., None], 0) @ s.T)))
    again, _ = router(h, mask)
    assert torch.equal(again, interests)


def test_capsule_router_gradient_reaches_the_bilinear_map():
    torch.manual_seed(6)
    router = CapsuleRouter(dim=8, num_interests=2, max_len=7)
    h, mask = _batch(seed=6)
    interests, attn = router(h, mask)
    (interests.sum() + losses.routing_regularization(attn, mask).sum()).backward()
    assert router.bilinear.weight.grad.abs().sum() > 0


def _sasrec_by_hand(enc: SASRecEncoder, h: torch.Tensor) -> torch.Tensor:
    """One user's unpadded history `h [n, D]` through the encoder's own modules, written out
    without masks or batching: the vector at the last position."""
    n = h.shape[0]
    x = h + enc.pos_emb[:n]
    for attn_norm, attn, ffn_norm, ffn in zip(enc.attn_norms, enc.attns, enc.ffn_norms, enc.ffns):
        q = attn_norm(x)
        heads = attn.num_heads
        wq, wk, wv = attn.in_proj_weight.chunk(3)
        bq, bk, bv = attn.in_proj_bias.chunk(3)
        qh, kh, vh = ((t @ w.T + b).view(n, heads, -1).transpose(0, 1) for t, w, b in ((q, wq, bq), (x, wk, bk), (x, wv, bv)))
        logits = qh @ kh.transpose(1, 2) / math.sqrt(qh.shape[-1])
        logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)  # causal
        out = (logits.softmax(-1) @ vh).transpose(0, 1).reshape(n, -1) @ attn.out_proj.weight.T + attn.out_proj.bias
        x = q + out
        x = x + ffn(ffn_norm(x))
    return enc.last_norm(x)[-1]


@pytest.mark.parametrize("heads", [1, 2])
def test_sasrec_matches_a_per_user_computation_and_ignores_padding(heads):
    torch.manual_seed(0)
    enc = SASRecEncoder(8, max_len=7, num_blocks=2, num_heads=heads, dropout=0.3).eval()
    h, mask = _batch()
    interests, attn = enc(h, mask)
    assert interests.shape == (4, 1, 8) and attn.shape == (4, 1, 7)
    for b, n in enumerate(mask.sum(1).tolist()):
        torch.testing.assert_close(interests[b, 0], _sasrec_by_hand(enc, h[b, :n]), atol=1e-5, rtol=1e-5)
        assert attn[b, 0, n:].abs().sum() == 0  # the last real item attends only to earlier ones
        assert attn[b, 0, :n].sum().item() == pytest.approx(1.0, abs=1e-5)
    junk = h.masked_fill(mask[..., None], 0.0) + 5.0 * torch.randn_like(h).masked_fill(mask[..., None], 0.0)
    torch.testing.assert_close(enc(h.where(mask[..., None], junk), mask)[0], interests)


def test_sasrec_dropout_only_in_training_and_gradients_reach_every_block():
    torch.manual_seed(0)
    enc = SASRecEncoder(8, max_len=7, dropout=0.5)
    h, mask = _batch()
    h.requires_grad_(True)
    a, b = enc(h, mask)[0], enc(h, mask)[0]
    assert not torch.allclose(a, b)  # dropout on
    enc.eval()
    torch.testing.assert_close(enc(h, mask)[0], enc(h, mask)[0])
    enc.train()
    (enc(h, mask)[0] * torch.randn(4, 1, 8)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    with pytest.raises(ValueError, match="max_len"):
        enc(torch.zeros(1, 8, 8), torch.ones(1, 8, dtype=torch.bool))


def test_router_dropout_is_one_dropout_of_the_history_in_training_only():
    torch.manual_seed(3)
    router = SelfAttentiveRouter(dim=8, num_interests=3, max_len=7, dropout=0.5)
    h, mask = _batch(seed=3)
    eval_out = router.eval()(h, mask)
    torch.testing.assert_close(router(h, mask), eval_out)  # eval: no dropout, repeatable
    router.train()
    torch.manual_seed(7)
    interests, attn = router(h, mask)
    assert not torch.allclose(interests, eval_out[0])
    # The same draw applied by hand, then the router without dropout: attention and interests
    # must both come from that one dropped-out history (and its prefixes stay level interests).
    torch.manual_seed(7)
    dropped = torch.nn.functional.dropout(h.masked_fill(~mask[..., None], 0.0), 0.5, training=True)
    ref_interests, ref_attn = router.eval()(dropped, mask)
    torch.testing.assert_close(attn, ref_attn)
    torch.testing.assert_close(interests, ref_interests)
    torch.testing.assert_close(interests[..., :4], attn @ dropped[..., :4])
