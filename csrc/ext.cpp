// gixdrt._ext: the compiled part of gixdrt: how it was built, the RoIAlign kernels (CPU always, CUDA when
// nvcc is found). The TensorRT plugin is a separate library (csrc/trt, gixdrt.engine.plugins); build_info()
// says whether it was built.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "roi_align/roi_align.h"

namespace py = pybind11;

#ifdef GIXDRT_WITH_CUDA
namespace gixdrt::cuda {
int probe_compiled();  // defined in csrc/cuda/probe.cu
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
  info["roi_align_cuda"] = kRoiAlignCuda;
  info["cpu_threads"] = ra::default_cpu_threads();
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

py::array roi_align_cpu(const py::handle& features_obj, const py::handle& rois_obj, int64_t out_h, int64_t out_w,
                        double scale_y, double scale_x, int64_t sampling_ratio, bool aligned, int threads,
                        const py::object& out_obj) {
  py::array features = checked(features_obj, "features", 4, "[N, C, H, W]");
  py::array rois = checked(rois_obj, "rois", 2, "[K, 5] (batch index, x0, y0, x1, y1)");
  if (rois.shape(1) != 5)
    throw py::value_error("roi_align_cpu: rois must be [K, 5] (batch index, x0, y0, x1, y1), got shape " +
                          shape_of(rois));
  const ra::Params p = make_params(features.shape(0), features.shape(1), features.shape(2), features.shape(3),
                                   rois.shape(0), out_h, out_w, scale_y, scale_x, sampling_ratio, aligned,
                                   "roi_align_cpu");

  const auto* roi_data = static_cast<const float*>(rois.data());
  const int64_t bad = ra::first_invalid_roi(roi_data, p.k, p.n);
  if (bad >= 0) {
    const float* r = roi_data + bad * 5;
    throw py::value_error("roi_align_cpu: rois[" + std::to_string(bad) + "] = (" + std::to_string(r[0]) + ", " +
                          std::to_string(r[1]) + ", " + std::to_string(r[2]) + ", " + std::to_string(r[3]) + ", " +
                          std::to_string(r[4]) + ") has a batch index outside [0, " + std::to_string(p.n) +
                          ") or a non-finite coordinate");
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
    ra::forward_cpu(feat_data, roi_data, out_data, p, threads);
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
        py::arg("out") = py::none(),
        "RoIAlign forward on the CPU (torchvision semantics, average pooling).\n\n"
        "features: float32[N, C, H, W] C-contiguous; rois: float32[K, 5] (batch index, x0, y0, x1, y1) in input "
        "pixels, scaled by (scale_x, scale_y) → float32[K, C, out_h, out_w] (written into `out` if given). "
        "sampling_ratio ≤ 0: adaptive; threads ≤ 0: build_info()['cpu_threads']. Releases the GIL.");
#ifdef GIXDRT_WITH_CUDA
  m.def("roi_align_cuda", &roi_align_cuda, py::arg("features_ptr"), py::arg("rois_ptr"), py::arg("out_ptr"),
        py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("K"), py::arg("out_h"), py::arg("out_w"),
        py::arg("scale_y"), py::arg("scale_x"), py::arg("sampling_ratio"), py::arg("aligned"), py::arg("stream") = 0,
        "RoIAlign forward on CUDA device pointers (float32, C-contiguous; same layout as roi_align_cpu), launched "
        "asynchronously on `stream` (a cudaStream_t as an int; 0 = legacy default stream). RoIs with a batch index "
        "outside [0, N) pool to NaN. Releases the GIL.");
#endif
}
