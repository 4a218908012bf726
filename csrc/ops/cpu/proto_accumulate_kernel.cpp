// Per-prototype sums and counts of embeddings on the CPU (docs/method.md, "Prototype
// update"): a voxel in the mask with label c adds its embedding to row
// c*K + assign[b, c, voxel].
//
// Each thread sums into a private float64 table (C*K rows are few); the tables are merged
// in thread order at the end. Within a tile, channel by channel, consecutive voxels add to
// kCopies interleaved copies of the table, so that runs of voxels on one row do not wait
// on each other's additions.
#include <omp.h>

#include <algorithm>

#include "ops/cpu/scalar.h"

namespace mper::cpu {
namespace {

using namespace MPER_CPU_ISA;

constexpr std::int64_t kTile = 1024;
constexpr std::int64_t kCopies = 4;

constexpr const char* kKernel = "the CPU prototype accumulation";

// Adds channel values x[i] (or 1 when x is null, for the counts) of a tile into
// table[row * stride], row = rows[i]; rows[i] == skip marks a voxel that takes no part.
// copies holds kCopies * (skip + 1) values.
template <typename T>
void add_channel(const T* x, const std::int64_t* rows, std::int64_t size, std::int64_t skip, double* copies,
                 double* table, std::int64_t stride) {
  const std::int64_t slots = skip + 1;
  std::fill(copies, copies + kCopies * slots, 0.0);
  for (std::int64_t i = 0; i < size; ++i) copies[(i % kCopies) * slots + rows[i]] += x ? load<double>(x[i]) : 1.0;
  for (std::int64_t row = 0; row < skip; ++row)
    for (std::int64_t c = 0; c < kCopies; ++c) table[row * stride] += copies[c * slots + row];
}

template <typename T>
void accumulate_impl(const AccumulateArgs& args) {
  using A = acc_t<T>;
  const FeatureView& e = args.emb;
  const std::int64_t rows = args.classes * args.protos_per_class, D = e.depth;
  const std::int64_t tiles_per_image = (e.voxels + kTile - 1) / kTile, tiles = e.batch * tiles_per_image;
  const int threads = team_size(args.threads, tiles);
  // per thread: sums (rows x D) and counts (rows) in float64, the interleaved copies, and
  // the tile's bank rows; all allocated before the parallel region
  const std::int64_t table = rows * D + rows, per_thread = table + kCopies * (rows + 1);
  Scratch<double> partials(threads * per_thread, kKernel);
  Scratch<std::int64_t> tile_rows(threads * kTile, kKernel);

#pragma omp parallel num_threads(threads)
  {
    const int thread = omp_get_thread_num();
    double* my_sums = partials.data + thread * per_thread;
    double* my_counts = my_sums + rows * D;
    double* copies = my_sums + table;
    std::int64_t* my_rows = tile_rows.data + thread * kTile;
#pragma omp for schedule(static)
    for (std::int64_t tile = 0; tile < tiles; ++tile) {
      const std::int64_t b = tile / tiles_per_image, start = (tile % tiles_per_image) * kTile;
      const std::int64_t size = std::min(kTile, e.voxels - start);
      for (std::int64_t i = 0; i < size; ++i) {
        const std::int64_t row = accumulate_row(args, b, start + i);
        my_rows[i] = row >= 0 ? row : rows;
      }
      const T* src = reinterpret_cast<const T*>(e.data) + b * e.batch_stride + start;
      add_channel<T>(nullptr, my_rows, size, rows, copies, my_counts, 1);
      for (std::int64_t d = 0; d < D; ++d)
        add_channel(src + d * e.channel_stride, my_rows, size, rows, copies, my_sums + d, D);
    }
  }
  // merged in thread order: the same bits on every run with the same thread count
  A* out_sums = reinterpret_cast<A*>(args.sums);
  A* out_counts = reinterpret_cast<A*>(args.counts);
  for (std::int64_t i = 0; i < table; ++i) {
    double total = 0;
    for (int thread = 0; thread < threads; ++thread) total += partials.data[thread * per_thread + i];
    if (i < rows * D) out_sums[i] += A(total);
    else out_counts[i - rows * D] += A(total);
  }
}

}  // namespace

void accumulate(const AccumulateArgs& args) {
  check_accumulate_addresses(args);
  dispatch_cpu(args.dtype, [&](auto tag) { accumulate_impl<typename decltype(tag)::type>(args); });
}

}  // namespace mper::cpu
