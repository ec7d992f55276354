"""Serving: routed decoding, the batching scheduler, the OpenAI-compatible server and the r2r CLI."""
