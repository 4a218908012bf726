// Fused prototype head on the CPU: cosine similarity of every voxel feature to every
// prototype, the per-class max/argmax (classifier) and the InfoNCE loss, forward and
// backward, in one pass over the features.
//
// Voxels are processed in chunks of kChunk along the flattened spatial axis: a chunk of
// the channels-first features is already "structure of arrays" (D rows of kChunk
// contiguous values), so every inner loop runs over the voxels of the chunk and the
// compiler vectorises it (exp included, see exp_nonpositive).
//
// This file is compiled once per instruction set, MPER_CPU_ISA naming the namespace
// (`generic`, and `avx2` for x86-64-v3 on x86-64); the entry points at the end, built
// with `generic`, run the best one the processor supports. So that the builds share no
// symbol, everything here lives in that namespace and uses no standard containers.
#include <omp.h>

#include <cmath>

#include "ops/cpu/scalar.h"

namespace mper::cpu::MPER_CPU_ISA {
namespace {

constexpr std::int64_t kChunk = 256;

// kChunk-long rows carved out of one thread's slice of a Scratch.
template <typename T>
struct Rows {
  T* data;
  T* row(std::int64_t r) const { return data + r * kChunk; }
};
template <typename T>
Rows<T> take(T*& cursor, std::int64_t rows) {
  Rows<T> taken{cursor};
  cursor += rows * kChunk;
  return taken;
}

// Whether `candidate` replaces `current` in a running max/argmax: a larger value or the
// first NaN, which then stays (as torch.max and torch.argmax treat NaN).
template <typename A>
inline bool replaces(A candidate, A current) {
  return !(candidate <= current) && current == current;
}

// e^x for x <= 0, branch-free so that loops over it vectorise: 2^t = 2^i * 2^f with i the
// nearest integer (adding 1.5 * 2^23 rounds t and leaves i in the low bits) and f in
// [-0.5, 0.5], 2^f by its degree-6 series (relative error about 2e-7 down to e^-87; below,
// 0, as in float32 arithmetic: the gradient divides by nce_tau, which can be small enough
// to make a stand-in such as 2^-126 count). NaN stays NaN. float64 keeps std::exp, for
// gradcheck.
inline float exp_nonpositive(float x) {
  const float exponent = x * 1.4426950408889634f;
  const float t = exponent < -126.f ? -126.f : exponent;
  const float biased = t + 12582912.f;
  const float f = t - (biased - 12582912.f);
  float p = 1.5403530393381609e-4f;
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.f;
  const float power = p * bits_to_float((float_to_bits(biased) - 0x4B400000u + 127u) << 23);
  return exponent < -126.f ? 0.f : power;
}
inline double exp_nonpositive(double x) { return std::exp(x); }

// 32-byte vectors (GCC/Clang vector extension: AVX registers in the avx2 build, pairs of
// SSE registers in the generic one) for the two matrix-like loops, which keep blocks of
// four accumulators in registers instead of streaming partial sums through memory.
template <typename A>
struct Vector;
template <>
struct Vector<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Vector<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <typename A>
using vec_t = typename Vector<A>::type;
template <typename A>
constexpr std::int64_t kLanes = 32 / sizeof(A);

template <typename A>
inline vec_t<A> load_vec(const A* p) {
  vec_t<A> v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
template <typename A>
inline void store_vec(A* p, vec_t<A> v) {
  __builtin_memcpy(p, &v, sizeof v);
}

// out[r][v] = sum_i left[i][v] * right(r, i) for r < rows_out, i < inner, all voxels of a
// chunk: left rows are kChunk long, right(r, i) = right[r * r_stride + i * i_stride].
// The voxel axis is vectorised and four output rows are accumulated at a time.
template <typename A>
void chunk_product(A* out, std::int64_t rows_out, const A* left, std::int64_t inner, const A* right,
                   std::int64_t r_stride, std::int64_t i_stride) {
  using V = vec_t<A>;
  for (std::int64_t v = 0; v < kChunk; v += kLanes<A>) {
    for (std::int64_t r0 = 0; r0 < rows_out; r0 += 4) {
      V acc0 = V{}, acc1 = V{}, acc2 = V{}, acc3 = V{};
      const std::int64_t r1 = r0 + 1 < rows_out ? r0 + 1 : r0, r2 = r0 + 2 < rows_out ? r0 + 2 : r0,
                         r3 = r0 + 3 < rows_out ? r0 + 3 : r0;
      for (std::int64_t i = 0; i < inner; ++i) {
        const V x = load_vec(left + i * kChunk + v);
        acc0 += x * right[r0 * r_stride + i * i_stride];
        acc1 += x * right[r1 * r_stride + i * i_stride];
        acc2 += x * right[r2 * r_stride + i * i_stride];
        acc3 += x * right[r3 * r_stride + i * i_stride];
      }
      store_vec(out + r0 * kChunk + v, acc0);
      if (r0 + 1 < rows_out) store_vec(out + r1 * kChunk + v, acc1);
      if (r0 + 2 < rows_out) store_vec(out + r2 * kChunk + v, acc2);
      if (r0 + 3 < rows_out) store_vec(out + r3 * kChunk + v, acc3);
    }
  }
}

// The bank's rows scaled to unit norm (rows x depth), once per call: shared by all threads.
template <typename A>
void unit_bank(const HeadArgs& args, A* unit) {
  const A* raw = reinterpret_cast<const A*>(args.prototypes);
  const std::int64_t rows = args.classes * args.protos_per_class, depth = args.feat.depth;
  for (std::int64_t j = 0; j < rows; ++j) {
    A squared = 0;
    for (std::int64_t d = 0; d < depth; ++d) squared += raw[j * depth + d] * raw[j * depth + d];
    const A norm = std::sqrt(squared);
    const A scale = norm > A(1e-12) ? A(1) / norm : A(0);
    for (std::int64_t d = 0; d < depth; ++d) unit[j * depth + d] = raw[j * depth + d] * scale;
  }
}

// One chunk of voxels of one image and what the head derives from it, in one thread's
// scratch. Per-voxel arrays hold kChunk values; multi-row ones are [row][voxel].
template <typename A>
struct Chunk {
  const HeadArgs& args;
  const std::int64_t classes, protos, rows, depth;
  std::int64_t batch = 0, start = 0, size = 0;
  const A* bank;                // (C*K, D) unit prototypes (not per voxel)
  Rows<A> unit, inv_norm, sim;  // z^ (D rows), 1/|z|, cos(z, p_j) (C*K rows)
  Rows<A> best;                 // max_k s of the class in hand
  Rows<A> top, total;           // max_j s_j and sum_j e^((s_j - top) / tau2)
  Rows<A> exps;                 // e^((s_j - top) / tau2) (C*K rows)
  Rows<std::int32_t> arg;       // argmax_k of the class in hand
  Rows<std::int32_t> nearest;   // argmax_j s_j

  // Scratch values per thread: floats(rows, depth) of A and kInts of int32.
  static std::int64_t floats(std::int64_t rows, std::int64_t depth) { return (depth + 2 * rows + 4) * kChunk; }
  static constexpr std::int64_t kInts = 2 * kChunk;

  // Takes its arrays from `floats` and `ints`, advancing both.
  Chunk(const HeadArgs& a, const A* unit_bank, A*& floats, std::int32_t*& ints)
      : args(a), classes(a.classes), protos(a.protos_per_class), rows(a.classes * a.protos_per_class),
        depth(a.feat.depth), bank(unit_bank), unit(take(floats, depth)), inv_norm(take(floats, 1)),
        sim(take(floats, rows)), best(take(floats, 1)), top(take(floats, 1)), total(take(floats, 1)),
        exps(take(floats, rows)), arg(take(ints, 1)), nearest(take(ints, 1)) {}

  // Loads chunk `index`, normalises it and fills sim.
  template <typename T>
  void fill(std::int64_t index) {
    const FeatureView& f = args.feat;
    const std::int64_t chunks_per_image = (f.voxels + kChunk - 1) / kChunk;
    batch = index / chunks_per_image;
    start = (index % chunks_per_image) * kChunk;
    size = f.voxels - start < kChunk ? f.voxels - start : kChunk;
    const T* src = reinterpret_cast<const T*>(f.data) + batch * f.batch_stride + start;
    A* __restrict norm = inv_norm.data;
    for (std::int64_t v = 0; v < kChunk; ++v) norm[v] = A(0);
    for (std::int64_t d = 0; d < depth; ++d) {
      A* __restrict z = unit.row(d);
      const T* __restrict in = src + d * f.channel_stride;
      for (std::int64_t v = 0; v < size; ++v) z[v] = load<A>(in[v]);
      for (std::int64_t v = size; v < kChunk; ++v) z[v] = A(0);  // the vector loops run to kChunk
      for (std::int64_t v = 0; v < size; ++v) norm[v] += z[v] * z[v];
    }
    for (std::int64_t v = 0; v < size; ++v) {
      const A length = std::sqrt(norm[v]);
      norm[v] = length > A(1e-12) ? A(1) / length : A(0);
    }
    for (std::int64_t d = 0; d < depth; ++d) {
      A* __restrict z = unit.row(d);
      for (std::int64_t v = 0; v < size; ++v) z[v] *= norm[v];
    }
    chunk_product(sim.data, rows, unit.data, depth, bank, depth, 1);  // s_j = sum_d p^_jd z^_d
  }

  // best/arg = max/argmax over k of class c (first k on ties).
  void best_of_class(std::int64_t c) {
    A* __restrict top_k = best.data;
    std::int32_t* __restrict which = arg.data;
    const A* first = sim.row(c * protos);
    for (std::int64_t v = 0; v < size; ++v) top_k[v] = first[v], which[v] = 0;
    for (std::int32_t k = 1; k < protos; ++k) {
      const A* __restrict s = sim.row(c * protos + k);
      for (std::int64_t v = 0; v < size; ++v) {
        const bool up = replaces(s[v], top_k[v]);
        top_k[v] = up ? s[v] : top_k[v];
        which[v] = up ? k : which[v];
      }
    }
  }

  // top/nearest = max/argmax over all rows; exps and their sum total.
  void softmax_stats(A inv_nce_tau) {
    A* __restrict high = top.data;
    A* __restrict sum = total.data;
    std::int32_t* __restrict which = nearest.data;
    for (std::int64_t v = 0; v < size; ++v) high[v] = sim.row(0)[v], which[v] = 0, sum[v] = A(0);
    for (std::int32_t j = 1; j < rows; ++j) {
      const A* __restrict s = sim.row(j);
      for (std::int64_t v = 0; v < size; ++v) {
        const bool up = replaces(s[v], high[v]);
        high[v] = up ? s[v] : high[v];
        which[v] = up ? j : which[v];
      }
    }
    for (std::int64_t j = 0; j < rows; ++j) {
      const A* __restrict s = sim.row(j);
      A* __restrict e = exps.row(j);
      for (std::int64_t v = 0; v < size; ++v) {
        e[v] = exp_nonpositive((s[v] - high[v]) * inv_nce_tau);
        sum[v] += e[v];
      }
    }
  }
};

constexpr const char* kKernel = "the CPU prototype head";

// What the head's threads need, allocated before the parallel region: the unit bank, and
// per thread a Chunk's arrays followed by `extra_rows` more rows of kChunk values.
template <typename A>
struct HeadScratch {
  const HeadArgs& args;
  const int threads;
  const std::int64_t per_thread;
  Scratch<A> bank, floats;
  Scratch<std::int32_t> ints;

  HeadScratch(const HeadArgs& a, std::int64_t chunks, std::int64_t extra_rows)
      : args(a), threads(team_size(a.threads, chunks)),
        per_thread(Chunk<A>::floats(a.classes * a.protos_per_class, a.feat.depth) + extra_rows * kChunk),
        bank(a.classes * a.protos_per_class * a.feat.depth, kKernel), floats(threads * per_thread, kKernel),
        ints(threads * Chunk<A>::kInts, kKernel) {
    unit_bank(args, bank.data);
  }

  // The chunk of thread `thread`; `extra` is left at its extra rows.
  Chunk<A> chunk_of(int thread, A*& extra) const {
    extra = floats.data + thread * per_thread;
    std::int32_t* my_ints = ints.data + thread * Chunk<A>::kInts;
    return Chunk<A>(args, bank.data, extra, my_ints);
  }
};

template <typename T>
void forward_impl(const HeadArgs& args) {
  using A = acc_t<T>;
  const FeatureView& f = args.feat;
  const std::int64_t C = args.classes, N = f.voxels;
  const std::int64_t chunks = f.batch * ((N + kChunk - 1) / kChunk);
  T* logits = reinterpret_cast<T*>(args.logits);
  std::int64_t* assign = reinterpret_cast<std::int64_t*>(args.assign);
  const A inv_tau = A(args.inv_tau);
  const HeadScratch<A> scratch(args, chunks, 0);
  const int threads = scratch.threads;
  Scratch<double> partials(2 * threads, kKernel);  // per thread: sum of -log p and kept voxels

#pragma omp parallel num_threads(threads)
  {
    const int thread = omp_get_thread_num();
    A* unused;
    Chunk<A> chunk = scratch.chunk_of(thread, unused);
    double loss_sum = 0, count = 0;
#pragma omp for schedule(static)
    for (std::int64_t index = 0; index < chunks; ++index) {
      chunk.template fill<T>(index);
      for (std::int64_t c = 0; c < C && logits; ++c) {
        chunk.best_of_class(c);
        const std::int64_t out = (chunk.batch * C + c) * N + chunk.start;
        for (std::int64_t v = 0; v < chunk.size; ++v) logits[out + v] = store<T>(chunk.best.data[v] * inv_tau);
        for (std::int64_t v = 0; v < chunk.size; ++v) assign[out + v] = chunk.arg.data[v];
      }
      if (!args.loss) continue;
      chunk.softmax_stats(A(args.inv_nce_tau));
      for (std::int64_t v = 0; v < chunk.size; ++v) {
        // an ignored voxel adds 0 times its term, so that NaN still reaches the loss
        const double kept = chunk.nearest.data[v] != args.ignore_index ? 1.0 : 0.0;
        loss_sum += std::log(double(chunk.total.data[v])) * kept;
        count += kept;
      }
    }
    partials.data[2 * thread] = loss_sum;
    partials.data[2 * thread + 1] = count;
  }
  if (args.loss) {
    // summed in thread order: the same bits on every run with the same thread count
    double loss_sum = 0, count = 0;
    for (int thread = 0; thread < threads; ++thread) {
      loss_sum += partials.data[2 * thread];
      count += partials.data[2 * thread + 1];
    }
    *reinterpret_cast<T*>(args.loss) = store<T>(loss_sum / (count > 1.0 ? count : 1.0));
    *reinterpret_cast<A*>(args.count) = A(count);
  }
}

template <typename T>
void backward_impl(const HeadArgs& args) {
  using A = acc_t<T>;
  const FeatureView& f = args.feat;
  const std::int64_t C = args.classes, K = args.protos_per_class, rows = C * K, N = f.voxels;
  const std::int64_t D = f.depth;
  const std::int64_t chunks = f.batch * ((N + kChunk - 1) / kChunk);
  const T* grad_logits = reinterpret_cast<const T*>(args.grad_logits);
  T* grad_feat = reinterpret_cast<T*>(args.grad_feat);
  const A inv_tau = A(args.inv_tau), inv_nce_tau = A(args.inv_nce_tau);
  // d loss / d s_j for a kept voxel = nce_weight * (softmax_j - [j == nearest]) / nce_tau,
  // divided by nce_tau last, as autograd does through the reference: a large 1/nce_tau then
  // multiplies an exact 0 where the softmax is one-hot, never an overflowed weight (inf * 0)
  A nce_weight = 0;
  if (args.grad_loss) {
    const A count = *reinterpret_cast<const A*>(args.count);
    nce_weight = load<A>(*reinterpret_cast<const T*>(args.grad_loss)) / (count > A(1) ? count : A(1));
  }
  // per thread after the chunk: coeff (C*K rows), weight, direction (D rows) and radial
  const HeadScratch<A> scratch(args, chunks, rows + D + 2);

#pragma omp parallel num_threads(scratch.threads)
  {
    A* cursor;
    Chunk<A> chunk = scratch.chunk_of(omp_get_thread_num(), cursor);
    const Rows<A> coeff = take(cursor, rows), weight = take(cursor, 1), direction = take(cursor, D),
                  radial = take(cursor, 1);
#pragma omp for schedule(static)
    for (std::int64_t index = 0; index < chunks; ++index) {
      chunk.template fill<T>(index);
      const std::int64_t size = chunk.size;
      // coeff[j][v] = d loss / d s_j
      if (nce_weight != A(0)) {
        chunk.softmax_stats(inv_nce_tau);
        // nce_weight / sum of exps, times 0 for ignored voxels (0 * NaN stays NaN)
        A* __restrict w = weight.data;
        for (std::int64_t v = 0; v < size; ++v)
          w[v] = nce_weight / chunk.total.data[v] * A(chunk.nearest.data[v] != args.ignore_index);
        for (std::int32_t j = 0; j < rows; ++j) {
          const A* __restrict e = chunk.exps.row(j);
          const A* __restrict sum = chunk.total.data;
          const std::int32_t* __restrict which = chunk.nearest.data;
          A* __restrict cj = coeff.row(j);
          for (std::int64_t v = 0; v < size; ++v) cj[v] = w[v] * (e[v] - (which[v] == j ? sum[v] : A(0))) * inv_nce_tau;
        }
      } else {
        for (std::int64_t i = 0; i < rows * kChunk; ++i) coeff.data[i] = A(0);
      }
      for (std::int64_t c = 0; c < C && grad_logits; ++c) {
        chunk.best_of_class(c);
        const T* __restrict g = grad_logits + (chunk.batch * C + c) * N + chunk.start;
        A* __restrict scaled = weight.data;
        for (std::int64_t v = 0; v < size; ++v) scaled[v] = load<A>(g[v]) * inv_tau;
        for (std::int32_t k = 0; k < K; ++k) {
          A* __restrict cj = coeff.row(c * K + k);
          const std::int32_t* __restrict which = chunk.arg.data;
          for (std::int64_t v = 0; v < size; ++v) cj[v] += which[v] == k ? scaled[v] : A(0);
        }
      }
      // ds_j/dz = (p^_j - s_j z^) / |z|, so grad = (u - (u . z^) z^) / |z| with u = sum_j coeff_j p^_j
      chunk_product(direction.data, D, coeff.data, rows, chunk.bank, 1, D);  // u_d = sum_j coeff_j p^_jd
      A* __restrict along = radial.data;
      for (std::int64_t v = 0; v < size; ++v) along[v] = A(0);
      for (std::int64_t d = 0; d < D; ++d) {
        const A* __restrict u = direction.row(d);
        const A* __restrict zhat = chunk.unit.row(d);
        for (std::int64_t v = 0; v < size; ++v) along[v] += u[v] * zhat[v];
      }
      T* out = grad_feat + chunk.batch * D * N + chunk.start;
      for (std::int64_t d = 0; d < D; ++d) {
        const A* __restrict u = direction.row(d);
        const A* __restrict zhat = chunk.unit.row(d);
        const A* __restrict inv = chunk.inv_norm.data;
        T* __restrict o = out + d * N;
        for (std::int64_t v = 0; v < size; ++v) o[v] = store<T>(inv[v] * (u[v] - along[v] * zhat[v]));
      }
    }
  }
}

}  // namespace

void head_forward(const HeadArgs& args) {
  dispatch_cpu(args.dtype, [&](auto tag) { forward_impl<typename decltype(tag)::type>(args); });
}

void head_backward(const HeadArgs& args) {
  dispatch_cpu(args.dtype, [&](auto tag) { backward_impl<typename decltype(tag)::type>(args); });
}

}  // namespace mper::cpu::MPER_CPU_ISA

#ifdef MPER_CPU_ENTRY_POINTS
namespace mper::cpu {
#ifdef MPER_CPU_AVX2
namespace avx2 {
void head_forward(const HeadArgs& args);
void head_backward(const HeadArgs& args);
}  // namespace avx2

static bool has_avx2() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
}
#endif

void head_forward(const HeadArgs& args) {
  check_head_addresses(args, false, false);
#ifdef MPER_CPU_AVX2
  if (has_avx2()) return avx2::head_forward(args);
#endif
  MPER_CPU_ISA::head_forward(args);
}

void head_backward(const HeadArgs& args) {
  check_head_addresses(args, true, false);
#ifdef MPER_CPU_AVX2
  if (has_avx2()) return avx2::head_backward(args);
#endif
  MPER_CPU_ISA::head_backward(args);
}
}  // namespace mper::cpu
#endif
