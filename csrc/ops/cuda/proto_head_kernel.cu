// Fused prototype head on CUDA: classifier logits/assign and the InfoNCE loss from one
// read of the features (forward), and the gradient of both from one more (backward).
//
// A voxel group (V consecutive voxels of one image) belongs to L consecutive lanes of a
// warp; lane `slice` of the L holds channels slice, slice + L, slice + 2L, ... of the
// group's unit features, and every sum over channels is completed across the L lanes with
// shuffles. L = 1 for shallow features; deep ones take L = 2 or 4 so that no lane holds
// more than 32 channels of a voxel (the backward as many of the gradient's as well), and
// every variant stays in registers at two blocks of 256 threads per multiprocessor (see
// benchmarks/results/cuda_kernel_resources.md). The features are channels-first, so for a
// fixed channel the voxels of neighbouring groups are contiguous: loads are coalesced and
// V elements wide, and no permuted copy of the feature map is ever made. The unit-norm
// bank sits in shared memory, padded to DT (the depth rounded up to 16, 32, 64 or 128) so
// the unrolled channel loops need no bounds checks, and the L lanes of a group read
// neighbouring words of a row (no bank conflicts); beyond the default 48 KiB the kernels
// opt in to the device's limit, and a bank larger still is read from global memory, each
// row normalised as it is used (that variant spreads a group over 8 lanes). Nothing of
// size N x C*K is ever stored: similarities are recomputed where needed (D multiply-adds
// each).
//
// NaN follows the eager reference: it propagates through every sum and product and wins
// every max/argmax (the first NaN, as in torch.argmax).
#include <cfloat>
#include <cstdio>
#include <mutex>

#include "ops/cuda/cuda_utils.cuh"

namespace mper::cuda {
namespace {

constexpr int kThreads = 256;
// Every variant's registers leave room for kMinBlocks blocks of kThreads per
// multiprocessor (a large bank in shared memory can allow fewer): ptxas is held to
// 65536 / (2 * 256) = 128 registers per thread, and with -warn-spills a variant that
// would spill to fit fails the build.
constexpr int kMinBlocks = 2;
// Channels of a voxel one lane holds at most (the features', and in the backward as many
// of the gradient's): deeper features spread each voxel group over DT / kLaneChannels
// lanes. Reading the bank from global memory takes registers for its addresses and
// bounds, so that variant holds half as many, over kGlobalLanes lanes.
constexpr int kLaneChannels = 32;
constexpr int lanes_per_group(int padded_depth) {
  return padded_depth <= kLaneChannels ? 1 : padded_depth / kLaneChannels;
}
constexpr int kMaxBlocks = kHeadWorkspaceFloats / 2;
constexpr int kMaxDepth = kCudaMaxHeadDepth;
constexpr int kGlobalLanes = kMaxDepth / (kLaneChannels / 2);
constexpr float kLog2e = 1.4426950408889634f;

// Whether `candidate` replaces `current` in a running max/argmax: a larger value or the
// first NaN, which then stays.
__device__ __forceinline__ bool replaces(float candidate, float current) {
  return !(candidate <= current) && current == current;
}

// The sum of x over the L lanes of a voxel group (`lanes` names them in the warp), in
// each of them: a butterfly of shuffles whose additions (never fused with a product) see
// the same operands in every lane, so all L lanes hold the same bits and take the same
// decisions.
template <int L>
__device__ __forceinline__ float group_sum(float x, unsigned lanes) {
#pragma unroll
  for (int offset = 1; offset < L; offset *= 2) x = __fadd_rn(x, __shfl_xor_sync(lanes, x, offset));
  return x;
}

// The unit-norm bank rows p^_j: at(j, d) * scale(j) is element d of row j, 0 for d >= D.
template <int DT, bool kShared>
struct UnitBank;

// In shared memory, rows padded to DT and already of unit norm.
template <int DT>
struct UnitBank<DT, true> {
  const float* unit;

