// gixdrt._ext: the compiled part of gixdrt: how it was built, the CPU kernels of gixdrt.kernels (the `cpu`
// backend: polar remap, hole filling, contrast chain, CLAHE, box kernels, RoIAlign) and the CUDA RoIAlign kernel
// (when nvcc is found). The TensorRT plugin is a separate library (csrc/trt, gixdrt.engine.plugins); build_info() says
// whether it was built.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/parallel.h"
#include "roi_align/roi_align.h"

namespace py = pybind11;

#ifdef GIXDRT_WITH_CUDA
namespace gixdrt::cuda {
int probe_compiled();  // defined in csrc/cuda/probe.cu
int device_count();    // defined in csrc/cuda/probe.cu
}
#endif

namespace {

namespace ra = gixdrt::roi_align;

#ifdef GIXDRT_WITH_CUDA
constexpr bool kRoiAlignCuda = true;
#else
constexpr bool kRoiAlignCuda = false;
#endif

// Whether CMake built the TensorRT plugin library (gixdrt_trt_plugins) next to this module.
#ifdef GIXDRT_TRT_PLUGIN
constexpr bool kTrtPlugin = true;
#else
constexpr bool kTrtPlugin = false;
#endif

py::dict build_info() {
  py::dict info;
  info["version"] = GIXDRT_VERSION;
  info["cxx_compiler"] = GIXDRT_CXX_COMPILER;
  info["pybind11"] = std::to_string(PYBIND11_VERSION_MAJOR) + "." + std::to_string(PYBIND11_VERSION_MINOR) +
                     "." + std::to_string(PYBIND11_VERSION_PATCH);
#ifdef GIXDRT_WITH_CUDA
  info["cuda"] = gixdrt::cuda::probe_compiled() == 1;
  info["cuda_compiler"] = GIXDRT_CUDA_COMPILER;
  info["cuda_architectures"] = GIXDRT_CUDA_ARCHS;
#else
  info["cuda"] = false;
  info["cuda_compiler"] = py::none();
  info["cuda_architectures"] = py::none();
#endif
  info["roi_align_cpu"] = true;
  info["cpu_kernels"] = true;
  info["roi_align_cuda"] = kRoiAlignCuda;
  info["cpu_threads"] = gixdrt::default_cpu_threads();
  info["trt_plugin"] = kTrtPlugin;
  info["tensorrt_plugin"] = kTrtPlugin;  // the key's earlier name, kept with the same value
  return info;
}

std::string shape_of(const py::array& a) {
  std::string s = "[";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + "]";
}

// A float32, C-contiguous array of `ndim` dimensions, or a clear TypeError/ValueError naming `name`.
py::array checked(const py::handle& obj, const char* name, py::ssize_t ndim, const char* layout) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string("roi_align_cpu: ") + name + " must be a NumPy array, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<float>()))
    throw py::type_error(std::string("roi_align_cpu: ") + name + " must be float32, got " +
                         std::string(py::str(a.dtype())) + " (convert explicitly with .astype(np.float32))");
  if (a.ndim() != ndim)
    throw py::value_error(std::string("roi_align_cpu: ") + name + " must be " + layout + ", got shape " + shape_of(a));
  if (!(a.flags() & py::array::c_style)) {
    std::string strides = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) strides += (i ? ", " : "") + std::to_string(a.strides(i));
    throw py::value_error(std::string("roi_align_cpu: ") + name + " must be C-contiguous, got strides " + strides +
                          ") bytes for shape " + shape_of(a) + " (copy explicitly with np.ascontiguousarray)");
  }
  return a;
}

void check_params(int64_t out_h, int64_t out_w, const char* fn) {
  if (out_h < 1 || out_w < 1)
    throw py::value_error(std::string(fn) + ": output size must be ≥ 1 × 1, got " + std::to_string(out_h) + " × " +
                          std::to_string(out_w));
}

// The kernels' parameters, after checking the output size (shared by the CPU and CUDA entry points).
ra::Params make_params(int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t out_h, int64_t out_w,
                       double scale_y, double scale_x, int64_t sampling_ratio, bool aligned, const char* fn) {
  check_params(out_h, out_w, fn);
  ra::Params p;
  p.n = n;
  p.c = c;
  p.h = h;
  p.w = w;
  p.k = k;
  p.out_h = out_h;
  p.out_w = out_w;
  p.scale_y = scale_y;
  p.scale_x = scale_x;
  p.sampling_ratio = sampling_ratio;
  p.aligned = aligned;
  return p;
}

