"""Model backends: the one interface through which everything runs a model."""
