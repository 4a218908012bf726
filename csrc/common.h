// Shared by every op: argument records, checks and dtype dispatch.
//
// The core never links against libtorch: Python allocates every tensor and hands the
// kernels raw addresses, sizes and (on CUDA) the stream. Addresses travel as integers.
#pragma once

#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>

namespace mper {

// Codes shared with python/mper/ops/_common.py.
enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2, Float64 = 3 };

// Features (B, D, N) with N the flattened spatial size: element (b, d, n) lives at
// b * batch_stride + d * channel_stride + n. The bank is (C*K, D), row c*K + k, in the
// accumulation type (float64 for float64 features, float32 otherwise).
struct FeatureView {
  std::uintptr_t data = 0;
  std::int64_t batch_stride = 0, channel_stride = 0;
  std::int64_t batch = 0, depth = 0, voxels = 0;
};

// The fused prototype head: classify (logits, assign) and InfoNCE (loss) in one read of
// the features; each output is skipped when its address is 0.
struct HeadArgs {
  FeatureView feat;
  std::uintptr_t prototypes = 0;
  std::int64_t classes = 0, protos_per_class = 0;
  double inv_tau = 10.0, inv_nce_tau = 10.0;
  std::int64_t ignore_index = -1;  // bank row left out of InfoNCE; -1: none
  // forward outputs: logits (B, C, N) in the feature dtype, assign (B, C, N) int64,
  // loss (scalar, feature dtype) and count (scalar, accumulation type)
  std::uintptr_t logits = 0, assign = 0, loss = 0, count = 0;
  // backward inputs: grad_logits (B, C, N) contiguous, grad_loss (scalar, feature
  // dtype) with the forward's count; output grad_feat (B, D, N) contiguous
  std::uintptr_t grad_logits = 0, grad_loss = 0, grad_feat = 0;
  std::uintptr_t workspace = 0;  // CUDA: kHeadWorkspaceFloats floats
  DType dtype = DType::Float32;
  std::uintptr_t stream = 0;
  std::int64_t threads = 0;  // CPU: OpenMP threads (torch's count); 0: OpenMP's default
};

// Per-prototype sums (C*K, D) and counts (C*K) of emb over the voxels in mask.
struct AccumulateArgs {
  FeatureView emb;
  std::uintptr_t labels = 0;  // (B, N) int64
  std::uintptr_t assign = 0;  // (B, C, N) int64
  std::uintptr_t mask = 0;    // (B, N) bool; 0 selects every voxel
  std::int64_t classes = 0, protos_per_class = 0;
  std::uintptr_t sums = 0, counts = 0;  // zero-filled, accumulation type
  DType dtype = DType::Float32;
  std::uintptr_t stream = 0;
  std::int64_t threads = 0;  // CPU: OpenMP threads (torch's count); 0: OpenMP's default
};

// p <- m p + (1 - m) sums / count on rows whose count is positive.
struct EmaArgs {
  std::uintptr_t prototypes = 0, sums = 0, counts = 0;
  std::int64_t rows = 0, depth = 0;
  double momentum = 0.0;
  DType dtype = DType::Float32;  // of all three: Float32 or Float64
  std::uintptr_t stream = 0;
};

constexpr int kHeadWorkspaceFloats = 2 * 1024;  // per-block (loss, count) partials
// The deepest features the CUDA head kernels take (their registers hold a voxel's
// features); the CPU kernels take any depth.
constexpr int kCudaMaxHeadDepth = 128;

// Integer label dtypes (codes shared with python/mper/ops/largest_component.py).
enum class LabelDType : int { UInt8 = 0, Int8 = 1, Int16 = 2, Int32 = 3, Int64 = 4 };

// Largest connected component per image and foreground class of a contiguous label map
// (B, D, H, W), D = 1 for 2D images; out has the same layout and dtype. Labels outside
// [1, classes) are background and come out as 0. Voxels are numbered within their image
// and components counted in 32-bit integers, so an image holds at most
// kMaxImageVoxels voxels.
constexpr std::int64_t kMaxImageVoxels = std::numeric_limits<std::int32_t>::max();

struct ComponentArgs {
  std::uintptr_t labels = 0, out = 0;
  std::int64_t batch = 0, depth = 1, height = 0, width = 0;
  std::int64_t classes = 0;
  LabelDType dtype = LabelDType::Int64;
  // CUDA: B*D*H*W int32 parents, B*D*H*W int32 sizes, then B*classes uint64 choices
  std::uintptr_t workspace = 0;
  std::uintptr_t stream = 0;
  std::int64_t threads = 0;  // CPU: OpenMP threads (torch's count); 0: OpenMP's default
};

#if defined(__CUDACC__)
#define MPER_HOST_DEVICE __host__ __device__
#else
#define MPER_HOST_DEVICE
#endif

