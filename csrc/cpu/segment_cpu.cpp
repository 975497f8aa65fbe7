// CPU kernels for the segment / scatter reductions and the fused gather-multiply-scatter.
//
// Every op is reduced to one CSR kernel: segment n owns rows ptr[n]..ptr[n+1] of an edge list, and
// one thread computes a whole segment (or a block of its feature columns), visiting its edges in
// ascending edge order. Hence results are deterministic and independent of the thread count, sums
// are added in the same order as a serial index_add, and max keeps the first edge attaining it.
//
// * segment_csr: the edge list is src itself.
// * scatter: an unsorted index is counting-sorted (stable, O(E)) into ptr + a permutation; a sorted
//   index only needs ptr (binary searches). Each output row is then written once, never
//   read-modified-written at random as index_add_ does.
// * gather_mul_scatter: the same CSR over dst_index; the message x[src[e]] * w[e] is formed in
//   registers and never materialized as an [E, F] tensor.
//
// Semantics (crysbench/ops/reference.py): empty segments give 0; for max, arg[n, f] is the smallest
// edge index attaining the maximum (E for an empty segment), and a NaN in a segment propagates to
// its max (arg then names the first NaN); for sum and mean, arg is an empty int64 tensor.
// Half and bfloat16 inputs accumulate in float.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "common.h"

namespace crysbench {
namespace {

enum class Reduce { Sum, Mean, Max };

// Below this many scalar operations a call runs on one thread (thread start-up would dominate).
constexpr int64_t kSerialWork = 1 << 15;
// Edges per chunk when index scans and counting sorts are split between threads.
constexpr int64_t kEdgeChunk = 1 << 16;

Reduce parse_reduce(const char* op, c10::string_view reduce) {
  if (reduce == "sum") return Reduce::Sum;
  if (reduce == "mean") return Reduce::Mean;
  if (reduce == "max") return Reduce::Max;
  CB_CHECK(op, false, "reduce must be one of 'sum', 'mean', 'max', got '", std::string(reduce), "'");
  return Reduce::Sum;  // unreachable
}

void check_src(const char* op, const at::Tensor& t, const char* name) {
  const auto s = t.scalar_type();
  CB_CHECK(op, s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16, name,
           " must be float32, float64, float16 or bfloat16, got ", s);
}

int64_t divup(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------
// Index checks and CSR construction
// ---------------------------------------------------------------------------------------------

// Checks 0 <= index[e] < n for every e, raising an error that names the first offending entry;
// returns whether the index is sorted (non-decreasing).
bool check_index_range(const char* op, const char* name, const int64_t* idx, int64_t E, int64_t n,
                       const char* bound) {
  const int64_t chunks = divup(E, kEdgeChunk);
  std::vector<int64_t> first_bad(chunks, E);
  std::vector<char> sorted(chunks, 1);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t lo = c * kEdgeChunk, hi = std::min(E, lo + kEdgeChunk);
      bool ok_sorted = lo == 0 || idx[lo - 1] <= idx[lo];
      for (int64_t e = lo; e < hi; ++e) {
        const int64_t v = idx[e];
        if (v < 0 || v >= n) {
          first_bad[c] = e;
          break;
        }
        if (e + 1 < hi) ok_sorted &= v <= idx[e + 1];
      }
      sorted[c] = ok_sorted;
    }
  });
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t e = first_bad[c];
    CB_CHECK(op, e == E, name, "[", e, "] = ", idx[e], " is out of range: expected 0 <= ", name,
             " < ", bound, " = ", n);
  }
  return std::all_of(sorted.begin(), sorted.end(), [](char s) { return s != 0; });
}

// Checks that ptr rises from 0 to E; returns the size of the largest segment.
int64_t check_ptr(const char* op, const int64_t* ptr, int64_t n, int64_t E) {
  CB_CHECK(op, ptr[0] == 0, "ptr must start at 0, got ptr[0] = ", ptr[0]);
  CB_CHECK(op, ptr[n] == E, "ptr must end at src.size(0) = ", E, ", got ptr[", n, "] = ", ptr[n]);
  int64_t largest = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t len = ptr[i + 1] - ptr[i];
    CB_CHECK(op, len >= 0, "ptr must be non-decreasing, got ptr[", i, "] = ", ptr[i], " > ptr[",
             i + 1, "] = ", ptr[i + 1]);
    largest = std::max(largest, len);
  }
  return largest;
}

