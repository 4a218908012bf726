// Largest connected component per image and foreground class on CUDA, without a host
// synchronisation: five kernels and two memsets on the given stream.
//
// Labelling is a lock-free union-find over voxels (the UF / Komura-equivalence family of
// Allegretti, Bolelli and Grana, IEEE TPDS 2020), for every class at once: a voxel only
// joins neighbours of its own class. The parent of a voxel is always a voxel of its
// component with a lower index, so each component's root is its first voxel in scan
// order, which is the tie-break scipy.ndimage.label + argmax gives.
//
//  1. init:     within each warp's 32-voxel stretch of a row, a voxel points at the start
//               of its run (a ballot of run starts), or at the last voxel of the stretch
//               before when its run began there; runs are then already joined.
//  2. merge:    each voxel joins the voxels of its class in the touching rows (the row
//               before, and in 3D the three rows of the slice before). Within a run only
//               the first voxel looks at the three voxels next to it in such a row; the
//               others look one voxel ahead, and only where a new stretch of their class
//               begins there, so each touching stretch is joined once per run.
//  3. flatten:  every voxel points at its root (halving the paths on the way, as merge
//               does); roots count their voxels (one atomic per root and warp, peers
//               found with __match_any_sync).
//  4. choose:   each root offers (size, -index) to its class; the largest wins, ties go
//               to the lowest index (a 64-bit atomicMax).
//  5. write:    a voxel keeps its class where its root is the chosen one, 0 elsewhere.
//
// Every kernel walks the map one warp per 32-voxel stretch of a row (grid-stride), so
// lanes of a warp hold neighbouring voxels of one row of one image.
#include <algorithm>

#include "ops/cuda/cuda_utils.cuh"

