from omnifuse.processing.processor import BASE_TEMPLATE, Batch, Encoded, MediaSlot, Processor, load_image
from omnifuse.processing.tiling import Tiling

__all__ = ["BASE_TEMPLATE", "Batch", "Encoded", "MediaSlot", "Processor", "Tiling", "load_image"]
