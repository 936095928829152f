"""rankseg: masks that maximise the expected Dice or IoU, from any model's probabilities.

>>> import torch
>>> from rankseg import RankSEG
>>> probs = torch.softmax(torch.randn(1, 4, 32, 32), dim=1)
>>> RankSEG(metric="iou")(probs).shape
torch.Size([1, 32, 32])
"""

from ._predictor import RankSEG
from .functional import rankseg

__version__ = "0.1.0"

__all__ = ["RankSEG", "__version__", "rankseg"]
