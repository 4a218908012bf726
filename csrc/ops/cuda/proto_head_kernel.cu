// Fused prototype head on CUDA: classifier logits/assign and the InfoNCE loss from one
// read of the features (forward), and the gradient of both from one more (backward).
//
// One thread owns V consecutive voxels of one image. The features are channels-first, so
// for a fixed channel the warp's 32*V voxels are contiguous: every load is coalesced and
// V elements wide, and no permuted copy of the feature map is ever made. The unit-norm
// bank sits in shared memory, padded to DT (the depth rounded up to 16, 32, 64 or 128)
// so the unrolled channel loops need no bounds checks. Nothing of size N x C*K is ever
// stored: similarities are recomputed where needed (D multiply-adds each).
#include <cfloat>

#include "ops/cuda/cuda_utils.cuh"

namespace mper::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = kHeadWorkspaceFloats / 2;
constexpr float kLog2e = 1.4426950408889634f;

template <int DT>
__device__ void load_unit_bank(const HeadArgs& args, float* unit) {
  const float* bank = reinterpret_cast<const float*>(args.prototypes);
  const int rows = int(args.classes * args.protos_per_class), depth = int(args.feat.depth);
  for (int j = threadIdx.x; j < rows; j += blockDim.x) {
    float squared = 0.f;
    for (int d = 0; d < depth; ++d) squared += bank[j * depth + d] * bank[j * depth + d];
    const float norm = sqrtf(squared);
    const float scale = norm > 1e-12f ? 1.f / norm : 0.f;
    for (int d = 0; d < DT; ++d) unit[j * DT + d] = d < depth ? bank[j * depth + d] * scale : 0.f;
  }
  __syncthreads();
}

// The V voxels of one thread: unit features z^ (D x V) and 1/|z|.
template <typename T, int DT, int V>
struct VoxelGroup {
  float unit[DT][V];
  float inv_norm[V];
  std::int64_t batch, start;

  __device__ void load(const HeadArgs& args, std::int64_t group) {
    const FeatureView& f = args.feat;
    const std::int64_t groups_per_image = f.voxels / V;
    batch = group / groups_per_image;
    start = (group - batch * groups_per_image) * V;
    const T* src = reinterpret_cast<const T*>(f.data) + batch * f.batch_stride + start;
#pragma unroll
    for (int d = 0; d < DT; ++d) {
      if (d < f.depth) {
        load_pack<T, V>(src + d * f.channel_stride, unit[d]);
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v) unit[d][v] = 0.f;
      }
    }
#pragma unroll
    for (int v = 0; v < V; ++v) {
      float squared = 0.f;
#pragma unroll
      for (int d = 0; d < DT; ++d) squared = fmaf(unit[d][v], unit[d][v], squared);
      const float norm = sqrtf(squared);
      inv_norm[v] = norm > 1e-12f ? 1.f / norm : 0.f;
#pragma unroll
      for (int d = 0; d < DT; ++d) unit[d][v] *= inv_norm[v];
    }
  }

  // s[v] = cos(z_v, p_j)
  __device__ void similarity(const float* bank_row, float (&s)[V]) const {
#pragma unroll
    for (int v = 0; v < V; ++v) s[v] = 0.f;
#pragma unroll
    for (int d = 0; d < DT; ++d) {
      const float p = bank_row[d];
#pragma unroll
      for (int v = 0; v < V; ++v) s[v] = fmaf(p, unit[d][v], s[v]);
    }
  }
};

// Online log-sum-exp over the bank rows, in base 2 with the temperature folded in:
// after all rows, total = sum_j 2^((s_j - top) * scale) and nearest = argmax_j s_j.
template <int V>
struct NearestSoftmax {
  float top[V], total[V];
  int nearest[V];

  __device__ void reset() {
#pragma unroll
    for (int v = 0; v < V; ++v) top[v] = -FLT_MAX, total[v] = 0.f, nearest[v] = 0;
  }

