// RoIAlign forward (torchvision semantics, average pooling), one kernel per device:
// roi_align_cpu.cpp (always built) and roi_align_cuda.cu (built when CMake finds a CUDA compiler).
//
// features: float32[N, C, H, W] C-contiguous; rois: float32[K, 5] rows (batch index, x0, y0, x1, y1) in input
// pixels; out: float32[K, C, out_h, out_w]. The anisotropic map scale is fused in: x · scale_x, y · scale_y.
#pragma once

#include <cstdint>

namespace gixdrt::roi_align {

struct Params {
  int64_t n = 0, c = 0, h = 0, w = 0;  // feature map
  int64_t k = 0;                       // RoIs
  int64_t out_h = 16, out_w = 16;      // bins per RoI (≥ 1)
  double scale_y = 1.0, scale_x = 1.0;
  int64_t sampling_ratio = -1;  // samples per bin and axis; ≤ 0: adaptive ceil(roi_size / bins)
  bool aligned = false;         // false: legacy (no half-pixel shift, RoI size clamped to ≥ 1)
};

// Optional `valid` (int32[n], or null for all rows): the K RoIs are grouped R = K / n per image (K a multiple
// of n), row i·R + j belongs to image i, and rows with j ≥ valid[i] (clamped to [0, R]) are skipped: neither
// checked nor computed (their output is left as it is).
bool roi_is_computed(int64_t row, int64_t k, int64_t n, const int32_t* valid);

// Index of the first computed RoI whose batch index (truncated toward zero, as torchvision does) is not in
// [0, n) (with `valid`: is not its image i) or whose coordinates are not finite, or −1 when all are valid.
// The CPU entry point calls this first.
int64_t first_invalid_roi(const float* rois, int64_t k, int64_t n, const int32_t* valid = nullptr);

// CPU forward, multi-threaded over RoIs (threads ≤ 0: gixdrt::default_cpu_threads()). Expects valid RoIs (see
// first_invalid_roi); returns at once for K = 0.
void forward_cpu(const float* features, const float* rois, float* out, const Params& p, int threads,
                 const int32_t* valid = nullptr);

#ifdef GIXDRT_WITH_CUDA
// CUDA forward on device pointers, launched asynchronously on `stream` (a cudaStream_t; 0 = legacy default
// stream). RoIs with an invalid batch index pool to NaN (a kernel cannot raise). Throws std::runtime_error when
// the launch fails.
void forward_cuda(const float* features, const float* rois, float* out, const Params& p, void* stream);
#endif

}  // namespace gixdrt::roi_align
