"""gixdrt: a real-time engine that finds Bragg peaks in 2D X-ray diffraction detector frames.

``import gixdrt`` needs only NumPy; Numba, CUDA stacks, PyTorch, ONNX Runtime and TensorRT are imported
lazily by the parts that use them.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