// ---- the CPU kernels of gixdrt.kernels (the Python wrappers in gixdrt/kernels/cpu/ check the arguments;
// these checks only keep a wrong call from reading or writing out of bounds) -------------------------------

namespace gk = gixdrt::kernels;

// `obj` as a C-contiguous NumPy array of dtype T and the given shape (−1: any length), else a TypeError or
// ValueError naming `fn` and `name`; `output`: it must also be writeable.
template <typename T>
py::array_t<T> expect(const py::handle& obj, const char* fn, const char* name, const std::vector<int64_t>& shape,
                      bool output = false) {
  const std::string what = std::string(fn) + ": " + name;
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(what + " must be a NumPy array, got " + std::string(py::str(py::type::of(obj).attr("__name__"))));
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!py::isinstance<py::array_t<T>>(a))
    throw py::type_error(what + " must be " + std::string(py::str(py::dtype::of<T>())) + ", got " +
                         std::string(py::str(a.dtype())));
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || a.shape(i) == shape[i];
  if (!ok) {
    std::string want = "[";
    for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + (shape[i] < 0 ? std::string("*") : std::to_string(shape[i]));
    throw py::value_error(what + " must have shape " + want + "], got " + shape_of(a));
  }
  if (!(a.flags() & py::array::c_style)) throw py::value_error(what + " must be C-contiguous");
  if (output && !a.writeable()) throw py::value_error(what + " is read-only");
  return py::reinterpret_borrow<py::array_t<T>>(a);
}

template <typename T>
int64_t polar_remap_typed(const py::array& frames, const uint8_t* mask, double saturation, double extreme_value,
                          const py::array_t<int32_t>& y0, const py::array_t<int32_t>& x0, const py::array_t<float>& fy,
                          const py::array_t<float>& fx, py::array_t<float>& out, uint8_t* codes, int threads) {
  const auto* data = static_cast<const T*>(frames.data());
  const int64_t n = frames.shape(0), h = frames.shape(1), w = frames.shape(2);
  const int64_t rows = out.shape(0), cols = out.shape(1);
  float* o = out.mutable_data();
  py::gil_scoped_release release;
  return gk::polar_remap<T>(data, n, h, w, mask, saturation, extreme_value, y0.data(), x0.data(), fy.data(),
                            fx.data(), rows, cols, o, codes, threads);
}

int64_t polar_remap_cpu(const py::array& frames, const py::handle& y0_obj, const py::handle& x0_obj,
                        const py::handle& fy_obj, const py::handle& fx_obj, const py::handle& out_obj,
                        const py::handle& mask_obj, double saturation, const py::handle& masked_obj,
                        double extreme_value, int threads) {
  const char* fn = "polar_remap_cpu";
  if (frames.ndim() != 3 || !(frames.flags() & py::array::c_style))
    throw py::value_error("polar_remap_cpu: frames must be a C-contiguous [N, H, W] array, got " + shape_of(frames));
  auto out = expect<float>(out_obj, fn, "out", {-1, -1}, true);
  const std::vector<int64_t> map{out.shape(0), out.shape(1)};
  auto y0 = expect<int32_t>(y0_obj, fn, "y0", map);
  auto x0 = expect<int32_t>(x0_obj, fn, "x0", map);
  auto fy = expect<float>(fy_obj, fn, "fy", map);
  auto fx = expect<float>(fx_obj, fn, "fx", map);
  const uint8_t* mask = nullptr;
  py::array_t<uint8_t> mask_arr;
  if (!mask_obj.is_none()) {
    mask_arr = expect<uint8_t>(mask_obj, fn, "mask", {frames.shape(1), frames.shape(2)});
    mask = mask_arr.data();
  }
  if (extreme_value < 0) throw py::value_error("polar_remap_cpu: extreme_value must be ≥ 0 (or NaN: not counted)");
  uint8_t* codes = nullptr;
  py::array_t<uint8_t> codes_arr;
  if (!masked_obj.is_none()) {
    codes_arr = expect<uint8_t>(masked_obj, fn, "masked", map, true);
    codes = codes_arr.mutable_data();
  }
#define GIXDRT_CALL(T)                                                                                         \
  if (py::isinstance<py::array_t<T>>(frames))                                                                  \
    return polar_remap_typed<T>(frames, mask, saturation, extreme_value, y0, x0, fy, fx, out, codes, threads);
  GIXDRT_CALL(float)
  GIXDRT_CALL(double)
  GIXDRT_CALL(uint16_t)
  GIXDRT_CALL(uint32_t)
  GIXDRT_CALL(int32_t)
  GIXDRT_CALL(uint8_t)
  GIXDRT_CALL(int16_t)
#undef GIXDRT_CALL
  throw py::type_error("polar_remap_cpu: unsupported frame dtype " + std::string(py::str(frames.dtype())));
}

