from omnifuse.connectors.linear import LinearConnector
from omnifuse.connectors.mlp import MLPConnector
from omnifuse.connectors.perceiver import PerceiverResampler
from omnifuse.connectors.pixel_shuffle import PixelShuffleConnector
from omnifuse.connectors.pool import PoolConnector

__all__ = ["LinearConnector", "MLPConnector", "PerceiverResampler", "PixelShuffleConnector", "PoolConnector"]
