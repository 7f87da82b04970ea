// Proves that the CUDA toolchain compiled and linked into the extension. The kernels of the
// engine (RoIAlign) are added beside it; this file launches nothing.
#include <cuda_runtime.h>

namespace gixdrt::cuda {

__global__ void probe_kernel(int* flag) {
  if (threadIdx.x == 0 && blockIdx.x == 0) *flag = 1;
}

int probe_compiled() { return 1; }

// CUDA devices the runtime sees (0 without a GPU or driver: the error is cleared, nothing is thrown).
int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

}  // namespace gixdrt::cuda
