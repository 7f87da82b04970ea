// Proposal-stage box kernels on the CPU: the specification is gixdrt.kernels.reference.boxes
// (decode_topk, nms_fixed, decode_final). Box arithmetic is float32 in the reference's order; NaN propagates
// through min/max as in NumPy, so a NaN box is dropped by the size test and its IoU never suppresses.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels.h"
#include "parallel.h"

namespace gixdrt::kernels {

namespace {

// NaN-propagating minimum / maximum (np.minimum, np.maximum).
inline float nan_min(float a, float b) { return (a < b || std::isnan(a)) ? a : b; }
inline float nan_max(float a, float b) { return (a > b || std::isnan(a)) ? a : b; }
// np.clip(x, lo, hi) for lo ≤ hi, NaN stays NaN.
inline float clip_to(float x, float lo, float hi) { return nan_min(nan_max(x, lo), hi); }

struct Box {
  float x0, y0, x1, y1;
};

// One box from deltas d[4] relative to ref[4], clipped to [0, fw] × [0, fh] (reference decode_clip):
//   w = x1 − x0, cx = x0 + 0.5·w, pcx = dx·w + cx, hw = 0.5·(exp(min(dw, clip))·w); box = pcx ∓ hw (same in y).
inline Box decode_clip(const float* ref, const float* d, float clip, float fw, float fh) {
  const float half = 0.5f, zero = 0.0f;
  const float w = ref[2] - ref[0];
  const float h = ref[3] - ref[1];
  const float cx = ref[0] + half * w;
  const float cy = ref[1] + half * h;
  const float pcx = d[0] * w + cx;
  const float pcy = d[1] * h + cy;
  const float hw = half * (std::exp(nan_min(d[2], clip)) * w);
  const float hh = half * (std::exp(nan_min(d[3], clip)) * h);
  return {clip_to(pcx - hw, zero, fw), clip_to(pcy - hh, zero, fh), clip_to(pcx + hw, zero, fw),
          clip_to(pcy + hh, zero, fh)};
}

inline bool big_enough(const Box& b, float min_size) {
  return (b.x1 - b.x0) >= min_size && (b.y1 - b.y0) >= min_size;  // false for NaN
}

// fp32 1/(1 + exp(−x)), as torch.sigmoid computes it (it saturates to 1 for x ≳ 16.6)
inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// The order of reference.boxes.descending_order (a stable sort of −values): decreasing value, NaN last, ties
// by lower index. A strict total order on indices, so any sort gives the stable sort's result.
struct Descending {
  const float* v;
  bool operator()(int64_t i, int64_t j) const {
    const float a = v[i], b = v[j];
    const bool na = std::isnan(a), nb = std::isnan(b);
    if (na || nb) return (na == nb) ? i < j : nb;
    if (a != b) return a > b;
    return i < j;
  }
};

}  // namespace

void decode_topk(const float* logits, const float* deltas, const float* anchors, int64_t n, int64_t a,
                 const int64_t* starts, int64_t levels, int64_t k, float height, float width, float clip,
                 float min_size, float* boxes, float* scores, int32_t* level, int32_t* valid, int threads) {
  const int64_t m = levels * k;
  // per (image, level) job: its top-k decoded at [i, l·k, l·k + k) of these, compacted per image below
  std::vector<Box> tmp_boxes(n * m);
  std::vector<float> tmp_scores(n * m);
  std::vector<char> ok(n * m, 0);
  const int64_t jobs = n * levels;
  const int workers = worker_count(jobs, threads);
  std::vector<std::vector<int64_t>> scratch(workers);
  parallel_for(jobs, workers, 1, [&](int64_t begin, int64_t end, int worker) {
    std::vector<int64_t>& idx = scratch[worker];
    for (int64_t job = begin; job < end; ++job) {
      const int64_t i = job / levels, l = job % levels;
      const int64_t lo = starts[l], count = starts[l + 1] - lo;
      const int64_t take = std::min(k, count);
      const float* lg = logits + i * a + lo;
      idx.resize(count);
      std::iota(idx.begin(), idx.end(), int64_t{0});
      const Descending before{lg};
      if (take < count) std::nth_element(idx.begin(), idx.begin() + take, idx.end(), before);
      std::sort(idx.begin(), idx.begin() + take, before);
      for (int64_t r = 0; r < take; ++r) {
        const int64_t q = lo + idx[r];
        const Box b = decode_clip(anchors + q * 4, deltas + (i * a + q) * 4, clip, width, height);
        const int64_t p = i * m + l * k + r;
        tmp_boxes[p] = b;
        tmp_scores[p] = sigmoid(logits[i * a + q]);
        ok[p] = big_enough(b, min_size);
      }
    }
  });
  for (int64_t i = 0; i < n; ++i) {  // survivors to the front, level by level; padding 0 and level −1
    int64_t c = 0;
    for (int64_t p = 0; p < m; ++p) {
      if (!ok[i * m + p]) continue;
      const Box& b = tmp_boxes[i * m + p];
      float* o = boxes + (i * m + c) * 4;
      o[0] = b.x0;
      o[1] = b.y0;
      o[2] = b.x1;
      o[3] = b.y1;
      scores[i * m + c] = tmp_scores[i * m + p];
      level[i * m + c] = static_cast<int32_t>(p / k);
      ++c;
    }
    std::fill(boxes + (i * m + c) * 4, boxes + (i + 1) * m * 4, 0.0f);
    std::fill(scores + i * m + c, scores + (i + 1) * m, 0.0f);
    std::fill(level + i * m + c, level + (i + 1) * m, -1);
    valid[i] = static_cast<int32_t>(c);
  }
}

void nms_fixed(const float* boxes, const float* scores, const int64_t* valid, const int64_t* groups, int64_t n,
               int64_t m, double iou, int64_t max_out, int32_t* keep, int32_t* count, int threads) {
  const int workers = worker_count(n, threads);
  parallel_for(n, workers, 1, [&](int64_t begin, int64_t end, int) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t v = std::min(std::max<int64_t>(valid[i], 0), m);
      const float* bx = boxes + i * m * 4;
      const int64_t* g = groups ? groups + i * m : nullptr;
      // entries by decreasing score (ties: lower index first, NaN last): rank r is entry order[r]
      std::vector<int64_t> order(v);
      std::iota(order.begin(), order.end(), int64_t{0});
      std::sort(order.begin(), order.end(), Descending{scores + i * m});
      // ranks grouped (stable: each group in rank order); boxes never suppress across groups, so each group
      // is a greedy NMS of its own, and a group's later members cannot reach the overall first max_out
      std::vector<int64_t> ranks(v);
      std::iota(ranks.begin(), ranks.end(), int64_t{0});
      if (g) std::stable_sort(ranks.begin(), ranks.end(), [&](int64_t r, int64_t s) { return g[order[r]] < g[order[s]]; });
      std::vector<float> x0(v), y0(v), x1(v), y1(v), area(v);
      std::vector<char> has_nan(v);
      for (int64_t t = 0; t < v; ++t) {
        const float* b = bx + order[ranks[t]] * 4;
        x0[t] = b[0];
        y0[t] = b[1];
        x1[t] = b[2];
        y1[t] = b[3];
        area[t] = (x1[t] - x0[t]) * (y1[t] - y0[t]);
        has_nan[t] = std::isnan(b[0]) || std::isnan(b[1]) || std::isnan(b[2]) || std::isnan(b[3]);
      }
      std::vector<char> removed(v, 0), kept(v, 0);  // removed: by position t; kept: by rank
      for (int64_t start = 0; start < v;) {
        int64_t stop = start + 1;
        while (stop < v && (!g || g[order[ranks[stop]]] == g[order[ranks[start]]])) ++stop;
        int64_t n_kept = 0;
        for (int64_t t = start; t < stop && n_kept < max_out; ++t) {
          if (removed[t]) continue;
          kept[ranks[t]] = 1;
          ++n_kept;
          // a NaN coordinate makes the reference's IoU NaN (its min/max propagate NaN), which never suppresses;
          // without NaN, std::min/max give the same values (up to the sign of a zero, which no comparison sees)
          if (has_nan[t]) continue;
          for (int64_t s = t + 1; s < stop; ++s) {
            if (removed[s] || has_nan[s]) continue;
            const float iw = std::max(0.0f, std::min(x1[t], x1[s]) - std::max(x0[t], x0[s]));
            const float ih = std::max(0.0f, std::min(y1[t], y1[s]) - std::max(y0[t], y0[s]));
            const float inter = iw * ih;
            const float overlap = inter / (area[t] + area[s] - inter);  // fp32; NaN (0/0) never suppresses
            if (static_cast<double>(overlap) > iou) removed[s] = 1;
          }
        }
        start = stop;
      }
      int64_t c = 0;
      for (int64_t r = 0; r < v && c < max_out; ++r)
        if (kept[r]) keep[i * max_out + c++] = static_cast<int32_t>(order[r]);
      std::fill(keep + i * max_out + c, keep + (i + 1) * max_out, -1);
      count[i] = static_cast<int32_t>(c);
    }
  });
}

