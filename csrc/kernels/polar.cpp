// Polar remap with masked pixels on the CPU: the specification is gixdrt.kernels.reference.polar.polar_remap.
//
// A frame pixel is masked when mask[y, x] ≠ 0 or any of its n values is flagged (not finite as float32; the
// dtype's flag value: 2^bits − 1 for unsigned integers, ±max for floats; ≥ saturation when one is given).
// For each polar pixel the four neighbours (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1) are float32 sums over
// the frames in order, off-frame and masked neighbours counting 0; then, in float32,
//   top = v00·(1 − fx) + v01·fx,  bottom = v10·(1 − fx) + v11·fx,  r = top·(1 − fy) + bottom·fy.
// Without a masked on-frame neighbour out = r (code 0); else out = r·(W_in / W_ok) (code 1) with the bilinear
// weights summed over the on-frame (W_in) and on-frame unmasked (W_ok) neighbours, or 0 (code 2) when W_ok = 0.
// Parallel over polar rows. The fill_holes kernel (reference/polar.py: fill_holes) is at the end.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "kernels.h"
#include "parallel.h"

#if defined(__GNUC__) || defined(__clang__)
#define GIXDRT_NOINLINE __attribute__((noinline))
#define GIXDRT_INLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define GIXDRT_NOINLINE __declspec(noinline)
#define GIXDRT_INLINE __forceinline
#else
#define GIXDRT_NOINLINE
#define GIXDRT_INLINE inline
#endif

namespace gixdrt::kernels {

namespace {

// Whether frame value v is a flag value: not finite as float32 (std::isfinite) or the dtype's flag value
// (std::numeric_limits<T>::max(): 2^bits − 1 for unsigned T, ±max for floating T), a compile-time constant;
// signed integers have none.
template <typename T>
inline bool flag_hit(T v) {
  if constexpr (std::is_same_v<T, float>) {
    // !isfinite(v) || v == max || v == −max in one comparison (false for NaN)
    return !(std::fabs(v) < std::numeric_limits<float>::max());
  } else if constexpr (std::is_floating_point_v<T>) {
    // !isfinite(float(v)) without the conversion (undefined out of float's range): NaN, ±inf and |v| ≥ 2^128 − 2^103,
    // which rounds to ±inf in float32. ±max of T is such a value, so its flag test is included.
    static_assert(std::numeric_limits<T>::max() >= 0x1.ffffffp+127, "flag values beyond float32's range");
    return !(std::fabs(v) < static_cast<T>(0x1.ffffffp+127));
  } else if constexpr (std::is_unsigned_v<T>) {
    return v == std::numeric_limits<T>::max();
  } else {
    return false;
  }
}

// The saturation and extreme-value tests of one call, done in T's own arithmetic with thresholds rounded so that
// they answer exactly the specification's float64 comparisons v ≥ saturation and |v| > extreme_value (a float64
// conversion per value costs more than the rest of the fast path).
template <typename T>
struct ValueTests {
  bool has_sat = false;        // some value of T that is not a flag value can be ≥ saturation
  T sat{};                     // v ≥ saturation ⟺ v ≥ sat: the smallest value of T ≥ saturation
  bool count_extreme = false;  // extreme values are counted (no saturation value) and T has some
  T ext_hi{}, ext_lo{};        // |v| > extreme_value ⟺ v > ext_hi || v < ext_lo

  // saturation: NaN for none; extreme_value: ≥ 0, NaN for none.
  ValueTests(double saturation, double extreme_value) {
    constexpr double lowest = static_cast<double>(std::numeric_limits<T>::lowest());
    constexpr double largest = static_cast<double>(std::numeric_limits<T>::max());
    if (!std::isnan(saturation)) {
      if constexpr (std::is_same_v<T, double>) {
        has_sat = true;
        sat = saturation;
      } else if constexpr (std::is_same_v<T, float>) {
        if (saturation <= largest) {  // above it only +inf, a flag value, would be ≥ saturation
          has_sat = true;
          if (saturation <= lowest) {
            sat = std::numeric_limits<float>::lowest();
          } else {
            sat = static_cast<float>(saturation);
            if (static_cast<double>(sat) < saturation) sat = std::nextafter(sat, std::numeric_limits<float>::max());
          }
        }
      } else {
        const double c = std::ceil(saturation);
        if (c <= largest) {
          has_sat = true;
          sat = c <= lowest ? std::numeric_limits<T>::lowest() : static_cast<T>(c);
        }
      }
    }
    if (std::isnan(saturation) && !std::isnan(extreme_value)) {
      if constexpr (std::is_same_v<T, double>) {
        count_extreme = true;
        ext_hi = extreme_value;
        ext_lo = -extreme_value;
      } else if constexpr (std::is_same_v<T, float>) {
        count_extreme = true;  // above float32's max only ±inf, flag values, would count
        float f = static_cast<float>(std::min(extreme_value, largest));
        if (static_cast<double>(f) > extreme_value) f = std::nextafter(f, 0.0f);  // the largest float ≤ it
        ext_hi = f;
        ext_lo = -f;
      } else {
        const double f = std::floor(extreme_value);
        count_extreme = f < largest || -f > lowest;
        ext_hi = f < largest ? static_cast<T>(f) : std::numeric_limits<T>::max();
        ext_lo = -f > lowest ? static_cast<T>(-f) : std::numeric_limits<T>::lowest();
      }
    }
    set_screen();
  }

