// Full periodic neighbour list of a batch of crystals on CUDA; specification in
// crysbench/ops/reference.py (neighbor_list). A simple, exact version: per crystal, the number of
// images to search along each axis (one block per crystal, as the reference computes it); then one
// thread per atom i loops over the atoms j of its crystal and the images, in the reference's order
// (j, then shift lexicographically). Two passes, count -> prefix sum -> fill, so the output is
// written once, sorted by edge_i, and identical run to run. Cost is O(sum_b n_b^2 * images).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "cuda_common.cuh"

namespace crysbench {
namespace cuda {
namespace {

constexpr const char* kOp = "neighbor_list";
constexpr int kReachThreads = 128;

// reach[b, k] = images to search along axis k: ceil(cutoff * |b_k| + spread of fractional coords),
// 0 for a non-periodic axis; -1 marks a singular cell. One block per crystal, in double.
template <typename scalar_t>
__global__ void reach_kernel(const scalar_t* __restrict__ pos, const scalar_t* __restrict__ cells,
                             const bool* __restrict__ pbc, const int64_t* __restrict__ ptr, double cutoff,
                             int64_t* __restrict__ reach) {
  const int64_t b = blockIdx.x, lo = ptr[b], hi = ptr[b + 1];
  const scalar_t* c = cells + 9 * b;
  double m[9], inv[9];
  for (int q = 0; q < 9; ++q) m[q] = static_cast<double>(c[q]);
  inv[0] = m[4] * m[8] - m[5] * m[7];  // adjugate / det
  inv[1] = m[2] * m[7] - m[1] * m[8];
  inv[2] = m[1] * m[5] - m[2] * m[4];
  inv[3] = m[5] * m[6] - m[3] * m[8];
  inv[4] = m[0] * m[8] - m[2] * m[6];
  inv[5] = m[2] * m[3] - m[0] * m[5];
  inv[6] = m[3] * m[7] - m[4] * m[6];
  inv[7] = m[1] * m[6] - m[0] * m[7];
  inv[8] = m[0] * m[4] - m[1] * m[3];
  const double det = m[0] * inv[0] + m[1] * inv[3] + m[2] * inv[6];
  for (int q = 0; q < 9; ++q) inv[q] /= det;

  __shared__ double lo_s[3][kReachThreads], hi_s[3][kReachThreads];
  double f_lo[3] = {INFINITY, INFINITY, INFINITY}, f_hi[3] = {-INFINITY, -INFINITY, -INFINITY};
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    for (int k = 0; k < 3; ++k) {  // frac = pos @ inv(cell)
      const double f = pos[3 * i] * inv[k] + pos[3 * i + 1] * inv[3 + k] + pos[3 * i + 2] * inv[6 + k];
      f_lo[k] = fmin(f_lo[k], f);
      f_hi[k] = fmax(f_hi[k], f);
    }
  }
  for (int k = 0; k < 3; ++k) { lo_s[k][threadIdx.x] = f_lo[k]; hi_s[k][threadIdx.x] = f_hi[k]; }
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) {
      for (int k = 0; k < 3; ++k) {
        lo_s[k][threadIdx.x] = fmin(lo_s[k][threadIdx.x], lo_s[k][threadIdx.x + s]);
        hi_s[k][threadIdx.x] = fmax(hi_s[k][threadIdx.x], hi_s[k][threadIdx.x + s]);
      }
    }
    __syncthreads();
  }
  if (threadIdx.x != 0) return;
  double lengths = 1.0;
  for (int r = 0; r < 3; ++r) lengths *= sqrt(m[3 * r] * m[3 * r] + m[3 * r + 1] * m[3 * r + 1] + m[3 * r + 2] * m[3 * r + 2]);
  const bool singular = !(fabs(det) >= 1e-8 * lengths);  // same criterion as the python facade
  for (int k = 0; k < 3; ++k) {
    const double recip = sqrt(inv[k] * inv[k] + inv[3 + k] * inv[3 + k] + inv[6 + k] * inv[6 + k]);
    const double spread = hi > lo ? hi_s[k][0] - lo_s[k][0] : 0.0;
    reach[3 * b + k] = singular ? -1 : (pbc[3 * b + k] ? static_cast<int64_t>(ceil(cutoff * recip + spread)) : 0);
  }
}

