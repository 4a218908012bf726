// Per-prototype sums and counts of embeddings on the CPU (SPEC 4): a voxel in the mask
// with label c adds its embedding to row c*K + assign[b, c, voxel].
//
// Each thread sums into a private float64 table (C*K rows are few), merged at the end.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "ops/cpu/scalar.h"

namespace mper::cpu {
namespace {

using namespace MPER_CPU_ISA;

constexpr std::int64_t kTile = 1024;

// Bank row of voxel n of image b, or -1 when it takes no part.
std::int64_t row_of(const AccumulateArgs& args, std::int64_t b, std::int64_t n) {
  const std::int64_t N = args.emb.voxels;
  const bool* mask = reinterpret_cast<const bool*>(args.mask);
  if (mask && !mask[b * N + n]) return -1;
  const std::int64_t label = reinterpret_cast<const std::int64_t*>(args.labels)[b * N + n];
  if (label < 0 || label >= args.classes) return -1;
  const std::int64_t k =
      reinterpret_cast<const std::int64_t*>(args.assign)[(b * args.classes + label) * N + n];
  if (k < 0 || k >= args.protos_per_class) return -1;
  return label * args.protos_per_class + k;
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
    std::vector<double> my_sums(rows * D, 0.0), my_counts(rows, 0.0);
    std::vector<std::int64_t> tile_rows(kTile);
#pragma omp for schedule(static)
    for (std::int64_t tile = 0; tile < e.batch * tiles_per_image; ++tile) {
      const std::int64_t b = tile / tiles_per_image, start = (tile % tiles_per_image) * kTile;
      const std::int64_t size = std::min(kTile, e.voxels - start);
      for (std::int64_t i = 0; i < size; ++i) {
        tile_rows[i] = row_of(args, b, start + i);
        if (tile_rows[i] >= 0) my_counts[tile_rows[i]] += 1;
      }
      const T* src = reinterpret_cast<const T*>(e.data) + b * e.batch_stride + start;
      for (std::int64_t d = 0; d < D; ++d)
        for (std::int64_t i = 0; i < size; ++i)
          if (tile_rows[i] >= 0) my_sums[tile_rows[i] * D + d] += load<double>(src[d * e.channel_stride + i]);
    }
#pragma omp critical
    for (std::int64_t i = 0; i < rows * D; ++i) sums[i] += my_sums[i];
#pragma omp critical
    for (std::int64_t j = 0; j < rows; ++j) counts[j] += my_counts[j];
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
