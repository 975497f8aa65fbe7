// Segment reductions over contiguous rows src[ptr[n]:ptr[n+1]] on CUDA; specification in
// crysbench/ops/reference.py (segment_csr). One thread per (segment, feature) walks its rows in order,
// so there are no atomics, sums are deterministic and max keeps the first row attaining it.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "reduce_common.cuh"

namespace crysbench {
namespace cuda {
namespace {

constexpr const char* kOp = "segment_csr";

template <typename scalar_t, Reduce R>
__global__ void segment_kernel(const scalar_t* __restrict__ src, const int64_t* __restrict__ ptr, int64_t n_seg,
                               int64_t n_feat, int64_t n_rows, scalar_t* __restrict__ out,
                               int64_t* __restrict__ arg) {
  using acc_t = at::acc_type<scalar_t, true>;
  CB_KERNEL_LOOP(idx, n_seg * n_feat) {
    const int64_t n = idx / n_feat, f = idx % n_feat, lo = ptr[n], hi = ptr[n + 1];
    if (R == Reduce::kMax) {
      // Reference rule: out = amax (NaN wins), arg = first row equal to out (none -> n_rows).
      acc_t best = 0;
      int64_t best_row = n_rows;
      bool nan = false;
      for (int64_t r = lo; r < hi; ++r) {
        const acc_t v = static_cast<acc_t>(src[r * n_feat + f]);
        if (v != v) nan = true;
        else if (best_row == n_rows || v > best) { best = v; best_row = r; }
      }
      if (nan) { best = NAN; best_row = n_rows; }
      out[idx] = static_cast<scalar_t>(best);
      arg[idx] = best_row;
    } else {
      acc_t sum = 0;
      for (int64_t r = lo; r < hi; ++r) sum += static_cast<acc_t>(src[r * n_feat + f]);
      if (R == Reduce::kMean && hi - lo > 1) sum /= static_cast<acc_t>(hi - lo);
      out[idx] = static_cast<scalar_t>(sum);
    }
  }
}

template <typename scalar_t>
void launch(Reduce reduce, const at::Tensor& src, const at::Tensor& ptr, at::Tensor& out, at::Tensor& arg) {
  const int64_t n_seg = ptr.size(0) - 1, n_feat = features(src), n = n_seg * n_feat;
  const scalar_t* s = src.data_ptr<scalar_t>();
  const int64_t* p = ptr.data_ptr<int64_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  if (reduce == Reduce::kSum) {
    segment_kernel<scalar_t, Reduce::kSum><<<blocks(n), kThreads, 0, stream()>>>(s, p, n_seg, n_feat, src.size(0), o, nullptr);
  } else if (reduce == Reduce::kMean) {
    segment_kernel<scalar_t, Reduce::kMean><<<blocks(n), kThreads, 0, stream()>>>(s, p, n_seg, n_feat, src.size(0), o, nullptr);
  } else {
    segment_kernel<scalar_t, Reduce::kMax><<<blocks(n), kThreads, 0, stream()>>>(
        s, p, n_seg, n_feat, src.size(0), o, arg.data_ptr<int64_t>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> segment_csr_cuda(const at::Tensor& src_in, const at::Tensor& ptr_in,
                                                    c10::string_view reduce_name) {
  const Reduce reduce = parse_reduce(kOp, reduce_name);
  check_src(kOp, src_in);
  check_cuda(kOp, src_in, "src");
  check_index(kOp, ptr_in, "ptr");
  check_same_device(kOp, src_in, "src", ptr_in, "ptr");
  CB_CHECK(kOp, ptr_in.numel() >= 1, "ptr must have at least one entry (segments + 1)");
  const c10::cuda::CUDAGuard guard(src_in.device());
  const at::Tensor src = src_in.contiguous(), ptr = ptr_in.contiguous();
  const int64_t first = ptr[0].item<int64_t>(), last = ptr[-1].item<int64_t>();
  CB_CHECK(kOp, first == 0 && last == src.size(0), "ptr must run from 0 to src.shape[0] = ", src.size(0),
           ", got ", first, " ... ", last);
  CB_CHECK(kOp, is_sorted(ptr), "ptr must be non-decreasing");

  const int64_t n_seg = ptr.size(0) - 1;
  at::Tensor out = at::empty(out_shape(src, n_seg), src.options());
  at::Tensor arg = at::empty(reduce == Reduce::kMax ? out_shape(src, n_seg) : std::vector<int64_t>{0},
                             ptr.options());
  if (out.numel() == 0) return {out, arg};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "crysbench_segment_csr_cuda",
                                  [&] { launch<scalar_t>(reduce, src, ptr, out, arg); });
  return {out, arg};
}

}  // namespace
}  // namespace cuda
}  // namespace crysbench

TORCH_LIBRARY_IMPL(crysbench, CUDA, m) { m.impl("segment_csr", &crysbench::cuda::segment_csr_cuda); }