void fill_holes_cpu(const py::handle& polar_obj, const py::handle& masked_obj, int threads) {
  const char* fn = "fill_holes_cpu";
  auto polar = expect<float>(polar_obj, fn, "polar", {-1, -1, -1}, true);
  const int64_t n = polar.shape(0), h = polar.shape(1), w = polar.shape(2);
  auto masked = expect<uint8_t>(masked_obj, fn, "masked", {n, h, w});
  float* p = polar.mutable_data();
  const uint8_t* m = masked.data();
  py::gil_scoped_release release;
  gk::fill_holes(p, m, n, h, w, threads);
}

py::tuple contrast_cpu(const py::handle& polar_obj, float coef, int64_t clip, bool log, const py::handle& out_obj,
                       int threads) {
  const char* fn = "contrast_cpu";
  auto polar = expect<float>(polar_obj, fn, "polar", {-1, -1});
  auto out = expect<float>(out_obj, fn, "out", {polar.shape(0), polar.shape(1)}, true);
  if (polar.size() == 0) throw py::value_error("contrast_cpu: the image is empty");
  gk::ContrastResult r;
  {
    const float* p = polar.data();
    float* o = out.mutable_data();
    const int64_t size = polar.size();
    py::gil_scoped_release release;
    r = gk::contrast(p, size, coef, clip, log, o, threads);
  }
  const bool any_finite = r.n_bad < polar.size();
  return py::make_tuple(r.n_bad, any_finite ? py::cast(r.vmin) : py::none(), any_finite ? py::cast(r.vmax) : py::none(),
                        r.one_level);
}

py::object contrast_levels_cpu(const py::handle& polar_obj, float coef, bool log, int threads) {
  auto polar = expect<float>(polar_obj, "contrast_levels_cpu", "polar", {-1});
  py::array_t<uint16_t> u(polar.shape(0));
  std::vector<float> a(polar.size());
  bool ok;
  {
    const float* p = polar.data();
    uint16_t* pu = u.mutable_data();
    const int64_t size = polar.size();
    py::gil_scoped_release release;
    ok = gk::contrast_levels(p, size, coef, log, a.data(), pu, threads);
  }
  if (!ok) return py::none();
  return u;
}

template <typename T>
void clahe_typed(const py::handle& image_obj, int64_t bins, int64_t tiles_x, int64_t tiles_y, int64_t th, int64_t tw,
                 int64_t clip, const py::handle& out_obj, int threads) {
  const char* fn = "clahe_cpu";
  auto image = expect<T>(image_obj, fn, "image", {-1, -1});
  auto out = expect<T>(out_obj, fn, "out", {image.shape(0), image.shape(1)}, true);
  const int64_t h = image.shape(0), w = image.shape(1);
  if (bins != (sizeof(T) == 1 ? 256 : 65536)) throw py::value_error("clahe_cpu: bins does not match the dtype");
  if (tiles_x < 1 || tiles_y < 1 || th < 1 || tw < 1 || tiles_y * th < h || tiles_x * tw < w)
    throw py::value_error("clahe_cpu: the tiles must cover the image");
  const T* src = image.data();
  T* dst = out.mutable_data();
  py::gil_scoped_release release;
  gk::clahe<T>(src, h, w, bins, tiles_x, tiles_y, th, tw, clip, dst, threads);
}