void decode_final(const float* logits, const float* deltas, const float* proposals, const int64_t* valid,
                  int64_t n, int64_t r, float height, float width, float score_threshold, float clip,
                  float min_size, float* boxes, float* scores, int32_t* count, int threads) {
  const int workers = worker_count(n, threads);
  parallel_for(n, workers, 1, [&](int64_t begin, int64_t end, int) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t v = std::min(std::max<int64_t>(valid[i], 0), r);
      int64_t c = 0;
      for (int64_t j = 0; j < v; ++j) {
        const int64_t e = i * r + j;
        const Box b = decode_clip(proposals + e * 4, deltas + e * 4, clip, width, height);
        const float s = 2.0f * sigmoid(logits[e]) - 1.0f;
        if (!(s >= score_threshold && big_enough(b, min_size))) continue;
        float* o = boxes + (i * r + c) * 4;
        o[0] = b.x0;
        o[1] = b.y0;
        o[2] = b.x1;
        o[3] = b.y1;
        scores[i * r + c] = s;
        ++c;
      }
      std::fill(boxes + (i * r + c) * 4, boxes + (i + 1) * r * 4, 0.0f);
      std::fill(scores + i * r + c, scores + (i + 1) * r, 0.0f);
      count[i] = static_cast<int32_t>(c);
    }
  });
}

}  // namespace gixdrt::kernels
