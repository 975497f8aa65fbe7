// Line graph (ALIGNN triplets) on CUDA; specification in crysbench/ops/reference.py.
// Centre offsets come from a binary search of the sorted edge_i, triplet offsets from a prefix sum of
// deg * (deg - 1); then one thread per output triplet finds its centre by binary search and its
// (a, b) by arithmetic, so writes are coalesced and the output is deterministic.
#include <ATen/Dispatch.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>

#include "cuda_common.cuh"

namespace crysbench {
namespace cuda {
namespace {

constexpr const char* kOp = "triplets";

template <typename scalar_t>
__global__ void inverse_norm_kernel(const scalar_t* __restrict__ v, scalar_t* __restrict__ inv, int64_t n) {
  CB_KERNEL_LOOP(e, n) {
    const scalar_t x = v[3 * e], y = v[3 * e + 1], z = v[3 * e + 2];
    inv[e] = scalar_t(1) / sqrt(x * x + y * y + z * z);  // zero vector -> inf -> NaN cosines, as the reference
  }
}

template <typename scalar_t>
__global__ void fill_kernel(const int64_t* __restrict__ ptr, const int64_t* __restrict__ tptr, int64_t num_atoms,
                            const scalar_t* __restrict__ v, const scalar_t* __restrict__ inv, int64_t n_triplets,
                            int64_t* __restrict__ out_a, int64_t* __restrict__ out_b, scalar_t* __restrict__ out_c) {
  CB_KERNEL_LOOP(t, n_triplets) {
    int64_t lo = 0, hi = num_atoms;  // the last centre c with tptr[c] <= t owns triplet t
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (tptr[mid] <= t) lo = mid; else hi = mid - 1;
    }
    const int64_t c = lo, local = t - tptr[c], others = ptr[c + 1] - ptr[c] - 1;
    const int64_t ia = local / others;
    int64_t ib = local % others;
    ib += ib >= ia;  // skip the pair (a, a)
    const int64_t a = ptr[c] + ia, b = ptr[c] + ib;
    const scalar_t dot = (v[3 * a] * v[3 * b] + v[3 * a + 1] * v[3 * b + 1] + v[3 * a + 2] * v[3 * b + 2]) *
                         inv[a] * inv[b];
    out_a[t] = a;
    out_b[t] = b;
    out_c[t] = dot > scalar_t(1) ? scalar_t(1) : (dot < scalar_t(-1) ? scalar_t(-1) : dot);  // NaN stays NaN
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> triplets_cuda(const at::Tensor& edge_i_in,
                                                             const at::Tensor& vectors_in, int64_t num_atoms) {
  check_cuda(kOp, edge_i_in, "edge_i");
  check_index(kOp, edge_i_in, "edge_i");
  check_float(kOp, vectors_in, "vectors");
  check_same_device(kOp, edge_i_in, "edge_i", vectors_in, "vectors");
  const int64_t n_edges = edge_i_in.size(0);
  CB_CHECK(kOp, vectors_in.dim() == 2 && vectors_in.size(0) == n_edges && vectors_in.size(1) == 3,
           "vectors must have shape [E, 3] with E = ", n_edges, " (edges in edge_i), got ", vectors_in.sizes());
  CB_CHECK(kOp, num_atoms >= 0, "num_atoms must be >= 0, got ", num_atoms);
  const c10::cuda::CUDAGuard guard(edge_i_in.device());
  const at::Tensor edge_i = edge_i_in.contiguous(), vectors = vectors_in.contiguous();
  check_range(kOp, edge_i, "edge_i", num_atoms, "num_atoms");
  CB_CHECK(kOp, is_sorted(edge_i), "edge_i must be sorted (non-decreasing), as neighbor_list returns it");

  const at::Tensor ptr = at::searchsorted(edge_i, at::arange(num_atoms + 1, edge_i.options()));
  const at::Tensor deg = ptr.slice(0, 1).sub(ptr.slice(0, 0, num_atoms));
  at::Tensor tptr = at::zeros({num_atoms + 1}, edge_i.options());
  if (num_atoms > 0) tptr.slice(0, 1).copy_(deg.mul(deg.sub(1)).cumsum(0));
  const int64_t n_triplets = tptr[num_atoms].item<int64_t>();

  at::Tensor edge_a = at::empty({n_triplets}, edge_i.options());
  at::Tensor edge_b = at::empty({n_triplets}, edge_i.options());
  at::Tensor cos = at::empty({n_triplets}, vectors.options());
  if (n_triplets == 0) return {edge_a, edge_b, cos};
  at::Tensor inv = at::empty({n_edges}, vectors.options());
  AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "crysbench_triplets_cuda", [&] {
    inverse_norm_kernel<scalar_t><<<blocks(n_edges), kThreads, 0, stream()>>>(
        vectors.data_ptr<scalar_t>(), inv.data_ptr<scalar_t>(), n_edges);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    fill_kernel<scalar_t><<<blocks(n_triplets), kThreads, 0, stream()>>>(
        ptr.data_ptr<int64_t>(), tptr.data_ptr<int64_t>(), num_atoms, vectors.data_ptr<scalar_t>(),
        inv.data_ptr<scalar_t>(), n_triplets, edge_a.data_ptr<int64_t>(), edge_b.data_ptr<int64_t>(),
        cos.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {edge_a, edge_b, cos};
}

}  // namespace
}  // namespace cuda
}  // namespace crysbench

TORCH_LIBRARY_IMPL(crysbench, CUDA, m) { m.impl("triplets", &crysbench::cuda::triplets_cuda); }