// Pass 1 (kFill = false) counts each atom's edges; pass 2 writes them from offset[i] on.
template <typename scalar_t, bool kFill>
__global__ void pair_kernel(const scalar_t* __restrict__ pos, const scalar_t* __restrict__ cells,
                            const int64_t* __restrict__ reach, const int64_t* __restrict__ ptr, int64_t n_crystals,
                            int64_t n_atoms, scalar_t cutoff, int64_t* __restrict__ count_or_offset,
                            int64_t* __restrict__ edge_i, int64_t* __restrict__ edge_j, int64_t* __restrict__ shifts,
                            scalar_t* __restrict__ distances, scalar_t* __restrict__ vectors) {
  CB_KERNEL_LOOP(i, n_atoms) {
    int64_t lo_b = 0, hi_b = n_crystals - 1;  // the last crystal b with ptr[b] <= i owns atom i
    while (lo_b < hi_b) {
      const int64_t mid = (lo_b + hi_b + 1) / 2;
      if (ptr[mid] <= i) lo_b = mid; else hi_b = mid - 1;
    }
    const int64_t b = lo_b, r0 = reach[3 * b], r1 = reach[3 * b + 1], r2 = reach[3 * b + 2];
    const scalar_t* c = cells + 9 * b;
    const scalar_t xi = pos[3 * i], yi = pos[3 * i + 1], zi = pos[3 * i + 2];
    int64_t out = kFill ? count_or_offset[i] : 0;
    for (int64_t j = ptr[b]; j < ptr[b + 1]; ++j) {
      for (int64_t s0 = -r0; s0 <= r0; ++s0) {
        for (int64_t s1 = -r1; s1 <= r1; ++s1) {
          for (int64_t s2 = -r2; s2 <= r2; ++s2) {
            if (i == j && s0 == 0 && s1 == 0 && s2 == 0) continue;
            const scalar_t a = s0, bb = s1, cc = s2;  // vector = pos[j] + S @ cell - pos[i]
            const scalar_t vx = (pos[3 * j] + (a * c[0] + bb * c[3] + cc * c[6])) - xi;
            const scalar_t vy = (pos[3 * j + 1] + (a * c[1] + bb * c[4] + cc * c[7])) - yi;
            const scalar_t vz = (pos[3 * j + 2] + (a * c[2] + bb * c[5] + cc * c[8])) - zi;
            const scalar_t d = sqrt(vx * vx + vy * vy + vz * vz);
            if (!(d < cutoff)) continue;
            if (kFill) {
              edge_i[out] = i;
              edge_j[out] = j;
              shifts[3 * out] = s0;
              shifts[3 * out + 1] = s1;
              shifts[3 * out + 2] = s2;
              distances[out] = d;
              if (vectors != nullptr) {
                vectors[3 * out] = vx;
                vectors[3 * out + 1] = vy;
                vectors[3 * out + 2] = vz;
              }
            }
            ++out;
          }
        }
      }
    }
    if (!kFill) count_or_offset[i] = out;
  }
}

void check_inputs(const at::Tensor& positions, const at::Tensor& cells, const at::Tensor& pbc,
                  const at::Tensor& ptr, double cutoff) {
  check_cuda(kOp, positions, "positions");
  check_float(kOp, positions, "positions");
  CB_CHECK(kOp, positions.dim() == 2 && positions.size(1) == 3, "positions must have shape [N, 3], got ",
           positions.sizes());
  CB_CHECK(kOp, cells.dim() == 3 && cells.size(1) == 3 && cells.size(2) == 3,
           "cells must have shape [B, 3, 3], got ", cells.sizes());
  CB_CHECK(kOp, cells.scalar_type() == positions.scalar_type(), "cells (", cells.scalar_type(),
           ") must have the dtype of positions (", positions.scalar_type(), ")");
  CB_CHECK(kOp, pbc.scalar_type() == at::kBool && pbc.dim() == 2 && pbc.size(0) == cells.size(0) &&
                    pbc.size(1) == 3,
           "pbc must be a bool tensor of shape [", cells.size(0), ", 3], got ", pbc.scalar_type(), " ", pbc.sizes());
  check_index(kOp, ptr, "ptr");
  CB_CHECK(kOp, ptr.size(0) == cells.size(0) + 1, "ptr must have B + 1 = ", cells.size(0) + 1,
           " entries, got ", ptr.size(0));
  check_same_device(kOp, positions, "positions", cells, "cells");
  check_same_device(kOp, positions, "positions", pbc, "pbc");
  check_same_device(kOp, positions, "positions", ptr, "ptr");
  CB_CHECK(kOp, std::isfinite(cutoff) && cutoff > 0, "cutoff must be a finite number > 0 Å, got ", cutoff);
}

