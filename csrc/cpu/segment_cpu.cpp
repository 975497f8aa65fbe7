// CPU kernels for the segment / scatter reductions and the fused gather-multiply-scatter.
//
// Two strategies, both owner-computes: every output row (or a block of its feature columns) is
// written by exactly one task, which visits the row's edges in ascending edge order. Results are
// therefore deterministic and independent of the thread count, sums are added in the order of a
// serial index_add, and max keeps the first edge attaining it.
//
// * Grouped (CSR) rows: segment_csr, and scatter / gather_mul_scatter with a sorted index (the CSR
//   pointer is found by binary search). Tasks own contiguous segment ranges of equal cost; each
//   segment is reduced in a small scratch row and written once; src streams from memory.
// * Unsorted index: the output rows are split into one range per thread (of equal edge counts,
//   from a histogram of the index), and each task sweeps the whole index, handling only the edges
//   that land in its range. src is read in ascending order, never gathered at random (on this
//   kind of machine a random gather of 512-byte rows costs several times a sequential read), and
//   the output is touched by one thread per row, without atomics.
// * gather_mul_scatter forms the message x[src[e]] * w[e] in registers: the [E, F] message tensor
//   of the unfused index_select / mul / index_add_ is never materialized.
//
// Semantics (crysbench/ops/reference.py): empty segments give 0; for max, arg[n, f] is the smallest
// edge index attaining the maximum (E for an empty segment), and a NaN propagates to the max of its
// segment (arg then names the first NaN); for sum and mean, arg is an empty int64 tensor.
// Half and bfloat16 accumulate in float.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <type_traits>
#include <vector>

#include "common.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace crysbench {
namespace {

enum class Reduce { Sum, Mean, Max };

// Below this many scalar operations a call runs on one thread (thread start-up would dominate).
constexpr int64_t kSerialWork = 1 << 15;
// Edges per chunk when index checks and histograms are split between threads.
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

// Output rows of an unsorted index are read-modify-written at random: with 4 KiB pages nearly every
// edge misses the TLB, and a fresh 50 MB output takes ~12k page faults. Large outputs are therefore
// allocated 2 MiB-aligned and advised to use transparent huge pages (a no-op where THP is off).
constexpr int64_t kHugeBytes = 8 << 20;
constexpr size_t kHugePage = 2 << 20;

at::Tensor empty_rows(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const int64_t bytes = c10::multiply_integers(sizes) * static_cast<int64_t>(c10::elementSize(
                            c10::typeMetaToScalarType(options.dtype())));
  if (bytes < kHugeBytes) return at::empty(sizes, options);
  const size_t len = divup(bytes, kHugePage) * kHugePage;
  void* p = std::aligned_alloc(kHugePage, len);
  if (p == nullptr) return at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(p, len, MADV_HUGEPAGE);
#endif
  return at::from_blob(p, sizes, [](void* q) { std::free(q); }, options);
}

// ---------------------------------------------------------------------------------------------
// Index checks and row pointers
// ---------------------------------------------------------------------------------------------

// Checks 0 <= idx[e] < n for every e, raising an error that names the first offending entry;
// returns whether idx is sorted (non-decreasing).
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

// Checks that a CSR pointer rises from 0 to E.
void check_ptr(const char* op, const int64_t* ptr, int64_t n, int64_t E) {
  CB_CHECK(op, ptr[0] == 0, "ptr must start at 0, got ptr[0] = ", ptr[0]);
  CB_CHECK(op, ptr[n] == E, "ptr must end at src.size(0) = ", E, ", got ptr[", n, "] = ", ptr[n]);
  for (int64_t i = 0; i < n; ++i) {
    CB_CHECK(op, ptr[i] <= ptr[i + 1], "ptr must be non-decreasing, got ptr[", i, "] = ", ptr[i],
             " > ptr[", i + 1, "] = ", ptr[i + 1]);
  }
}

// Row pointer [n + 1] of a sorted index: row i owns edges ptr[i]..ptr[i+1].
std::vector<int64_t> ptr_from_sorted(const int64_t* idx, int64_t E, int64_t n) {
  std::vector<int64_t> ptr(n + 1);
  at::parallel_for(0, n + 1, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) ptr[i] = std::lower_bound(idx, idx + E, i) - idx;
  });
  return ptr;
}

