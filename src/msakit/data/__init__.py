"""Datasets: the Batch contract, readers per format, the synthetic benchmark, the catalog."""

from msakit.data import sources  # noqa: F401  (registers catalog entries)
from msakit.data.batch import MODALITIES, Batch, SplitData, collate, parse_modalities
from msakit.data.dataset import SPLITS, MSADataset
from msakit.data.registry import DATASETS, DatasetEntry, load_dataset, register_dataset

__all__ = [
    "DATASETS", "MODALITIES", "SPLITS", "Batch", "DatasetEntry", "MSADataset", "SplitData",
    "collate", "load_dataset", "parse_modalities", "register_dataset",
]
