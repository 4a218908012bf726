// The CUDA runtime this build links statically against the driver it finds.
#include <string>

#include "ops/cuda/cuda_utils.cuh"

namespace mper::cuda {

int runtime_version() { return CUDART_VERSION; }

int driver_version() {
  int version = 0;
  return cudaDriverGetVersion(&version) == cudaSuccess ? version : 0;
}

void check_driver() {
  static const std::string problem = cuda_version_problem(driver_version(), runtime_version());
  if (!problem.empty()) throw std::runtime_error(problem);
}

}  // namespace mper::cuda
