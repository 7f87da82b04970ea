"""Runners for the detector graphs (torch reference, ONNX Runtime, TensorRT): see ARCHITECTURE.md. Arrives with the engines issue."""
