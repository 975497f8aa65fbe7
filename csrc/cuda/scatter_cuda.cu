// Scatter reductions src [E, F] -> out [dim_size, F] by index [E] on CUDA; specification in
// crysbench/ops/reference.py (scatter). sum / mean use atomic adds (float16, bfloat16, float32,
// float64; the summation order, hence the last bits, may vary run to run). max is exact and
// deterministic in two passes: an atomic max on an order-preserving integer encoding of the values,
// then an atomic min over the rows equal to the maximum, which gives the reference's tie rule
// (smallest row index; NaN maxima and empty rows point at E).
#include <ATen/cuda/Atomic.cuh>
#include <ATen/ops/full.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <climits>
#include <tuple>

#include "reduce_common.cuh"

namespace crysbench {
namespace cuda {
namespace {

constexpr const char* kOp = "scatter";

// Order-preserving integer keys: a < b as floats <=> key(a) < key(b) as signed integers. Negative
// floats have their magnitude bits flipped; every NaN maps to the largest key, so NaN wins the max
// (as torch's amax); the smallest integer is left free to mark an empty output row.
template <typename scalar_t> struct Key { using type = int32_t; };
template <> struct Key<double> { using type = long long; };

__device__ __forceinline__ int32_t encode(float x) {
  if (x != x) return INT_MAX;
  const int32_t i = __float_as_int(x);
  return i >= 0 ? i : i ^ INT_MAX;
}
__device__ __forceinline__ float decode(int32_t k) { return __int_as_float(k >= 0 ? k : k ^ INT_MAX); }
__device__ __forceinline__ long long encode(double x) {
  if (x != x) return LLONG_MAX;
  const long long i = __double_as_longlong(x);
  return i >= 0 ? i : i ^ LLONG_MAX;
}
__device__ __forceinline__ double decode(long long k) { return __longlong_as_double(k >= 0 ? k : k ^ LLONG_MAX); }

template <typename scalar_t>
__global__ void add_kernel(const scalar_t* __restrict__ src, const int64_t* __restrict__ index, int64_t n_edges,
                           int64_t n_feat, scalar_t* __restrict__ out) {
  CB_KERNEL_LOOP(idx, n_edges * n_feat) {
    const int64_t e = idx / n_feat, f = idx % n_feat;
    gpuAtomicAdd(out + index[e] * n_feat + f, src[idx]);
  }
}

__global__ void count_kernel(const int64_t* __restrict__ index, int64_t n_edges, int64_t* __restrict__ count) {
  CB_KERNEL_LOOP(e, n_edges) {
    atomicAdd(reinterpret_cast<unsigned long long*>(count + index[e]), 1ULL);
  }
}

template <typename scalar_t>
__global__ void divide_kernel(scalar_t* __restrict__ out, const int64_t* __restrict__ count, int64_t n_rows,
                              int64_t n_feat) {
  using acc_t = at::acc_type<scalar_t, true>;
  CB_KERNEL_LOOP(idx, n_rows * n_feat) {
    const int64_t c = count[idx / n_feat];
    if (c > 1) out[idx] = static_cast<scalar_t>(static_cast<acc_t>(out[idx]) / static_cast<acc_t>(c));
  }
}

template <typename scalar_t, typename key_t>
__global__ void max_key_kernel(const scalar_t* __restrict__ src, const int64_t* __restrict__ index,
                               int64_t n_edges, int64_t n_feat, key_t* __restrict__ key) {
  using acc_t = at::acc_type<scalar_t, true>;
  CB_KERNEL_LOOP(idx, n_edges * n_feat) {
    const int64_t e = idx / n_feat, f = idx % n_feat;
    atomicMax(key + index[e] * n_feat + f, encode(static_cast<acc_t>(src[idx])));
  }
}

template <typename scalar_t, typename key_t>
__global__ void max_decode_kernel(const key_t* __restrict__ key, int64_t n, key_t empty,
                                  scalar_t* __restrict__ out) {
  CB_KERNEL_LOOP(idx, n) { out[idx] = key[idx] == empty ? scalar_t(0) : static_cast<scalar_t>(decode(key[idx])); }
}

template <typename scalar_t>
__global__ void max_arg_kernel(const scalar_t* __restrict__ src, const int64_t* __restrict__ index, int64_t n_edges,
                               int64_t n_feat, const scalar_t* __restrict__ out, long long* __restrict__ arg) {
  using acc_t = at::acc_type<scalar_t, true>;
  CB_KERNEL_LOOP(idx, n_edges * n_feat) {
    const int64_t e = idx / n_feat, f = idx % n_feat, o = index[e] * n_feat + f;
    if (static_cast<acc_t>(src[idx]) == static_cast<acc_t>(out[o])) atomicMin(arg + o, static_cast<long long>(e));  // NaN never equals: arg stays E
  }
}

template <typename scalar_t>
void scatter_max(const at::Tensor& src, const at::Tensor& index, at::Tensor& out, at::Tensor& arg) {
  using key_t = typename Key<scalar_t>::type;
  const int64_t n_edges = src.size(0), n_feat = features(src), n_in = n_edges * n_feat, n_out = out.numel();
  const key_t empty = std::numeric_limits<key_t>::min();
  const at::Tensor key = at::full({n_out}, static_cast<int64_t>(empty),
                                  index.options().dtype(sizeof(key_t) == 4 ? at::kInt : at::kLong));
  key_t* k = reinterpret_cast<key_t*>(key.data_ptr());
  max_key_kernel<scalar_t, key_t><<<blocks(n_in), kThreads, 0, stream()>>>(
      src.data_ptr<scalar_t>(), index.data_ptr<int64_t>(), n_edges, n_feat, k);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  max_decode_kernel<scalar_t, key_t><<<blocks(n_out), kThreads, 0, stream()>>>(k, n_out, empty, out.data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  max_arg_kernel<scalar_t><<<blocks(n_in), kThreads, 0, stream()>>>(
      src.data_ptr<scalar_t>(), index.data_ptr<int64_t>(), n_edges, n_feat, out.data_ptr<scalar_t>(),
      reinterpret_cast<long long*>(arg.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void scatter_add(Reduce reduce, const at::Tensor& src, const at::Tensor& index, at::Tensor& out) {
  const int64_t n_edges = src.size(0), n_feat = features(src), n_rows = out.size(0);
  add_kernel<scalar_t><<<blocks(n_edges * n_feat), kThreads, 0, stream()>>>(
      src.data_ptr<scalar_t>(), index.data_ptr<int64_t>(), n_edges, n_feat, out.data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (reduce != Reduce::kMean) return;
  const at::Tensor count = at::zeros({n_rows}, index.options());
  count_kernel<<<blocks(n_edges), kThreads, 0, stream()>>>(index.data_ptr<int64_t>(), n_edges, count.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  divide_kernel<scalar_t><<<blocks(n_rows * n_feat), kThreads, 0, stream()>>>(
      out.data_ptr<scalar_t>(), count.data_ptr<int64_t>(), n_rows, n_feat);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> scatter_cuda(const at::Tensor& src_in, const at::Tensor& index_in,
                                                int64_t dim_size, c10::string_view reduce_name) {
  const Reduce reduce = parse_reduce(kOp, reduce_name);
  check_src(kOp, src_in);
  check_cuda(kOp, src_in, "src");
  check_index(kOp, index_in, "index");
  check_same_device(kOp, src_in, "src", index_in, "index");
  CB_CHECK(kOp, index_in.size(0) == src_in.size(0), "index has ", index_in.size(0), " entries but src has ",
           src_in.size(0), " rows");
  CB_CHECK(kOp, dim_size >= 0, "dim_size must be >= 0, got ", dim_size);
  const c10::cuda::CUDAGuard guard(src_in.device());
  const at::Tensor src = src_in.contiguous(), index = index_in.contiguous();
  check_range(kOp, index, "index", dim_size, "dim_size");

  const bool is_max = reduce == Reduce::kMax;
  at::Tensor out = (is_max ? at::empty(out_shape(src, dim_size), src.options())
                           : at::zeros(out_shape(src, dim_size), src.options()));
  at::Tensor arg = is_max ? at::full(out_shape(src, dim_size), src.size(0), index.options())
                          : at::empty({0}, index.options());
  if (out.numel() == 0) return {out, arg};
  if (src.numel() == 0) return {out.zero_(), arg};  // every row empty: 0, arg = E
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "crysbench_scatter_cuda", [&] {
    if (is_max) scatter_max<scalar_t>(src, index, out, arg);
    else scatter_add<scalar_t>(reduce, src, index, out);
  });
  return {out, arg};
}

}  // namespace
}  // namespace cuda
}  // namespace crysbench

TORCH_LIBRARY_IMPL(crysbench, CUDA, m) { m.impl("scatter", &crysbench::cuda::scatter_cuda); }