// An edge list grouped by segment: segment n owns positions ptr[n]..ptr[n+1], and position k
// holds edge perm[k] (or edge k when perm is empty, i.e. the index was already sorted).
struct Csr {
  std::vector<int64_t> ptr;
  std::vector<int64_t> perm;
  int64_t largest = 0;  // edges in the largest segment
};

Csr csr_from_sorted(const int64_t* idx, int64_t E, int64_t n) {
  Csr csr;
  csr.ptr.resize(n + 1);
  at::parallel_for(0, n + 1, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) csr.ptr[i] = std::lower_bound(idx, idx + E, i) - idx;
  });
  for (int64_t i = 0; i < n; ++i) csr.largest = std::max(csr.largest, csr.ptr[i + 1] - csr.ptr[i]);
  return csr;
}

// Stable counting sort of an index with values in [0, n): per-chunk histograms, one prefix sum in
// (value, chunk) order, then every chunk places its edges at its own offsets.
Csr csr_from_unsorted(const int64_t* idx, int64_t E, int64_t n) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), divup(E, kEdgeChunk)));
  auto edge_lo = [&](int64_t c) { return c * E / chunks; };
  std::vector<int64_t> offset(chunks * n, 0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t* hist = offset.data() + c * n;
      for (int64_t e = edge_lo(c); e < edge_lo(c + 1); ++e) ++hist[idx[e]];
    }
  });
  Csr csr;
  csr.ptr.resize(n + 1);
  int64_t running = 0;
  for (int64_t i = 0; i < n; ++i) {
    csr.ptr[i] = running;
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t count = offset[c * n + i];
      offset[c * n + i] = running;
      running += count;
    }
    csr.largest = std::max(csr.largest, running - csr.ptr[i]);
  }
  csr.ptr[n] = running;
  csr.perm.resize(E);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t* next = offset.data() + c * n;
      for (int64_t e = edge_lo(c); e < edge_lo(c + 1); ++e) csr.perm[next[idx[e]]++] = e;
    }
  });
  return csr;
}

Csr index_to_csr(const char* op, const char* name, const at::Tensor& index, int64_t n, const char* bound) {
  const int64_t* idx = index.data_ptr<int64_t>();
  const int64_t E = index.numel();
  const bool sorted = check_index_range(op, name, idx, E, n, bound);
  return sorted ? csr_from_sorted(idx, E, n) : csr_from_unsorted(idx, E, n);
}