  bool flagged(T v) const { return flag_hit(v) || (has_sat && v >= sat); }
  bool extreme(T v) const { return v > ext_hi || v < ext_lo; }

  // A quick screen of the fast path: true when none of the four values is a flag value, saturated or extreme
  // (false: look at each). For floating T one sum of magnitudes bounds them all: NaN and ±inf make it fail, and
  // each |v| ≤ the rounded sum.
  bool plain(T a, T b, T c, T d) const {
    bool ok;
    if constexpr (std::is_floating_point_v<T>) {
      ok = std::fabs(a) + std::fabs(b) + std::fabs(c) + std::fabs(d) <= quick;
    } else {
      ok = !(flag_hit(a) | flag_hit(b) | flag_hit(c) | flag_hit(d));
      if (count_extreme)
        ok &= !(std::max(std::max(a, b), std::max(c, d)) > ext_hi || std::min(std::min(a, b), std::min(c, d)) < ext_lo);
    }
    return ok && !(has_sat && std::max(std::max(a, b), std::max(c, d)) >= sat);  // no NaN when ok
  }

  // floating T: |a| + |b| + |c| + |d| ≤ quick means no flag value (float32: below its max; float64: within
  // float32's range) and, when extreme values are counted, none above ext_hi.
  T quick{};

