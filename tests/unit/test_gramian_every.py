"""The whole-catalogue (Gramian) term split into a users' and an items' share
(train.gramian_every): the two gradients must sum to reference.gramian_penalty's, the item Gramian
read from the shards must equal the one a lookup gives, and an epoch's item updates must weigh
as much as updating every step."""

import numpy as np
import pytest
import torch

from distrec import config
from distrec.data import load_dataset
from distrec.distributed import ONE_PROCESS
from distrec.nn import losses
from distrec.tasks import mrl4rec
from tests import reference

LEVELS, WEIGHTS = (2, 4, 8), (0.2, 0.3, 0.5)


def test_the_split_terms_give_the_per_level_penalty_and_its_gradients():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    items = torch.randn(11, 8, generator=g, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    mask = losses.gramian_mask(LEVELS, WEIGHTS).double()  # float32 weights: agreement to ~1e-7

    explicit = (reference.gramian_penalty(u, items, LEVELS, WEIGHTS) * scale).sum()
    du, dv = torch.autograd.grad(explicit, (u, items))

    gram = items.T @ items
    per_user = losses.gramian_user_term(u, gram.detach(), mask, 11) * scale
    item = losses.gramian_item_term(u, scale, gram, mask, 11)
    assert per_user.sum().item() == pytest.approx(explicit.item(), rel=1e-6)
    assert item.item() == pytest.approx(explicit.item(), rel=1e-6)  # the same value, the items' gradient
    got_u, = torch.autograd.grad(per_user.sum(), u, retain_graph=True)
    got_v, = torch.autograd.grad(item, items)
    torch.testing.assert_close(got_u, du, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(got_v, dv, rtol=1e-6, atol=1e-9)


def _model_grads(item_weight: float):
    from distrec.nn.embeddings import Tables
    from distrec.tasks.mrl4rec import Batch, MatryoshkaMF

    overrides = ["model.dim=8", "model.levels=[2,4,8]", "train.sampler=uniform", "train.gramian=3", "train.l2=0"]
    cfg = config.load(None, overrides)
    tables = Tables(5, 7, cfg.model, device=torch.device("cpu"))
    tables.seed(1)
    model = MatryoshkaMF(tables, cfg.model, cfg.train, ONE_PROCESS)
    batch = Batch(users=torch.tensor([0, 1, 1, 4]), pos=torch.tensor([2, 2, 5, 6]),
                  cands=torch.tensor([3, 0, 6, 1]).view(4, 1, 1), global_size=4,
                  user_scale=torch.tensor([1.0, 0.5, 0.5, 1 / 3]), gramian_item_weight=item_weight)
    loss, stats = model(batch)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    return grads, stats["loss_sum"].item(), model, tables


def test_a_users_only_step_reads_the_gramian_from_the_shards_and_leaves_the_items_to_the_updating_steps():
    every, loss_every, model, tables = _model_grads(1.0)
    users_only, loss_users_only, _, _ = _model_grads(0.0)
    assert loss_users_only == pytest.approx(loss_every, rel=1e-6)  # the same term, the same value
    user_keys = [k for k in every if "user" in k]
    item_keys = [k for k in every if "item" in k]
    assert user_keys and item_keys
    for k in user_keys:  # the users' gradient is exact on every step
        torch.testing.assert_close(users_only[k], every[k], rtol=1e-5, atol=1e-7)
    # The items' gradients differ by exactly the Gramian term's item share: 2 V (M * S) / I,
    # times train.gramian, over the batch of 4.
    v = tables.items(torch.arange(7)).detach()
    u = tables.users(torch.tensor([0, 1, 1, 4])).detach()
    scale = torch.tensor([1.0, 0.5, 0.5, 1 / 3])
    mask = losses.gramian_mask(model.levels, model.weights)
    s = (u * scale[:, None]).T @ u
    share = 3 * 2 * v @ (mask * s) / 7 / 4
    (k,) = item_keys
    torch.testing.assert_close(every[k] - users_only[k], share.view_as(every[k]), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model._shard_gram(), v.T @ v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("every", [1, 3, 4])
def test_an_epochs_item_updates_weigh_as_much_as_every_step(every):
    cfg = config.load(None, ["data.synthetic.preset=tiny", "train.gramian=1", "train.batch_size=64",
                             f"train.gramian_every={every}"])
    work = mrl4rec.from_data(cfg, ONE_PROCESS, load_dataset(cfg.data))
    weights = np.array([b.gramian_item_weight for b in work.batches(1, 0)])
    assert len(weights) > every
    assert weights.sum() == pytest.approx(len(weights))
    assert np.all((weights > 0) == (np.arange(len(weights)) % every == 0))


def test_gramian_every_must_be_a_positive_step_count():
    with pytest.raises(config.ConfigError, match="train.gramian_every"):
        config.load(None, ["train.gramian=1", "train.gramian_every=0"])
