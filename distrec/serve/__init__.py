"""Serving from a run's exports alone: the bundle writer and reader (bundle, manifest), exact and
funnel top-K (topk), faiss (ann), and `python -m distrec.retrieve` (retrieve).

Imports no training code (no TorchRec, process groups, tasks or run): a serving process reads
`embeddings/` and nothing else. tests/unit/test_layers.py holds that line.
"""
