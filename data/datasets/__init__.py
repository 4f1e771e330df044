"""Dataset adapters, one module per data set, all implementing `data.datasets.base.VideoDataset`."""

from data.datasets.base import DatasetError, Record, VideoDataset
from data.datasets.breakfast import Breakfast
from data.datasets.coin import Coin
from data.datasets.folder import Folder
from data.datasets.lvu import LVU
from data.datasets.synthetic import Synthetic

__all__ = ["LVU", "Breakfast", "Coin", "DatasetError", "Folder", "Record", "Synthetic", "VideoDataset"]
