// EMA update of the prototype bank on the CPU: p <- m p + (1 - m) sums / count, only on
// rows that some voxel reached (count > 0).
#include "ops/cpu/scalar.h"

namespace mper::cpu {
namespace {

using namespace MPER_CPU_ISA;

template <typename A>
void ema_impl(const EmaArgs& args) {
  A* bank = reinterpret_cast<A*>(args.prototypes);
  const A* sums = reinterpret_cast<const A*>(args.sums);
  const A* counts = reinterpret_cast<const A*>(args.counts);
  const A m = A(args.momentum);
  for (std::int64_t j = 0; j < args.rows; ++j) {
    if (!(counts[j] > 0)) continue;
    for (std::int64_t d = 0; d < args.depth; ++d) {
      const std::int64_t i = j * args.depth + d;
      bank[i] = m * bank[i] + (A(1) - m) * (sums[i] / counts[j]);
    }
  }
}

}  // namespace

void ema_update(const EmaArgs& args) {
  check_ema_addresses(args);
  check(args.dtype == DType::Float32 || args.dtype == DType::Float64,
        "ema_update: the bank must be float32 or float64");
  if (args.dtype == DType::Float64) ema_impl<double>(args);
  else ema_impl<float>(args);
}

}  // namespace mper::cpu
