"""Data: sources, long-tail sampling, train / holdout / test splits and subgroup ids."""

from compression.data.dataset import Dataset, Split
from compression.data.loader import describe, load_dataset
from compression.data.longtail import long_tail_counts

__all__ = ["Split", "Dataset", "load_dataset", "describe", "long_tail_counts"]