  void set_screen() {
    if constexpr (std::is_same_v<T, float>) {
      quick = std::nextafter(std::numeric_limits<float>::max(), 0.0f);
    } else if constexpr (std::is_same_v<T, double>) {
      quick = static_cast<double>(std::numeric_limits<float>::max());
    }
    if constexpr (std::is_floating_point_v<T>) {
      if (count_extreme) quick = std::min(quick, ext_hi);
    }
  }
};

// One neighbour (y, x): whether it is on the frame and masked; its value, the float32 sum of its n frame values
// in order (0 when off the frame or masked); how many of those values are extreme (counted only when
// tests.count_extreme and the pixel is unmasked).
template <typename T>
GIXDRT_INLINE void neighbour(const T* frames, int64_t n, int64_t h, int64_t w, const uint8_t* mask,
                             const ValueTests<T>& tests, int64_t y, int64_t x, bool& on, bool& masked, float& value,
                             int64_t& n_extreme) {
  value = 0.0f;
  masked = false;
  on = y >= 0 && y < h && x >= 0 && x < w;
  if (!on) return;  // constant border 0, not masked
  const int64_t at = y * w + x;
  if (mask != nullptr && mask[at] != 0) {
    masked = true;
    return;
  }
  const int64_t plane = h * w;
  const T* p = frames + at;
  float sum = 0.0f;
  if constexpr (std::is_floating_point_v<T>) {  // the screen of ValueTests::plain over the n values
    T mag = 0, hi = std::numeric_limits<T>::lowest();
    if (tests.has_sat) {
      for (int64_t k = 0; k < n; ++k) {
        const T v = p[k * plane];
        sum += static_cast<float>(v);
        mag += std::fabs(v);
        hi = std::max(hi, v);
      }
    } else {
      for (int64_t k = 0; k < n; ++k) {
        const T v = p[k * plane];
        sum += static_cast<float>(v);
        mag += std::fabs(v);
      }
    }
    if (mag <= tests.quick && !(tests.has_sat && hi >= tests.sat)) {
      value = sum;  // no flag value, no saturated or extreme value
      return;
    }
  }
  bool flagged = false;
  int64_t ext = 0;
  sum = 0.0f;
  for (int64_t k = 0; k < n; ++k) {  // no early exit: a branch-free loop is faster for clean pixels
    const T v = p[k * plane];
    const bool f = tests.flagged(v);
    flagged |= f;
    sum += static_cast<float>(f ? T(0) : v);  // discarded when a value is flagged
    ext += tests.count_extreme & !f & tests.extreme(v);
  }
  if (flagged) {
    masked = true;
    return;
  }
  value = sum;
  n_extreme += ext;
}

// The general path of one polar pixel at (y, x) with fractions (ax, ay): any frame count, neighbours off the
// frame, masked or flagged. Writes its value and code; returns its extreme count.
template <typename T>
GIXDRT_INLINE int64_t general_pixel(const T* frames, int64_t n, int64_t h, int64_t w, const uint8_t* mask,
                                    const ValueTests<T>& tests, int64_t y, int64_t x, float ax, float ay,
                                    float& result, uint8_t& code) {
  const float one = 1.0f;
  int64_t ne = 0;
  bool on00, on01, on10, on11, m00, m01, m10, m11;
  float v00, v01, v10, v11;
  neighbour(frames, n, h, w, mask, tests, y, x, on00, m00, v00, ne);
  neighbour(frames, n, h, w, mask, tests, y, x + 1, on01, m01, v01, ne);
  neighbour(frames, n, h, w, mask, tests, y + 1, x, on10, m10, v10, ne);
  neighbour(frames, n, h, w, mask, tests, y + 1, x + 1, on11, m11, v11, ne);
  const float top = v00 * (one - ax) + v01 * ax;
  const float bottom = v10 * (one - ax) + v11 * ax;
  const float r = top * (one - ay) + bottom * ay;
  code = 0;
  result = r;
  if (m00 || m01 || m10 || m11) {
    const float w00 = (one - ax) * (one - ay), w01 = ax * (one - ay);
    const float w10 = (one - ax) * ay, w11 = ax * ay;
    float w_in = 0.0f, w_ok = 0.0f;  // summed in the order 00, 01, 10, 11
    if (on00) w_in += w00;
    if (on01) w_in += w01;
    if (on10) w_in += w10;
    if (on11) w_in += w11;
    if (on00 && !m00) w_ok += w00;
    if (on01 && !m01) w_ok += w01;
    if (on10 && !m10) w_ok += w10;
    if (on11 && !m11) w_ok += w11;
    if (w_ok > 0.0f) {
      result = r * (w_in / w_ok);
      code = 1;
    } else {
      result = 0.0f;
      code = 2;
    }
  }
  return ne;
}

// general_pixel out of line: the one-frame loop calls it for the few pixels off its fast path, and stays small.
template <typename T>
GIXDRT_NOINLINE int64_t general_pixel_cold(const T* frames, int64_t n, int64_t h, int64_t w, const uint8_t* mask,
                                           const ValueTests<T>& tests, int64_t y, int64_t x, float ax, float ay,
                                           float& result, uint8_t& code) {
  return general_pixel(frames, n, h, w, mask, tests, y, x, ax, ay, result, code);
}

// Polar rows [begin, end): writes out (and codes when not null); returns the extreme count. Every argument is a
// value, so the compiler knows that the stores into out and codes (uint8_t may alias anything) change none of them.
template <typename T>
int64_t remap_rows(const T* frames, int64_t n, int64_t h, int64_t w, const uint8_t* mask, const ValueTests<T> tests,
                   const int32_t* y0, const int32_t* x0, const float* fy, const float* fx, int64_t cols, float* out,
                   uint8_t* codes, int64_t begin, int64_t end) {
  const float one = 1.0f;
  int64_t ne = 0;
  if (n > 1) {  // several frames: the general path for every pixel
    for (int64_t at = begin * cols; at < end * cols; ++at) {
      float result;
      uint8_t code;
      ne += general_pixel(frames, n, h, w, mask, tests, y0[at], x0[at], fx[at], fy[at], result, code);
      out[at] = result;
      if (codes != nullptr) codes[at] = code;
    }
    return ne;
  }
  for (int64_t i = begin; i < end; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t at = i * cols + j;
      const int64_t y = y0[at], x = x0[at];
      const float ax = fx[at], ay = fy[at];
      if (y >= 0 && y < h - 1 && x >= 0 && x < w - 1) {  // all four neighbours on the frame
        const T* p = frames + y * w + x;
        const T p00 = p[0], p01 = p[1], p10 = p[w], p11 = p[w + 1];
        const uint8_t* m = mask != nullptr ? mask + y * w + x : nullptr;
        const bool unmasked = m == nullptr || (m[0] | m[1] | m[w] | m[w + 1]) == 0;
        if (unmasked && tests.plain(p00, p01, p10, p11)) {  // no flag value, no saturated or extreme value
          const float v00 = 0.0f + static_cast<float>(p00), v01 = 0.0f + static_cast<float>(p01);
          const float v10 = 0.0f + static_cast<float>(p10), v11 = 0.0f + static_cast<float>(p11);
          const float top = v00 * (one - ax) + v01 * ax;
          const float bottom = v10 * (one - ax) + v11 * ax;
          out[at] = top * (one - ay) + bottom * ay;
          if (codes != nullptr) codes[at] = 0;
          continue;
        }
      }
      float result;
      uint8_t code;
      ne += general_pixel_cold(frames, n, h, w, mask, tests, y, x, ax, ay, result, code);
      out[at] = result;
      if (codes != nullptr) codes[at] = code;
    }
  }
  return ne;
}

}  // namespace