// ---------------------------------------------------------------------------------------------
// Work split: contiguous segment ranges of equal cost (edges + segments), and feature blocks when
// one segment alone would hold more than its share (e.g. everything reduced into one row).
// ---------------------------------------------------------------------------------------------
template <typename Fn>
void for_each_segment(const int64_t* ptr, int64_t n, int64_t F, int64_t largest, Fn&& fn) {
  const int64_t E = ptr[n];
  const int64_t cost = E + n;  // each segment costs its edges plus writing its output row
  const int64_t threads = at::get_num_threads();
  const bool serial = threads == 1 || cost * F < kSerialWork;
  const int64_t parts = serial ? 1 : std::min<int64_t>(n, 4 * threads);
  int64_t block = F;
  if (!serial && (largest + 1) * 2 * threads > cost && F >= 32) {
    block = std::max<int64_t>(16, divup(divup(F, 4 * threads), 16) * 16);
  }
  const int64_t blocks = std::max<int64_t>(1, divup(F, block));
  std::vector<int64_t> split(parts + 1, n);
  split[0] = 0;
  for (int64_t p = 1; p < parts; ++p) {
    // smallest segment s with ptr[s] + s >= p * cost / parts (ptr[s] + s rises strictly)
    const int64_t target = p * cost / parts;
    int64_t lo = split[p - 1], hi = n;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (ptr[mid] + mid < target) lo = mid + 1; else hi = mid;
    }
    split[p] = lo;
  }
  at::parallel_for(0, std::max<int64_t>(parts, 1) * blocks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t part = t / blocks, f0 = (t % blocks) * block;
      const int64_t nf = std::min(block, F - f0);
      for (int64_t s = split[part]; s < split[part + 1]; ++s) fn(s, f0, nf);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Per-segment reductions. Edges k = lo..hi of a segment; edge(k) is the edge id (k itself for a
// CSR source, perm[k] for a sorted permutation).
// ---------------------------------------------------------------------------------------------
struct DirectEdges {
  int64_t operator()(int64_t k) const { return k; }
  // rows are read in order: the hardware prefetcher needs no help
  template <typename T>
  void prefetch(const T*, int64_t, int64_t, int64_t) const {}
};
struct PermutedEdges {
  const int64_t* perm;
  int64_t E;
  int64_t operator()(int64_t k) const { return perm[k]; }
  // Rows are visited in random order; ask for the row kPrefetchAhead positions ahead so that its
  // cache lines arrive while the current rows are summed.
  template <typename T>
  void prefetch(const T* base, int64_t k, int64_t F, int64_t nf) const {
    constexpr int64_t kPrefetchAhead = 8;
    if (k + kPrefetchAhead >= E) return;
    const char* row = reinterpret_cast<const char*>(base + perm[k + kPrefetchAhead] * F);
    const int64_t bytes = nf * static_cast<int64_t>(sizeof(T));
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(row + b);
  }
};

// Max over edges lo..hi (hi > lo) of one segment. The winning position is tracked as an offset in
// the segment with the width of the compared value (int32 beside float), so that compare and select
// vectorize; strict > keeps the first edge attaining the max. NaN propagates, as in torch.amax.
template <typename pos_t, typename T, typename Edges>
void max_segment(const T* src, Edges edge, int64_t lo, int64_t hi, int64_t F, int64_t f0, int64_t nf,
                 T* __restrict out, int64_t* __restrict arg, at::opmath_type<T>* __restrict best) {
  using acc_t = at::opmath_type<T>;
  thread_local std::vector<pos_t> pos_buf;
  if (static_cast<int64_t>(pos_buf.size()) < nf) pos_buf.resize(nf);
  pos_t* __restrict pos = pos_buf.data();
  const T* __restrict row = src + edge(lo) * F + f0;
  for (int64_t f = 0; f < nf; ++f) {
    best[f] = static_cast<acc_t>(row[f]);
    pos[f] = 0;
  }
  for (int64_t k = lo + 1; k < hi; ++k) {
    edge.prefetch(src + f0, k, F, nf);
    row = src + edge(k) * F + f0;
    const pos_t here = static_cast<pos_t>(k - lo);
    for (int64_t f = 0; f < nf; ++f) {
      const acc_t v = static_cast<acc_t>(row[f]), b = best[f];
      const bool take = (v > b) | ((v != v) & (b == b));
      best[f] = take ? v : b;
      pos[f] = take ? here : pos[f];
    }
  }
  for (int64_t f = 0; f < nf; ++f) {
    out[f] = static_cast<T>(best[f]);
    arg[f] = edge(lo + pos[f]);
  }
}

template <typename T, Reduce R, typename Edges>
void reduce_segment(const T* src, Edges edge, int64_t lo, int64_t hi, int64_t F, int64_t f0,
                    int64_t nf, int64_t E, T* __restrict out, int64_t* __restrict arg,
                    at::opmath_type<T>* __restrict acc) {
  using acc_t = at::opmath_type<T>;
  if (lo == hi) {
    std::fill(out, out + nf, T(0));
    if (R == Reduce::Max) std::fill(arg, arg + nf, E);
    return;
  }
  if constexpr (R == Reduce::Max) {
    using pos_t = std::conditional_t<sizeof(acc_t) == 4, int32_t, int64_t>;
    if (hi - lo > std::numeric_limits<pos_t>::max()) {  // offsets would overflow int32
      return max_segment<int64_t>(src, edge, lo, hi, F, f0, nf, out, arg, acc);
    }
    return max_segment<pos_t>(src, edge, lo, hi, F, f0, nf, out, arg, acc);
  }
  std::fill(acc, acc + nf, acc_t(0));
  for (int64_t k = lo; k < hi; ++k) {
    edge.prefetch(src + f0, k, F, nf);
    const T* __restrict row = src + edge(k) * F + f0;
    for (int64_t f = 0; f < nf; ++f) acc[f] += static_cast<acc_t>(row[f]);
  }
  const acc_t scale = R == Reduce::Mean ? static_cast<acc_t>(hi - lo) : acc_t(1);
  for (int64_t f = 0; f < nf; ++f) out[f] = static_cast<T>(acc[f] / scale);
}

template <typename T, Reduce R, typename Edges>
void reduce_csr(const T* src, Edges edge, const int64_t* ptr, int64_t n, int64_t F, int64_t largest,
                int64_t E, T* out, int64_t* arg) {
  using acc_t = at::opmath_type<T>;
  for_each_segment(ptr, n, F, largest, [&](int64_t s, int64_t f0, int64_t nf) {
    // one scratch row per call of fn would allocate per segment; a thread-local one is reused
    thread_local std::vector<acc_t> acc;
    if (static_cast<int64_t>(acc.size()) < nf) acc.resize(nf);
    reduce_segment<T, R>(src, edge, ptr[s], ptr[s + 1], F, f0, nf, E, out + s * F + f0,
                         R == Reduce::Max ? arg + s * F + f0 : nullptr, acc.data());
  });
}

template <typename T, typename Edges>
void reduce_dispatch(Reduce reduce, const T* src, Edges edge, const int64_t* ptr, int64_t n,
                     int64_t F, int64_t largest, int64_t E, T* out, int64_t* arg) {
  switch (reduce) {
    case Reduce::Sum: return reduce_csr<T, Reduce::Sum>(src, edge, ptr, n, F, largest, E, out, arg);
    case Reduce::Mean: return reduce_csr<T, Reduce::Mean>(src, edge, ptr, n, F, largest, E, out, arg);
    case Reduce::Max: return reduce_csr<T, Reduce::Max>(src, edge, ptr, n, F, largest, E, out, arg);
  }
}

// Allocates (out, arg) and reduces src's rows grouped by csr (perm empty: rows already grouped).
std::tuple<at::Tensor, at::Tensor> reduce_grouped(const char* op, const at::Tensor& src_in,
                                                  const int64_t* ptr, const int64_t* perm,
                                                  int64_t n, int64_t largest, Reduce reduce) {
  const at::Tensor src = src_in.contiguous();
  const int64_t E = src.size(0), F = src.size(1);
  at::Tensor out = at::empty({n, F}, src.options());
  at::Tensor arg = reduce == Reduce::Max ? at::empty({n, F}, src.options().dtype(at::kLong))
                                         : at::empty({0}, src.options().dtype(at::kLong));
  if (n == 0 || F == 0) return {out, arg};
  int64_t* arg_ptr = reduce == Reduce::Max ? arg.data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "crysbench_reduce", [&] {
    const scalar_t* s = src.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    if (perm == nullptr) {
      reduce_dispatch(reduce, s, DirectEdges{}, ptr, n, F, largest, E, o, arg_ptr);
    } else {
      reduce_dispatch(reduce, s, PermutedEdges{perm, E}, ptr, n, F, largest, E, o, arg_ptr);
    }
  });
  return {out, arg};
}

// ---------------------------------------------------------------------------------------------
// Ops
// ---------------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> segment_csr_cpu(const at::Tensor& src, const at::Tensor& ptr_in,
                                                   c10::string_view reduce_name) {
  const char* op = "segment_csr";
  const Reduce reduce = parse_reduce(op, reduce_name);
  check_dim(op, src, "src", 2);
  check_src(op, src, "src");
  check_dim(op, ptr_in, "ptr", 1);
  check_index(op, ptr_in, "ptr");
  check_same_device(op, src, "src", ptr_in, "ptr");
  CB_CHECK(op, ptr_in.numel() >= 1, "ptr must have at least one entry (N + 1 for N segments)");
  const at::Tensor ptr = ptr_in.contiguous();
  const int64_t n = ptr.numel() - 1;
  const int64_t largest = check_ptr(op, ptr.data_ptr<int64_t>(), n, src.size(0));
  return reduce_grouped(op, src, ptr.data_ptr<int64_t>(), nullptr, n, largest, reduce);
}

