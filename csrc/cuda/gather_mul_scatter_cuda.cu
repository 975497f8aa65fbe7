// Fused message passing out[dst[e]] += x[src[e]] * w[e] on CUDA; specification in
// crysbench/ops/reference.py (gather_mul_scatter). One thread per (edge, feature), atomic adds into
// out, so the gathered product is never materialised. float16, bfloat16, float32, float64.
#include <ATen/Dispatch.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "cuda_common.cuh"

namespace crysbench {
namespace cuda {
namespace {

constexpr const char* kOp = "gather_mul_scatter";

template <typename scalar_t>
__global__ void gms_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                           const int64_t* __restrict__ src, const int64_t* __restrict__ dst, int64_t n_edges,
                           int64_t n_feat, scalar_t* __restrict__ out) {
  CB_KERNEL_LOOP(idx, n_edges * n_feat) {
    const int64_t e = idx / n_feat, f = idx % n_feat;
    const scalar_t message = x[src[e] * n_feat + f] * w[idx];  // rounded to scalar_t, as the reference
    gpuAtomicAdd(out + dst[e] * n_feat + f, message);
  }
}

void check_inputs(const at::Tensor& x, const at::Tensor& w, const at::Tensor& src, const at::Tensor& dst,
                  int64_t dim_size) {
  const auto t = x.scalar_type();
  CB_CHECK(kOp, t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
           "x must be float16, bfloat16, float32 or float64, got ", t);
  CB_CHECK(kOp, w.scalar_type() == t, "w (", w.scalar_type(), ") must have the dtype of x (", t, ")");
  check_cuda(kOp, x, "x");
  check_same_device(kOp, x, "x", w, "w");
  check_same_device(kOp, x, "x", src, "src_index");
  check_same_device(kOp, x, "x", dst, "dst_index");
  check_index(kOp, src, "src_index");
  check_index(kOp, dst, "dst_index");
  CB_CHECK(kOp, x.dim() >= 1 && w.dim() == x.dim() && w.size(0) == src.size(0) && dst.size(0) == src.size(0) &&
                    w.sizes().slice(1) == x.sizes().slice(1),
           "shapes disagree: x ", x.sizes(), ", w ", w.sizes(), ", src_index ", src.sizes(), ", dst_index ",
           dst.sizes(), " (expected x [N, F...], w [E, F...], indices [E])");
  CB_CHECK(kOp, dim_size >= 0, "dim_size must be >= 0, got ", dim_size);
}

at::Tensor gather_mul_scatter_cuda(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& src_in,
                                   const at::Tensor& dst_in, int64_t dim_size) {
  check_inputs(x_in, w_in, src_in, dst_in, dim_size);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous(), src = src_in.contiguous(),
                   dst = dst_in.contiguous();
  check_range(kOp, src, "src_index", x.size(0), "x.shape[0]");
  check_range(kOp, dst, "dst_index", dim_size, "dim_size");
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape[0] = dim_size;
  at::Tensor out = at::zeros(shape, x.options());
  const int64_t n_edges = src.size(0), n_feat = dim_size ? out.numel() / dim_size : 0;
  if (n_edges == 0 || n_feat == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "crysbench_gms_cuda", [&] {
    gms_kernel<scalar_t><<<blocks(n_edges * n_feat), kThreads, 0, stream()>>>(
        x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), src.data_ptr<int64_t>(), dst.data_ptr<int64_t>(), n_edges,
        n_feat, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace crysbench

TORCH_LIBRARY_IMPL(crysbench, CUDA, m) { m.impl("gather_mul_scatter", &crysbench::cuda::gather_mul_scatter_cuda); }
