"""Decoding: the single-model decoder, sequential and speculative routing, sampling, stopping, block sizing."""