// Prefix sums [n + 1] of the histogram of an unsorted index (per-chunk histograms, then added):
// ptr[i + 1] - ptr[i] edges land in row i.
std::vector<int64_t> ptr_from_counts(const int64_t* idx, int64_t E, int64_t n) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), divup(E, kEdgeChunk)));
  std::vector<int64_t> hist(chunks * n, 0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t* h = hist.data() + c * n;
      for (int64_t e = c * E / chunks; e < (c + 1) * E / chunks; ++e) ++h[idx[e]];
    }
  });
  std::vector<int64_t> ptr(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t count = 0;
    for (int64_t c = 0; c < chunks; ++c) count += hist[c * n + i];
    ptr[i + 1] = ptr[i] + count;
  }
  return ptr;
}

int64_t largest_segment(const std::vector<int64_t>& ptr) {
  int64_t largest = 0;
  for (size_t i = 0; i + 1 < ptr.size(); ++i) largest = std::max(largest, ptr[i + 1] - ptr[i]);
  return largest;
}

// ---------------------------------------------------------------------------------------------
// Work plan: tasks own contiguous row ranges of equal cost (edges + rows) and, when one row alone
// holds more than its share (everything reduced into one row), a block of feature columns.
// ---------------------------------------------------------------------------------------------
struct Plan {
  std::vector<int64_t> split;  // row ranges split[p]..split[p+1]
  int64_t block = 0;           // feature columns per task
  int64_t blocks = 1;
};

Plan make_plan(const int64_t* ptr, int64_t n, int64_t F, int64_t largest, int64_t parts_per_thread) {
  const int64_t cost = ptr[n] + n;  // a row costs its edges plus writing it
  const int64_t threads = at::get_num_threads();
  const bool serial = threads == 1 || cost * F < kSerialWork;
  const int64_t parts = std::max<int64_t>(1, serial ? 1 : std::min<int64_t>(n, parts_per_thread * threads));
  Plan plan;
  plan.block = F;
  if (!serial && (largest + 1) * 2 * threads > cost && F >= 32) {
    plan.block = std::max<int64_t>(16, divup(divup(F, 2 * threads), 16) * 16);
  }
  plan.blocks = std::max<int64_t>(1, divup(F, plan.block));
  plan.split.assign(parts + 1, n);
  plan.split[0] = 0;
  for (int64_t p = 1; p < parts; ++p) {
    // first row s with ptr[s] + s >= p * cost / parts (ptr[s] + s rises strictly)
    const int64_t target = p * cost / parts;
    int64_t lo = plan.split[p - 1], hi = n;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (ptr[mid] + mid < target) lo = mid + 1; else hi = mid;
    }
    plan.split[p] = lo;
  }
  return plan;
}

// Runs fn(row_begin, row_end, f0, nf) once per task of the plan.
template <typename Fn>
void run_plan(const Plan& plan, int64_t F, Fn&& fn) {
  const int64_t parts = static_cast<int64_t>(plan.split.size()) - 1;
  at::parallel_for(0, parts * plan.blocks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t part = t / plan.blocks, f0 = (t % plan.blocks) * plan.block;
      fn(plan.split[part], plan.split[part + 1], f0, std::min(plan.block, F - f0));
    }
  });
}

template <typename T>
using acc_t = at::opmath_type<T>;

// A scratch row of n accumulators per thread, reused between calls.
template <typename A>
A* scratch(int64_t n) {
  thread_local std::vector<A> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return buf.data();
}

// Output rows of an unsorted index are read-modify-written at random; asking for the row of the
// edge kAhead positions ahead hides most of the cache-miss latency.
constexpr int64_t kAhead = 32;

template <typename A>
inline void prefetch_row(const A* row, int64_t nf) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t b = 0; b < nf * static_cast<int64_t>(sizeof(A)); b += 64) __builtin_prefetch(p + b, 1);
}

