// Per-prototype sums and counts of embeddings on the CPU (SPEC 4): a voxel in the mask
// with label c adds its embedding to row c*K + assign[b, c, voxel].
//
// Each thread sums into a private float64 table (C*K rows are few), merged at the end.
// Within a tile, channel by channel, consecutive voxels add to kCopies interleaved copies
// of the table, so that runs of voxels on one row do not wait on each other's additions.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "ops/cpu/scalar.h"

namespace mper::cpu {
namespace {

using namespace MPER_CPU_ISA;

constexpr std::int64_t kTile = 1024;
constexpr std::int64_t kCopies = 4;

// Adds channel values x[i] (or 1 when x is null, for the counts) of a tile into
// table[row * stride], row = rows[i]; rows[i] == skip marks a voxel that takes no part.
template <typename T>
void add_channel(const T* x, const std::int64_t* rows, std::int64_t size, std::int64_t skip,
                 std::vector<double>& copies, double* table, std::int64_t stride) {
  std::fill(copies.begin(), copies.end(), 0.0);
  const std::int64_t slots = skip + 1;
  for (std::int64_t i = 0; i < size; ++i)
    copies[(i % kCopies) * slots + rows[i]] += x ? load<double>(x[i]) : 1.0;
  for (std::int64_t row = 0; row < skip; ++row)
    for (std::int64_t c = 0; c < kCopies; ++c) table[row * stride] += copies[c * slots + row];
}

template <typename T>
void accumulate_impl(const AccumulateArgs& args) {
  using A = acc_t<T>;
  const FeatureView& e = args.emb;
  const std::int64_t rows = args.classes * args.protos_per_class, D = e.depth;
  const std::int64_t tiles_per_image = (e.voxels + kTile - 1) / kTile;
  std::vector<double> sums(rows * D, 0.0), counts(rows, 0.0);

#pragma omp parallel
  {
    std::vector<double> my_sums(rows * D, 0.0), my_counts(rows, 0.0), copies(kCopies * (rows + 1));
    std::vector<std::int64_t> tile_rows(kTile);
#pragma omp for schedule(static)
    for (std::int64_t tile = 0; tile < e.batch * tiles_per_image; ++tile) {
      const std::int64_t b = tile / tiles_per_image, start = (tile % tiles_per_image) * kTile;
      const std::int64_t size = std::min(kTile, e.voxels - start);
      for (std::int64_t i = 0; i < size; ++i) {
        const std::int64_t row = accumulate_row(args, b, start + i);
        tile_rows[i] = row >= 0 ? row : rows;
      }
      const T* src = reinterpret_cast<const T*>(e.data) + b * e.batch_stride + start;
      add_channel<T>(nullptr, tile_rows.data(), size, rows, copies, my_counts.data(), 1);
      for (std::int64_t d = 0; d < D; ++d)
        add_channel(src + d * e.channel_stride, tile_rows.data(), size, rows, copies, my_sums.data() + d, D);
    }
#pragma omp critical
    {
      for (std::int64_t i = 0; i < rows * D; ++i) sums[i] += my_sums[i];
      for (std::int64_t j = 0; j < rows; ++j) counts[j] += my_counts[j];
    }
  }
  A* out_sums = reinterpret_cast<A*>(args.sums);
  A* out_counts = reinterpret_cast<A*>(args.counts);
  for (std::int64_t i = 0; i < rows * D; ++i) out_sums[i] += A(sums[i]);
  for (std::int64_t j = 0; j < rows; ++j) out_counts[j] += A(counts[j]);
}

}  // namespace

void accumulate(const AccumulateArgs& args) {
  dispatch_cpu(args.dtype, [&](auto tag) { accumulate_impl<typename decltype(tag)::type>(args); });
}

}  // namespace mper::cpu