// Bank row (c*K + k) that voxel n of image b adds to in proto_accumulate, or -1 when it
// takes no part: outside the mask, or a label or assignment out of range (skipped, so
// that bad input can never write out of bounds).
MPER_HOST_DEVICE inline std::int64_t accumulate_row(const AccumulateArgs& args, std::int64_t b, std::int64_t n) {
  const std::int64_t N = args.emb.voxels;
  const bool* mask = reinterpret_cast<const bool*>(args.mask);
  if (mask && !mask[b * N + n]) return -1;
  const std::int64_t label = reinterpret_cast<const std::int64_t*>(args.labels)[b * N + n];
  if (label < 0 || label >= args.classes) return -1;
  const std::int64_t k = reinterpret_cast<const std::int64_t*>(args.assign)[(b * args.classes + label) * N + n];
  if (k < 0 || k >= args.protos_per_class) return -1;
  return label * args.protos_per_class + k;
}

inline void check(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument("mper: " + message);
}

// Whether every size is positive, i.e. whether their product (never computed: it could
// overflow and turn negative) is: a kernel has work exactly then.
inline bool all_positive(std::initializer_list<std::int64_t> sizes) {
  for (const std::int64_t size : sizes)
    if (size <= 0) return false;
  return true;
}

// a * b for a, b >= 0, or -1 when it is above `limit`: computed without overflow.
inline std::int64_t bounded_product(std::int64_t a, std::int64_t b, std::int64_t limit) {
  return b != 0 && a > limit / b ? -1 : a * b;
}

// Every entry point checks the addresses its kernel is about to read or write, so that a
// direct call of the compiled module that leaves one out raises instead of touching
// address 0. An address is needed only where the sizes give the kernel something to do.
inline void check_address(std::uintptr_t address, bool needed, const char* kernel, const char* what) {
  check(address != 0 || !needed, std::string(kernel) + ": " + what + " is needed, but its address is 0");
}

// Rows of a prototype bank the kernels take at most (the CUDA kernels index rows in
// 32-bit integers).
constexpr std::int64_t kMaxBankRows = std::int64_t(1) << 30;

// The sizes the head and accumulate kernels check before anything else: no negative
// size, and a bank of C * K rows, C, K >= 1, within kMaxBankRows (computed without overflow).
inline void check_bank_sizes(const FeatureView& f, std::int64_t classes, std::int64_t protos_per_class,
                             const char* kernel) {
  check(f.batch >= 0 && f.depth >= 0 && f.voxels >= 0,
        std::string(kernel) + ": the feature sizes (batch, depth, voxels) must not be negative");
  check(classes >= 1 && protos_per_class >= 1 && bounded_product(classes, protos_per_class, kMaxBankRows) >= 0,
        std::string(kernel) +
            ": the bank must have classes >= 1 and prototypes per class >= 1, at most 2^30 rows in all");
}

inline void check_head_addresses(const HeadArgs& a, bool backward, bool workspace_needed) {
  const char* kernel = backward ? "head_backward" : "head_forward";
  check_bank_sizes(a.feat, a.classes, a.protos_per_class, kernel);
  const FeatureView& f = a.feat;
  const bool features = all_positive({f.batch, f.depth, f.voxels});
  check_address(f.data, features, kernel, "the features");
  check_address(a.prototypes, all_positive({a.classes, a.protos_per_class, f.depth}), kernel, "the prototype bank");
  if (backward) {
    check_address(a.grad_feat, features, kernel, "grad_feat");
    check_address(a.count, a.grad_loss != 0, kernel, "the loss's count (grad_loss is given)");
    return;
  }
  check((a.logits == 0) == (a.assign == 0), "head_forward: logits and assign go together (both addresses or neither)");
  check_address(a.count, a.loss != 0, kernel, "the loss's count (loss is given)");
  check_address(a.workspace, a.loss != 0 && workspace_needed, kernel, "the loss's workspace (loss is given)");
}

inline void check_accumulate_addresses(const AccumulateArgs& a) {
  check_bank_sizes(a.emb, a.classes, a.protos_per_class, "accumulate");
  const FeatureView& e = a.emb;
  const bool voxels = all_positive({e.batch, e.voxels}), rows = all_positive({a.classes, a.protos_per_class});
  check_address(e.data, voxels && e.depth > 0, "accumulate", "the embeddings");
  check_address(a.labels, voxels, "accumulate", "labels");
  check_address(a.assign, voxels, "accumulate", "assign");
  check_address(a.sums, rows && e.depth > 0, "accumulate", "sums");
  check_address(a.counts, rows, "accumulate", "counts");
}

inline void check_ema_addresses(const EmaArgs& a) {
  const bool elements = all_positive({a.rows, a.depth});
  check_address(a.prototypes, elements, "ema_update", "the prototype bank");
  check_address(a.sums, elements, "ema_update", "sums");
  check_address(a.counts, a.rows > 0, "ema_update", "counts");  // the CPU reads them per row
}