// ---------------------------------------------------------------------------------------------
// Grouped rows: segment s owns src rows ptr[s]..ptr[s+1]
// ---------------------------------------------------------------------------------------------

// Max over rows lo..hi (hi > lo). The winning row is tracked as an offset with the width of the
// compared value (int32 beside float) so that compare and select vectorize.
template <typename pos_t, typename T>
void max_rows(const T* src, int64_t lo, int64_t hi, int64_t F, int64_t nf, T* __restrict out,
              int64_t* __restrict arg, acc_t<T>* __restrict best) {
  pos_t* __restrict pos = scratch<pos_t>(nf);
  const T* __restrict row = src + lo * F;
  for (int64_t f = 0; f < nf; ++f) {
    best[f] = static_cast<acc_t<T>>(row[f]);
    pos[f] = 0;
  }
  for (int64_t k = lo + 1; k < hi; ++k) {
    row = src + k * F;
    const pos_t here = static_cast<pos_t>(k - lo);
    for (int64_t f = 0; f < nf; ++f) {
      const acc_t<T> v = static_cast<acc_t<T>>(row[f]), b = best[f];
      const bool take = (v > b) | ((v != v) & (b == b));  // NaN propagates, as in torch.amax
      best[f] = take ? v : b;
      pos[f] = take ? here : pos[f];
    }
  }
  for (int64_t f = 0; f < nf; ++f) {
    out[f] = static_cast<T>(best[f]);
    arg[f] = lo + pos[f];
  }
}

// Reduces rows lo..hi of src (columns already offset to the task's block) into out / arg.
template <typename T, Reduce R>
void reduce_rows(const T* src, int64_t lo, int64_t hi, int64_t F, int64_t nf, int64_t E,
                 T* __restrict out, int64_t* __restrict arg) {
  using A = acc_t<T>;
  A* __restrict acc = scratch<A>(nf);
  if (lo == hi) {
    std::fill(out, out + nf, T(0));
    if (R == Reduce::Max) std::fill(arg, arg + nf, E);
  } else if constexpr (R == Reduce::Max) {
    using pos_t = std::conditional_t<sizeof(A) == 4, int32_t, int64_t>;
    if (hi - lo > std::numeric_limits<pos_t>::max()) {
      max_rows<int64_t>(src, lo, hi, F, nf, out, arg, acc);
    } else {
      max_rows<pos_t>(src, lo, hi, F, nf, out, arg, acc);
    }
  } else {
    std::fill(acc, acc + nf, A(0));
    for (int64_t k = lo; k < hi; ++k) {
      const T* __restrict row = src + k * F;
      for (int64_t f = 0; f < nf; ++f) acc[f] += static_cast<A>(row[f]);
    }
    const A scale = R == Reduce::Mean ? static_cast<A>(hi - lo) : A(1);
    for (int64_t f = 0; f < nf; ++f) out[f] = static_cast<T>(acc[f] / scale);
  }
}

