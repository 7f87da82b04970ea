// RoIAlign geometry shared by the CPU and CUDA kernels, so both follow one definition of the semantics
// (gixdrt.kernels.reference.roi_align.roi_align, torchvision's legacy/aligned RoIAlign):
//   start = coordinate·scale − (0.5 if aligned), size = end − start (clamped to ≥ 1 unless aligned),
//   bin = size / bins, samples per bin and axis = sampling_ratio if > 0 else ceil(size / bins),
//   sample i of bin p at start + p·bin + (i + 0.5)·bin / samples.
// Geometry runs in double: the RoIs are float32 and the published scales powers of two, so the positions
// are those of the float64 reference and the sample counts never differ from it at integer boundaries.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define GIXDRT_HD __host__ __device__ __forceinline__
#else
#define GIXDRT_HD inline
#endif

namespace gixdrt::roi_align {

// One axis (y or x) of one RoI.
struct AxisGeometry {
  double start;  // first coordinate on the feature map
  double bin;    // bin length
  int64_t grid;  // samples per bin (0: the bin is empty and pools to 0)
};

GIXDRT_HD AxisGeometry axis_geometry(float lo, float hi, double scale, int64_t bins, int64_t sampling_ratio,
                                     bool aligned) {
  const double offset = aligned ? 0.5 : 0.0;
  AxisGeometry g;
  g.start = static_cast<double>(lo) * scale - offset;
  double size = (static_cast<double>(hi) * scale - offset) - g.start;
  if (!aligned && size < 1.0) size = 1.0;  // legacy mode: a RoI is never thinner than one cell
  g.bin = size / static_cast<double>(bins);
  if (sampling_ratio > 0) {
    g.grid = sampling_ratio;
  } else {
    const double n = ceil(size / static_cast<double>(bins));
    // aligned RoIs of size ≤ 0 have no samples; non-finite sizes (the host entry points reject them) neither
    g.grid = (n > 0.0 && n < 9.0e15) ? static_cast<int64_t>(n) : 0;
  }
  return g;
}

// Position of sample i of bin p.
GIXDRT_HD double sample_position(const AxisGeometry& g, int64_t p, int64_t i) {
  return g.start + static_cast<double>(p) * g.bin +
         (static_cast<double>(i) + 0.5) * g.bin / static_cast<double>(g.grid);
}

// Linear interpolation taps of one sample along an axis of `length` cells: value = w_lo·v[lo] + w_hi·v[hi].
// Returns false where the sample lies outside [−1, length] (it contributes 0). Coordinates in [−1, 0) clamp
// to 0; at or past the last cell the sample takes that cell (no interpolation past the edge).
GIXDRT_HD bool axis_taps(double c, int64_t length, int64_t* lo, int64_t* hi, double* w_lo, double* w_hi) {
  if (!(c >= -1.0 && c <= static_cast<double>(length))) return false;  // also rejects NaN
  if (c < 0.0) c = 0.0;
  int64_t l = static_cast<int64_t>(c);
  if (l >= length - 1) {
    *lo = *hi = length - 1;
    *w_lo = 1.0;
    *w_hi = 0.0;
    return true;
  }
  const double frac = c - static_cast<double>(l);
  *lo = l;
  *hi = l + 1;
  *w_lo = 1.0 - frac;
  *w_hi = frac;
  return true;
}

}  // namespace gixdrt::roi_align
