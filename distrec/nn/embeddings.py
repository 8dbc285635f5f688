"""User and item embedding tables as TorchRec collections, built on the meta device.

One collection per entity (users, items), each with one table, so that user and item lookups
can have different batch sizes. `lookup()` turns a flat id tensor into a KeyedJaggedTensor of
bags of one id and returns `[N, D]` rows, whichever collection type (bag or sequence) and
however the table is sharded. `Tables.seed` initialises the tables the same for any world size.
Imports: numpy, torch, torchrec, distrec.nn.counters, distrec.config.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch
from torch import nn
from torchrec import optim as trec_optim
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from distrec.config import ModelConfig, TrainConfig
from distrec.nn import counters

USER, ITEM = "user", "item"
TABLE_SHARDING_FIELDS = {USER: "user_sharding", ITEM: "item_sharding"}

# name -> (optimizer class the fused kernel is picked from, extra kwargs)
_OPTIMIZERS = {
    "row_wise_adagrad": trec_optim.RowWiseAdagrad,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
}


def _xavier_uniform(weight: torch.Tensor, bound: float) -> torch.Tensor:
    # The bound comes from the whole table's shape: a shard must not compute its own fan-in.
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def make_collection(name: str, num_rows: int, cfg: ModelConfig, device: torch.device) -> nn.Module:
    bound = math.sqrt(6.0 / (num_rows + cfg.dim))
    init = functools.partial(_xavier_uniform, bound=bound)
    if cfg.collection == "bag":
        table = EmbeddingBagConfig(
            name=name, embedding_dim=cfg.dim, num_embeddings=num_rows, feature_names=[name],
            pooling=PoolingType.SUM, init_fn=init,
        )
        return EmbeddingBagCollection(tables=[table], device=device)
    table = EmbeddingConfig(name=name, embedding_dim=cfg.dim, num_embeddings=num_rows, feature_names=[name], init_fn=init)
    return EmbeddingCollection(tables=[table], device=device)


class Tables(nn.Module):
    """The user and item tables; `users(ids)` / `items(ids)` return `[N, D]` rows.

    num_users=0: no user table (multi-interest models describe users by their histories).
    """

    def __init__(self, num_users: int, num_items: int, cfg: ModelConfig, device: torch.device = torch.device("meta")):
        super().__init__()
        num_users, num_items = int(num_users), int(num_items)  # numpy ints break ShardedTensor sizes
        self.num_users = num_users
        self.num_items = num_items
        self.dim = cfg.dim
        self.user_table = make_collection(USER, num_users, cfg, device) if num_users else None
        self.item_table = make_collection(ITEM, num_items, cfg, device)

    @torch.no_grad()
    def seed(self, seed: int, rows_per_chunk: int = 1 << 16) -> None:
        """Initialise every table, after sharding, with uniform(-b, b), b = sqrt(6 / (rows + D)),
        entry (r, c) drawn from counter r * D + c of the table's stream: every rank writes its
        own blocks, and the tables come out the same for any world size or sharding type."""
        for index, (collection, key, num_rows) in enumerate(
            ((self.user_table, USER, self.num_users), (self.item_table, ITEM, self.num_items))
        ):
            if collection is None:
                continue
            stream, bound = counters.stream(seed, counters.Stream.TABLE_INIT, index), math.sqrt(6.0 / (num_rows + self.dim))
            for shard in local_shards(collection, key)[0]:
                nr, nc = shard.weight.shape
                cols = np.arange(shard.first_col, shard.first_col + nc)
                for r0 in range(0, nr, rows_per_chunk):
                    rows = np.arange(shard.first_row + r0, shard.first_row + min(r0 + rows_per_chunk, nr))
                    u = counters.random(stream, rows[:, None] * self.dim + cols)
                    block = shard.weight[r0 : r0 + len(rows)]
                    block.copy_(torch.from_numpy((2.0 * u - 1.0) * bound).to(block.dtype))

    def users(self, ids: torch.Tensor) -> torch.Tensor:
        return lookup(self.user_table, USER, ids)

    def items(self, ids: torch.Tensor) -> torch.Tensor:
        return lookup(self.item_table, ITEM, ids)

    def local_items(self) -> tuple[list["LocalShard"], bool]:
        """The item table's blocks held by this rank and whether that is the whole table on
        every rank (see `local_shards`). Taken once, after sharding: the views stay live."""
        if not hasattr(self, "_local_items"):
            self._local_items = local_shards(self.item_table, ITEM)
        return self._local_items


@dataclasses.dataclass(frozen=True)
class LocalShard:
    """A block of a table held by this rank: rows from `first_row`, columns from `first_col`."""

    first_row: int
    first_col: int
    weight: torch.Tensor  # [rows, cols], a view of the trained weights: updates show through


def local_shards(collection: nn.Module, key: str) -> tuple[list[LocalShard], bool]:
    """(this rank's blocks of the collection's table, whether every rank holds all of it).

    A sharded table's state dict is a ShardedTensor whose local shards are views of the fused
    kernel's weights (fbgemm updates them in place, so the views stay current); a replicated
    (data-parallel) or unsharded table is a plain tensor, the same on every rank."""
    weight = next(v for k, v in collection.state_dict().items() if k.endswith(f"{key}.weight"))
    if hasattr(weight, "local_shards"):
        return [LocalShard(int(sh.metadata.shard_offsets[0]), int(sh.metadata.shard_offsets[1]), sh.tensor.detach())
                for sh in weight.local_shards()], False
    return [LocalShard(0, 0, weight.detach())], True


def lookup(collection: nn.Module, key: str, ids: torch.Tensor) -> torch.Tensor:
    """Rows for a flat id tensor `[N]` -> `[N, D]` through a (possibly sharded) collection."""
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=[key], values=ids.reshape(-1), lengths=torch.ones(ids.numel(), dtype=torch.int32, device=ids.device)
    )
    rows = collection(kjt)[key]
    if isinstance(rows, JaggedTensor):  # EmbeddingCollection: unpooled, one row per id
        return rows.values()
    return rows  # EmbeddingBagCollection: bags of one id, pooled


def _optimizer_kwargs(cfg: TrainConfig) -> dict:
    kwargs: dict = {"lr": cfg.lr * cfg.lr_scale}  # train.lr is the rate at train.lr_reference_batch
    if cfg.optimizer in ("row_wise_adagrad", "adagrad", "adam"):
        kwargs["eps"] = cfg.eps
    return kwargs


def materialised(rows) -> torch.Tensor:
    """A sharded collection's output as a plain tensor. TorchRec returns a lazy awaitable that
    torch ops wait on by themselves, but a custom `autograd.Function` does not see it as a
    tensor (its output would silently not require grad), so such callers wait first."""
    return rows.wait() if hasattr(rows, "wait") else rows


def lookup_padded(lookup, ids: torch.Tensor) -> torch.Tensor:
    """`lookup(ids)`, also for an empty `ids`: a rank may have nothing to look up but must
    still join the collective lookup of a sharded table, so it asks for row 0 and drops it."""
    if ids.numel() == 0:
        return lookup(torch.zeros(1, dtype=torch.long, device=ids.device))[:0]
    return lookup(ids)


def attach_fused_optimizer(tables: Tables, train_cfg: TrainConfig, model_cfg: ModelConfig) -> None:
    """Register the optimizer that fbgemm fuses into the embedding backward pass.

    Must run before sharding. Data-parallel tables are replicated dense tensors that the fused
    kernel does not own: `dense_optimizer` steps them instead. On CPU fbgemm has exact SGD,
    Adagrad and row-wise Adagrad but no Adam (GPU only); `config.check_world` says so first.
    """
    for name, collection in ((USER, tables.user_table), (ITEM, tables.item_table)):
        if collection is not None and getattr(model_cfg, TABLE_SHARDING_FIELDS[name]) != "data_parallel":
            apply_optimizer_in_backward(_OPTIMIZERS[train_cfg.optimizer], collection.parameters(), _optimizer_kwargs(train_cfg))


_DENSE_OPTIMIZERS = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}


def dense_optimizers(model: nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """Optimizers for the parameters outside the fused kernels, stepped explicitly.

    Data-parallel embedding tables get the embedding optimizer; dense towers (the router) get
    `train.dense_optimizer` (Adam by default: the CPU restriction is fbgemm's, not torch's).
    """
    tables, towers = [], []
    for name, p in in_backward_optimizer_filter(model.named_parameters()):
        (tables if "tables." in name else towers).append(p)
    out = []
    if tables:
        out.append(_OPTIMIZERS[cfg.optimizer](tables, **_optimizer_kwargs(cfg)))
    if towers:
        out.append(_DENSE_OPTIMIZERS[cfg.dense_optimizer](towers, lr=cfg.dense_lr * cfg.lr_scale))
    return out