std::tuple<at::Tensor, at::Tensor> scatter_cpu(const at::Tensor& src, const at::Tensor& index_in,
                                               int64_t dim_size, c10::string_view reduce_name) {
  const char* op = "scatter";
  const Reduce reduce = parse_reduce(op, reduce_name);
  check_dim(op, src, "src", 2);
  check_src(op, src, "src");
  check_dim(op, index_in, "index", 1);
  check_index(op, index_in, "index");
  check_same_device(op, src, "src", index_in, "index");
  CB_CHECK(op, index_in.size(0) == src.size(0), "index has ", index_in.size(0),
           " entries but src has ", src.size(0), " rows");
  CB_CHECK(op, dim_size >= 0, "dim_size must be >= 0, got ", dim_size);
  const at::Tensor index = index_in.contiguous();
  const Csr csr = index_to_csr(op, "index", index, dim_size, "dim_size");
  return reduce_grouped(op, src, csr.ptr.data(), csr.perm.empty() ? nullptr : csr.perm.data(),
                        dim_size, csr.largest, reduce);
}

// x rows are gathered in random order even when dst_index is sorted
constexpr int64_t kGatherAhead = 8;

template <typename T>
void prefetch_row(const T* row, int64_t nf) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t b = 0; b < nf * static_cast<int64_t>(sizeof(T)); b += 64) __builtin_prefetch(p + b);
}

