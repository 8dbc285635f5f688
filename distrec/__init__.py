"""distrec: distributed training of matryoshka retrieval models over TorchRec-sharded tables."""

__version__ = "0.1.0"