namespace mper::cuda {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kAllLanes = 0xffffffffu;

// Where a voxel lies: row index over the whole batch and x; its image, its row within the
// image and its index within the image.
struct Place {
  std::int64_t image, row_in_image, x, global;
  std::int32_t local;
};

struct Shape {
  std::int64_t batch, depth, height, width, classes;
  __host__ __device__ std::int64_t rows_per_image() const { return depth * height; }
  __host__ __device__ std::int64_t voxels() const { return depth * height * width; }
};

__host__ __device__ inline Shape shape_of(const ComponentArgs& a) {
  return Shape{a.batch, a.depth, a.height, a.width, a.classes};
}

// Calls f(place, lane, in_row) for every 32-voxel stretch of every row, one warp each;
// lanes past the end of the row get in_row = false. The loop is warp-uniform, so f may
// use warp-wide intrinsics.
template <typename Fn>
__device__ void for_each_stretch(const Shape& s, Fn&& f) {
  const int lane = threadIdx.x & 31;
  const std::int64_t tiles = (s.width + 31) / 32;
  const std::int64_t tasks = s.batch * s.rows_per_image() * tiles;
  const std::int64_t first = (blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x) >> 5;
  const std::int64_t step = (std::int64_t(gridDim.x) * blockDim.x) >> 5;
  for (std::int64_t task = first; task < tasks; task += step) {
    const std::int64_t row = task / tiles;
    Place p;
    p.x = (task % tiles) * 32 + lane;
    p.image = row / s.rows_per_image();
    p.row_in_image = row - p.image * s.rows_per_image();
    p.global = row * s.width + p.x;
    p.local = std::int32_t(p.row_in_image * s.width + p.x);
    f(p, lane, p.x < s.width);
  }
}

template <typename T>
__device__ __forceinline__ std::int64_t label_at(const T* labels, std::int64_t i) {
  return std::int64_t(__ldg(labels + i));
}

__device__ __forceinline__ bool foreground(std::int64_t label, std::int64_t classes) {
  return label >= 1 && label < classes;
}

// The root of i. Parents change while merging (atomics from other warps): read them past
// L1. Each voxel passed on the way is re-pointed at its grandparent (path halving), with
// atomicMin: a parent only ever moves to a lower voxel of the same component, so whatever
// another thread stored there meanwhile (a hook, or a halving of its own) is never undone,
// and the paths that serpentine or all-foreground maps would otherwise grow stay short.
__device__ __forceinline__ std::int32_t find_root(std::int32_t* parent, std::int32_t i) {
  while (true) {
    const std::int32_t next = __ldcg(parent + i);
    if (next == i) return i;
    const std::int32_t after = __ldcg(parent + next);
    if (after == next) return next;
    atomicMin(parent + i, after);
    i = after;
  }
}

// Lock-free union: the higher root is hooked under the lower with atomicMin; when another
// thread moved it first, retry from what it was moved to.
__device__ void unite(std::int32_t* parent, std::int32_t a, std::int32_t b) {
  while (true) {
    a = find_root(parent, a);
    b = find_root(parent, b);
    if (a == b) return;
    if (a > b) {
      const std::int32_t t = a;
      a = b;
      b = t;
    }
    const std::int32_t old = atomicMin(parent + b, a);
    if (old == b) return;
    b = old;
  }
}

template <typename T>
__global__ void init_kernel(ComponentArgs args) {
  const Shape s = shape_of(args);
  const T* labels = reinterpret_cast<const T*>(args.labels);
  std::int32_t* parent = reinterpret_cast<std::int32_t*>(args.workspace);
  for_each_stretch(s, [&](const Place& p, int lane, bool in_row) {
    const std::int64_t label = in_row ? label_at(labels, p.global) : 0;
    const bool fg = in_row && foreground(label, s.classes);
    const bool starts = fg && (p.x == 0 || label_at(labels, p.global - 1) != label);
    const unsigned starts_up_to_me = __ballot_sync(kAllLanes, starts) & (kAllLanes >> (31 - lane));
    if (!fg) return;
    const int start_lane = starts_up_to_me ? 31 - __clz(starts_up_to_me) : -1;
    parent[p.global] = p.local - (lane - start_lane);
  });
}

template <typename T>
__global__ void merge_kernel(ComponentArgs args) {
  const Shape s = shape_of(args);
  const T* labels = reinterpret_cast<const T*>(args.labels);
  std::int32_t* parents = reinterpret_cast<std::int32_t*>(args.workspace);
  for_each_stretch(s, [&](const Place& p, int, bool in_row) {
    if (!in_row) return;
    const std::int64_t label = label_at(labels, p.global);
    if (!foreground(label, s.classes)) return;
    const T* image = labels + p.image * s.voxels();
    std::int32_t* parent = parents + p.image * s.voxels();
    const bool run_start = p.x == 0 || label_at(labels, p.global - 1) != label;
    const std::int64_t x = p.x, W = s.width, H = s.height;
    auto join_row = [&](std::int64_t other_row) {
      const std::int64_t base = other_row * W;
      auto same = [&](std::int64_t at) { return at >= 0 && at < W && label_at(image, base + at) == label; };
      const bool before = same(x - 1), here = same(x);
      if (run_start && before) unite(parent, p.local, std::int32_t(base + x - 1));
      if (run_start && here && !before) unite(parent, p.local, std::int32_t(base + x));
      if (!here && same(x + 1)) unite(parent, p.local, std::int32_t(base + x + 1));
    };
    const std::int64_t r = p.row_in_image, y = r % H;
    if (y > 0) join_row(r - 1);
    if (r >= H) {
      if (y > 0) join_row(r - H - 1);
      join_row(r - H);
      if (y + 1 < H) join_row(r - H + 1);
    }
  });
}

template <typename T>
__global__ void flatten_kernel(ComponentArgs args) {
  const Shape s = shape_of(args);
  const T* labels = reinterpret_cast<const T*>(args.labels);
  std::int32_t* parents = reinterpret_cast<std::int32_t*>(args.workspace);
  std::int32_t* sizes = parents + s.batch * s.voxels();
  for_each_stretch(s, [&](const Place& p, int lane, bool in_row) {
    const bool fg = in_row && foreground(label_at(labels, p.global), s.classes);
    std::int32_t root = -1;
    if (fg) {
      root = find_root(parents + p.image * s.voxels(), p.local);
      parents[p.global] = root;
    }
    const unsigned peers = __match_any_sync(kAllLanes, root);
    if (fg && lane == __ffs(peers) - 1) atomicAdd(sizes + p.image * s.voxels() + root, __popc(peers));
  });
}

__device__ __forceinline__ unsigned long long offer(std::int32_t size, std::int32_t root) {
  return (static_cast<unsigned long long>(size) << 32) | (0xffffffffu - static_cast<std::uint32_t>(root));
}

__device__ __forceinline__ std::int32_t chosen_root(unsigned long long best) {
  return std::int32_t(0xffffffffu - static_cast<std::uint32_t>(best & 0xffffffffu));
}

template <typename T>
__global__ void choose_kernel(ComponentArgs args) {
  const Shape s = shape_of(args);
  const T* labels = reinterpret_cast<const T*>(args.labels);
  const std::int32_t* parents = reinterpret_cast<const std::int32_t*>(args.workspace);
  const std::int32_t* sizes = parents + s.batch * s.voxels();
  unsigned long long* best = reinterpret_cast<unsigned long long*>(args.workspace) + s.batch * s.voxels();
  for_each_stretch(s, [&](const Place& p, int, bool in_row) {
    if (!in_row) return;
    // the label first: init_kernel leaves a background voxel's parent unwritten
    const std::int64_t label = label_at(labels, p.global);
    if (foreground(label, s.classes) && parents[p.global] == p.local)
      atomicMax(best + p.image * s.classes + label, offer(sizes[p.global], p.local));
  });
}

template <typename T>
__global__ void write_kernel(ComponentArgs args) {
  const Shape s = shape_of(args);
  const T* labels = reinterpret_cast<const T*>(args.labels);
  const std::int32_t* parents = reinterpret_cast<const std::int32_t*>(args.workspace);
  const unsigned long long* best = reinterpret_cast<const unsigned long long*>(parents + 2 * s.batch * s.voxels());
  T* out = reinterpret_cast<T*>(args.out);
  for_each_stretch(s, [&](const Place& p, int, bool in_row) {
    if (!in_row) return;
    const std::int64_t label = label_at(labels, p.global);
    const bool keep =
        foreground(label, s.classes) && parents[p.global] == chosen_root(best[p.image * s.classes + label]);
    out[p.global] = keep ? T(label) : T(0);
  });
}

template <typename T>
void launch(const ComponentArgs& args) {
  const Shape s = shape_of(args);
  const cudaStream_t stream = as_stream(args.stream);
  const std::int64_t warps = s.batch * s.rows_per_image() * ((s.width + 31) / 32);
  const std::int64_t wanted = (warps * 32 + kThreads - 1) / kThreads;
  const int blocks = int(std::min<std::int64_t>(wanted, std::int64_t(multiprocessor_count()) * 8));
  const std::int64_t voxels = s.batch * s.voxels();
  char* sizes = reinterpret_cast<char*>(args.workspace) + voxels * sizeof(std::int32_t);
  check_cuda(cudaMemsetAsync(sizes, 0, voxels * sizeof(std::int32_t), stream), "cudaMemsetAsync");
  check_cuda(cudaMemsetAsync(sizes + voxels * sizeof(std::int32_t), 0, s.batch * s.classes * sizeof(unsigned long long),
                             stream),
             "cudaMemsetAsync");
  init_kernel<T><<<blocks, kThreads, 0, stream>>>(args);
  check_cuda(cudaGetLastError(), "largest_component init_kernel");
  merge_kernel<T><<<blocks, kThreads, 0, stream>>>(args);
  check_cuda(cudaGetLastError(), "largest_component merge_kernel");
  flatten_kernel<T><<<blocks, kThreads, 0, stream>>>(args);
  check_cuda(cudaGetLastError(), "largest_component flatten_kernel");
  choose_kernel<T><<<blocks, kThreads, 0, stream>>>(args);
  check_cuda(cudaGetLastError(), "largest_component choose_kernel");
  write_kernel<T><<<blocks, kThreads, 0, stream>>>(args);
  check_cuda(cudaGetLastError(), "largest_component write_kernel");
}

}  // namespace

void largest_component(const ComponentArgs& args) {
  check_driver();
  check_component_args(args, true);
  const Shape s = shape_of(args);
  if (s.batch * s.voxels() == 0) return;
  dispatch_labels(args.dtype, [&](auto tag) { launch<typename decltype(tag)::type>(args); });
}

}  // namespace mper::cuda