  __device__ void add(int j, const float (&s)[V], float scale) {
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const float e = exp2f(-fabsf(s[v] - top[v]) * scale);
      const bool up = s[v] > top[v];
      total[v] = up ? fmaf(total[v], e, 1.f) : total[v] + e;
      nearest[v] = up ? j : nearest[v];
      top[v] = up ? s[v] : top[v];
    }
  }
};

template <int V>
__device__ void track_best(int k, const float (&s)[V], float (&best)[V], int (&arg)[V]) {
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const bool up = s[v] > best[v];
    best[v] = up ? s[v] : best[v];
    arg[v] = up ? k : arg[v];
  }
}

__device__ float block_sum(float value, float* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  value = threadIdx.x < blockDim.x / 32 ? scratch[threadIdx.x] : 0.f;
  if (warp == 0)
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  return value;
}

template <typename T, int DT, int V>
__global__ void __launch_bounds__(kThreads) head_forward_kernel(HeadArgs args) {
  extern __shared__ float unit_bank[];
  __shared__ float scratch[kThreads / 32];
  load_unit_bank<DT>(args, unit_bank);
  const int C = int(args.classes), K = int(args.protos_per_class);
  const std::int64_t N = args.feat.voxels, groups = args.feat.batch * (N / V);
  const float inv_tau = float(args.inv_tau), nce_scale = float(args.inv_nce_tau) * kLog2e;
  T* logits = reinterpret_cast<T*>(args.logits);
  std::int64_t* assign = reinterpret_cast<std::int64_t*>(args.assign);
  const bool want_loss = args.loss != 0;
  float loss_sum = 0.f, count = 0.f;

  for (std::int64_t g = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; g < groups;
       g += std::int64_t(gridDim.x) * blockDim.x) {
    VoxelGroup<T, DT, V> voxels;
    voxels.load(args, g);
    NearestSoftmax<V> softmax;
    softmax.reset();
    for (int c = 0; c < C; ++c) {
      float best[V], s[V];
      int arg[V];
#pragma unroll
      for (int v = 0; v < V; ++v) best[v] = -FLT_MAX, arg[v] = 0;
      for (int k = 0; k < K; ++k) {
        voxels.similarity(unit_bank + (c * K + k) * DT, s);
        track_best<V>(k, s, best, arg);
        if (want_loss) softmax.add(c * K + k, s, nce_scale);
      }
      const std::int64_t out = (voxels.batch * C + c) * N + voxels.start;
#pragma unroll
      for (int v = 0; v < V; ++v) best[v] *= inv_tau;
      if (logits) store_pack<T, V>(logits + out, best);
      if (assign) store_indices<V>(assign + out, arg);
    }
    if (!want_loss) continue;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      if (softmax.nearest[v] == args.ignore_index) continue;
      loss_sum += __logf(softmax.total[v]);
      count += 1.f;
    }
  }
  if (!want_loss) return;
  loss_sum = block_sum(loss_sum, scratch);
  count = block_sum(count, scratch);
  if (threadIdx.x == 0) {
    float* partials = reinterpret_cast<float*>(args.workspace);
    partials[2 * blockIdx.x] = loss_sum;
    partials[2 * blockIdx.x + 1] = count;
  }
}

// loss = sum of the per-block partials / max(count, 1); count is kept for the backward.
template <typename T>
__global__ void head_loss_finalize_kernel(HeadArgs args, int blocks) {
  __shared__ float scratch[kThreads / 32];
  const float* partials = reinterpret_cast<const float*>(args.workspace);
  float loss_sum = 0.f, count = 0.f;
  for (int i = threadIdx.x; i < blocks; i += blockDim.x) {
    loss_sum += partials[2 * i];
    count += partials[2 * i + 1];
  }
  loss_sum = block_sum(loss_sum, scratch);
  count = block_sum(count, scratch);
  if (threadIdx.x == 0) {
    *reinterpret_cast<T*>(args.loss) = from_float<T>(count > 0.f ? loss_sum / count : 0.f);
    *reinterpret_cast<float*>(args.count) = count;
  }
}

