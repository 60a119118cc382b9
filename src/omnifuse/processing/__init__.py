from omnifuse.processing.processor import BASE_TEMPLATE, Batch, Encoded, MediaSlot, Processor, load_image

__all__ = ["BASE_TEMPLATE", "Batch", "Encoded", "MediaSlot", "Processor", "load_image"]
