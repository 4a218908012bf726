// What the CPU kernels share: float16 / bfloat16 storage types and conversions (portable
// bit manipulation, round to nearest even, so the build needs no compiler extension such
// as _Float16 or __bf16), dtype dispatch, and scratch memory and thread count for the
// OpenMP regions.
//
// Kernels compiled for several instruction sets (see proto_head_kernel.cpp) include this
// with MPER_CPU_ISA naming the namespace, so that no inline function is shared between
// builds (the linker would keep one copy, possibly one the processor cannot run).
#pragma once

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common.h"

#ifndef MPER_CPU_ISA
#define MPER_CPU_ISA generic
#endif

namespace mper::cpu::MPER_CPU_ISA {

struct Half {
  std::uint16_t bits;
};
struct BFloat16 {
  std::uint16_t bits;
};

inline float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline std::uint32_t float_to_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float to_float(BFloat16 x) { return bits_to_float(std::uint32_t(x.bits) << 16); }

inline BFloat16 to_bfloat16(float f) {
  std::uint32_t u = float_to_bits(f);
  if (std::isnan(f)) return {std::uint16_t((u >> 16) | 0x40)};
  u += 0x7FFF + ((u >> 16) & 1);
  return {std::uint16_t(u >> 16)};
}

inline float to_float(Half x) {
  const std::uint32_t sign = std::uint32_t(x.bits & 0x8000) << 16;
  std::uint32_t exponent = (x.bits >> 10) & 0x1F;
  std::uint32_t mantissa = x.bits & 0x3FF;
  if (exponent == 0x1F) return bits_to_float(sign | 0x7F800000 | (mantissa << 13));
  if (exponent == 0) {
    if (mantissa == 0) return bits_to_float(sign);
    // subnormal: value = mantissa * 2^-24
    const float magnitude = std::ldexp(float(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  return bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

inline Half to_half(float f) {
  const std::uint32_t u = float_to_bits(f);
  const std::uint16_t sign = std::uint16_t((u >> 16) & 0x8000);
  const float magnitude = std::fabs(f);
  if (std::isnan(f)) return {std::uint16_t(sign | 0x7E00)};
  if (magnitude >= 65520.0f) return {std::uint16_t(sign | 0x7C00)};  // rounds to inf
  if (magnitude < 6.103515625e-05f) {                                // subnormal half
    const float scaled = magnitude * 16777216.0f;                    // units of 2^-24
    return {std::uint16_t(sign | std::uint16_t(std::nearbyint(scaled)))};
  }
  std::uint32_t m = u & 0x7FFFFFFF;
  m += 0x0FFF + ((m >> 13) & 1);  // round the 13 dropped bits to nearest even
  return {std::uint16_t(sign | ((m - (112u << 23)) >> 13))};
}

// Conversions between a storage type T and the accumulation type A.
template <typename A> inline A load(float x) { return A(x); }
template <typename A> inline A load(double x) { return A(x); }
template <typename A> inline A load(Half x) { return A(to_float(x)); }
template <typename A> inline A load(BFloat16 x) { return A(to_float(x)); }

template <typename T> inline T store(double x) { return T(x); }
template <> inline Half store<Half>(double x) { return to_half(float(x)); }
template <> inline BFloat16 store<BFloat16>(double x) { return to_bfloat16(float(x)); }

// Accumulation type: float64 for float64 storage, float32 otherwise.
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Runs f(TypeTag<T>{}) for the storage type of `dtype`.
template <typename Fn>
void dispatch_cpu(DType dtype, Fn&& f) {
  dispatch<float, Half, BFloat16, double>(dtype, static_cast<Fn&&>(f));
}

// A zero-filled array (plain new[]: nothing is instantiated per build). Kernels allocate
// it before their parallel region, where an exception would end the process; failure
// raises OutOfMemory naming `kernel`.
template <typename T>
struct Scratch {
  T* data;
  Scratch(std::int64_t size, const char* kernel) : data(nullptr) {
    try {
      data = new T[std::size_t(size)]();
    } catch (const std::bad_alloc&) {
      throw OutOfMemory(kernel, double(size) * sizeof(T));
    }
  }
  ~Scratch() { delete[] data; }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// Threads for a parallel region over `work` items: the caller's count (torch's, so that
// torch.set_num_threads reaches these kernels, which may use another OpenMP runtime than
// torch), OpenMP's default when it is 0, never more than the items.
inline int team_size(std::int64_t requested, std::int64_t work) {
  std::int64_t threads = requested > 0 ? requested : omp_get_max_threads();
  if (threads > work) threads = work;
  return threads > 1 ? int(threads) : 1;
}

}  // namespace mper::cpu::MPER_CPU_ISA