  // Every thread of the block takes part.
  __device__ UnitBank(const HeadArgs& args, float* shared) : unit(shared) {
    const float* bank = reinterpret_cast<const float*>(args.prototypes);
    const int rows = int(args.classes * args.protos_per_class), depth = int(args.feat.depth);
    for (int j = threadIdx.x; j < rows; j += blockDim.x) {
      float squared = 0.f;
      for (int d = 0; d < depth; ++d) squared += bank[j * depth + d] * bank[j * depth + d];
      const float norm = sqrtf(squared);
      const float scale = norm > 1e-12f ? 1.f / norm : 0.f;
      for (int d = 0; d < DT; ++d) shared[j * DT + d] = d < depth ? bank[j * depth + d] * scale : 0.f;
    }
    __syncthreads();
  }
  __device__ float at(int j, int d) const { return unit[j * DT + d]; }
  __device__ float scale(int) const { return 1.f; }
};

// The bank as given, in global memory, each row normalised where it is used.
template <int DT>
struct UnitBank<DT, false> {
  const float* raw;
  int depth;

  __device__ UnitBank(const HeadArgs& args, float*)
      : raw(reinterpret_cast<const float*>(args.prototypes)), depth(int(args.feat.depth)) {}
  __device__ float at(int j, int d) const { return d < depth ? __ldg(raw + std::int64_t(j) * depth + d) : 0.f; }
  __device__ float scale(int j) const {
    float squared = 0.f;
    for (int d = 0; d < depth; ++d) {
      const float p = at(j, d);
      squared = fmaf(p, p, squared);
    }
    const float norm = sqrtf(squared);
    return norm > 1e-12f ? 1.f / norm : 0.f;
  }
};

// A voxel group: V consecutive voxels of one image, held by L consecutive lanes of a warp.
// This lane keeps its channels of their unit features z^ (kChannels x V) and 1/|z|.
template <typename T, int DT, int V, int L>
struct VoxelGroup {
  static constexpr int kChannels = DT / L;
  float unit[kChannels][V];
  float inv_norm[V];
  std::int64_t batch, start;
  const int slice;       // this lane's place in the group
  const unsigned lanes;  // the group's lanes in the warp

  __device__ VoxelGroup() : slice(int(threadIdx.x % L)), lanes(((1u << L) - 1u) << (threadIdx.x % 32 / L * L)) {}

  // The channel of this lane's i-th unit feature: interleaved, so that the group's lanes
  // read neighbouring words of a bank row.
  __device__ int channel(int i) const { return i * L + slice; }

  __device__ void load(const HeadArgs& args, std::int64_t group) {
    const FeatureView& f = args.feat;
    const std::int64_t groups_per_image = f.voxels / V;
    batch = group / groups_per_image;
    start = (group - batch * groups_per_image) * V;
    const T* src = reinterpret_cast<const T*>(f.data) + batch * f.batch_stride + start;
#pragma unroll
    for (int i = 0; i < kChannels; ++i) {
      const int d = channel(i);
      if (d < f.depth) {
        load_pack<T, V>(src + d * f.channel_stride, unit[i]);
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v) unit[i][v] = 0.f;
      }
    }
#pragma unroll
    for (int v = 0; v < V; ++v) {
      float squared = 0.f;
#pragma unroll
      for (int i = 0; i < kChannels; ++i) squared = fmaf(unit[i][v], unit[i][v], squared);
      const float norm = sqrtf(group_sum<L>(squared, lanes));
      inv_norm[v] = norm > 1e-12f ? 1.f / norm : 0.f;
#pragma unroll
      for (int i = 0; i < kChannels; ++i) unit[i][v] *= inv_norm[v];
    }
  }