void clahe_cpu(const py::array& image, int64_t bins, int64_t tiles_x, int64_t tiles_y, int64_t th, int64_t tw,
               int64_t clip, const py::handle& out, int threads) {
  if (py::isinstance<py::array_t<uint8_t>>(image)) return clahe_typed<uint8_t>(image, bins, tiles_x, tiles_y, th, tw, clip, out, threads);
  if (py::isinstance<py::array_t<uint16_t>>(image)) return clahe_typed<uint16_t>(image, bins, tiles_x, tiles_y, th, tw, clip, out, threads);
  throw py::type_error("clahe_cpu: image dtype must be uint8 or uint16, got " + std::string(py::str(image.dtype())));
}

void decode_topk_cpu(const py::handle& logits_obj, const py::handle& deltas_obj, const py::handle& anchors_obj,
                     const py::handle& starts_obj, int64_t k, float height, float width, float clip, float min_size,
                     const py::handle& boxes_obj, const py::handle& scores_obj, const py::handle& levels_obj,
                     const py::handle& valid_obj, int threads) {
  const char* fn = "decode_topk_cpu";
  auto logits = expect<float>(logits_obj, fn, "logits", {-1, -1});
  const int64_t n = logits.shape(0), a = logits.shape(1);
  auto deltas = expect<float>(deltas_obj, fn, "deltas", {n, a, 4});
  auto anchors = expect<float>(anchors_obj, fn, "anchors", {a, 4});
  auto starts = expect<int64_t>(starts_obj, fn, "level_starts", {-1});
  const int64_t levels = starts.shape(0) - 1;
  if (levels < 0 || k < 0) throw py::value_error("decode_topk_cpu: need level_starts[L + 1] and k ≥ 0");
  const int64_t* st = starts.data();
  if (st[0] != 0 || st[levels] != a) throw py::value_error("decode_topk_cpu: level_starts must rise from 0 to A");
  for (int64_t l = 0; l < levels; ++l)
    if (st[l + 1] < st[l]) throw py::value_error("decode_topk_cpu: level_starts must rise from 0 to A");
  const int64_t m = levels * k;
  auto boxes = expect<float>(boxes_obj, fn, "boxes", {n, m, 4}, true);
  auto scores = expect<float>(scores_obj, fn, "scores", {n, m}, true);
  auto level = expect<int32_t>(levels_obj, fn, "levels", {n, m}, true);
  auto valid = expect<int32_t>(valid_obj, fn, "valid", {n}, true);
  const float *lg = logits.data(), *dl = deltas.data(), *an = anchors.data();
  float *bo = boxes.mutable_data(), *sc = scores.mutable_data();
  int32_t *lv = level.mutable_data(), *va = valid.mutable_data();
  py::gil_scoped_release release;
  gk::decode_topk(lg, dl, an, n, a, st, levels, k, height, width, clip, min_size, bo, sc, lv, va, threads);
}

void nms_fixed_cpu(const py::handle& boxes_obj, const py::handle& scores_obj, const py::handle& valid_obj,
                   const py::handle& groups_obj, double iou, int64_t max_out, const py::handle& keep_obj,
                   const py::handle& count_obj, int threads) {
  const char* fn = "nms_fixed_cpu";
  auto boxes = expect<float>(boxes_obj, fn, "boxes", {-1, -1, 4});
  const int64_t n = boxes.shape(0), m = boxes.shape(1);
  auto scores = expect<float>(scores_obj, fn, "scores", {n, m});
  auto valid = expect<int64_t>(valid_obj, fn, "valid", {n});
  if (max_out < 0) throw py::value_error("nms_fixed_cpu: max_out must be ≥ 0");
  const int64_t* g = nullptr;
  py::array_t<int64_t> groups;
  if (!groups_obj.is_none()) {
    groups = expect<int64_t>(groups_obj, fn, "groups", {n, m});
    g = groups.data();
  }
  auto keep = expect<int32_t>(keep_obj, fn, "keep_idx", {n, max_out}, true);
  auto count = expect<int32_t>(count_obj, fn, "count", {n}, true);
  const float *bo = boxes.data(), *sc = scores.data();
  const int64_t* va = valid.data();
  int32_t *ke = keep.mutable_data(), *co = count.mutable_data();
  py::gil_scoped_release release;
  gk::nms_fixed(bo, sc, va, g, n, m, iou, max_out, ke, co, threads);
}

