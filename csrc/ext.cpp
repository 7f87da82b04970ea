// gixdrt._ext: the compiled part of gixdrt. For now it reports how it was built; the RoIAlign
// kernels (CPU always, CUDA when nvcc is found) and the TensorRT plugin join it later.
#include <pybind11/pybind11.h>

#include <string>

namespace py = pybind11;

#ifdef GIXDRT_WITH_CUDA
namespace gixdrt::cuda {
int probe_compiled();  // defined in csrc/cuda/probe.cu
}
#endif

namespace {

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
  info["tensorrt_plugin"] = false;
  return info;
}

}  // namespace

PYBIND11_MODULE(_ext, m) {
  m.doc() = "gixdrt compiled extension";
  m.def("build_info", &build_info,
        "How the extension was built: compiler, pybind11 version, whether CUDA kernels were compiled "
        "(they can be compiled without a GPU) and whether the TensorRT plugin was built.");
}
