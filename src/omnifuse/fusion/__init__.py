from omnifuse.fusion.cross_attention import CrossAttentionFusion, GatedCrossAttentionBlock, decoder_layers
from omnifuse.fusion.early import placeholder_mask, scatter_features

__all__ = [
    "CrossAttentionFusion",
    "GatedCrossAttentionBlock",
    "decoder_layers",
    "placeholder_mask",
    "scatter_features",
]
