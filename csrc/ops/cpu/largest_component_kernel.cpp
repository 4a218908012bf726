// Largest connected component per image and foreground class on the CPU.
//
// One pass labels every class at once. Each row is cut into runs (maximal stretches of
// one foreground class); two runs of the same class join when they lie in touching rows
// (the row before, and in 3D the three rows of the slice before) and their extents
// overlap or meet at a corner, which is exactly full connectivity (8 in 2D, 26 in 3D).
// Runs are numbered in scan order and the union-find keeps the lowest number as root,
// so a component's root is its first run: among equally large components a class keeps
// the lowest root, the component scipy.ndimage.label would number first. The work is one
// read of the labels, one write of the output, and a few operations per run; images run
// in parallel (OpenMP), each on one thread with its own run tables, reserved before the
// parallel region for the worst case (every voxel a run of its own), so that nothing is
// allocated inside it.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "ops/cpu/scalar.h"

namespace mper::cpu {
namespace {

using MPER_CPU_ISA::team_size;

// The runs of one image, in scan order: run i covers [begin[i], end[i]) of its row.
struct Runs {
  std::vector<std::int32_t> begin, end, label, parent;
  std::vector<std::int64_t> size;
  std::vector<std::int64_t> row_first;  // row r holds runs [row_first[r], row_first[r + 1])

  // Room for an image of `voxels` voxels in `rows` rows, however many runs it has.
  void reserve(std::int64_t voxels, std::int64_t rows) {
    for (auto* table : {&begin, &end, &label, &parent}) table->reserve(voxels);
    size.reserve(voxels);
    row_first.reserve(rows + 1);
  }

