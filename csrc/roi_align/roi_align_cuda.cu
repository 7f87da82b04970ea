// RoIAlign forward on CUDA: one thread per output element (RoI, channel, bin row, bin column), bin column
// fastest so neighbouring threads read neighbouring map cells. Each thread walks its bin's samples with the
// geometry of roi_align_common.h (positions in double, as the CPU kernel and the float64 reference).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "roi_align.h"
#include "roi_align_common.h"

namespace gixdrt::roi_align {

namespace {

__global__ void roi_align_forward_f32_kernel(const float* __restrict__ features, const float* __restrict__ rois,
                                             float* __restrict__ out, Params p) {
  const int64_t total = p.k * p.c * p.out_h * p.out_w;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int64_t px = idx % p.out_w;
    int64_t t = idx / p.out_w;
    const int64_t py = t % p.out_h;
    t /= p.out_h;
    const int64_t ch = t % p.c;
    const float* roi = rois + (t / p.c) * 5;

    const double b = trunc(static_cast<double>(roi[0]));
    if (!(b >= 0.0 && b < static_cast<double>(p.n))) {  // a kernel cannot raise: make the bad RoI visible
      out[idx] = nanf("");
      continue;
    }
    const AxisGeometry gy = axis_geometry(roi[2], roi[4], p.scale_y, p.out_h, p.sampling_ratio, p.aligned);
    const AxisGeometry gx = axis_geometry(roi[1], roi[3], p.scale_x, p.out_w, p.sampling_ratio, p.aligned);
    const float* v = features + (static_cast<int64_t>(b) * p.c + ch) * p.h * p.w;

    float acc = 0.0f;
    for (int64_t iy = 0; iy < gy.grid; ++iy) {
      int64_t y_lo, y_hi;
      double wy_lo, wy_hi;
      if (!axis_taps(sample_position(gy, py, iy), p.h, &y_lo, &y_hi, &wy_lo, &wy_hi)) continue;
      const float* row_lo = v + y_lo * p.w;
      const float* row_hi = v + y_hi * p.w;
      for (int64_t ix = 0; ix < gx.grid; ++ix) {
        int64_t x_lo, x_hi;
        double wx_lo, wx_hi;
        if (!axis_taps(sample_position(gx, px, ix), p.w, &x_lo, &x_hi, &wx_lo, &wx_hi)) continue;
        const float w_lo = static_cast<float>(wx_lo), w_hi = static_cast<float>(wx_hi);
        const float top = w_lo * __ldg(row_lo + x_lo) + w_hi * __ldg(row_lo + x_hi);
        const float bottom = w_lo * __ldg(row_hi + x_lo) + w_hi * __ldg(row_hi + x_hi);
        acc += static_cast<float>(wy_lo) * top + static_cast<float>(wy_hi) * bottom;
      }
    }
    const int64_t count = gy.grid * gx.grid;
    out[idx] = count > 0 ? acc / static_cast<float>(count) : 0.0f;
  }
}

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("roi_align_cuda: ") + what + ": " + cudaGetErrorString(status));
}

}  // namespace

void forward_cuda(const float* features, const float* rois, float* out, const Params& p, void* stream) {
  if (p.k == 0 || p.c == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t total = p.k * p.c * p.out_h * p.out_w;
  if (p.h == 0 || p.w == 0) {  // an empty map samples nothing
    check(cudaMemsetAsync(out, 0, static_cast<size_t>(total) * sizeof(float), s), "cudaMemsetAsync");
    return;
  }
  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t{1} << 20);
  roi_align_forward_f32_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(features, rois, out, p);
  check(cudaGetLastError(), "kernel launch");
}

}  // namespace gixdrt::roi_align
