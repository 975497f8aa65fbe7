// k-nearest cap on CUDA; specification in crysbench/ops/reference.py (knn_cap). Edges are sorted by
// (centre, distance) with two stable sorts, the k-th distance of each centre read from its sorted run,
// and an edge kept when its distance is <= that k-th distance + tol (every edge of a centre with at
// most k). Kept indices come back ascending; counts are the per-centre edge counts before the cap.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "cuda_common.cuh"

namespace crysbench {
namespace cuda {
namespace {

constexpr const char* kOp = "knn_cap";

__global__ void count_kernel(const int64_t* __restrict__ edge_i, int64_t n_edges, int64_t* __restrict__ count) {
  CB_KERNEL_LOOP(e, n_edges) {
    atomicAdd(reinterpret_cast<unsigned long long*>(count + edge_i[e]), 1ULL);
  }
}

// threshold[a] = d_k(a) + tol (the reference adds tol in the distances' dtype), or +inf below k edges.
template <typename scalar_t>
__global__ void threshold_kernel(const scalar_t* __restrict__ sorted_dist, const int64_t* __restrict__ count,
                                 const int64_t* __restrict__ first, int64_t num_atoms, int64_t k, scalar_t tol,
                                 scalar_t* __restrict__ threshold) {
  CB_KERNEL_LOOP(a, num_atoms) {
    threshold[a] = count[a] > k ? sorted_dist[first[a] + k - 1] + tol
                                : std::numeric_limits<scalar_t>::infinity();
  }
}

template <typename scalar_t>
__global__ void keep_kernel(const int64_t* __restrict__ edge_i, const scalar_t* __restrict__ dist,
                            const scalar_t* __restrict__ threshold, int64_t n_edges, bool* __restrict__ keep) {
  CB_KERNEL_LOOP(e, n_edges) { keep[e] = dist[e] <= threshold[edge_i[e]]; }
}

std::tuple<at::Tensor, at::Tensor> knn_cap_cuda(const at::Tensor& edge_i_in, const at::Tensor& dist_in,
                                                int64_t num_atoms, int64_t k, double tol) {
  check_cuda(kOp, edge_i_in, "edge_i");
  check_index(kOp, edge_i_in, "edge_i");
  check_float(kOp, dist_in, "distances");
  check_same_device(kOp, edge_i_in, "edge_i", dist_in, "distances");
  CB_CHECK(kOp, dist_in.sizes() == edge_i_in.sizes(), "distances ", dist_in.sizes(), " must match edge_i ",
           edge_i_in.sizes());
  CB_CHECK(kOp, k >= 1, "k must be >= 1, got ", k);
  CB_CHECK(kOp, num_atoms >= 0, "num_atoms must be >= 0, got ", num_atoms);
  const c10::cuda::CUDAGuard guard(edge_i_in.device());
  const at::Tensor edge_i = edge_i_in.contiguous(), dist = dist_in.contiguous();
  check_range(kOp, edge_i, "edge_i", num_atoms, "num_atoms");
  const int64_t n_edges = edge_i.size(0);

  at::Tensor count = at::zeros({num_atoms}, edge_i.options());
  count_kernel<<<blocks(n_edges), kThreads, 0, stream()>>>(edge_i.data_ptr<int64_t>(), n_edges,
                                                           count.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (n_edges == 0) return {at::empty({0}, edge_i.options()), count};

  at::Tensor order = dist.argsort(/*stable=*/true);
  order = order.index_select(0, edge_i.index_select(0, order).argsort(/*stable=*/true));  // centre, then distance
  const at::Tensor sorted_dist = dist.index_select(0, order);
  const at::Tensor first = count.cumsum(0).sub(count);
  at::Tensor threshold = at::empty({num_atoms}, dist.options());
  at::Tensor keep = at::empty({n_edges}, edge_i.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(dist.scalar_type(), "crysbench_knn_cap_cuda", [&] {
    threshold_kernel<scalar_t><<<blocks(num_atoms), kThreads, 0, stream()>>>(
        sorted_dist.data_ptr<scalar_t>(), count.data_ptr<int64_t>(), first.data_ptr<int64_t>(), num_atoms, k,
        static_cast<scalar_t>(tol), threshold.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    keep_kernel<scalar_t><<<blocks(n_edges), kThreads, 0, stream()>>>(
        edge_i.data_ptr<int64_t>(), dist.data_ptr<scalar_t>(), threshold.data_ptr<scalar_t>(), n_edges,
        keep.data_ptr<bool>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {keep.nonzero().view({-1}), count};
}

}  // namespace
}  // namespace cuda
}  // namespace crysbench

TORCH_LIBRARY_IMPL(crysbench, CUDA, m) { m.impl("knn_cap", &crysbench::cuda::knn_cap_cuda); }
