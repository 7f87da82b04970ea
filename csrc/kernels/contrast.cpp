// CLAHE (OpenCV semantics) and the published contrast chain on the CPU: the specification is
// gixdrt.kernels.reference.contrast (clahe, contrast). All arithmetic follows the reference's order in float32.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels.h"
#include "parallel.h"

namespace gixdrt::kernels {

namespace {

// Clip one tile histogram hist[bins] at `clip` (0: off) and redistribute the excess as OpenCV does
// (reference clip_histogram): excess / bins to every bin, then the remainder r one by one to bins 0, s, 2s, …
// with s = max(bins / r, 1). Then the LUT (reference tile_lut):
//   lut[i] = saturate(rint(float32(cumsum[i]) · (float32(bins − 1) / float32(area)))).
void tile_lut(int64_t* hist, int64_t bins, int64_t clip, int64_t area, int32_t* lut) {
  if (clip > 0) {
    int64_t excess = 0;
    for (int64_t i = 0; i < bins; ++i) {
      if (hist[i] > clip) {
        excess += hist[i] - clip;
        hist[i] = clip;
      }
    }
    const int64_t batch = excess / bins, residual = excess % bins;
    for (int64_t i = 0; i < bins; ++i) hist[i] += batch;
    if (residual > 0) {
      const int64_t step = std::max<int64_t>(bins / residual, 1);
      for (int64_t r = 0; r < residual; ++r) hist[r * step] += 1;
    }
  }
  const float scale = static_cast<float>(bins - 1) / static_cast<float>(area);
  const float top = static_cast<float>(bins - 1);
  int64_t sum = 0;
  for (int64_t i = 0; i < bins; ++i) {
    sum += hist[i];
    const float v = std::nearbyint(static_cast<float>(sum) * scale);  // round half to even, like np.rint
    lut[i] = static_cast<int32_t>(std::min(std::max(v, 0.0f), top));
  }
}

// BORDER_REFLECT_101 (gfedcb|abcdefgh|gfedcba) of index p into [0, n) (reference reflect101).
int64_t reflect101(int64_t p, int64_t n) {
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  p %= period;
  if (p < 0) p += period;
  return p < n ? p : period - p;
}

// Interpolation along one axis (reference interp_weights), float32: f = c·float32(1/tile) − 0.5,
// i1 = floor(f), w2 = f − i1, w1 = 1 − w2, then i2 = min(i1 + 1, tiles − 1) and i1 = max(i1, 0).
struct Axis {
  std::vector<int64_t> i1, i2;
  std::vector<float> w2, w1;
};

Axis interp_weights(int64_t n, int64_t tile, int64_t tiles) {
  Axis a;
  a.i1.resize(n);
  a.i2.resize(n);
  a.w2.resize(n);
  a.w1.resize(n);
  const float inv = 1.0f / static_cast<float>(tile);
  for (int64_t c = 0; c < n; ++c) {
    const float f = static_cast<float>(c) * inv - 0.5f;
    const float fl = std::floor(f);
    a.w2[c] = f - fl;
    a.w1[c] = 1.0f - a.w2[c];
    const int64_t i = static_cast<int64_t>(fl);
    a.i2[c] = std::min<int64_t>(i + 1, tiles - 1);
    a.i1[c] = std::max<int64_t>(i, 0);
  }
  return a;
}

// ---- contrast chain ------------------------------------------------------------------------------------

struct Extrema {
  int64_t n_bad = 0;
  float vmin = std::numeric_limits<float>::infinity();
  float vmax = -std::numeric_limits<float>::infinity();
};

// Extrema of the finite pixels and the count of the others.
Extrema finite_extrema(const float* p, int64_t size, int threads) {
  const int workers = worker_count(size, threads, 1 << 16);
  std::vector<Extrema> part(workers);
  parallel_for(size, workers, (size + workers - 1) / workers, [&](int64_t begin, int64_t end, int worker) {
    Extrema& e = part[worker];  // a worker may take several blocks
    for (int64_t i = begin; i < end; ++i) {
      const float v = p[i];
      if (!std::isfinite(v)) {
        ++e.n_bad;
        continue;
      }
      if (v < e.vmin) e.vmin = v;
      if (v > e.vmax) e.vmax = v;
    }
  });
  Extrema all;
  for (const Extrema& e : part) {
    all.n_bad += e.n_bad;
    all.vmin = std::min(all.vmin, e.vmin);
    all.vmax = std::max(all.vmax, e.vmax);
  }
  return all;
}

// The chain from a pixel value to its 16-bit level, for finite extrema vmin < vmax (reference contrast):
//   p = v if finite else vmin; s = 1 if vmax − vmin is finite in float32 else 0.5;
//   n = (p·s − vmin·s) / (vmax·s − vmin·s); a = float32(log10(double(coef·n + 1))) (or n without log);
//   u = uint16(coef · ((a − amin) / (amax − amin))) (truncation), amin/amax the extrema of a over the image.
struct Chain {
  float vmin, s, vs, span, coef;
  bool log;
  float amin = 0, den = 0;  // set by levels_a(); den ≤ 0 (or NaN) makes every u 0, as uint16(NaN) on x86

