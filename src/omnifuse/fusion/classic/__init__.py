"""Classic multimodal fusion heads for classifiers on frozen-encoder features (models/classifier.py)."""

from omnifuse.fusion.classic.data import DataFusion
from omnifuse.fusion.classic.decision import LateAverage, LateStacking, LateWeighted
from omnifuse.fusion.classic.feature import (
    AttentionFusion,
    ConcatFusion,
    GatedFusion,
    LearnedOffset,
    LowRankTensorFusion,
    TensorFusion,
    TransformerFusion,
)

__all__ = [
    "AttentionFusion",
    "ConcatFusion",
    "DataFusion",
    "GatedFusion",
    "LateAverage",
    "LateStacking",
    "LateWeighted",
    "LearnedOffset",
    "LowRankTensorFusion",
    "TensorFusion",
    "TransformerFusion",
]
