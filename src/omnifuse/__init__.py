"""omnifuse: build, train, evaluate and serve multimodal LLMs from pretrained parts."""

__version__ = "0.1.0"