using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Outputs neighbor_list_cuda(const at::Tensor& positions_in, const at::Tensor& cells_in, const at::Tensor& pbc_in,
                           const at::Tensor& ptr_in, double cutoff, bool return_vectors) {
  check_inputs(positions_in, cells_in, pbc_in, ptr_in, cutoff);
  const c10::cuda::CUDAGuard guard(positions_in.device());
  const at::Tensor positions = positions_in.contiguous(), cells = cells_in.contiguous(),
                   pbc = pbc_in.contiguous(), ptr = ptr_in.contiguous();
  const int64_t n_atoms = positions.size(0), n_crystals = cells.size(0);
  const int64_t first = ptr[0].item<int64_t>(), last = ptr[-1].item<int64_t>();
  CB_CHECK(kOp, first == 0 && last == n_atoms && is_sorted(ptr), "ptr must rise from 0 to N = ", n_atoms,
           ", got ", first, " ... ", last);

  const auto idx = ptr.options();
  at::Tensor reach = at::empty({n_crystals, 3}, idx);
  at::Tensor counts = at::empty({n_atoms}, idx);
  at::Tensor edge_i, edge_j, shifts, distances, vectors;
  AT_DISPATCH_FLOATING_TYPES(positions.scalar_type(), "crysbench_neighbor_list_cuda", [&] {
    const scalar_t* pos = positions.data_ptr<scalar_t>();
    const scalar_t* cell = cells.data_ptr<scalar_t>();
    if (n_crystals > 0) {
      reach_kernel<scalar_t><<<n_crystals, kReachThreads, 0, stream()>>>(
          pos, cell, pbc.data_ptr<bool>(), ptr.data_ptr<int64_t>(), cutoff, reach.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const at::Tensor bad = reach.lt(0).any(1).nonzero();
      CB_CHECK(kOp, bad.numel() == 0, "cell of crystal ", bad.numel() ? bad[0][0].item<int64_t>() : -1,
               " is singular (|det| < 1e-8 * product of the lattice vector lengths)");
    }
    const scalar_t cut = static_cast<scalar_t>(cutoff);  // the reference compares in the positions' dtype
    pair_kernel<scalar_t, false><<<blocks(n_atoms), kThreads, 0, stream()>>>(
        pos, cell, reach.data_ptr<int64_t>(), ptr.data_ptr<int64_t>(), n_crystals, n_atoms, cut,
        counts.data_ptr<int64_t>(), nullptr, nullptr, nullptr, nullptr, nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const at::Tensor end = counts.cumsum(0);
    const int64_t n_edges = n_atoms ? end[-1].item<int64_t>() : 0;
    const at::Tensor offset = end.sub(counts);
    edge_i = at::empty({n_edges}, idx);
    edge_j = at::empty({n_edges}, idx);
    shifts = at::empty({n_edges, 3}, idx);
    distances = at::empty({n_edges}, positions.options());
    vectors = at::empty({return_vectors ? n_edges : 0, 3}, positions.options());
    if (n_edges == 0) return;
    pair_kernel<scalar_t, true><<<blocks(n_atoms), kThreads, 0, stream()>>>(
        pos, cell, reach.data_ptr<int64_t>(), ptr.data_ptr<int64_t>(), n_crystals, n_atoms, cut,
        offset.data_ptr<int64_t>(), edge_i.data_ptr<int64_t>(), edge_j.data_ptr<int64_t>(),
        shifts.data_ptr<int64_t>(), distances.data_ptr<scalar_t>(),
        return_vectors ? vectors.data_ptr<scalar_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {edge_i, edge_j, shifts, distances, vectors};
}

}  // namespace
}  // namespace cuda
}  // namespace crysbench

TORCH_LIBRARY_IMPL(crysbench, CUDA, m) { m.impl("neighbor_list", &crysbench::cuda::neighbor_list_cuda); }
