// Line graph (ALIGNN triplets) on the CPU: every ordered pair (a, b), a != b, of edges sharing the
// centre atom edge_i, with the cosine of the bond angle. Specification: crysbench/ops/reference.py.
//
// Two passes so the output is written exactly once and does not depend on the thread count:
// (1) degrees of each centre from the sorted edge_i (checked on the way) and the exclusive prefix
// sum of deg * (deg - 1), which places every centre's block of triplets; (2) each centre fills its
// block independently, in parallel over centres. Inverse bond lengths are computed once per edge.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "common.h"

namespace crysbench {
namespace {

constexpr const char* kOp = "triplets";

void check_inputs(const at::Tensor& edge_i, const at::Tensor& vectors, int64_t num_atoms) {
  check_index(kOp, edge_i, "edge_i");
  check_dim(kOp, edge_i, "edge_i", 1);
  check_float(kOp, vectors, "vectors");
  check_same_device(kOp, edge_i, "edge_i", vectors, "vectors");
  CB_CHECK(kOp, vectors.dim() == 2 && vectors.size(0) == edge_i.size(0) && vectors.size(1) == 3,
           "vectors must have shape [E, 3] with E = ", edge_i.size(0), " (edges in edge_i), got ",
           vectors.sizes());
  CB_CHECK(kOp, num_atoms >= 0, "num_atoms must be >= 0, got ", num_atoms);
}

// Edge offsets of each centre, ptr [num_atoms + 1], from a sorted edge_i; rejects unsorted or
// out-of-range centres with the offending edge named.
at::Tensor centre_ptr(const at::Tensor& edge_i, int64_t num_atoms) {
  const int64_t n_edges = edge_i.size(0);
  const int64_t* ei = edge_i.data_ptr<int64_t>();
  at::Tensor ptr = at::zeros({num_atoms + 1}, edge_i.options());
  int64_t* p = ptr.data_ptr<int64_t>();
  for (int64_t e = 0; e < n_edges; ++e) {
    const int64_t c = ei[e];
    CB_CHECK(kOp, c >= 0 && c < num_atoms, "edge_i[", e, "] = ", c, " is outside [0, num_atoms = ",
             num_atoms, ")");
    CB_CHECK(kOp, e == 0 || ei[e - 1] <= c, "edge_i must be sorted (non-decreasing), as neighbor_list ",
             "returns it; edge_i[", e - 1, "] = ", ei[e - 1], " > edge_i[", e, "] = ", c);
    ++p[c + 1];
  }
  for (int64_t c = 0; c < num_atoms; ++c) p[c + 1] += p[c];
  return ptr;
}

// Exclusive prefix sum of deg * (deg - 1): where each centre's triplets start, [num_atoms + 1].
at::Tensor triplet_ptr(const at::Tensor& ptr) {
  const int64_t num_atoms = ptr.size(0) - 1;
  const int64_t* p = ptr.data_ptr<int64_t>();
  at::Tensor tptr = at::empty({num_atoms + 1}, ptr.options());
  int64_t* t = tptr.data_ptr<int64_t>();
  t[0] = 0;
  for (int64_t c = 0; c < num_atoms; ++c) {
    const int64_t deg = p[c + 1] - p[c];
    t[c + 1] = t[c] + deg * (deg - 1);
  }
  return tptr;
}

// 1 / |v| per edge, in the accumulation type (double for float32 input). A zero vector gives
// inf, so its cosines are NaN exactly as in the reference (0 / 0).
template <typename scalar_t, typename acc_t>
std::vector<acc_t> inverse_norms(const scalar_t* v, int64_t n_edges) {
  std::vector<acc_t> inv(n_edges);
  at::parallel_for(0, n_edges, 4096, [&](int64_t lo, int64_t hi) {
    for (int64_t e = lo; e < hi; ++e) {
      const acc_t x = v[3 * e], y = v[3 * e + 1], z = v[3 * e + 2];
      inv[e] = acc_t(1) / std::sqrt(x * x + y * y + z * z);
    }
  });
  return inv;
}

template <typename scalar_t>
void fill(const at::Tensor& ptr, const at::Tensor& tptr, const at::Tensor& vectors, at::Tensor& edge_a,
          at::Tensor& edge_b, at::Tensor& cos) {
  using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
  const int64_t num_atoms = ptr.size(0) - 1;
  const int64_t* p = ptr.data_ptr<int64_t>();
  const int64_t* t = tptr.data_ptr<int64_t>();
  const scalar_t* v = vectors.data_ptr<scalar_t>();
  const std::vector<acc_t> inv = inverse_norms<scalar_t, acc_t>(v, vectors.size(0));
  int64_t* out_a = edge_a.data_ptr<int64_t>();
  int64_t* out_b = edge_b.data_ptr<int64_t>();
  scalar_t* out_c = cos.data_ptr<scalar_t>();
  // ~100 triplets per centre in a 12-NN graph: a grain of 64 centres keeps chunks well above the
  // cost of a task while leaving enough chunks to balance uneven degrees.
  at::parallel_for(0, num_atoms, 64, [&](int64_t c_lo, int64_t c_hi) {
    for (int64_t c = c_lo; c < c_hi; ++c) {
      int64_t out = t[c];
      for (int64_t a = p[c]; a < p[c + 1]; ++a) {
        const acc_t ax = v[3 * a] * inv[a], ay = v[3 * a + 1] * inv[a], az = v[3 * a + 2] * inv[a];
        for (int64_t b = p[c]; b < p[c + 1]; ++b) {
          if (b == a) continue;
          const acc_t dot = (ax * v[3 * b] + ay * v[3 * b + 1] + az * v[3 * b + 2]) * inv[b];
          out_a[out] = a;
          out_b[out] = b;
          // Clamp keeps NaN (zero-length bond) as NaN, like torch.clamp in the reference.
          out_c[out] = static_cast<scalar_t>(dot > acc_t(1) ? acc_t(1) : (dot < acc_t(-1) ? acc_t(-1) : dot));
          ++out;
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> triplets_cpu(const at::Tensor& edge_i_in,
                                                            const at::Tensor& vectors_in,
                                                            int64_t num_atoms) {
  check_inputs(edge_i_in, vectors_in, num_atoms);
  const at::Tensor edge_i = edge_i_in.contiguous();
  const at::Tensor vectors = vectors_in.contiguous();
  const at::Tensor ptr = centre_ptr(edge_i, num_atoms);
  const at::Tensor tptr = triplet_ptr(ptr);
  const int64_t n_triplets = tptr.data_ptr<int64_t>()[num_atoms];
  at::Tensor edge_a = at::empty({n_triplets}, edge_i.options());
  at::Tensor edge_b = at::empty({n_triplets}, edge_i.options());
  at::Tensor cos = at::empty({n_triplets}, vectors.options());
  AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "crysbench_triplets_cpu",
                             [&] { fill<scalar_t>(ptr, tptr, vectors, edge_a, edge_b, cos); });
  return {edge_a, edge_b, cos};
}

}  // namespace
}  // namespace crysbench

TORCH_LIBRARY_IMPL(crysbench, CPU, m) { m.impl("triplets", &crysbench::triplets_cpu); }