  void clear(std::int64_t rows) {
    begin.clear();
    end.clear();
    label.clear();
    row_first.assign(rows + 1, 0);
  }
  std::int32_t count() const { return std::int32_t(begin.size()); }
};

// The end of the stretch of row[x]'s value that starts at x. Labels narrower than 8 bytes
// are compared a 64-bit word at a time (the first differing element is the lowest set
// byte of the difference on a little-endian machine).
template <typename T>
std::int32_t stretch_end(const T* row, std::int32_t x, std::int32_t width) {
  const T value = row[x++];
  constexpr std::int32_t per_word = 8 / sizeof(T);
  if constexpr (per_word > 1 && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__) {
    T copies[per_word];
    std::fill(copies, copies + per_word, value);
    std::uint64_t pattern;
    std::memcpy(&pattern, copies, sizeof pattern);
    for (; x <= width - per_word; x += per_word) {  // x + per_word could pass 2^31 - 1
      std::uint64_t word;
      std::memcpy(&word, row + x, sizeof word);
      if (const std::uint64_t diff = word ^ pattern) return x + __builtin_ctzll(diff) / (8 * sizeof(T));
    }
  }
  while (x < width && row[x] == value) ++x;
  return x;
}

template <typename T>
void find_runs(const T* row, std::int32_t width, std::int64_t classes, Runs& runs) {
  std::int32_t x = 0;
  while (x < width) {
    const T value = row[x];
    const std::int32_t stop = stretch_end(row, x, width);
    const std::int64_t label = std::int64_t(value);
    if (label >= 1 && label < classes) {
      runs.begin.push_back(x);
      runs.end.push_back(stop);
      runs.label.push_back(std::int32_t(label));
    }
    x = stop;
  }
}

std::int32_t find_root(std::vector<std::int32_t>& parent, std::int32_t i) {
  while (parent[i] != i) {
    parent[i] = parent[parent[i]];
    i = parent[i];
  }
  return i;
}

void unite(std::vector<std::int32_t>& parent, std::int32_t a, std::int32_t b) {
  a = find_root(parent, a);
  b = find_root(parent, b);
  if (a < b) parent[b] = a;
  else if (b < a) parent[a] = b;
}

// Joins the runs of `row` with the runs of the same class in `other` (a touching row)
// whose extents, widened by one voxel, overlap.
void join_rows(Runs& runs, std::int64_t row, std::int64_t other) {
  std::int64_t j = runs.row_first[other];
  const std::int64_t j_stop = runs.row_first[other + 1];
  for (std::int64_t i = runs.row_first[row]; i < runs.row_first[row + 1]; ++i) {
    while (j < j_stop && runs.end[j] < runs.begin[i]) ++j;
    for (std::int64_t k = j; k < j_stop && runs.begin[k] <= runs.end[i]; ++k)
      if (runs.label[k] == runs.label[i]) unite(runs.parent, std::int32_t(i), std::int32_t(k));
  }
}

template <typename T>
void keep_largest(const ComponentArgs& args, const T* labels, T* out, Runs& runs, std::vector<std::int32_t>& best_root,
                  std::vector<std::int64_t>& best_size) {
  const std::int64_t D = args.depth, H = args.height, W = args.width;
  runs.clear(D * H);
  for (std::int64_t r = 0; r < D * H; ++r) {
    runs.row_first[r] = runs.count();
    find_runs(labels + r * W, std::int32_t(W), args.classes, runs);
  }
  runs.row_first[D * H] = runs.count();
  const std::int32_t n = runs.count();
  runs.parent.resize(n);
  for (std::int32_t i = 0; i < n; ++i) runs.parent[i] = i;

  for (std::int64_t z = 0; z < D; ++z) {
    for (std::int64_t y = 0; y < H; ++y) {
      const std::int64_t r = z * H + y;
      if (runs.row_first[r] == runs.row_first[r + 1]) continue;
      if (y > 0) join_rows(runs, r, r - 1);
      if (z == 0) continue;
      if (y > 0) join_rows(runs, r, r - H - 1);
      join_rows(runs, r, r - H);
      if (y + 1 < H) join_rows(runs, r, r - H + 1);
    }
  }

  // In scan order every parent already points at its root once visited.
  runs.size.assign(n, 0);
  for (std::int32_t i = 0; i < n; ++i) {
    runs.parent[i] = runs.parent[runs.parent[i]];
    runs.size[runs.parent[i]] += runs.end[i] - runs.begin[i];
  }
  best_root.assign(args.classes, -1);
  best_size.assign(args.classes, 0);
  for (std::int32_t i = 0; i < n; ++i) {
    const std::int32_t c = runs.label[i];
    if (runs.parent[i] == i && runs.size[i] > best_size[c]) {
      best_size[c] = runs.size[i];
      best_root[c] = i;
    }
  }

  for (std::int64_t r = 0; r < D * H; ++r) {
    T* row = out + r * W;
    std::int32_t written = 0;
    for (std::int64_t i = runs.row_first[r]; i < runs.row_first[r + 1]; ++i) {
      const std::int32_t c = runs.label[i];
      if (runs.parent[i] != best_root[c]) continue;
      std::fill(row + written, row + runs.begin[i], T(0));
      std::fill(row + runs.begin[i], row + runs.end[i], T(c));
      written = runs.end[i];
    }
    std::fill(row + written, row + W, T(0));
  }
}

template <typename T>
void largest_component_impl(const ComponentArgs& args) {
  const std::int64_t rows = args.depth * args.height, voxels = rows * args.width;
  const T* labels = reinterpret_cast<const T*>(args.labels);
  T* out = reinterpret_cast<T*>(args.out);
  const int threads = team_size(args.threads, args.batch);
  std::vector<Runs> runs(threads);
  std::vector<std::vector<std::int32_t>> best_root(threads);
  std::vector<std::vector<std::int64_t>> best_size(threads);
  try {
    for (int thread = 0; thread < threads; ++thread) {
      runs[thread].reserve(voxels, rows);
      best_root[thread].reserve(args.classes);
      best_size[thread].reserve(args.classes);
    }
  } catch (const std::bad_alloc&) {
    const double bytes = double(threads) * (24.0 * voxels + 8.0 * (rows + 1) + 12.0 * args.classes);
    throw OutOfMemory("the CPU largest-component kernel", bytes);
  }
#pragma omp parallel num_threads(threads)
  {
    const int thread = omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t b = 0; b < args.batch; ++b)
      keep_largest<T>(args, labels + b * voxels, out + b * voxels, runs[thread], best_root[thread], best_size[thread]);
  }
}

}  // namespace

void largest_component(const ComponentArgs& args) {
  check_component_args(args, false);
  if (args.batch * args.depth * args.height * args.width == 0) return;
  dispatch_labels(args.dtype, [&](auto tag) { largest_component_impl<typename decltype(tag)::type>(args); });
}

}  // namespace mper::cpu