template <typename T, Reduce R>
void reduce_grouped(const T* src, const int64_t* ptr, int64_t n, int64_t F, int64_t largest,
                    T* out, int64_t* arg) {
  const int64_t E = ptr[n];
  run_plan(make_plan(ptr, n, F, largest, 4), F, [&](int64_t s0, int64_t s1, int64_t f0, int64_t nf) {
    for (int64_t s = s0; s < s1; ++s) {
      reduce_rows<T, R>(src + f0, ptr[s], ptr[s + 1], F, nf, E, out + s * F + f0,
                        R == Reduce::Max ? arg + s * F + f0 : nullptr);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Unsorted index: each task sweeps the whole index for the edges landing in its rows a..b.
// acc [n, F] holds the running sums / maxima (the output itself for float and double).
// ---------------------------------------------------------------------------------------------
template <typename T, Reduce R>
void sweep_rows(const T* src, const int64_t* idx, const int64_t* ptr, int64_t E, int64_t F,
                int64_t a, int64_t b, int64_t f0, int64_t nf, acc_t<T>* acc) {
  using A = acc_t<T>;
  for (int64_t d = a; d < b; ++d) std::fill(acc + d * F + f0, acc + d * F + f0 + nf, A(0));
  const uint64_t rows = static_cast<uint64_t>(b - a);
  for (int64_t e = 0; e < E; ++e) {
    if (e + kAhead < E && static_cast<uint64_t>(idx[e + kAhead] - a) < rows) {
      prefetch_row(acc + idx[e + kAhead] * F + f0, nf);
    }
    const int64_t d = idx[e];
    if (static_cast<uint64_t>(d - a) >= rows) continue;
    const T* __restrict r = src + e * F + f0;
    A* __restrict o = acc + d * F + f0;
    for (int64_t f = 0; f < nf; ++f) o[f] += static_cast<A>(r[f]);
  }
  if (R == Reduce::Mean) {
    for (int64_t d = a; d < b; ++d) {
      const A count = static_cast<A>(std::max<int64_t>(ptr[d + 1] - ptr[d], 1));
      for (int64_t f = f0; f < f0 + nf; ++f) acc[d * F + f] /= count;
    }
  }
}

// Max by sweeping. Each output row d has a record of F running maxima and F winning edges (-1
// before the first one). With float maxima and int32 winners (E < 2^31), the record fits exactly in
// row d of arg (int64): both halves arrive with one prefetch, compare and select vectorize, and no
// scratch memory is allocated (fresh pages cost more than the sweep here). Otherwise the maxima live
// in out (or a float buffer for half / bfloat16) and the winners in arg as int64.
template <typename A, typename pos_t>
struct MaxRecords {
  char* val_base;
  char* pos_base;
  int64_t val_stride, pos_stride;  // bytes per row
  A* val(int64_t d) const { return reinterpret_cast<A*>(val_base + d * val_stride); }
  pos_t* pos(int64_t d) const { return reinterpret_cast<pos_t*>(pos_base + d * pos_stride); }
};

template <typename T, typename A, typename pos_t>
void max_sweep(const T* src, const int64_t* idx, int64_t E, int64_t F, int64_t a, int64_t b, int64_t f0,
               int64_t nf, const MaxRecords<A, pos_t>& rec) {
  for (int64_t d = a; d < b; ++d) std::fill(rec.pos(d) + f0, rec.pos(d) + f0 + nf, pos_t(-1));
  const uint64_t rows = static_cast<uint64_t>(b - a);
  for (int64_t e = 0; e < E; ++e) {
    if (e + kAhead < E && static_cast<uint64_t>(idx[e + kAhead] - a) < rows) {
      prefetch_row(rec.val(idx[e + kAhead]) + f0, nf);
      prefetch_row(rec.pos(idx[e + kAhead]) + f0, nf);
    }
    const int64_t d = idx[e];
    if (static_cast<uint64_t>(d - a) >= rows) continue;
    const T* __restrict r = src + e * F + f0;
    A* __restrict o = rec.val(d) + f0;
    pos_t* __restrict p = rec.pos(d) + f0;
    const pos_t here = static_cast<pos_t>(e);
    for (int64_t f = 0; f < nf; ++f) {
      const A v = static_cast<A>(r[f]), best = o[f];
      const bool take = (p[f] < 0) | (v > best) | ((v != v) & (best == best));  // NaN propagates
      o[f] = take ? v : best;
      p[f] = take ? here : p[f];
    }
  }
}

// Writes rows a..b of out / arg from their records (empty rows: 0 with arg E). A packed record
// occupies its own arg row, so it is copied aside first.
template <typename T, typename A, typename pos_t>
void max_finish(const MaxRecords<A, pos_t>& rec, bool packed, int64_t E, int64_t F, int64_t a, int64_t b,
                int64_t f0, int64_t nf, T* out, int64_t* arg) {
  A* vals = packed ? scratch<A>(nf) : nullptr;
  pos_t* wins = packed ? scratch<pos_t>(nf) : nullptr;
  for (int64_t d = a; d < b; ++d) {
    const A* o = rec.val(d) + f0;
    const pos_t* p = rec.pos(d) + f0;
    if (packed) {
      std::copy(o, o + nf, vals);
      std::copy(p, p + nf, wins);
      o = vals, p = wins;
    }
    for (int64_t f = 0; f < nf; ++f) {
      out[d * F + f0 + f] = p[f] < 0 ? T(0) : static_cast<T>(o[f]);
      arg[d * F + f0 + f] = p[f] < 0 ? E : static_cast<int64_t>(p[f]);
    }
  }
}

template <typename T, typename A, typename pos_t>
void max_unsorted(const T* src, const int64_t* idx, const std::vector<int64_t>& ptr, int64_t n, int64_t F,
                  bool packed, T* out, int64_t* arg) {
  const int64_t E = ptr[n];
  at::Tensor buf;  // float maxima for half / bfloat16 when not packed
  MaxRecords<A, pos_t> rec{};
  if (packed) {
    char* base = reinterpret_cast<char*>(arg);
    rec = {base, base + F * sizeof(A), F * 8, F * 8};
  } else {
    A* vals = reinterpret_cast<A*>(out);
    if (!std::is_same<A, T>::value) {
      buf = empty_rows({n, F}, at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value));
      vals = buf.data_ptr<A>();
    }
    rec = {reinterpret_cast<char*>(vals), reinterpret_cast<char*>(arg),
           static_cast<int64_t>(F * sizeof(A)), F * 8};
  }
  const Plan plan = make_plan(ptr.data(), n, F, largest_segment(ptr), 1);
  // a packed record spans its whole arg row: with feature blocks, finish only after every sweep
  const bool finish_apart = packed && plan.blocks > 1;
  run_plan(plan, F, [&](int64_t a, int64_t b, int64_t f0, int64_t nf) {
    max_sweep<T>(src, idx, E, F, a, b, f0, nf, rec);
    if (!finish_apart) max_finish<T>(rec, packed, E, F, a, b, f0, nf, out, arg);
  });
  if (finish_apart) {
    at::parallel_for(0, n, 256, [&](int64_t a, int64_t b) { max_finish<T>(rec, packed, E, F, a, b, 0, F, out, arg); });
  }
}

template <typename T, Reduce R>
void reduce_unsorted(const T* src, const int64_t* idx, const std::vector<int64_t>& ptr, int64_t n,
                     int64_t F, T* out, int64_t* arg) {
  using A = acc_t<T>;
  const int64_t E = ptr[n];
  if constexpr (R == Reduce::Max) {
    if (sizeof(A) == 4 && E <= std::numeric_limits<int32_t>::max()) {
      return max_unsorted<T, A, int32_t>(src, idx, ptr, n, F, true, out, arg);
    }
    return max_unsorted<T, A, int64_t>(src, idx, ptr, n, F, false, out, arg);
  }
  at::Tensor acc_buf;  // float accumulators for half / bfloat16
  A* acc = reinterpret_cast<A*>(out);
  if (!std::is_same<A, T>::value) {
    acc_buf = empty_rows({n, F}, at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value));
    acc = acc_buf.data_ptr<A>();
  }
  run_plan(make_plan(ptr.data(), n, F, largest_segment(ptr), 1), F,
           [&](int64_t a, int64_t b, int64_t f0, int64_t nf) {
    sweep_rows<T, R>(src, idx, ptr.data(), E, F, a, b, f0, nf, acc);
    if (!std::is_same<A, T>::value) {
      for (int64_t d = a; d < b; ++d) {
        for (int64_t f = f0; f < f0 + nf; ++f) out[d * F + f] = static_cast<T>(acc[d * F + f]);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------------------------
template <typename T, Reduce R>
void reduce_any(const T* src, const int64_t* idx, const std::vector<int64_t>& ptr, bool sorted,
                int64_t n, int64_t F, T* out, int64_t* arg) {
  if (sorted) {
    reduce_grouped<T, R>(src, ptr.data(), n, F, largest_segment(ptr), out, arg);
  } else {
    reduce_unsorted<T, R>(src, idx, ptr, n, F, out, arg);
  }
}

// Allocates (out, arg) and reduces src's rows into the n rows given by ptr (and idx when not
// sorted; then ptr only holds the row counts).
std::tuple<at::Tensor, at::Tensor> reduce(const at::Tensor& src_in, const int64_t* idx,
                                          const std::vector<int64_t>& ptr, bool sorted, Reduce reduce) {
  const at::Tensor src = src_in.contiguous();
  const int64_t n = static_cast<int64_t>(ptr.size()) - 1, F = src.size(1);
  at::Tensor out = empty_rows({n, F}, src.options());
  at::Tensor arg = empty_rows({reduce == Reduce::Max ? n * F : 0}, src.options().dtype(at::kLong));
  if (reduce == Reduce::Max) arg = arg.view({n, F});
  if (n == 0 || F == 0) return {out, arg};
  int64_t* g = reduce == Reduce::Max ? arg.data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "crysbench_reduce", [&] {
    const scalar_t* s = src.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    switch (reduce) {
      case Reduce::Sum: return reduce_any<scalar_t, Reduce::Sum>(s, idx, ptr, sorted, n, F, o, g);
      case Reduce::Mean: return reduce_any<scalar_t, Reduce::Mean>(s, idx, ptr, sorted, n, F, o, g);
      case Reduce::Max: return reduce_any<scalar_t, Reduce::Max>(s, idx, ptr, sorted, n, F, o, g);
    }
  });
  return {out, arg};
}

std::tuple<at::Tensor, at::Tensor> segment_csr_cpu(const at::Tensor& src, const at::Tensor& ptr_in,
                                                   c10::string_view reduce_name) {
  const char* op = "segment_csr";
  const Reduce r = parse_reduce(op, reduce_name);
  check_dim(op, src, "src", 2);
  check_src(op, src, "src");
  check_dim(op, ptr_in, "ptr", 1);
  check_index(op, ptr_in, "ptr");
  check_same_device(op, src, "src", ptr_in, "ptr");
  CB_CHECK(op, ptr_in.numel() >= 1, "ptr must have at least one entry (N + 1 for N segments)");
  const at::Tensor ptr_t = ptr_in.contiguous();
  const int64_t* p = ptr_t.data_ptr<int64_t>();
  check_ptr(op, p, ptr_t.numel() - 1, src.size(0));
  return reduce(src, nullptr, std::vector<int64_t>(p, p + ptr_t.numel()), true, r);
}

std::tuple<at::Tensor, at::Tensor> scatter_cpu(const at::Tensor& src, const at::Tensor& index_in,
                                               int64_t dim_size, c10::string_view reduce_name) {
  const char* op = "scatter";
  const Reduce r = parse_reduce(op, reduce_name);
  check_dim(op, src, "src", 2);
  check_src(op, src, "src");
  check_dim(op, index_in, "index", 1);
  check_index(op, index_in, "index");
  check_same_device(op, src, "src", index_in, "index");
  CB_CHECK(op, index_in.size(0) == src.size(0), "index has ", index_in.size(0),
           " entries but src has ", src.size(0), " rows");
  CB_CHECK(op, dim_size >= 0, "dim_size must be >= 0, got ", dim_size);
  const at::Tensor index = index_in.contiguous();
  const int64_t* idx = index.data_ptr<int64_t>();
  const int64_t E = index.numel();
  const bool sorted = check_index_range(op, "index", idx, E, dim_size, "dim_size");
  const auto ptr = sorted ? ptr_from_sorted(idx, E, dim_size) : ptr_from_counts(idx, E, dim_size);
  return reduce(src, idx, ptr, sorted, r);
}

// ---------------------------------------------------------------------------------------------
// gather_mul_scatter: out[d] = sum over edges e with dst[e] == d (ascending e) of x[src[e]] * w[e]
// ---------------------------------------------------------------------------------------------
template <typename T>
struct Messages {
  const T* x;
  const T* w;
  const int64_t* src_index;
  int64_t F;
  // acc[f] += x[src[e], f0 + f] * w[e, f0 + f], the product rounded to T first as the unfused
  // x[src] * w would round it
  void add(acc_t<T>* __restrict acc, int64_t e, int64_t f0, int64_t nf) const {
    const T* __restrict xr = x + src_index[e] * F + f0;
    const T* __restrict wr = w + e * F + f0;
    for (int64_t f = 0; f < nf; ++f) acc[f] += static_cast<acc_t<T>>(static_cast<T>(xr[f] * wr[f]));
  }
};

template <typename T>
void gms_grouped(const Messages<T>& m, const std::vector<int64_t>& ptr, int64_t n, T* out) {
  using A = acc_t<T>;
  const int64_t F = m.F;
  run_plan(make_plan(ptr.data(), n, F, largest_segment(ptr), 4), F,
           [&](int64_t s0, int64_t s1, int64_t f0, int64_t nf) {
             A* __restrict acc = scratch<A>(nf);
             for (int64_t s = s0; s < s1; ++s) {
               std::fill(acc, acc + nf, A(0));
               for (int64_t e = ptr[s]; e < ptr[s + 1]; ++e) m.add(acc, e, f0, nf);
               for (int64_t f = 0; f < nf; ++f) out[s * F + f0 + f] = static_cast<T>(acc[f]);
             }
           });
}

template <typename T>
void gms_unsorted(const Messages<T>& m, const int64_t* dst, const std::vector<int64_t>& ptr, int64_t n,
                  T* out) {
  using A = acc_t<T>;
  const int64_t F = m.F, E = ptr[n];
  at::Tensor buffer;  // float accumulators for half / bfloat16
  A* acc = reinterpret_cast<A*>(out);
  if (!std::is_same<A, T>::value) {
    buffer = empty_rows({n, F}, at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value));
    acc = buffer.data_ptr<A>();
  }
  run_plan(make_plan(ptr.data(), n, F, largest_segment(ptr), 1), F,
           [&](int64_t a, int64_t b, int64_t f0, int64_t nf) {
             for (int64_t d = a; d < b; ++d) std::fill(acc + d * F + f0, acc + d * F + f0 + nf, A(0));
             const uint64_t rows = static_cast<uint64_t>(b - a);
             for (int64_t e = 0; e < E; ++e) {
               if (e + kAhead < E && static_cast<uint64_t>(dst[e + kAhead] - a) < rows) {
                 prefetch_row(acc + dst[e + kAhead] * F + f0, nf);
                 prefetch_row(m.x + m.src_index[e + kAhead] * F + f0, nf);
               }
               const int64_t d = dst[e];
               if (static_cast<uint64_t>(d - a) < rows) m.add(acc + d * F + f0, e, f0, nf);
             }
           });
  if (!std::is_same<A, T>::value) {
    at::parallel_for(0, n * F, 1 << 14, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) out[i] = static_cast<T>(acc[i]);
    });
  }
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
  check_same_device(op, x_in, "x", w_in, "w");
  check_same_device(op, x_in, "x", src_in, "src_index");
  check_same_device(op, x_in, "x", dst_in, "dst_index");
  const int64_t E = w_in.size(0);
  CB_CHECK(op, src_in.size(0) == E && dst_in.size(0) == E, "src_index (", src_in.size(0),
           ") and dst_index (", dst_in.size(0), ") must have one entry per row of w (", E, ")");
  CB_CHECK(op, dim_size >= 0, "dim_size must be >= 0, got ", dim_size);
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const at::Tensor src = src_in.contiguous(), dst = dst_in.contiguous();
  const int64_t F = c10::multiply_integers(x.sizes().slice(1));  // trailing dims, flattened
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape[0] = dim_size;
  at::Tensor out = empty_rows(out_shape, x.options());
  check_index_range(op, "src_index", src.data_ptr<int64_t>(), E, x.size(0), "x.size(0)");
  const int64_t* d = dst.data_ptr<int64_t>();
  const bool sorted = check_index_range(op, "dst_index", d, E, dim_size, "dim_size");
  if (dim_size == 0 || F == 0) return out;
  const auto ptr = sorted ? ptr_from_sorted(d, E, dim_size) : ptr_from_counts(d, E, dim_size);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "crysbench_gms", [&] {
    const Messages<scalar_t> m{x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), src.data_ptr<int64_t>(), F};
    scalar_t* o = out.data_ptr<scalar_t>();
    if (sorted) {
      gms_grouped(m, ptr, dim_size, o);
    } else {
      gms_unsorted(m, d, ptr, dim_size, o);
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
