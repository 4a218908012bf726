// Per-prototype sums and counts of embeddings on CUDA (docs/method.md, "Prototype
// update"), in one pass and without a host synchronisation.
//
// One thread owns V consecutive voxels (one aligned load per channel, as in the head
// kernels) and works out each voxel's bank row. Neighbouring voxels mostly share their
// row, so per warp only the few rows actually present are reduced: for each, every lane
// sums its own voxels of that row, a butterfly of shuffles adds the 32 lanes, and lane 0
// adds the total into the block's table in shared memory. Each block adds its table to
// global memory once at the end. Threads none of whose voxels take part skip the
// embedding reads altogether.
#include "ops/cuda/cuda_utils.cuh"

namespace mper::cuda {
namespace {

constexpr int kThreads = 256;
constexpr std::size_t kSharedLimit = 48 * 1024;

template <typename T, int DT, int V>
__global__ void __launch_bounds__(kThreads) accumulate_kernel(AccumulateArgs args) {
  extern __shared__ float table[];  // [row][D + 1]; column D holds the count
  const FeatureView& e = args.emb;
  const int rows = int(args.classes * args.protos_per_class), D = int(e.depth);
  for (int i = threadIdx.x; i < rows * (D + 1); i += kThreads) table[i] = 0.f;
  __syncthreads();

  const std::int64_t groups_per_image = e.voxels / V, groups = e.batch * groups_per_image;
  const std::int64_t stride = std::int64_t(gridDim.x) * kThreads;
  // the loop runs while any lane of the warp has work, so shuffles see every lane
  for (std::int64_t base = std::int64_t(blockIdx.x) * kThreads + (threadIdx.x & ~31); base < groups; base += stride) {
    const std::int64_t g = base + (threadIdx.x & 31);
    const std::int64_t b = g / groups_per_image, start = (g - b * groups_per_image) * V;
    int row[V];
    bool any = false;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      row[v] = g < groups ? int(accumulate_row(args, b, start + v)) : -1;
      any |= row[v] >= 0;
    }
    float z[DT][V];
    const T* src = reinterpret_cast<const T*>(e.data) + b * e.batch_stride + start;
#pragma unroll
    for (int d = 0; d < DT; ++d) {
      if (any && d < D) {
        load_pack<T, V>(src + d * e.channel_stride, z[d]);
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v) z[d][v] = 0.f;
      }
    }
    for (int r = 0; r < rows; ++r) {
      bool mine = false;
#pragma unroll
      for (int v = 0; v < V; ++v) mine |= row[v] == r;
      if (!__any_sync(0xffffffffu, mine)) continue;
      float total[DT + 1];
#pragma unroll
      for (int d = 0; d <= DT; ++d) total[d] = 0.f;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        // a select, not a product with 0: a NaN or Inf of another row must not reach this one
        const bool take = row[v] == r;
#pragma unroll
        for (int d = 0; d < DT; ++d) total[d] += take ? z[d][v] : 0.f;
        total[DT] += take ? 1.f : 0.f;
      }
#pragma unroll
      for (int d = 0; d <= DT; ++d)
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) total[d] += __shfl_xor_sync(0xffffffffu, total[d], offset);
      if ((threadIdx.x & 31) == 0) {
#pragma unroll
        for (int d = 0; d < DT; ++d)
          if (d < D) atomicAdd(&table[r * (D + 1) + d], total[d]);
        atomicAdd(&table[r * (D + 1) + D], total[DT]);
      }
    }
  }
  __syncthreads();
  float* sums = reinterpret_cast<float*>(args.sums);
  float* counts = reinterpret_cast<float*>(args.counts);
  for (int i = threadIdx.x; i < rows * (D + 1); i += kThreads) {
    const int r = i / (D + 1), d = i % (D + 1);
    if (table[i] != 0.f) atomicAdd(d < D ? &sums[r * D + d] : &counts[r], table[i]);
  }
}

// Fallback for deep features or large banks: one global atomic per voxel and channel.
template <typename T>
__global__ void accumulate_global_kernel(AccumulateArgs args) {
  const FeatureView& e = args.emb;
  float* sums = reinterpret_cast<float*>(args.sums);
  float* counts = reinterpret_cast<float*>(args.counts);
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < e.batch * e.voxels;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t b = i / e.voxels, n = i % e.voxels;
    const int row = int(accumulate_row(args, b, n));
    if (row < 0) continue;
    const T* src = reinterpret_cast<const T*>(e.data) + b * e.batch_stride + n;
    for (int d = 0; d < e.depth; ++d) atomicAdd(&sums[row * e.depth + d], to_float(src[d * e.channel_stride]));
    atomicAdd(&counts[row], 1.f);
  }
}

template <typename T>
bool packs(const FeatureView& f, int per_thread) {
  return f.voxels % per_thread == 0 && f.batch_stride % per_thread == 0 && f.channel_stride % per_thread == 0 &&
         aligned(f.data, per_thread * sizeof(T));
}

template <typename T, int DT, int V>
void launch(const AccumulateArgs& args, std::size_t shared) {
  const std::int64_t blocks = (args.emb.batch * (args.emb.voxels / V) + kThreads - 1) / kThreads;
  const int grid = int(std::max<std::int64_t>(1, std::min<std::int64_t>(blocks, 4 * multiprocessor_count())));
  accumulate_kernel<T, DT, V><<<grid, kThreads, shared, as_stream(args.stream)>>>(args);
}

}  // namespace

void accumulate(const AccumulateArgs& args) {
  check_driver();
  check_accumulate_addresses(args);
  const FeatureView& e = args.emb;
  const std::size_t shared = std::size_t(args.classes * args.protos_per_class) * (e.depth + 1) * sizeof(float);
  dispatch_cuda(args.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (shared > kSharedLimit || e.depth > 64) {
      accumulate_global_kernel<T><<<8 * multiprocessor_count(), kThreads, 0, as_stream(args.stream)>>>(args);
    } else if (e.depth <= 16 && packs<T>(e, 4)) {
      launch<T, 16, 4>(args, shared);
    } else if (e.depth <= 32 && packs<T>(e, 2)) {
      launch<T, 32, 2>(args, shared);
    } else {
      launch<T, 64, 1>(args, shared);
    }
    check_cuda(cudaGetLastError(), "accumulate");
  });
}

}  // namespace mper::cuda
