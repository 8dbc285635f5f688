"""Interaction data: readers of the input formats, the synthetic generator, splits and the dataset cache.

Re-exports the public interface of dataset.py; ingest.py (readers by data.format) and
synthetic.py (generator) sit below it, sequences.py (multi-interest) beside it. Imports: the
modules of this package.
"""

from distrec.data.dataset import DataError, InteractionData, load_dataset, read_cache

__all__ = ["DataError", "InteractionData", "load_dataset", "read_cache"]
