"""Both tasks' batches move to a device whole: every tensor field, nothing else touched."""

import torch

from distrec.tasks.mrl4rec import Batch
from distrec.tasks.multi_interest import SeqBatch


def test_both_batch_kinds_move_every_tensor_and_keep_the_rest():
    meta = torch.device("meta")  # stands in for cuda: a field left behind would stay on the CPU
    mf = Batch(users=torch.arange(3), pos=torch.arange(3), cands=torch.zeros(3, 0, 0), global_size=3,
               shared=torch.arange(4), catalogue=True).to(meta)
    assert isinstance(mf, Batch) and mf.catalogue and mf.global_size == 3 and mf.user_scale is None
    assert all(t.device == meta for t in (mf.users, mf.pos, mf.cands, mf.shared))
    seq = SeqBatch(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool), torch.arange(2),
                   torch.arange(5), torch.zeros(5), 2, world_size=2, catalogue=True).to(meta)
    assert isinstance(seq, SeqBatch) and seq.catalogue and seq.world_size == 2
    assert all(t.device == meta for t in (seq.hist, seq.mask, seq.pos, seq.negs, seq.neg_log_q))


def test_slices_cover_each_global_batch_once_in_order_and_resume_at_any_batch():
    from distrec.data.batches import epoch_batches
    import numpy as np

    for world in (1, 2, 3):
        parts = [list(epoch_batches(103, 10, 7, 2, rank, world)) for rank in range(world)]
        for b in range(10):
            pieces = [parts[r][b] for r in range(world)]
            assert all(p.index == b and p.global_size == 10 for p in pieces)
            rows = np.concatenate([p.rows for p in pieces])
            np.testing.assert_array_equal(rows, list(epoch_batches(103, 10, 7, 2, 0, 1))[b].rows)
            firsts = [p.first for p in pieces]  # each slice knows where it starts in the epoch
            assert firsts == [b * 10 + sum(len(q.rows) for q in pieces[:r]) for r in range(world)]
        tail = list(epoch_batches(103, 10, 7, 2, world - 1, world, start=6))
        assert [p.index for p in tail] == list(range(6, 10))
        for p, q in zip(tail, parts[world - 1][6:]):
            np.testing.assert_array_equal(p.rows, q.rows)
