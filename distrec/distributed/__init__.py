"""Process groups, devices, sharding plans and collectives: the only package that touches
torch.distributed set-up, launcher environment variables and devices.

    env.py          DistEnv, init / shutdown, ONE_PROCESS
    sharding.py     shard(): the planner and DistributedModelParallel
    collectives.py  all_reduce_sum / max, all_gather_rows / padded, barrier

Callers use the names re-exported here (`distributed.init`, `distributed.all_reduce_sum`).
Imports: torch, torchrec, distrec.config.
"""

from distrec.distributed.collectives import all_gather_padded, all_gather_rows, all_reduce_max, all_reduce_sum, barrier
from distrec.distributed.env import DistEnv, ONE_PROCESS, init, shutdown
from distrec.distributed.sharding import shard

__all__ = ["DistEnv", "ONE_PROCESS", "all_gather_padded", "all_gather_rows", "all_reduce_max", "all_reduce_sum",
           "barrier", "init", "shard", "shutdown"]
