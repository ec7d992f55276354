"""The OpenAI-compatible server: wire types, the continuous-batching scheduler, the HTTP endpoints."""
