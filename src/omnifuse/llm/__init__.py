from omnifuse.llm.hf import hidden_size, load_llm, vocab_size

__all__ = ["hidden_size", "load_llm", "vocab_size"]
