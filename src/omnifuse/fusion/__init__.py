from omnifuse.fusion.early import placeholder_mask, scatter_features

__all__ = ["placeholder_mask", "scatter_features"]
