"""Routing: features from SLM outputs, the router network, training, calibration and policies."""
