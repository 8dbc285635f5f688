"""Interaction data: parsing, the synthetic generator, splits and the Parquet dataset.

Re-exports the public interface of dataset.py; ingest.py (parsers) and synthetic.py (generator)
sit below it. Imports: the modules of this package.
"""

from distrec.data.dataset import DataError, InteractionData, load_dataset, read_parquet

__all__ = ["DataError", "InteractionData", "load_dataset", "read_parquet"]