  // s[v] = cos(z_v, p_j) in every lane of the group; returns bank.scale(j)
  template <typename Bank>
  __device__ float similarity(const Bank& bank, int j, float (&s)[V]) const {
#pragma unroll
    for (int v = 0; v < V; ++v) s[v] = 0.f;
#pragma unroll
    for (int i = 0; i < kChannels; ++i) {
      const float p = bank.at(j, channel(i));
#pragma unroll
      for (int v = 0; v < V; ++v) s[v] = fmaf(p, unit[i][v], s[v]);
    }
    const float scale = bank.scale(j);
#pragma unroll
    for (int v = 0; v < V; ++v) s[v] = group_sum<L>(s[v], lanes) * scale;
    return scale;
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
      const bool up = replaces(s[v], top[v]);
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
    const bool up = replaces(s[v], best[v]);
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

// exp(x / tau) = 2^(x * scale): 1/tau is finite (checked in Python), the product with
// log2(e) is kept finite too, so that 0 * scale stays 0
__device__ __forceinline__ float exp2_scale(double inv_tau) { return fminf(float(inv_tau) * kLog2e, FLT_MAX); }

// The voxel groups of the grid, L lanes each: the first this thread takes, and the step.
template <int L>
__device__ __forceinline__ std::int64_t first_group() {
  return (blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x) / L;
}
template <int L>
__device__ __forceinline__ std::int64_t group_step() {
  return std::int64_t(gridDim.x) * (blockDim.x / L);
}

template <typename T, int DT, int V, int L, bool kSharedBank>
__global__ void __launch_bounds__(kThreads, kMinBlocks) head_forward_kernel(HeadArgs args) {
  extern __shared__ float shared_bank[];
  __shared__ float scratch[kThreads / 32];
  const UnitBank<DT, kSharedBank> bank(args, shared_bank);
  const int C = int(args.classes), K = int(args.protos_per_class);
  const std::int64_t N = args.feat.voxels, groups = args.feat.batch * (N / V);
  const float inv_tau = float(args.inv_tau), nce_scale = exp2_scale(args.inv_nce_tau);
  T* logits = reinterpret_cast<T*>(args.logits);
  std::int64_t* assign = reinterpret_cast<std::int64_t*>(args.assign);
  const bool want_loss = args.loss != 0;
  float loss_sum = 0.f, count = 0.f;

  for (std::int64_t g = first_group<L>(); g < groups; g += group_step<L>()) {
    VoxelGroup<T, DT, V, L> voxels;
    voxels.load(args, g);
    // the group's first lane writes its outputs and counts its loss
    const bool writes = voxels.slice == 0;
    NearestSoftmax<V> softmax;
    softmax.reset();
    for (int c = 0; c < C; ++c) {
      float best[V], s[V];
      int arg[V];
#pragma unroll
      for (int v = 0; v < V; ++v) best[v] = -FLT_MAX, arg[v] = 0;
      for (int k = 0; k < K; ++k) {
        voxels.similarity(bank, c * K + k, s);
        track_best<V>(k, s, best, arg);
        if (want_loss) softmax.add(c * K + k, s, nce_scale);
      }
      const std::int64_t out = (voxels.batch * C + c) * N + voxels.start;
#pragma unroll
      for (int v = 0; v < V; ++v) best[v] *= inv_tau;
      if (logits && writes) store_pack<T, V>(logits + out, best);
      if (assign && writes) store_indices<V>(assign + out, arg);
    }
    if (!want_loss || !writes) continue;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      // an ignored voxel adds 0 times its term, so that NaN still reaches the loss
      const float kept = softmax.nearest[v] == args.ignore_index ? 0.f : 1.f;
      loss_sum += __logf(softmax.total[v]) * kept;
      count += kept;
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
    *reinterpret_cast<T*>(args.loss) = from_float<T>(loss_sum / fmaxf(count, 1.f));
    *reinterpret_cast<float*>(args.count) = count;
  }
}

template <typename T, int DT, int V, int L, bool kSharedBank>
__global__ void __launch_bounds__(kThreads, kMinBlocks) head_backward_kernel(HeadArgs args) {
  extern __shared__ float shared_bank[];
  const UnitBank<DT, kSharedBank> bank(args, shared_bank);
  const int C = int(args.classes), K = int(args.protos_per_class);
  const std::int64_t N = args.feat.voxels, D = args.feat.depth, groups = args.feat.batch * (N / V);
  const float inv_tau = float(args.inv_tau), inv_nce_tau = float(args.inv_nce_tau),
              softmax_scale = exp2_scale(args.inv_nce_tau);
  const T* grad_logits = reinterpret_cast<const T*>(args.grad_logits);
  T* grad_feat = reinterpret_cast<T*>(args.grad_feat);
  // d loss / d s_j = nce_weight * (softmax_j - [j == nearest]) / nce_tau for a kept voxel,
  // divided by nce_tau last, as autograd does through the reference: a large 1/nce_tau then
  // multiplies an exact 0 where the softmax is one-hot, never an overflowed weight (inf * 0)
  float nce_weight = 0.f;
  if (args.grad_loss) {
    const float count = *reinterpret_cast<const float*>(args.count);
    nce_weight = to_float(*reinterpret_cast<const T*>(args.grad_loss)) / fmaxf(count, 1.f);
  }

  for (std::int64_t g = first_group<L>(); g < groups; g += group_step<L>()) {
    using Group = VoxelGroup<T, DT, V, L>;
    Group voxels;
    voxels.load(args, g);
    float s[V];
    NearestSoftmax<V> softmax;
    softmax.reset();
    float weight[V], log2_total[V];
    if (nce_weight != 0.f) {
      for (int j = 0; j < C * K; ++j) {
        voxels.similarity(bank, j, s);
        softmax.add(j, s, softmax_scale);
      }
    }
#pragma unroll
    for (int v = 0; v < V; ++v) {
      // 0 for an ignored voxel, NaN when nce_weight is (as in the reference)
      weight[v] = nce_weight * (softmax.nearest[v] == args.ignore_index ? 0.f : 1.f);
      log2_total[v] = __log2f(softmax.total[v]);
    }
    // u = sum_j (d loss / d s_j) p^_j, this lane's channels of it; then
    // grad = (u - (u . z^) z^) / |z|
    float u[Group::kChannels][V];
#pragma unroll
    for (int i = 0; i < Group::kChannels; ++i)
#pragma unroll
      for (int v = 0; v < V; ++v) u[i][v] = 0.f;
    for (int c = 0; c < C; ++c) {
      float best[V];
      int arg[V];
#pragma unroll
      for (int v = 0; v < V; ++v) best[v] = -FLT_MAX, arg[v] = 0;
      for (int k = 0; k < K; ++k) {
        const int j = c * K + k;
        const float scale = voxels.similarity(bank, j, s);
        track_best<V>(k, s, best, arg);
        if (nce_weight == 0.f) continue;
        float coeff[V];  // d loss / d s_j, times the row's scale
#pragma unroll
        for (int v = 0; v < V; ++v) {
          const float p = exp2f((s[v] - softmax.top[v]) * softmax_scale - log2_total[v]);
          coeff[v] = weight[v] * (p - float(j == softmax.nearest[v])) * inv_nce_tau * scale;
        }
#pragma unroll
        for (int i = 0; i < Group::kChannels; ++i) {
          const float p = bank.at(j, voxels.channel(i));
#pragma unroll
          for (int v = 0; v < V; ++v) u[i][v] = fmaf(coeff[v], p, u[i][v]);
        }
      }
      if (!grad_logits) continue;
      float g[V];
      load_pack<T, V>(grad_logits + (voxels.batch * C + c) * N + voxels.start, g);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const int j = c * K + arg[v];
        const float weight_j = g[v] * inv_tau * bank.scale(j);
#pragma unroll
        for (int i = 0; i < Group::kChannels; ++i) u[i][v] = fmaf(weight_j, bank.at(j, voxels.channel(i)), u[i][v]);
      }
    }
    float radial[V];
#pragma unroll
    for (int v = 0; v < V; ++v) {
      radial[v] = 0.f;
#pragma unroll
      for (int i = 0; i < Group::kChannels; ++i) radial[v] = fmaf(u[i][v], voxels.unit[i][v], radial[v]);
      radial[v] = group_sum<L>(radial[v], voxels.lanes);
    }
    T* out = grad_feat + voxels.batch * D * N + voxels.start;
#pragma unroll
    for (int i = 0; i < Group::kChannels; ++i) {
      const int d = voxels.channel(i);
      if (d >= D) break;
      float grad[V];
#pragma unroll
      for (int v = 0; v < V; ++v) grad[v] = voxels.inv_norm[v] * (u[i][v] - radial[v] * voxels.unit[i][v]);
      store_pack<T, V>(out + d * N, grad);
    }
  }
}

// V consecutive voxels move as one aligned pack when N and both feature strides are
// multiples of V and every address read or written in packs is aligned to V elements;
// otherwise one voxel per thread.
template <typename T>
bool packs(const HeadArgs& args, int per_thread) {
  const FeatureView& f = args.feat;
  const std::size_t bytes = per_thread * sizeof(T);
  return f.voxels % per_thread == 0 && f.batch_stride % per_thread == 0 && f.channel_stride % per_thread == 0 &&
         aligned(f.data, bytes) && aligned(args.logits, bytes) && aligned(args.grad_logits, bytes) &&
         aligned(args.grad_feat, bytes) && aligned(args.assign, per_thread * sizeof(std::int64_t));
}

std::size_t bank_bytes(const HeadArgs& args, int padded_depth) {
  return std::size_t(args.classes * args.protos_per_class) * padded_depth * sizeof(float);
}

// Static shared memory of any head kernel at most (the forward's block_sum scratch);
// allow_bank_memory checks that the compiler kept to it.
constexpr std::size_t kStaticSharedBytes = kThreads / 32 * sizeof(float);

// The widest padding either direction gives a bank of this depth (the forward pads a depth
// of at most 16 to 32 when its voxels do not pack by 4).
int widest_padding(std::int64_t depth) { return depth <= 32 ? 32 : depth <= 64 ? 64 : kMaxDepth; }

// Whether the bank sits in shared memory, decided once for both directions: the
// global-memory variant normalises each row as it reads it and spreads a voxel over other
// lanes, so its similarities round differently, and the backward must differentiate the
// assignment the forward made (at a near tie, the other variant could pick another
// prototype). The test takes the widest padding and the most static shared memory of
// either direction, so that neither's bank exceeds what the device allows.
bool bank_in_shared(const HeadArgs& args) {
  int device = 0, limit = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cudaDeviceGetAttribute");
  return bank_bytes(args, widest_padding(args.feat.depth)) + kStaticSharedBytes <= std::size_t(limit);
}

// Lets `kernel` hold a bank of `bytes` (which bank_in_shared found to fit) in dynamic
// shared memory. Beyond the default 48 KiB, the kernel is opted in to the device's limit
// per block (less its static shared memory), under a lock and only ever upwards: the
// bindings release the GIL, and a concurrent call must never lower the limit another one
// has just launched against.
void allow_bank_memory(void (*kernel)(HeadArgs), std::size_t bytes) {
  cudaFuncAttributes attributes;
  check_cuda(cudaFuncGetAttributes(&attributes, kernel), "cudaFuncGetAttributes");
  if (attributes.sharedSizeBytes > kStaticSharedBytes) {
    throw std::logic_error("mper: a prototype head kernel uses " + std::to_string(attributes.sharedSizeBytes) +
                           " bytes of static shared memory, more than the " + std::to_string(kStaticSharedBytes) +
                           " its bank size test allows for; raise kStaticSharedBytes");
  }
  if (bytes <= std::size_t(attributes.maxDynamicSharedSizeBytes)) return;
  int device = 0, limit = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cudaDeviceGetAttribute");
  const std::size_t most = std::size_t(limit) - attributes.sharedSizeBytes;
  static std::mutex raising;
  const std::lock_guard<std::mutex> lock(raising);
  check_cuda(cudaFuncGetAttributes(&attributes, kernel), "cudaFuncGetAttributes");
  if (bytes <= std::size_t(attributes.maxDynamicSharedSizeBytes)) return;
  const cudaError_t status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(most));
  if (status != cudaSuccess) {
    char message[256];
    std::snprintf(message, sizeof message,
                  "mper: CUDA error reserving %zu bytes of shared memory for the prototype bank (the device "
                  "allows %d per block, %zu of them static): %s",
                  most, limit, std::size_t(attributes.sharedSizeBytes), cudaGetErrorString(status));
    throw std::runtime_error(message);
  }
}

std::int64_t groups_of(const HeadArgs& args, int per_thread) {
  return args.feat.batch * (args.feat.voxels / per_thread);
}

// Blocks of kThreads for one thread per lane of every voxel group, at most kMaxBlocks (the
// forward's per-block partials; the grid-stride loops take the rest). Both directions use
// the same grid, so the parity tests that need a second pass of the loop take it in both.
int grid_for(const HeadArgs& args, int per_thread, int lanes) {
  const std::int64_t blocks = (groups_of(args, per_thread) * lanes + kThreads - 1) / kThreads;
  return int(std::max<std::int64_t>(1, std::min<std::int64_t>(blocks, kMaxBlocks)));
}

template <typename T, int DT, int V, int L, bool kSharedBank>
void run_forward(const HeadArgs& args, std::size_t shared_bytes) {
  const int grid = grid_for(args, V, L);
  head_forward_kernel<T, DT, V, L, kSharedBank><<<grid, kThreads, shared_bytes, as_stream(args.stream)>>>(args);
  check_cuda(cudaGetLastError(), "head_forward_kernel");
  if (!args.loss) return;
  head_loss_finalize_kernel<T><<<1, kThreads, 0, as_stream(args.stream)>>>(args, grid);
  check_cuda(cudaGetLastError(), "head_loss_finalize_kernel");
}

template <typename T, int DT, int V, int L, bool kSharedBank>
void run_backward(const HeadArgs& args, std::size_t shared_bytes) {
  const int grid = grid_for(args, V, L);
  head_backward_kernel<T, DT, V, L, kSharedBank><<<grid, kThreads, shared_bytes, as_stream(args.stream)>>>(args);
  check_cuda(cudaGetLastError(), "head_backward_kernel");
}

// The variant with the bank in shared memory or, when bank_in_shared says it does not
// fit, the one that reads it from global memory (one voxel per group, the widest depth:
// one instance per dtype).
template <typename T, int DT, int V>
void launch_forward(const HeadArgs& args) {
  constexpr int L = lanes_per_group(DT);
  if (!bank_in_shared(args)) return run_forward<T, kMaxDepth, 1, kGlobalLanes, false>(args, 0);
  const std::size_t bytes = bank_bytes(args, DT);
  allow_bank_memory(head_forward_kernel<T, DT, V, L, true>, bytes);
  run_forward<T, DT, V, L, true>(args, bytes);
}

template <typename T, int DT, int V>
void launch_backward(const HeadArgs& args) {
  constexpr int L = lanes_per_group(DT);
  if (!bank_in_shared(args)) return run_backward<T, kMaxDepth, 1, kGlobalLanes, false>(args, 0);
  const std::size_t bytes = bank_bytes(args, DT);
  allow_bank_memory(head_backward_kernel<T, DT, V, L, true>, bytes);
  run_backward<T, DT, V, L, true>(args, bytes);
}

// Checks shared by both directions.
void check_head(const HeadArgs& args) {
  check(args.feat.depth <= kMaxDepth,
        "the CUDA kernels support a feature depth of at most " + std::to_string(kMaxDepth));
}

// Variants: the depth padded to DT and V voxels per group; shallow features take several
// voxels per group, as many as keep the kernel within its registers (the backward holds
// the gradient as well, so it takes fewer); deeper ones spread a group over 2 or 4 lanes.
// For every depth both directions take the same number of lanes per group L (and so sum
// channels in the same order: padding adds exact zeros), so the backward sees the
// similarities, and differentiates the assignment, of the forward.
template <typename T>
void forward_variant(const HeadArgs& args) {
  const FeatureView& f = args.feat;
  check_head(args);
  if (f.depth <= 16 && packs<T>(args, 4)) return launch_forward<T, 16, 4>(args);
  if (f.depth <= 32 && packs<T>(args, 2)) return launch_forward<T, 32, 2>(args);
  if (f.depth <= 32) return launch_forward<T, 32, 1>(args);
  if (f.depth <= 64) return launch_forward<T, 64, 1>(args);
  launch_forward<T, 128, 1>(args);
}

template <typename T>
void backward_variant(const HeadArgs& args) {
  const FeatureView& f = args.feat;
  check_head(args);
  if (f.depth <= 16 && packs<T>(args, 2)) return launch_backward<T, 16, 2>(args);
  if (f.depth <= 32) return launch_backward<T, 32, 1>(args);
  if (f.depth <= 64) return launch_backward<T, 64, 1>(args);
  launch_backward<T, 128, 1>(args);
}

}  // namespace

void head_forward(const HeadArgs& args) {
  check_driver();
  check_head_addresses(args, false, true);
  dispatch_cuda(args.dtype, [&](auto tag) { forward_variant<typename decltype(tag)::type>(args); });
}

void head_backward(const HeadArgs& args) {
  check_driver();
  check_head_addresses(args, true, true);
  dispatch_cuda(args.dtype, [&](auto tag) { backward_variant<typename decltype(tag)::type>(args); });
}

}  // namespace mper::cuda
