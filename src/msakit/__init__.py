"""msakit: multimodal sentiment analysis, every model under every missing-data protocol."""

__version__ = "0.1.0"

from msakit.data import Batch, MSADataset, SplitData, load_dataset  # noqa: E402
from msakit.models import create_model  # noqa: E402
from msakit.train import train  # noqa: E402

__all__ = ["Batch", "MSADataset", "SplitData", "__version__", "create_model", "load_dataset", "train"]