void decode_final_cpu(const py::handle& logits_obj, const py::handle& deltas_obj, const py::handle& proposals_obj,
                      const py::handle& valid_obj, float height, float width, float score_threshold, float clip,
                      float min_size, const py::handle& boxes_obj, const py::handle& scores_obj,
                      const py::handle& count_obj, int threads) {
  const char* fn = "decode_final_cpu";
  auto logits = expect<float>(logits_obj, fn, "logits", {-1, -1});
  const int64_t n = logits.shape(0), r = logits.shape(1);
  auto deltas = expect<float>(deltas_obj, fn, "deltas", {n, r, 4});
  auto proposals = expect<float>(proposals_obj, fn, "proposals", {n, r, 4});
  auto valid = expect<int64_t>(valid_obj, fn, "valid", {n});
  auto boxes = expect<float>(boxes_obj, fn, "boxes", {n, r, 4}, true);
  auto scores = expect<float>(scores_obj, fn, "scores", {n, r}, true);
  auto count = expect<int32_t>(count_obj, fn, "count", {n}, true);
  const float *lg = logits.data(), *dl = deltas.data(), *pr = proposals.data();
  const int64_t* va = valid.data();
  float *bo = boxes.mutable_data(), *sc = scores.mutable_data();
  int32_t* co = count.mutable_data();
  py::gil_scoped_release release;
  gk::decode_final(lg, dl, pr, va, n, r, height, width, score_threshold, clip, min_size, bo, sc, co, threads);
}

py::array roi_align_cpu(const py::handle& features_obj, const py::handle& rois_obj, int64_t out_h, int64_t out_w,
                        double scale_y, double scale_x, int64_t sampling_ratio, bool aligned, int threads,
                        const py::object& out_obj, const py::object& valid_obj) {
  py::array features = checked(features_obj, "features", 4, "[N, C, H, W]");
  py::array rois = checked(rois_obj, "rois", 2, "[K, 5] (batch index, x0, y0, x1, y1)");
  if (rois.shape(1) != 5)
    throw py::value_error("roi_align_cpu: rois must be [K, 5] (batch index, x0, y0, x1, y1), got shape " +
                          shape_of(rois));
  const ra::Params p = make_params(features.shape(0), features.shape(1), features.shape(2), features.shape(3),
                                   rois.shape(0), out_h, out_w, scale_y, scale_x, sampling_ratio, aligned,
                                   "roi_align_cpu");

  const int32_t* valid = nullptr;
  py::array_t<int32_t> valid_arr;
  if (!valid_obj.is_none()) {
    valid_arr = expect<int32_t>(valid_obj, "roi_align_cpu", "valid", {p.n});
    if (p.n == 0 || p.k % p.n != 0)
      throw py::value_error("roi_align_cpu: with valid, the RoIs must be N groups of R rows (K = " + std::to_string(p.k) +
                            " is not a multiple of N = " + std::to_string(p.n) + ")");
    valid = valid_arr.data();
  }
  const auto* roi_data = static_cast<const float*>(rois.data());
  const int64_t bad = ra::first_invalid_roi(roi_data, p.k, p.n, valid);
  if (bad >= 0) {
    const float* r = roi_data + bad * 5;
    std::string why = "has a batch index outside [0, " + std::to_string(p.n) + ") or a non-finite coordinate";
    if (valid != nullptr) why += " (with valid, row i·R + j must have batch index i; R = " + std::to_string(p.k / p.n) + ")";
    throw py::value_error("roi_align_cpu: rois[" + std::to_string(bad) + "] = (" + std::to_string(r[0]) + ", " +
                          std::to_string(r[1]) + ", " + std::to_string(r[2]) + ", " + std::to_string(r[3]) + ", " +
                          std::to_string(r[4]) + ") " + why);
  }

  py::array out;
  const std::vector<py::ssize_t> shape{p.k, p.c, out_h, out_w};
  if (out_obj.is_none()) {
    out = py::array(py::dtype::of<float>(), shape);
  } else {
    out = checked(out_obj, "out", 4, "[K, C, out_h, out_w]");
    if (std::vector<py::ssize_t>(out.shape(), out.shape() + 4) != shape)
      throw py::value_error("roi_align_cpu: out must have shape [" + std::to_string(p.k) + ", " + std::to_string(p.c) +
                            ", " + std::to_string(out_h) + ", " + std::to_string(out_w) + "], got " + shape_of(out));
    if (!out.writeable()) throw py::value_error("roi_align_cpu: out is read-only");
  }
  const auto* feat_data = static_cast<const float*>(features.data());
  auto* out_data = static_cast<float*>(out.mutable_data());
  {
    py::gil_scoped_release release;  // the arrays stay referenced by this frame
    ra::forward_cpu(feat_data, roi_data, out_data, p, threads, valid);
  }
  return out;
}