template <typename T, int DT, int V>
__global__ void __launch_bounds__(kThreads) head_backward_kernel(HeadArgs args) {
  extern __shared__ float unit_bank[];
  load_unit_bank<DT>(args, unit_bank);
  const int C = int(args.classes), K = int(args.protos_per_class);
  const std::int64_t N = args.feat.voxels, D = args.feat.depth, groups = args.feat.batch * (N / V);
  const float inv_tau = float(args.inv_tau), softmax_scale = float(args.inv_nce_tau) * kLog2e;
  const T* grad_logits = reinterpret_cast<const T*>(args.grad_logits);
  T* grad_feat = reinterpret_cast<T*>(args.grad_feat);
  // d loss / d s_j = nce_weight * (softmax_j - [j == nearest]) for a kept voxel
  float nce_weight = 0.f;
  if (args.grad_loss) {
    const float count = *reinterpret_cast<const float*>(args.count);
    nce_weight = to_float(*reinterpret_cast<const T*>(args.grad_loss)) * float(args.inv_nce_tau) /
                 fmaxf(count, 1.f);
  }

  for (std::int64_t g = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; g < groups;
       g += std::int64_t(gridDim.x) * blockDim.x) {
    VoxelGroup<T, DT, V> voxels;
    voxels.load(args, g);
    float s[V];
    NearestSoftmax<V> softmax;
    softmax.reset();
    float weight[V], log2_total[V];
    if (nce_weight != 0.f) {
      for (int j = 0; j < C * K; ++j) {
        voxels.similarity(unit_bank + j * DT, s);
        softmax.add(j, s, softmax_scale);
      }
    }
#pragma unroll
    for (int v = 0; v < V; ++v) {
      weight[v] = softmax.nearest[v] == args.ignore_index ? 0.f : nce_weight;
      log2_total[v] = __log2f(softmax.total[v]);
    }
    // u = sum_j (d loss / d s_j) p^_j; then grad = (u - (u . z^) z^) / |z|
    float u[DT][V];
#pragma unroll
    for (int d = 0; d < DT; ++d)
#pragma unroll
      for (int v = 0; v < V; ++v) u[d][v] = 0.f;
    for (int c = 0; c < C; ++c) {
      float best[V];
      int arg[V];
#pragma unroll
      for (int v = 0; v < V; ++v) best[v] = -FLT_MAX, arg[v] = 0;
      for (int k = 0; k < K; ++k) {
        const int j = c * K + k;
        const float* row = unit_bank + j * DT;
        voxels.similarity(row, s);
        track_best<V>(k, s, best, arg);
        if (nce_weight == 0.f) continue;
        float coeff[V];
#pragma unroll
        for (int v = 0; v < V; ++v) {
          const float p = exp2f((s[v] - softmax.top[v]) * softmax_scale - log2_total[v]);
          coeff[v] = weight[v] * (p - float(j == softmax.nearest[v]));
        }
#pragma unroll
        for (int d = 0; d < DT; ++d)
#pragma unroll
          for (int v = 0; v < V; ++v) u[d][v] = fmaf(coeff[v], row[d], u[d][v]);
      }
      if (!grad_logits) continue;
      float g[V];
      load_pack<T, V>(grad_logits + (voxels.batch * C + c) * N + voxels.start, g);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const float* row = unit_bank + (c * K + arg[v]) * DT;
#pragma unroll
        for (int d = 0; d < DT; ++d) u[d][v] = fmaf(g[v] * inv_tau, row[d], u[d][v]);
      }
    }
    float radial[V];
#pragma unroll
    for (int v = 0; v < V; ++v) {
      radial[v] = 0.f;
#pragma unroll
      for (int d = 0; d < DT; ++d) radial[v] = fmaf(u[d][v], voxels.unit[d][v], radial[v]);
    }
    T* out = grad_feat + voxels.batch * D * N + voxels.start;
#pragma unroll
    for (int d = 0; d < DT; ++d) {
      if (d >= D) break;
      float grad[V];
#pragma unroll
      for (int v = 0; v < V; ++v)
        grad[v] = voxels.inv_norm[v] * (u[d][v] - radial[v] * voxels.unit[d][v]);
      store_pack<T, V>(out + d * N, grad);
    }
  }
}