// The checks both largest_component kernels make before they run.
inline void check_component_args(const ComponentArgs& a, bool workspace_needed) {
  check(a.batch >= 0 && a.depth >= 1 && a.height >= 0 && a.width >= 0, "largest_component: invalid shape");
  const std::int64_t plane = bounded_product(a.height, a.width, kMaxImageVoxels);
  const std::int64_t voxels = plane < 0 ? -1 : bounded_product(a.depth, plane, kMaxImageVoxels);
  check(voxels >= 0, "largest_component: an image of " + std::to_string(a.depth) + " x " + std::to_string(a.height) +
                         " x " + std::to_string(a.width) + " voxels is larger than the 2^31 - 1 (" +
                         std::to_string(kMaxImageVoxels) + ") supported");
  check(a.classes >= 1 && a.classes <= std::numeric_limits<std::int32_t>::max(),
        "largest_component: classes must be in [1, 2^31)");
  const bool work = all_positive({a.batch, voxels});
  check_address(a.labels, work, "largest_component", "labels");
  check_address(a.out, work, "largest_component", "out");
  check_address(a.workspace, work && workspace_needed, "largest_component", "the workspace");
}

// CUDA versions as the CUDA runtime reports them, 1000 * major + 10 * minor (13000: 13.0).
inline std::string cuda_version_name(int version) {
  return std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10);
}

// The two versions and what to do when the driver is too old for the CUDA kernels.
inline std::string cuda_driver_advice(int driver, int runtime) {
  const std::string supports = driver > 0 ? "supports CUDA up to " + cuda_version_name(driver) : "was not found";
  return "the NVIDIA driver " + supports + ", but mper's CUDA kernels were built with CUDA " +
         cuda_version_name(runtime) +
         ": rebuild mper with the CUDA toolkit that matches torch.version.cuda (its nvcc first on PATH, then "
         "`pip install --no-build-isolation .`), or update the NVIDIA driver";
}

// Why the CUDA kernels, built with CUDA `runtime` and linking its runtime statically,
// cannot run next to a driver that supports CUDA `driver` (0: no driver), or "" when
// they can. A driver of the same major version runs them even when its minor version is
// older (CUDA's minor version compatibility); a driver of an older major version cannot.
inline std::string cuda_version_problem(int driver, int runtime) {
  if (driver > 0 && driver / 1000 >= runtime / 1000) return "";
  return "mper: " + cuda_driver_advice(driver, runtime);
}

// Scratch memory a kernel could not get. Derives from std::bad_alloc, so Python sees a
// MemoryError carrying this message (pybind11 keeps what()).
class OutOfMemory : public std::bad_alloc {
 public:
  OutOfMemory(const char* kernel, double bytes) {
    std::snprintf(message_, sizeof message_,
                  "mper: %s could not allocate %.1f MiB of scratch memory; use a smaller prototype "
                  "bank or fewer threads (torch.set_num_threads)",
                  kernel, bytes / (1024.0 * 1024.0));
  }
  const char* what() const noexcept override { return message_; }

 private:
  char message_[256];
};

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with T the C++ type of `dtype` among Float32, Float16, BFloat16,
// Float64 (given per backend, e.g. dispatch<float, Half, BFloat16, double>).
template <typename F32, typename F16, typename BF16, typename F64, typename Fn>
void dispatch(DType dtype, Fn&& f) {
  switch (dtype) {
    case DType::Float32: f(TypeTag<F32>{}); return;
    case DType::Float16: f(TypeTag<F16>{}); return;
    case DType::BFloat16: f(TypeTag<BF16>{}); return;
    case DType::Float64: f(TypeTag<F64>{}); return;
  }
  throw std::invalid_argument("mper: unknown dtype code");
}

// Calls f(TypeTag<T>{}) with T the C++ integer type of `dtype`.
template <typename Fn>
void dispatch_labels(LabelDType dtype, Fn&& f) {
  switch (dtype) {
    case LabelDType::UInt8: f(TypeTag<std::uint8_t>{}); return;
    case LabelDType::Int8: f(TypeTag<std::int8_t>{}); return;
    case LabelDType::Int16: f(TypeTag<std::int16_t>{}); return;
    case LabelDType::Int32: f(TypeTag<std::int32_t>{}); return;
    case LabelDType::Int64: f(TypeTag<std::int64_t>{}); return;
  }
  throw std::invalid_argument("mper: unknown label dtype code");
}

namespace cpu {
void head_forward(const HeadArgs& args);
void head_backward(const HeadArgs& args);
void accumulate(const AccumulateArgs& args);
void ema_update(const EmaArgs& args);
void largest_component(const ComponentArgs& args);
}  // namespace cpu

#ifdef MPER_WITH_CUDA
namespace cuda {
// The CUDA version of this build's runtime (linked statically) and the one the installed
// driver supports (0 without a driver).
int runtime_version();
int driver_version();
// Raises std::runtime_error with cuda_version_problem's message when the driver cannot run
// this build's runtime; every CUDA entry point calls it first (it asks the driver once).
void check_driver();

void head_forward(const HeadArgs& args);
void head_backward(const HeadArgs& args);
void accumulate(const AccumulateArgs& args);
void ema_update(const EmaArgs& args);
void largest_component(const ComponentArgs& args);
}  // namespace cuda
#endif

}  // namespace mper