template <typename T>
int64_t polar_remap(const T* frames, int64_t n, int64_t h, int64_t w, const uint8_t* mask, double saturation,
                    double extreme_value, const int32_t* y0, const int32_t* x0, const float* fy, const float* fx,
                    int64_t rows, int64_t cols, float* out, uint8_t* codes, int threads) {
  const ValueTests<T> tests(saturation, extreme_value);
  const int workers = worker_count(rows, threads, 8);
  std::vector<int64_t> n_extreme(workers, 0);  // per worker: no shared counter
  parallel_for(rows, workers, 8, [&](int64_t begin, int64_t end, int worker) {
    n_extreme[worker] += remap_rows<T>(frames, n, h, w, mask, tests, y0, x0, fy, fx, cols, out, codes, begin, end);
  });
  int64_t total = 0;
  for (int64_t e : n_extreme) total += e;
  return total;
}

#define GIXDRT_POLAR(T)                                                                                        \
  template int64_t polar_remap<T>(const T*, int64_t, int64_t, int64_t, const uint8_t*, double, double,       \
                                  const int32_t*, const int32_t*, const float*, const float*, int64_t, int64_t, \
                                  float*, uint8_t*, int);
GIXDRT_POLAR(float)
GIXDRT_POLAR(double)
GIXDRT_POLAR(uint16_t)
GIXDRT_POLAR(uint32_t)
GIXDRT_POLAR(int32_t)
GIXDRT_POLAR(uint8_t)
GIXDRT_POLAR(int16_t)
#undef GIXDRT_POLAR

// ---- fill_holes ---------------------------------------------------------------------------------------------
//
// Two passes per group of images. 1: per (image, block of columns), the runs of holes of each column: every hole
// records the nearest rows above (a, −1 when none) and below (b, h when none) that are not holes, in scratch
// buffers [h, w] written at the holes only. 2: per (image, block of rows), the nearest columns left (c, −1) and
// right (d, w) that are not holes, from one scan of the row's codes, and each hole's value from a, b, c, d. Pass 2
// reads image values only at pixels that are not holes and writes only holes, so filling in place reads no filled
// value and the work items never touch the same pixel.

