"""Decoding: the single-model decoder, sequential and speculative routing, sampling, stopping, block sizing.

One model decodes through `serving.decoding.decode(backend, prompts, params, stop_rule)`; a pair through
`serving.pair.ModelPair.generate`."""
from r2r.serving.decoding.single import decode

__all__ = ["decode"]
