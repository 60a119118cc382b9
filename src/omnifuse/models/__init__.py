from omnifuse.models.multimodal import LMOutput, MultimodalLM

__all__ = ["LMOutput", "MultimodalLM"]
