// CUDA helpers shared by the kernels: error checks, dtype dispatch, conversions and
// vectorised loads/stores of V consecutive elements.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.h"

namespace mper::cuda {

#ifndef MPER_CUDA_ARCHITECTURES
#define MPER_CUDA_ARCHITECTURES "?"  // CMake defines it; a build outside CMake names none
#endif

// What to do when the GPU's architecture is none the kernels were compiled for (a V100's
// sm_70, a T4's sm_75): "no kernel image is available for execution on the device".
inline std::string architecture_advice() {
  int device = 0, major = 0, minor = 0;
  std::string gpu = "this GPU";
  if (cudaGetDevice(&device) == cudaSuccess &&
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess) {
    gpu = "this GPU (compute capability " + std::to_string(major) + "." + std::to_string(minor) + ")";
  }
  const std::string architecture = major > 0 ? std::to_string(major) + std::to_string(minor) : "<XY>";
  return "mper's CUDA kernels were built for the architectures " MPER_CUDA_ARCHITECTURES ", none of which " + gpu +
         " runs: rebuild mper for it, `pip install --no-build-isolation -Ccmake.define.MPER_CUDA_ARCHITECTURES=" +
         architecture + " .`";
}

// Raises on a failed CUDA call; an error that asks for a newer driver also names the
// driver's and the build's CUDA versions and what to do, and one of a GPU the build has
// no kernels for says how to build them.
inline void check_cuda(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  std::string message = std::string("mper: CUDA error in ") + what + ": " + cudaGetErrorString(status);
  if (status == cudaErrorInsufficientDriver || status == cudaErrorCallRequiresNewerDriver ||
      status == cudaErrorUnsupportedPtxVersion)
    message += "; " + cuda_driver_advice(driver_version(), runtime_version());
  if (status == cudaErrorNoKernelImageForDevice || status == cudaErrorInvalidDeviceFunction)
    message += "; " + architecture_advice();
  throw std::runtime_error(message);
}

inline cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

inline int multiprocessor_count() {
  int device = 0, count = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  return count;
}

// Runs f(TypeTag<T>{}) for the storage type of `dtype`; float64 stays on the CPU.
template <typename Fn>
void dispatch_cuda(DType dtype, Fn&& f) {
  check(dtype != DType::Float64, "float64 tensors are supported on the CPU only");
  dispatch<float, __half, __nv_bfloat16, float>(dtype, static_cast<Fn&&>(f));
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// An aligned pack of V elements of T, moved with one load/store instruction.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T value[V];
};

template <typename T, int V>
__device__ __forceinline__ void load_pack(const T* src, float (&out)[V]) {
  const Pack<T, V> pack = *reinterpret_cast<const Pack<T, V>*>(src);
#pragma unroll
  for (int v = 0; v < V; ++v) out[v] = to_float(pack.value[v]);
}

template <typename T, int V>
__device__ __forceinline__ void store_pack(T* dst, const float (&in)[V]) {
  Pack<T, V> pack;
#pragma unroll
  for (int v = 0; v < V; ++v) pack.value[v] = from_float<T>(in[v]);
  *reinterpret_cast<Pack<T, V>*>(dst) = pack;
}

template <int V>
__device__ __forceinline__ void store_indices(std::int64_t* dst, const int (&in)[V]) {
  Pack<std::int64_t, V> pack;
#pragma unroll
  for (int v = 0; v < V; ++v) pack.value[v] = in[v];
  *reinterpret_cast<Pack<std::int64_t, V>*>(dst) = pack;
}

inline bool aligned(std::uintptr_t address, std::size_t bytes) { return address % bytes == 0; }

}  // namespace mper::cuda
