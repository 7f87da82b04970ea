"""Training loop and the paper's evaluation protocol. Arrives with the own-detector issue."""
