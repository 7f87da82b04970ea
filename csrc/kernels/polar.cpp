// Polar remap on the CPU: the specification is gixdrt.kernels.reference.polar.polar_remap.
//
// For each polar pixel the four neighbours (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1) are float32 sums
// over the frames in order, off-frame and non-finite pixels counting 0; then, in float32,
//   top = v00·(1 − fx) + v01·fx,  bottom = v10·(1 − fx) + v11·fx,  out = top·(1 − fy) + bottom·fy.
// Parallel over polar rows.
#include <cmath>
#include <vector>

#include "kernels.h"
#include "parallel.h"

namespace gixdrt::kernels {

namespace {

// Adds frame pixel (y, x) of every frame to `sum` (float32, frame order); counts non-finite ones in `bad`.
template <typename T>
inline void add_pixel(const T* frames, int64_t n, int64_t h, int64_t w, int64_t y, int64_t x, float& sum,
                      int64_t& bad) {
  if (y < 0 || y >= h || x < 0 || x >= w) return;  // constant border 0
  const int64_t plane = h * w;
  const T* p = frames + y * w + x;
  for (int64_t k = 0; k < n; ++k) {
    const float v = static_cast<float>(p[k * plane]);
    if (std::isfinite(v)) {
      sum += v;
    } else {
      ++bad;
    }
  }
}

}  // namespace

template <typename T>
int64_t polar_remap(const T* frames, int64_t n, int64_t h, int64_t w, const int32_t* y0, const int32_t* x0,
                    const float* fy, const float* fx, int64_t rows, int64_t cols, float* out, int threads) {
  const int workers = worker_count(rows, threads, 8);
  std::vector<int64_t> bad(workers, 0);  // per worker: no shared counter
  parallel_for(rows, workers, 8, [&](int64_t begin, int64_t end, int worker) {
    const float one = 1.0f;
    int64_t nb = 0;
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        const int64_t at = i * cols + j;
        const int64_t y = y0[at], x = x0[at];
        const float ax = fx[at], ay = fy[at];
        if (n == 1 && y >= 0 && y < h - 1 && x >= 0 && x < w - 1) {  // one frame, all four neighbours on it
          const T* p = frames + y * w + x;
          const float v00 = 0.0f + static_cast<float>(p[0]), v01 = 0.0f + static_cast<float>(p[1]);
          const float v10 = 0.0f + static_cast<float>(p[w]), v11 = 0.0f + static_cast<float>(p[w + 1]);
          if (std::isfinite(v00) && std::isfinite(v01) && std::isfinite(v10) && std::isfinite(v11)) {
            const float top = v00 * (one - ax) + v01 * ax;
            const float bottom = v10 * (one - ax) + v11 * ax;
            out[at] = top * (one - ay) + bottom * ay;
            continue;
          }
        }
        float v00 = 0.0f, v01 = 0.0f, v10 = 0.0f, v11 = 0.0f;
        add_pixel(frames, n, h, w, y, x, v00, nb);
        add_pixel(frames, n, h, w, y, x + 1, v01, nb);
        add_pixel(frames, n, h, w, y + 1, x, v10, nb);
        add_pixel(frames, n, h, w, y + 1, x + 1, v11, nb);
        const float top = v00 * (one - ax) + v01 * ax;
        const float bottom = v10 * (one - ax) + v11 * ax;
        out[at] = top * (one - ay) + bottom * ay;
      }
    }
    bad[worker] += nb;
  });
  int64_t total = 0;
  for (int64_t b : bad) total += b;
  return total;
}

#define GIXDRT_POLAR(T)                                                                                       \
  template int64_t polar_remap<T>(const T*, int64_t, int64_t, int64_t, const int32_t*, const int32_t*,      \
                                  const float*, const float*, int64_t, int64_t, float*, int);
GIXDRT_POLAR(float)
GIXDRT_POLAR(double)
GIXDRT_POLAR(uint16_t)
GIXDRT_POLAR(uint32_t)
GIXDRT_POLAR(int32_t)
GIXDRT_POLAR(uint8_t)
GIXDRT_POLAR(int16_t)
#undef GIXDRT_POLAR

}  // namespace gixdrt::kernels