#ifdef GIXDRT_WITH_CUDA
void roi_align_cuda(std::uintptr_t features_ptr, std::uintptr_t rois_ptr, std::uintptr_t out_ptr, int64_t n,
                    int64_t c, int64_t h, int64_t w, int64_t k, int64_t out_h, int64_t out_w, double scale_y,
                    double scale_x, int64_t sampling_ratio, bool aligned, std::uintptr_t stream) {
  if (n < 0 || c < 0 || h < 0 || w < 0 || k < 0)
    throw py::value_error("roi_align_cuda: sizes must be ≥ 0, got N=" + std::to_string(n) + " C=" + std::to_string(c) +
                          " H=" + std::to_string(h) + " W=" + std::to_string(w) + " K=" + std::to_string(k));
  const ra::Params p = make_params(n, c, h, w, k, out_h, out_w, scale_y, scale_x, sampling_ratio, aligned,
                                   "roi_align_cuda");
  if (k > 0 && c > 0 && (out_ptr == 0 || rois_ptr == 0 || (h > 0 && w > 0 && features_ptr == 0)))
    throw py::value_error("roi_align_cuda: null device pointer");
  py::gil_scoped_release release;
  ra::forward_cuda(reinterpret_cast<const float*>(features_ptr), reinterpret_cast<const float*>(rois_ptr),
                   reinterpret_cast<float*>(out_ptr), p, reinterpret_cast<void*>(stream));
}
#endif

}  // namespace

