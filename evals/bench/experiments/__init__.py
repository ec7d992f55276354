"""One-off diagnostic experiments whose JSON is committed under bench/experiments/ (run with python -m)."""
