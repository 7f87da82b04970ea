"""Runners for the detector graphs behind one :class:`Detector` facade.

Backends: ``torch`` (the reference, CPU or CUDA). ONNX Runtime and TensorRT runners join with the engines
issue; ``auto`` picks the best available backend in a stated order and says which.
"""
from __future__ import annotations

from .detector import BACKENDS, Detector

__all__ = ["BACKENDS", "Detector"]
