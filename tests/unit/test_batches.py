"""Both tasks' batches move to a device whole: every tensor field, nothing else touched."""

import torch

from distrec.model import Batch
from distrec.multi_interest import SeqBatch


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