// out[n] = sum over edges e with dst[e] == n (ascending e) of x[src[e]] * w[e].
template <typename T, typename Edges>
void gather_mul_scatter_kernel(const T* x, const T* w, const int64_t* src_index, Edges edge,
                               const Csr& csr, int64_t n, int64_t F, T* out) {
  using acc_t = at::opmath_type<T>;
  for_each_segment(csr.ptr.data(), n, F, csr.largest, [&](int64_t s, int64_t f0, int64_t nf) {
    thread_local std::vector<acc_t> buf;
    if (static_cast<int64_t>(buf.size()) < nf) buf.resize(nf);
    acc_t* __restrict acc = buf.data();
    std::fill(acc, acc + nf, acc_t(0));
    const int64_t E = csr.ptr[n];
    for (int64_t k = csr.ptr[s]; k < csr.ptr[s + 1]; ++k) {
      edge.prefetch(w + f0, k, F, nf);
      if (k + kGatherAhead < E) prefetch_row(x + src_index[edge(k + kGatherAhead)] * F + f0, nf);
      const int64_t e = edge(k);
      const T* __restrict xr = x + src_index[e] * F + f0;
      const T* __restrict wr = w + e * F + f0;
      // round the product to T first, as the unfused x[src] * w would
      for (int64_t f = 0; f < nf; ++f) acc[f] += static_cast<acc_t>(static_cast<T>(xr[f] * wr[f]));
    }
    T* __restrict o = out + s * F + f0;
    for (int64_t f = 0; f < nf; ++f) o[f] = static_cast<T>(acc[f]);
  });
}

at::Tensor gather_mul_scatter_cpu(const at::Tensor& x_in, const at::Tensor& w_in,
                                  const at::Tensor& src_in, const at::Tensor& dst_in, int64_t dim_size) {
  const char* op = "gather_mul_scatter";
  check_src(op, x_in, "x");
  CB_CHECK(op, w_in.scalar_type() == x_in.scalar_type(), "w (", w_in.scalar_type(),
           ") must have the dtype of x (", x_in.scalar_type(), ")");
  CB_CHECK(op, x_in.dim() >= 1 && w_in.dim() == x_in.dim() && w_in.sizes().slice(1) == x_in.sizes().slice(1),
           "x [N, ...] and w [E, ...] must share their trailing shape, got x ", x_in.sizes(), " and w ",
           w_in.sizes());
  check_dim(op, src_in, "src_index", 1);
  check_dim(op, dst_in, "dst_index", 1);
  check_index(op, src_in, "src_index");
  check_index(op, dst_in, "dst_index");
  for (const auto* t : {&w_in, &src_in, &dst_in}) check_same_device(op, x_in, "x", *t, "every other input");
  const int64_t E = w_in.size(0);
  CB_CHECK(op, src_in.size(0) == E && dst_in.size(0) == E, "src_index (", src_in.size(0),
           ") and dst_index (", dst_in.size(0), ") must have one entry per row of w (", E, ")");
  CB_CHECK(op, dim_size >= 0, "dim_size must be >= 0, got ", dim_size);
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const at::Tensor src = src_in.contiguous(), dst = dst_in.contiguous();
  const int64_t feat = c10::multiply_integers(x.sizes().slice(1));  // trailing dims, flattened
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape[0] = dim_size;
  at::Tensor out = at::empty(out_shape, x.options());
  check_index_range(op, "src_index", src.data_ptr<int64_t>(), E, x.size(0), "x.size(0)");
  const Csr csr = index_to_csr(op, "dst_index", dst, dim_size, "dim_size");
  if (dim_size == 0 || feat == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "crysbench_gather_mul_scatter", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    if (csr.perm.empty()) {
      gather_mul_scatter_kernel(xp, wp, src.data_ptr<int64_t>(), DirectEdges{}, csr, dim_size, feat, o);
    } else {
      gather_mul_scatter_kernel(xp, wp, src.data_ptr<int64_t>(), PermutedEdges{csr.perm.data(), E}, csr,
                                dim_size, feat, o);
    }
  });
  return out;
}

}  // namespace
}  // namespace crysbench

TORCH_LIBRARY_IMPL(crysbench, CPU, m) {
  m.impl("segment_csr", &crysbench::segment_csr_cpu);
  m.impl("scatter", &crysbench::scatter_cpu);
  m.impl("gather_mul_scatter", &crysbench::gather_mul_scatter_cpu);
}
