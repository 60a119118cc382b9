from omnifuse.connectors.linear import LinearConnector
from omnifuse.connectors.mlp import MLPConnector
from omnifuse.connectors.pool import PoolConnector

__all__ = ["LinearConnector", "MLPConnector", "PoolConnector"]
