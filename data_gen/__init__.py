"""Path-divergence label pipeline (see issue 4)."""
