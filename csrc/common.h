// Shared argument checks: every op checks its inputs once at the entry and says what was wrong
// and what was expected, then dispatches once.
#pragma once
#include <ATen/ATen.h>
#include <string>

#define CB_CHECK(op, cond, ...) TORCH_CHECK((cond), "crysbench.", op, ": ", __VA_ARGS__)

namespace crysbench {

inline void check_dim(const char* op, const at::Tensor& t, const char* name, int64_t dim) {
  CB_CHECK(op, t.dim() == dim, name, " must have ", dim, " dimensions, got shape ", t.sizes());
}

inline void check_index(const char* op, const at::Tensor& t, const char* name) {
  CB_CHECK(op, t.scalar_type() == at::kLong, name, " must be int64, got ", t.scalar_type());
}

inline void check_float(const char* op, const at::Tensor& t, const char* name) {
  CB_CHECK(op, t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
           " must be float32 or float64, got ", t.scalar_type());
}

inline void check_same_device(const char* op, const at::Tensor& a, const char* an, const at::Tensor& b,
                              const char* bn) {
  CB_CHECK(op, a.device() == b.device(), an, " is on ", a.device(), " but ", bn, " is on ", b.device());
}

}  // namespace crysbench
