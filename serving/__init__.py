"""Serving: model pairs and presets, decoding (`decoding/`), byte-level probabilities and the cross-tokenizer
engine (`byte_level/`), the OpenAI-compatible HTTP layer (`http/`) and the backends (`backends/`)."""
