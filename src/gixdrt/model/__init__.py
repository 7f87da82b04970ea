"""PyTorch reference detector and checkpoint import. Arrives with the reference-detector issue."""
