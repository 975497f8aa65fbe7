// Shared by the segment_csr and scatter CUDA kernels: reduction names, dtypes and output shapes.
#pragma once
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>

#include <string>
#include <vector>

#include "cuda_common.cuh"

namespace crysbench {
namespace cuda {

enum class Reduce { kSum, kMean, kMax };

inline Reduce parse_reduce(const char* op, c10::string_view reduce) {
  if (reduce == "sum") return Reduce::kSum;
  if (reduce == "mean") return Reduce::kMean;
  CB_CHECK(op, reduce == "max", "reduce must be 'sum', 'mean' or 'max', got '", std::string(reduce), "'");
  return Reduce::kMax;
}

inline void check_src(const char* op, const at::Tensor& src) {
  const auto t = src.scalar_type();
  CB_CHECK(op, t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
           "src must be float16, bfloat16, float32 or float64, got ", t);
  CB_CHECK(op, src.dim() >= 1, "src must have at least one dimension (rows), got a scalar");
}

/// Shape [rows, *src.shape[1:]] of a reduction's output.
inline std::vector<int64_t> out_shape(const at::Tensor& src, int64_t rows) {
  std::vector<int64_t> shape(src.sizes().begin(), src.sizes().end());
  shape[0] = rows;
  return shape;
}

/// Features per row (product of the trailing dimensions; valid for zero rows too).
inline int64_t features(const at::Tensor& src) {
  int64_t f = 1;
  for (int64_t d = 1; d < src.dim(); ++d) f *= src.size(d);
  return f;
}

}  // namespace cuda
}  // namespace crysbench