// V consecutive voxels are read as one aligned pack when N, both strides and the address
// are multiples of V; otherwise one voxel per thread.
template <typename T>
bool packs(const FeatureView& f, int per_thread) {
  return f.voxels % per_thread == 0 && f.batch_stride % per_thread == 0 &&
         f.channel_stride % per_thread == 0 && aligned(f.data, per_thread * sizeof(T));
}

std::size_t bank_bytes(const HeadArgs& args, int padded_depth) {
  const std::size_t bytes = std::size_t(args.classes * args.protos_per_class) * padded_depth * sizeof(float);
  check(bytes <= 48 * 1024, "the prototype bank is too large for the CUDA kernels (C*K*D up to 12288 floats)");
  return bytes;
}

std::int64_t groups_of(const HeadArgs& args, int per_thread) {
  return args.feat.batch * (args.feat.voxels / per_thread);
}

template <typename T, int DT, int V>
void launch_forward(const HeadArgs& args) {
  const std::int64_t blocks = (groups_of(args, V) + kThreads - 1) / kThreads;
  const int grid = int(std::max<std::int64_t>(1, std::min<std::int64_t>(blocks, kMaxBlocks)));
  head_forward_kernel<T, DT, V><<<grid, kThreads, bank_bytes(args, DT), as_stream(args.stream)>>>(args);
  check_cuda(cudaGetLastError(), "head_forward_kernel");
  if (!args.loss) return;
  head_loss_finalize_kernel<T><<<1, kThreads, 0, as_stream(args.stream)>>>(args, grid);
  check_cuda(cudaGetLastError(), "head_loss_finalize_kernel");
}

template <typename T, int DT, int V>
void launch_backward(const HeadArgs& args) {
  const std::int64_t blocks = (groups_of(args, V) + kThreads - 1) / kThreads;
  const int grid = int(std::max<std::int64_t>(1, std::min<std::int64_t>(blocks, 1 << 30)));
  head_backward_kernel<T, DT, V><<<grid, kThreads, bank_bytes(args, DT), as_stream(args.stream)>>>(args);
  check_cuda(cudaGetLastError(), "head_backward_kernel");
}

// Variants: the depth padded to DT and V voxels per thread, as many as keep the kernel
// free of register spills at two or more blocks of 256 threads per multiprocessor (the
// backward holds the gradient as well as the features, so it takes fewer voxels).
template <typename T>
void forward_variant(const HeadArgs& args) {
  const FeatureView& f = args.feat;
  check(f.depth <= 128, "the CUDA kernels support a feature depth of at most 128");
  if (f.depth <= 16 && packs<T>(f, 4)) return launch_forward<T, 16, 4>(args);
  if (f.depth <= 32 && packs<T>(f, 2)) return launch_forward<T, 32, 2>(args);
  if (f.depth <= 64) return launch_forward<T, 64, 1>(args);
  launch_forward<T, 128, 1>(args);
}

template <typename T>
void backward_variant(const HeadArgs& args) {
  const FeatureView& f = args.feat;
  check(f.depth <= 128, "the CUDA kernels support a feature depth of at most 128");
  if (f.depth <= 16 && packs<T>(f, 2)) return launch_backward<T, 16, 2>(args);
  if (f.depth <= 32) return launch_backward<T, 32, 1>(args);
  if (f.depth <= 64) return launch_backward<T, 64, 1>(args);
  launch_backward<T, 128, 1>(args);
}

}  // namespace

void head_forward(const HeadArgs& args) {
  dispatch_cuda(args.dtype, [&](auto tag) { forward_variant<typename decltype(tag)::type>(args); });
}

void head_backward(const HeadArgs& args) {
  dispatch_cuda(args.dtype, [&](auto tag) { backward_variant<typename decltype(tag)::type>(args); });
}

}  // namespace mper::cuda
