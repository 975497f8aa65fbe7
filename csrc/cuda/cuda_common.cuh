// Shared by the CUDA kernels: light ATen headers (the full <ATen/ATen.h> doubles nvcc time), the
// current stream, grid-stride launch geometry, and the argument checks of csrc/common.h.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

// Same message format as csrc/common.h (not included: it pulls in all of ATen).
#ifndef CB_CHECK
#define CB_CHECK(op, cond, ...) TORCH_CHECK((cond), "crysbench.", op, ": ", __VA_ARGS__)
#endif

// Grid-stride loop: correct for any n whatever grid the launch used.
#define CB_KERNEL_LOOP(i, n)                                                        \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

namespace crysbench {
namespace cuda {

constexpr int kThreads = 256;

/// Blocks for n grid-stride work items (at least one, at most 2^20).
inline unsigned int blocks(int64_t n) {
  return static_cast<unsigned int>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, int64_t(1) << 20));
}

/// The stream torch is using on the current device (kernels must run on it, never on stream 0).
inline cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

inline void check_cuda(const char* op, const at::Tensor& t, const char* name) {
  CB_CHECK(op, t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
}

inline void check_dim(const char* op, const at::Tensor& t, const char* name, int64_t dim) {
  CB_CHECK(op, t.dim() == dim, name, " must have ", dim, " dimensions, got shape ", t.sizes());
}

inline void check_index(const char* op, const at::Tensor& t, const char* name) {
  CB_CHECK(op, t.scalar_type() == at::kLong, name, " must be int64, got ", t.scalar_type());
  check_dim(op, t, name, 1);
}

inline void check_float(const char* op, const at::Tensor& t, const char* name) {
  CB_CHECK(op, t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
           " must be float32 or float64, got ", t.scalar_type());
}

inline void check_same_device(const char* op, const at::Tensor& a, const char* an, const at::Tensor& b,
                              const char* bn) {
  CB_CHECK(op, a.device() == b.device(), an, " is on ", a.device(), " but ", bn, " is on ", b.device());
}

/// Checks every value of a 1-d int64 CUDA tensor lies in [0, bound) (one device sync).
inline void check_range(const char* op, const at::Tensor& idx, const char* name, int64_t bound,
                        const char* bound_name) {
  if (idx.numel() == 0) return;
  const int64_t lo = idx.min().item<int64_t>(), hi = idx.max().item<int64_t>();
  CB_CHECK(op, lo >= 0 && hi < bound, name, " values must lie in [0, ", bound_name, " = ", bound,
           "), got min ", lo, " and max ", hi);
}

/// Checks a 1-d int64 CUDA tensor is non-decreasing (one device sync).
inline bool is_sorted(const at::Tensor& t) {
  const int64_t n = t.numel();
  return n < 2 || !t.slice(0, 1, n).lt(t.slice(0, 0, n - 1)).any().item<bool>();
}

}  // namespace cuda
}  // namespace crysbench
