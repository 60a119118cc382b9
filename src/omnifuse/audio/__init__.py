"""Audio input and output."""