PYBIND11_MODULE(_ext, m) {
  m.doc() = "gixdrt compiled extension";
  m.def("build_info", &build_info,
        "How the extension was built: compiler, pybind11 version, whether CUDA kernels were compiled "
        "(they can be compiled without a GPU), which RoIAlign kernels exist, the default CPU thread count and "
        "whether the TensorRT plugin library was built ('trt_plugin').");
  m.def("roi_align_cpu", &roi_align_cpu, py::arg("features"), py::arg("rois"), py::arg("out_h"), py::arg("out_w"),
        py::arg("scale_y"), py::arg("scale_x"), py::arg("sampling_ratio"), py::arg("aligned"), py::arg("threads") = 0,
        py::arg("out") = py::none(), py::arg("valid") = py::none(),
        "RoIAlign forward on the CPU (torchvision semantics, average pooling).\n\n"
        "features: float32[N, C, H, W] C-contiguous; rois: float32[K, 5] (batch index, x0, y0, x1, y1) in input "
        "pixels, scaled by (scale_x, scale_y) → float32[K, C, out_h, out_w] (written into `out` if given). "
        "sampling_ratio ≤ 0: adaptive; threads ≤ 0: build_info()['cpu_threads']. valid: optional int32[N]: the "
        "rows are N groups of R = K / N, row i·R + j of image i (batch index i), rows with j ≥ valid[i] are "
        "skipped (left as they are). Releases the GIL.");
  m.def("polar_remap_cpu", &polar_remap_cpu, py::arg("frames"), py::arg("y0"), py::arg("x0"), py::arg("fy"),
        py::arg("fx"), py::arg("out"), py::arg("mask") = py::none(),
        py::arg("saturation") = std::numeric_limits<double>::quiet_NaN(), py::arg("masked") = py::none(),
        py::arg("extreme_value") = std::numeric_limits<double>::quiet_NaN(), py::arg("threads") = 0,
        "Polar remap with masked pixels (gixdrt.kernels.reference.polar.polar_remap): frames [N, H, W] (float32/64, "
        "uint8/16/32, int16/32) summed in float32 and sampled bilinearly through the map (y0, x0 int32, fy, fx "
        "float32) into out float32[rows, cols]. mask: uint8[H, W] (nonzero = masked) or None; saturation: values "
        ">= it are masked (NaN: none); masked: uint8[rows, cols] receiving the codes 0/1/2, or None. Returns how "
        "many values of unmasked neighbours beyond ±extreme_value were sampled, counted only when saturation is "
        "NaN (NaN extreme_value: not counted).");
  m.def("fill_holes_cpu", &fill_holes_cpu, py::arg("polar"), py::arg("masked"), py::arg("threads") = 0,
        "Fill the holes (masked == 2) of polar float32[N, H, W] in place from the nearest pixels that are not holes "
        "along φ and |Q| (gixdrt.kernels.reference.polar.fill_holes); masked: uint8[N, H, W].");
  m.def("contrast_cpu", &contrast_cpu, py::arg("polar"), py::arg("coef"), py::arg("clip"), py::arg("log"),
        py::arg("out"), py::arg("threads") = 0,
        "The contrast chain (gixdrt.kernels.reference.contrast.contrast) of polar float32[H, W] into out; clip: "
        "the clip count of the 65,536-bin histogram (0 = off). Returns (n_bad, vmin, vmax, one_level): non-finite "
        "pixel count, finite extrema (None without finite pixels), whether CLAHE mapped every pixel to one level. "
        "Degenerate images (no finite pixel, constant, one level) give zeros.");
  m.def("contrast_levels_cpu", &contrast_levels_cpu, py::arg("polar"), py::arg("coef"), py::arg("log"),
        py::arg("threads") = 0,
        "The 16-bit levels u of the contrast chain for polar float32[N] (uint16[N]), or None when the image has "
        "no two distinct finite values.");
  m.def("clahe_cpu", &clahe_cpu, py::arg("image"), py::arg("bins"), py::arg("tiles_x"), py::arg("tiles_y"),
        py::arg("th"), py::arg("tw"), py::arg("clip"), py::arg("out"), py::arg("threads") = 0,
        "CLAHE with OpenCV's semantics (gixdrt.kernels.reference.contrast.clahe) of a uint8/uint16 image into out: "
        "tiles of th × tw pixels of the BORDER_REFLECT_101 extension, clip count `clip` (0 = off).");
  m.def("decode_topk_cpu", &decode_topk_cpu, py::arg("logits"), py::arg("deltas"), py::arg("anchors"),
        py::arg("level_starts"), py::arg("k"), py::arg("height"), py::arg("width"), py::arg("bbox_clip"),
        py::arg("min_size"), py::arg("boxes"), py::arg("scores"), py::arg("levels"), py::arg("valid"),
        py::arg("threads") = 0, "decode_topk (gixdrt.kernels.reference.boxes) into the given output arrays.");
  m.def("nms_fixed_cpu", &nms_fixed_cpu, py::arg("boxes"), py::arg("scores"), py::arg("valid"), py::arg("groups"),
        py::arg("iou"), py::arg("max_out"), py::arg("keep_idx"), py::arg("count"), py::arg("threads") = 0,
        "nms_fixed (gixdrt.kernels.reference.boxes) into the given output arrays; valid and groups int64.");
  m.def("decode_final_cpu", &decode_final_cpu, py::arg("logits"), py::arg("deltas"), py::arg("proposals"),
        py::arg("valid"), py::arg("height"), py::arg("width"), py::arg("score_threshold"), py::arg("bbox_clip"),
        py::arg("min_size"), py::arg("boxes"), py::arg("scores"), py::arg("count"), py::arg("threads") = 0,
        "decode_final (gixdrt.kernels.reference.boxes) into the given output arrays; valid int64.");
#ifdef GIXDRT_WITH_CUDA
  m.def("cuda_device_count", &gixdrt::cuda::device_count,
        "Number of CUDA devices the CUDA runtime sees (0 without a GPU or driver). Needs no Numba or CuPy.");
  m.def("roi_align_cuda", &roi_align_cuda, py::arg("features_ptr"), py::arg("rois_ptr"), py::arg("out_ptr"),
        py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("K"), py::arg("out_h"), py::arg("out_w"),
        py::arg("scale_y"), py::arg("scale_x"), py::arg("sampling_ratio"), py::arg("aligned"), py::arg("stream") = 0,
        "RoIAlign forward on CUDA device pointers (float32, C-contiguous; same layout as roi_align_cpu), launched "
        "asynchronously on `stream` (a cudaStream_t as an int; 0 = legacy default stream). RoIs with a batch index "
        "outside [0, N) pool to NaN. Releases the GIL.");
#endif
}
