// EMA update of the prototype bank on CUDA: p <- m p + (1 - m) sums / count on rows whose
// count is positive. The counts are read on the device, so no host synchronisation.
#include "ops/cuda/cuda_utils.cuh"

namespace mper::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void ema_kernel(EmaArgs args) {
  float* bank = reinterpret_cast<float*>(args.prototypes);
  const float* sums = reinterpret_cast<const float*>(args.sums);
  const float* counts = reinterpret_cast<const float*>(args.counts);
  const float m = float(args.momentum);
  const std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (i >= args.rows * args.depth) return;
  const float count = counts[i / args.depth];
  if (count > 0.f) bank[i] = m * bank[i] + (1.f - m) * (sums[i] / count);
}

}  // namespace

void ema_update(const EmaArgs& args) {
  check_driver();
  check_ema_addresses(args);
  check(args.dtype == DType::Float32, "ema_update: the bank must be float32 on CUDA");
  const std::int64_t elements = args.rows * args.depth;
  if (elements == 0) return;
  const int blocks = int((elements + kThreads - 1) / kThreads);
  ema_kernel<<<blocks, kThreads, 0, as_stream(args.stream)>>>(args);
  check_cuda(cudaGetLastError(), "ema_kernel");
}

}  // namespace mper::cuda
