"""Exact byte-level next-byte probabilities of token LMs, and routing between models with different tokenizers."""
