// RoIAlign forward on the CPU. Bilinear sampling is separable: a bin's average is
//   Σ_rows Σ_cols wy(row) · wx(col) · v[row, col],
// where wy gathers, per output row, the interpolation weights of all its sample rows (divided by their
// number) and wx the same per output column. Both tables are built once per RoI; each (channel, output
// row) then contracts the map rows into one row buffer and each output column reads a few cells from it.
#include "roi_align.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/parallel.h"
#include "roi_align_common.h"

namespace gixdrt::roi_align {

namespace {

// Per-bin interpolation weights along one axis: bin p touches cells [first[p], first[p] + count[p]) with
// weights weight[offset[p] + j]; `lo`..`hi` is the union of the bins' cells (hi < lo when no bin has any).
struct AxisTable {
  std::vector<int64_t> first, count, offset;
  std::vector<float> weight;
  int64_t lo = 0, hi = -1;
};

void build_axis(const AxisGeometry& g, int64_t bins, int64_t length, std::vector<double>& scratch, AxisTable& t) {
  t.first.assign(bins, 0);
  t.count.assign(bins, 0);
  t.offset.assign(bins, 0);
  t.weight.clear();
  t.lo = length;
  t.hi = -1;
  for (int64_t p = 0; p < bins; ++p) {
    int64_t mn = length, mx = -1;
    for (int64_t i = 0; i < g.grid; ++i) {
      int64_t lo, hi;
      double w_lo, w_hi;
      if (!axis_taps(sample_position(g, p, i), length, &lo, &hi, &w_lo, &w_hi)) continue;
      scratch[lo] += w_lo;
      scratch[hi] += w_hi;
      mn = std::min(mn, lo);
      mx = std::max(mx, hi);
    }
    t.offset[p] = static_cast<int64_t>(t.weight.size());
    if (mx < 0) continue;  // no sample of this bin lies on the map
    t.first[p] = mn;
    t.count[p] = mx - mn + 1;
    const double inv = 1.0 / static_cast<double>(g.grid);  // the average's 1/(gy·gx), split over the axes
    for (int64_t j = mn; j <= mx; ++j) {
      t.weight.push_back(static_cast<float>(scratch[j] * inv));
      scratch[j] = 0.0;
    }
    t.lo = std::min(t.lo, mn);
    t.hi = std::max(t.hi, mx);
  }
}

// Scratch space owned by one worker thread.
struct Worker {
  std::vector<double> scratch_y, scratch_x;
  AxisTable ty, tx;
  std::vector<float> row;
};

void pool_roi(const float* features, const float* roi, float* out, const Params& p, Worker& wk) {
  const int64_t plane = p.h * p.w;
  const int64_t bins = p.out_h * p.out_w;
  const AxisGeometry gy = axis_geometry(roi[2], roi[4], p.scale_y, p.out_h, p.sampling_ratio, p.aligned);
  const AxisGeometry gx = axis_geometry(roi[1], roi[3], p.scale_x, p.out_w, p.sampling_ratio, p.aligned);
  build_axis(gy, p.out_h, p.h, wk.scratch_y, wk.ty);
  build_axis(gx, p.out_w, p.w, wk.scratch_x, wk.tx);
  if (wk.ty.hi < wk.ty.lo || wk.tx.hi < wk.tx.lo) {  // the RoI samples nothing on the map
    std::fill(out, out + p.c * bins, 0.0f);
    return;
  }
  const AxisTable& ty = wk.ty;
  const AxisTable& tx = wk.tx;
  const int64_t x0 = tx.lo, xn = tx.hi - tx.lo + 1;
  float* __restrict row = wk.row.data();
  const float* image = features + static_cast<int64_t>(roi[0]) * p.c * plane;
  for (int64_t c = 0; c < p.c; ++c) {
    const float* v = image + c * plane;
    float* o = out + c * bins;
    for (int64_t py = 0; py < p.out_h; ++py, o += p.out_w) {
      if (ty.count[py] == 0) {
        std::fill(o, o + p.out_w, 0.0f);
        continue;
      }
      // rows of this bin contracted into one row buffer over the RoI's columns
      std::fill(row, row + xn, 0.0f);
      const float* wy = ty.weight.data() + ty.offset[py];
      for (int64_t j = 0; j < ty.count[py]; ++j) {
        const float w = wy[j];
        const float* __restrict src = v + (ty.first[py] + j) * p.w + x0;
        for (int64_t x = 0; x < xn; ++x) row[x] += w * src[x];
      }
      for (int64_t px = 0; px < p.out_w; ++px) {
        const float* wx = tx.weight.data() + tx.offset[px];
        const float* r = row + (tx.first[px] - x0);
        float s = 0.0f;
        for (int64_t j = 0; j < tx.count[px]; ++j) s += wx[j] * r[j];
        o[px] = s;
      }
    }
  }
}

}  // namespace

bool roi_is_computed(int64_t row, int64_t k, int64_t n, const int32_t* valid) {
  if (valid == nullptr) return true;
  const int64_t per_image = k / n;
  const int64_t image = row / per_image;
  const int64_t v = std::min<int64_t>(std::max<int64_t>(valid[image], 0), per_image);
  return row - image * per_image < v;
}

int64_t first_invalid_roi(const float* rois, int64_t k, int64_t n, const int32_t* valid) {
  for (int64_t i = 0; i < k; ++i) {
    if (!roi_is_computed(i, k, n, valid)) continue;
    const float* r = rois + i * 5;
    if (!(std::isfinite(r[0]) && std::isfinite(r[1]) && std::isfinite(r[2]) && std::isfinite(r[3]) &&
          std::isfinite(r[4])))
      return i;
    const double b = std::trunc(static_cast<double>(r[0]));
    if (b < 0.0 || b >= static_cast<double>(n)) return i;
    if (valid != nullptr && b != static_cast<double>(i / (k / n))) return i;
  }
  return -1;
}

void forward_cpu(const float* features, const float* rois, float* out, const Params& p, int threads,
                 const int32_t* valid) {
  if (p.k == 0 || p.c == 0) return;
  const int64_t per_roi = p.c * p.out_h * p.out_w;
  if (p.h == 0 || p.w == 0) {  // an empty map samples nothing
    for (int64_t i = 0; i < p.k; ++i)
      if (roi_is_computed(i, p.k, p.n, valid)) std::fill(out + i * per_roi, out + (i + 1) * per_roi, 0.0f);
    return;
  }
  // RoIs are handed out in small blocks: their costs differ (sample counts and widths vary with size)
  const int workers = worker_count(p.k, threads);
  std::vector<Worker> scratch(workers);
  parallel_for(p.k, workers, 4, [&](int64_t begin, int64_t end, int worker) {
    Worker& wk = scratch[worker];
    if (wk.row.empty()) {
      wk.scratch_y.assign(p.h, 0.0);
      wk.scratch_x.assign(p.w, 0.0);
      wk.row.resize(p.w);
    }
    for (int64_t i = begin; i < end; ++i)
      if (roi_is_computed(i, p.k, p.n, valid)) pool_roi(features, rois + i * 5, out + i * per_roi, p, wk);
  });
}

}  // namespace gixdrt::roi_align
