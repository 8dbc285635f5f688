"""Model building blocks, free of any training loop: the sharded embedding tables (embeddings),
dense towers and routers (towers), losses, negative samplers and the counter-based random
streams (counters). Imports: torch, torchrec, distrec.config, distrec.data.

Nothing is imported here, so that serving can import `distrec.nn.towers` without TorchRec.
"""
