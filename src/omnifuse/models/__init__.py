from omnifuse.models.multimodal import IGNORE_INDEX, LMOutput, MultimodalLM

__all__ = ["IGNORE_INDEX", "LMOutput", "MultimodalLM"]
