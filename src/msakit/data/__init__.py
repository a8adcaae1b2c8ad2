"""Datasets: the Batch contract, readers per format, the synthetic benchmark, the catalog."""

from msakit.data.batch import MODALITIES, Batch, SplitData, collate, parse_modalities
from msakit.data.dataset import SPLITS, MSADataset
from msakit.data.registry import DATASETS, load_dataset

__all__ = [
    "DATASETS", "MODALITIES", "SPLITS", "Batch", "MSADataset", "SplitData", "collate",
    "load_dataset", "parse_modalities",
]
