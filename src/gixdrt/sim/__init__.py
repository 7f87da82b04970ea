"""Simulator of polar GIXD images with ground truth. Arrives with the own-detector issue."""
