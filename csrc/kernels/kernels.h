// CPU kernels of gixdrt (the `cpu` backend of gixdrt.kernels). Each follows its NumPy reference in
// src/gixdrt/kernels/reference/ operation by operation, in float32 where the reference is float32; the
// extension is compiled with floating-point contraction off (no FMA), so results are those of the reference.
// Arrays are C-contiguous; the Python wrappers (src/gixdrt/kernels/cpu/) check arguments and shapes.
// threads ≤ 0 means default_cpu_threads().
#pragma once

#include <cstdint>

namespace gixdrt::kernels {

// ---- polar remap (reference/polar.py: polar_remap, fill_holes) -----------------------------------------
// frames: T[n, h, w]; mask: uint8[h, w] (nonzero = masked) or nullptr; saturation: values ≥ it are masked (NaN:
// none); map: int32 y0, x0 and float32 fy, fx, each [rows, cols]; out: float32[rows, cols]; codes: uint8[rows,
// cols] (0 unmasked, 1 renormalised, 2 hole) or nullptr. Flag values (non-finite as float32; 2^bits − 1 for
// unsigned T; ±max for floating T) are always masked. Returns how many values of unmasked on-frame neighbours
// were sampled with |v| > extreme_value, counted only when saturation is NaN (0 otherwise).
template <typename T>
int64_t polar_remap(const T* frames, int64_t n, int64_t h, int64_t w, const uint8_t* mask, double saturation,
                    double extreme_value, const int32_t* y0, const int32_t* x0, const float* fy, const float* fx,
                    int64_t rows, int64_t cols, float* out, uint8_t* codes, int threads);

// polar: float32[n, h, w], masked: uint8[n, h, w] (2 = hole). Fills each hole (i, j) in place from the nearest
// pixels that are not holes, never from a filled value: a, b = the nearest such rows above and below in column j,
// c, d = the nearest such columns left and right in row i. Along φ (a and b exist): t = float(i − a) / float(b − a),
// vφ = L + (R − L)·t from L = polar[a, j], R = polar[b, j]; along |Q| (c and d exist) likewise vq from polar[i, c],
// polar[i, d]. Both: (vφ·float(d − c) + vq·float(b − a)) / float((b − a) + (d − c)); one: its estimate; neither:
// polar[a, j], polar[b, j], polar[i, c] or polar[i, d], the first that exists, else 0. Parallel over (image, block
// of 64 columns), then over (image, row). Throws std::length_error when h or w ≥ 2^31 − 1.
void fill_holes(float* polar, const uint8_t* masked, int64_t n, int64_t h, int64_t w, int threads);

// ---- contrast chain (reference/contrast.py: contrast) --------------------------------------------------
struct ContrastResult {
  int64_t n_bad = 0;       // non-finite pixels
  float vmin = 0, vmax = 0;  // finite extrema (meaningless when n_bad == size)
  bool zeros = false;      // the result is all zeros (no finite pixel, constant image or one CLAHE level)
  bool one_level = false;  // zeros because CLAHE mapped every pixel to one level
};

// polar: float32[size]; out: float32[size] (also the scratch of a). clip: the clip count of the 65,536-bin
// histogram (reference clip_count; 0 = off). Writes the chain's result, or zeros (see ContrastResult).
ContrastResult contrast(const float* polar, int64_t size, float coef, int64_t clip, bool log, float* out,
                        int threads);

// The 16-bit levels u of the chain (for an image with finite extrema vmin < vmax): u[size]. `a` is scratch
// float32[size]. Returns false (u untouched) when the image has no two distinct finite values.
bool contrast_levels(const float* polar, int64_t size, float coef, bool log, float* a, uint16_t* u, int threads);

// ---- CLAHE (reference/contrast.py: clahe) ---------------------------------------------------------------
// image, out: T[h, w] (uint8: bins 256, uint16: bins 65,536); tiles_x × tiles_y tiles of th × tw pixels of
// the image extended by BORDER_REFLECT_101 to (tiles_y·th) × (tiles_x·tw); clip: clip count (0 = off).
template <typename T>
void clahe(const T* image, int64_t h, int64_t w, int64_t bins, int64_t tiles_x, int64_t tiles_y, int64_t th,
           int64_t tw, int64_t clip, T* out, int threads);

// ---- box kernels (reference/boxes.py) -------------------------------------------------------------------
// logits float32[n, a], deltas float32[n, a, 4], anchors float32[a, 4], starts int64[levels + 1];
// outputs boxes float32[n, levels·k, 4], scores float32[n, levels·k], level int32[n, levels·k], valid int32[n].
void decode_topk(const float* logits, const float* deltas, const float* anchors, int64_t n, int64_t a,
                 const int64_t* starts, int64_t levels, int64_t k, float height, float width, float clip,
                 float min_size, float* boxes, float* scores, int32_t* level, int32_t* valid, int threads);

// boxes float32[n, m, 4], scores float32[n, m], valid int64[n], groups int64[n, m] or null;
// outputs keep int32[n, max_out], count int32[n]. A box is suppressed when (double)IoU > iou.
void nms_fixed(const float* boxes, const float* scores, const int64_t* valid, const int64_t* groups, int64_t n,
               int64_t m, double iou, int64_t max_out, int32_t* keep, int32_t* count, int threads);

// logits float32[n, r], deltas, proposals float32[n, r, 4], valid int64[n];
// outputs boxes float32[n, r, 4], scores float32[n, r], count int32[n].
void decode_final(const float* logits, const float* deltas, const float* proposals, const int64_t* valid,
                  int64_t n, int64_t r, float height, float width, float score_threshold, float clip,
                  float min_size, float* boxes, float* scores, int32_t* count, int threads);

}  // namespace gixdrt::kernels
