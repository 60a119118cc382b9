"""Text encoders: BERT-family sentence encoders (MiniLM)."""

from omnifuse.encoders.text.minilm import MiniLMEncoder, build_minilm, load_text_model

__all__ = ["MiniLMEncoder", "build_minilm", "load_text_model"]
