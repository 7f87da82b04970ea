from typing import Any

import numpy as np
import numpy.typing as npt

def build_info() -> dict[str, Any]:
    """version, cxx_compiler, pybind11, cuda, cuda_compiler, cuda_architectures, roi_align_cpu (True),
    cpu_kernels (True), roi_align_cuda (bool), cpu_threads (default worker threads of the CPU kernels),
    trt_plugin, tensorrt_plugin."""

# ---- CPU kernels (the `cpu` backend of gixdrt.kernels; the wrappers in gixdrt/kernels/cpu/ check arguments).
# Arrays are C-contiguous NumPy arrays of exactly the dtypes named; outputs are written in place.
# threads <= 0: build_info()["cpu_threads"]. Every kernel releases the GIL.

def polar_remap_cpu(
    frames: npt.NDArray[Any],
    y0: npt.NDArray[np.int32],
    x0: npt.NDArray[np.int32],
    fy: npt.NDArray[np.float32],
    fx: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32],
    mask: npt.NDArray[np.uint8] | None = None,
    saturation: float = float("nan"),
    masked: npt.NDArray[np.uint8] | None = None,
    extreme_value: float = float("nan"),
    threads: int = 0,
) -> int:
    """Polar remap with masked pixels (gixdrt.kernels.reference.polar.polar_remap) of frames [N, H, W] (float32/64,
    uint8/16/32, int16/32) into out [rows, cols]. mask: uint8[H, W] (nonzero = masked) or None; saturation: values
    >= it are masked (NaN: none); masked: uint8[rows, cols] receiving the codes 0/1/2, or None. Returns how many
    values of unmasked on-frame neighbours beyond ±extreme_value (≥ 0) were sampled (counted only when saturation
    is NaN; a NaN extreme_value counts none)."""

def fill_holes_cpu(polar: npt.NDArray[np.float32], masked: npt.NDArray[np.uint8], threads: int = 0) -> None:
    """Fill the holes (masked == 2) of polar float32[N, H, W] in place from the nearest pixels that are not holes
    along φ and |Q| (gixdrt.kernels.reference.polar.fill_holes); masked: uint8[N, H, W]."""

def contrast_cpu(
    polar: npt.NDArray[np.float32], coef: float, clip: int, log: bool, out: npt.NDArray[np.float32], threads: int = 0
) -> tuple[int, float | None, float | None, bool]:
    """The contrast chain into out; clip: clip count (0 = off). Returns (n_bad, vmin, vmax, one_level)."""

def contrast_levels_cpu(
    polar: npt.NDArray[np.float32], coef: float, log: bool, threads: int = 0
) -> npt.NDArray[np.uint16] | None:
    """The chain's 16-bit levels u of polar float32[N], or None without two distinct finite values."""

def clahe_cpu(
    image: npt.NDArray[np.uint8] | npt.NDArray[np.uint16],
    bins: int,
    tiles_x: int,
    tiles_y: int,
    th: int,
    tw: int,
    clip: int,
    out: npt.NDArray[np.uint8] | npt.NDArray[np.uint16],
    threads: int = 0,
) -> None:
    """CLAHE (OpenCV semantics) into out: tiles of th × tw pixels of the BORDER_REFLECT_101 extension."""

def decode_topk_cpu(
    logits: npt.NDArray[np.float32],
    deltas: npt.NDArray[np.float32],
    anchors: npt.NDArray[np.float32],
    level_starts: npt.NDArray[np.int64],
    k: int,
    height: float,
    width: float,
    bbox_clip: float,
    min_size: float,
    boxes: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
    levels: npt.NDArray[np.int32],
    valid: npt.NDArray[np.int32],
    threads: int = 0,
) -> None: ...
def nms_fixed_cpu(
    boxes: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
    valid: npt.NDArray[np.int64],
    groups: npt.NDArray[np.int64] | None,
    iou: float,
    max_out: int,
    keep_idx: npt.NDArray[np.int32],
    count: npt.NDArray[np.int32],
    threads: int = 0,
) -> None: ...
def decode_final_cpu(
    logits: npt.NDArray[np.float32],
    deltas: npt.NDArray[np.float32],
    proposals: npt.NDArray[np.float32],
    valid: npt.NDArray[np.int64],
    height: float,
    width: float,
    score_threshold: float,
    bbox_clip: float,
    min_size: float,
    boxes: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
    count: npt.NDArray[np.int32],
    threads: int = 0,
) -> None: ...
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
    valid: npt.NDArray[np.int32] | None = None,
) -> npt.NDArray[np.float32]:
    """RoIAlign forward on the CPU: features float32[N, C, H, W] and rois float32[K, 5] (batch index, x0, y0, x1,
    y1), both C-contiguous → float32[K, C, out_h, out_w]. valid: optional int32[N], rows grouped K / N per image,
    rows j >= valid[i] skipped. Raises TypeError/ValueError on bad inputs."""

# present only when the extension was built with CUDA (build_info()["roi_align_cuda"])
def cuda_device_count() -> int:
    """CUDA devices the CUDA runtime sees (0 without a GPU or driver)."""

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