namespace {

constexpr int64_t kFillColumns = 64;  // columns per work item of pass 1: rows are read 64 codes at a time
constexpr int64_t kFillRows = 4;      // rows per work item of pass 2
constexpr int64_t kFillScratch = int64_t(1) << 22;  // pixels per group of images (2 int32 scratch values each)

// The value of hole (i, j) of image img [h, w] from the nearest rows a (above), b (below) and columns c (left),
// d (right) that are not holes (−1, h, −1, w when none), in float32 (see fill_holes in kernels.h).
inline float hole_value(const float* img, int64_t h, int64_t w, int64_t i, int64_t j, int64_t a, int64_t b,
                        int64_t c, int64_t d) {
  const bool two_phi = a >= 0 && b < h, two_q = c >= 0 && d < w;
  float v_phi = 0.0f, v_q = 0.0f;
  if (two_phi) {
    const float left = img[a * w + j], right = img[b * w + j];
    const float t = static_cast<float>(i - a) / static_cast<float>(b - a);
    v_phi = left + (right - left) * t;
  }
  if (two_q) {
    const float left = img[i * w + c], right = img[i * w + d];
    const float t = static_cast<float>(j - c) / static_cast<float>(d - c);
    v_q = left + (right - left) * t;
  }
  if (two_phi && two_q) {
    return (v_phi * static_cast<float>(d - c) + v_q * static_cast<float>(b - a)) /
           static_cast<float>((b - a) + (d - c));
  }
  if (two_phi) return v_phi;
  if (two_q) return v_q;
  if (a >= 0) return img[a * w + j];
  if (b < h) return img[b * w + j];
  if (c >= 0) return img[i * w + c];
  if (d < w) return img[i * w + d];
  return 0.0f;
}

// Pass 1 on columns [c0, c1) of one image: up[i, c] = a and down[i, c] = b at every hole (i, c); other entries
// are not written. start: scratch of c1 − c0 entries.
void column_runs(const uint8_t* code, int64_t h, int64_t w, int64_t c0, int64_t c1, int32_t* up, int32_t* down,
                 int64_t* start) {
  auto close = [&](int64_t c, int64_t first, int64_t last) {  // rows first..last of column c: a maximal run
    const int32_t a = static_cast<int32_t>(first - 1), b = static_cast<int32_t>(last + 1);
    for (int64_t i = first; i <= last; ++i) {
      up[i * w + c] = a;
      down[i * w + c] = b;
    }
  };
  std::fill(start, start + (c1 - c0), int64_t(-1));
  for (int64_t i = 0; i < h; ++i) {
    const uint8_t* row = code + i * w;
    for (int64_t c = c0; c < c1; ++c) {
      int64_t& s = start[c - c0];
      if (row[c] == 2) {
        if (s < 0) s = i;
      } else if (s >= 0) {
        close(c, s, i - 1);
        s = -1;
      }
    }
  }
  for (int64_t c = c0; c < c1; ++c) {
    if (start[c - c0] >= 0) close(c, start[c - c0], h - 1);
  }
}

// Pass 2 on row i of one image: fills its holes. right: scratch of w entries.
void fill_row(float* img, const uint8_t* code, const int32_t* up, const int32_t* down, int64_t h, int64_t w,
              int64_t i, int32_t* right) {
  const uint8_t* row = code + i * w;
  if (std::find(row, row + w, uint8_t{2}) == row + w) return;  // no hole in this row
  int32_t next = static_cast<int32_t>(w);
  for (int64_t j = w - 1; j >= 0; --j) {  // right[j]: the nearest column > j that is not a hole, or w
    right[j] = next;
    if (row[j] != 2) next = static_cast<int32_t>(j);
  }
  int64_t prev = -1;  // the nearest column < j that is not a hole, or −1
  for (int64_t j = 0; j < w; ++j) {
    if (row[j] != 2) {
      prev = j;
      continue;
    }
    const int64_t at = i * w + j;
    img[at] = hole_value(img, h, w, i, j, up[at], down[at], prev, right[j]);
  }
}

}  // namespace

void fill_holes(float* polar, const uint8_t* masked, int64_t n, int64_t h, int64_t w, int threads) {
  if (n <= 0 || h <= 0 || w <= 0) return;
  if (h > std::numeric_limits<int32_t>::max() - 1 || w > std::numeric_limits<int32_t>::max() - 1)
    throw std::length_error("fill_holes: images with 2^31 − 1 or more rows or columns are not supported");
  const int64_t plane = h * w;
  const int64_t group = std::max<int64_t>(1, std::min<int64_t>(n, kFillScratch / plane));  // images per group
  // scratch, written at the holes only (so not initialised): the nearest non-hole rows above / below
  std::unique_ptr<int32_t[]> up(new int32_t[group * plane]), down(new int32_t[group * plane]);
  const int64_t chunks = (w + kFillColumns - 1) / kFillColumns;
  for (int64_t g0 = 0; g0 < n; g0 += group) {
    const int64_t g = std::min(group, n - g0);
    float* images = polar + g0 * plane;
    const uint8_t* codes = masked + g0 * plane;
    const int64_t items1 = g * chunks;  // (image, block of columns)
    parallel_for(items1, worker_count(items1, threads, 1), 1, [&](int64_t begin, int64_t end, int) {
      int64_t start[kFillColumns];
      for (int64_t item = begin; item < end; ++item) {
        const int64_t image = item / chunks, c0 = (item % chunks) * kFillColumns;
        column_runs(codes + image * plane, h, w, c0, std::min(w, c0 + kFillColumns), up.get() + image * plane,
                    down.get() + image * plane, start);
      }
    });
    const int64_t items2 = g * h;  // (image, row)
    parallel_for(items2, worker_count(items2, threads, kFillRows), kFillRows, [&](int64_t begin, int64_t end, int) {
      std::vector<int32_t> right(w);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t image = item / h, i = item % h;
        fill_row(images + image * plane, codes + image * plane, up.get() + image * plane,
                 down.get() + image * plane, h, w, i, right.data());
      }
    });
  }
}

}  // namespace gixdrt::kernels