  Chain(float vmin_, float vmax_, float coef_, bool log_) : vmin(vmin_), coef(coef_), log(log_) {
    s = std::isfinite(vmax_ - vmin_) ? 1.0f : 0.5f;  // halving is exact and keeps vmax·s − vmin·s finite
    vs = vmin_ * s;
    span = vmax_ * s - vs;
  }

  float a_of(float v) const {
    const float p = std::isfinite(v) ? v : vmin;
    const float n = (p * s - vs) / span;
    return log ? static_cast<float>(std::log10(static_cast<double>(coef * n + 1.0f))) : n;
  }

  uint16_t u_of(float a) const {
    if (!(den > 0.0f)) return 0;
    const float w = coef * ((a - amin) / den);  // in [0, coef] ⊂ [0, 65535]
    return static_cast<uint16_t>(static_cast<int32_t>(w));
  }
};

// a of every pixel into a[size]; sets chain.amin and chain.den = amax − amin.
void levels_a(const float* p, int64_t size, Chain& chain, float* a, int threads) {
  const int workers = worker_count(size, threads, 1 << 14);
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> lo(workers, inf), hi(workers, -inf);
  parallel_for(size, workers, (size + workers - 1) / workers, [&](int64_t begin, int64_t end, int worker) {
    float mn = inf, mx = -inf;
    for (int64_t i = begin; i < end; ++i) {
      const float v = chain.a_of(p[i]);
      a[i] = v;
      mn = std::min(mn, v);
      mx = std::max(mx, v);
    }
    lo[worker] = std::min(lo[worker], mn);
    hi[worker] = std::max(hi[worker], mx);
  });
  const float amin = *std::min_element(lo.begin(), lo.end());
  const float amax = *std::max_element(hi.begin(), hi.end());
  chain.amin = amin;
  chain.den = amax - amin;
}

}  // namespace

bool contrast_levels(const float* polar, int64_t size, float coef, bool log, float* a, uint16_t* u, int threads) {
  const Extrema e = finite_extrema(polar, size, threads);
  if (e.n_bad == size || !(e.vmax > e.vmin)) return false;
  Chain chain(e.vmin, e.vmax, coef, log);
  levels_a(polar, size, chain, a, threads);
  for (int64_t i = 0; i < size; ++i) u[i] = chain.u_of(a[i]);
  return true;
}

ContrastResult contrast(const float* polar, int64_t size, float coef, int64_t clip, bool log, float* out,
                        int threads) {
  ContrastResult res;
  const Extrema e = finite_extrema(polar, size, threads);
  res.n_bad = e.n_bad;
  res.vmin = e.vmin;
  res.vmax = e.vmax;
  if (e.n_bad == size || e.vmax == e.vmin) {  // no finite pixel, or a constant image: zeros
    std::fill(out, out + size, 0.0f);
    res.zeros = true;
    return res;
  }
  // a per pixel, kept in `out` until the last pass overwrites it with the result
  Chain chain(e.vmin, e.vmax, coef, log);
  levels_a(polar, size, chain, out, threads);

  // histogram of u (per worker, merged): u ≤ trunc(coef)
  constexpr int64_t kBins = 65536;
  const int64_t umax = static_cast<int64_t>(coef);
  const int workers = worker_count(size, threads, 1 << 14);
  std::vector<std::vector<int64_t>> part(workers);
  parallel_for(size, workers, (size + workers - 1) / workers, [&](int64_t begin, int64_t end, int worker) {
    std::vector<int64_t>& h = part[worker];
    h.resize(umax + 1, 0);
    for (int64_t i = begin; i < end; ++i) ++h[chain.u_of(out[i])];
  });
  std::vector<int64_t> hist(kBins, 0);
  for (const auto& h : part)
    for (size_t i = 0; i < h.size(); ++i) hist[i] += h[i];

  // CLAHE with one tile is lut[u]: the four interpolated LUTs are the same one and L·(1 − w) + L·w rounds
  // back to L. The LUT is non-decreasing, so the extrema of c = lut[u] are the LUT at the extreme levels.
  int64_t lo = -1, hi = -1;
  for (int64_t i = 0; i < kBins; ++i) {
    if (hist[i] > 0) {
      if (lo < 0) lo = i;
      hi = i;
    }
  }
  std::vector<int32_t> lut(kBins);
  tile_lut(hist.data(), kBins, clip, size, lut.data());
  const float cmin = static_cast<float>(lut[lo]), cmax = static_cast<float>(lut[hi]);
  if (cmax == cmin) {  // CLAHE mapped every pixel to one level: zeros
    std::fill(out, out + size, 0.0f);
    res.zeros = res.one_level = true;
    return res;
  }
  // the final min–max n(c) = (c − cmin) / (cmax − cmin), as a table over the levels
  std::vector<float> table(umax + 1);
  for (int64_t i = 0; i <= umax; ++i) table[i] = (static_cast<float>(lut[i]) - cmin) / (cmax - cmin);
  parallel_for(size, workers, (size + workers - 1) / workers, [&](int64_t begin, int64_t end, int) {
    for (int64_t i = begin; i < end; ++i) out[i] = table[chain.u_of(out[i])];
  });
  return res;
}

// ---- CLAHE ---------------------------------------------------------------------------------------------

template <typename T>
void clahe(const T* image, int64_t h, int64_t w, int64_t bins, int64_t tiles_x, int64_t tiles_y, int64_t th,
           int64_t tw, int64_t clip, T* out, int threads) {
  // source row / column of each row / column of the extended image
  std::vector<int64_t> rows(tiles_y * th), cols(tiles_x * tw);
  for (int64_t r = 0; r < static_cast<int64_t>(rows.size()); ++r) rows[r] = reflect101(r, h);
  for (int64_t c = 0; c < static_cast<int64_t>(cols.size()); ++c) cols[c] = reflect101(c, w);

  // one LUT per tile
  const int64_t n_tiles = tiles_x * tiles_y;
  std::vector<int32_t> luts(n_tiles * bins);
  const int tile_workers = worker_count(n_tiles, threads);
  std::vector<std::vector<int64_t>> hists(tile_workers);
  parallel_for(n_tiles, tile_workers, 1, [&](int64_t begin, int64_t end, int worker) {
    std::vector<int64_t>& hist = hists[worker];
    for (int64_t t = begin; t < end; ++t) {
      hist.assign(bins, 0);
      const int64_t ty = t / tiles_x, tx = t % tiles_x;
      for (int64_t r = ty * th; r < (ty + 1) * th; ++r) {
        const T* src = image + rows[r] * w;
        for (int64_t c = tx * tw; c < (tx + 1) * tw; ++c) ++hist[src[cols[c]]];
      }
      tile_lut(hist.data(), bins, clip, th * tw, luts.data() + t * bins);
    }
  });

  // bilinear interpolation between the four nearest tiles' LUTs, in float32
  const Axis ax = interp_weights(w, tw, tiles_x);
  const Axis ay = interp_weights(h, th, tiles_y);
  const float top = static_cast<float>(bins - 1);
  const int workers = worker_count(h, threads, 16);
  parallel_for(h, workers, 16, [&](int64_t begin, int64_t end, int) {
    for (int64_t y = begin; y < end; ++y) {
      const int32_t* row1 = luts.data() + ay.i1[y] * tiles_x * bins;
      const int32_t* row2 = luts.data() + ay.i2[y] * tiles_x * bins;
      const float ya = ay.w2[y], ya1 = ay.w1[y];
      for (int64_t x = 0; x < w; ++x) {
        const int64_t v = image[y * w + x];
        const int64_t c1 = ax.i1[x] * bins + v, c2 = ax.i2[x] * bins + v;
        const float xa = ax.w2[x], xa1 = ax.w1[x];
        const float f11 = static_cast<float>(row1[c1]), f12 = static_cast<float>(row1[c2]);
        const float f21 = static_cast<float>(row2[c1]), f22 = static_cast<float>(row2[c2]);
        const float res = (f11 * xa1 + f12 * xa) * ya1 + (f21 * xa1 + f22 * xa) * ya;
        const float r = std::min(std::max(std::nearbyint(res), 0.0f), top);
        out[y * w + x] = static_cast<T>(r);
      }
    }
  });
}

template void clahe<uint8_t>(const uint8_t*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                             int64_t, uint8_t*, int);
template void clahe<uint16_t>(const uint16_t*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                              int64_t, uint16_t*, int);

}  // namespace gixdrt::kernels
