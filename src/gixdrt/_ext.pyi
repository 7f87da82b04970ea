from typing import Any

import numpy as np
import numpy.typing as npt

def build_info() -> dict[str, Any]:
    """version, cxx_compiler, pybind11, cuda, cuda_compiler, cuda_architectures, roi_align_cpu (True),
    roi_align_cuda (bool), cpu_threads (default worker threads of the CPU kernels), tensorrt_plugin."""

def roi_align_cpu(
    features: npt.NDArray[np.float32],
    rois: npt.NDArray[np.float32],
    out_h: int,
    out_w: int,
    scale_y: float,
    scale_x: float,
    sampling_ratio: int,
    aligned: bool,
    threads: int = 0,
    out: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]:
    """RoIAlign forward on the CPU: features float32[N, C, H, W] and rois float32[K, 5] (batch index, x0, y0, x1,
    y1), both C-contiguous → float32[K, C, out_h, out_w]. Raises TypeError/ValueError on bad inputs."""

# present only when the extension was built with CUDA (build_info()["roi_align_cuda"])
def roi_align_cuda(
    features_ptr: int,
    rois_ptr: int,
    out_ptr: int,
    N: int,
    C: int,
    H: int,
    W: int,
    K: int,
    out_h: int,
    out_w: int,
    scale_y: float,
    scale_x: float,
    sampling_ratio: int,
    aligned: bool,
    stream: int = 0,
) -> None:
    """RoIAlign forward on device pointers (float32, C-contiguous), launched asynchronously on `stream`."""
