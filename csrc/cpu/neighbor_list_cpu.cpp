// Periodic neighbour list (cell lists) and the k-nearest cap, CPU kernels.
//
// Semantics: crysbench/ops/reference.py. Algorithm, per crystal:
//   1. fractional coordinates; periodic axes are wrapped into [0, 1) and the integer image n_i
//      removed is remembered, so pairs found between wrapped atoms map back to shifts of the
//      original positions: S = S' + n_i - n_j;
//   2. atoms are counting-sorted into a grid of bins (per axis, from the distance between lattice
//      planes) and stored contiguously (SoA) in bin order;
//   3. each atom scans the bins within reach of the cutoff, a row of x-bins at a time (contiguous
//      slots), testing candidates with a vectorized bit mask; a bin index outside [0, nb) on a
//      periodic axis is an image of a bin inside, which is how cutoffs longer than the cell work.
// Pass 1 scans fixed chunks of atoms in parallel, keeping compact hits (partner slot, image) and a
// count per atom; a prefix sum gives every atom its offset, and pass 2 expands the hits into the
// outputs at those offsets. The output is written once, sorted by edge_i, and is the same for any
// number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <limits>
#include <vector>

#include "common.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace crysbench {
namespace {

constexpr const char* kOp = "neighbor_list";
// Relative slack on the cutoff when pruning bins: pruning is done in double on bin geometry while
// the distance test runs in the input dtype, so prune only what is clearly out of reach.
constexpr double kSlack = 1e-5;
// Image shifts are kept as int16 while scanning.
constexpr int kMaxReach = 16000;

using Mat3 = std::array<std::array<double, 3>, 3>;

// Grid of one crystal. Axis tables are indexed by t + R[k] for a bin coordinate t in [-R, nb + R):
// the wrapped bin (-1 when t leaves a non-periodic axis), the image shift S' and its offset (Å).
template <typename scalar_t>
struct Grid {
  int nb[3] = {1, 1, 1};
  bool periodic[3] = {false, false, false};
  double cell[3][3] = {};  // lattice vectors as rows (Å)
  double volume = 1;        // |det| (Å^3)
  int reach[3] = {0, 0, 0};
  double width[3] = {0, 0, 0};  // Å between neighbouring bin planes of each axis
  double lam = 0;                // smallest eigenvalue of the bin-edge metric (Å^2), pruning bound
  std::vector<int> wrap[3], shift[3];
  std::vector<scalar_t> off[3];  // 3 per table entry
  std::vector<int64_t> start;    // global slot where each bin starts; nbins + 1 entries
};

// Per-atom data shared by both passes. "Slots" are positions in bin order (global, per crystal
// block [ptr[b], ptr[b+1])); "atoms" are the caller's order.
template <typename scalar_t>
struct Binned {
  std::vector<scalar_t> x, y, z;  // wrapped Cartesian positions, by slot
  std::vector<int64_t> id;        // global atom id, by slot
  std::vector<int32_t> img;       // wrapped-off image n (3 per slot)
  std::vector<int64_t> slot;      // slot of each atom
  std::vector<int32_t> bin3;      // bin coordinates of each atom (3 per atom)
  std::vector<float> frac_in;     // position inside its bin in [0, 1] (3 per atom), for pruning
  explicit Binned(int64_t n)
      : x(n), y(n), z(n), id(n), img(3 * n), slot(n), bin3(3 * n), frac_in(3 * n) {}
};

double det3(const Mat3& m) {
  return m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) -
         m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
         m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
}

Mat3 inverse3(const Mat3& m, double det) {
  Mat3 r;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      const int i1 = (j + 1) % 3, i2 = (j + 2) % 3, j1 = (i + 1) % 3, j2 = (i + 2) % 3;
      r[i][j] = (m[i1][j1] * m[i2][j2] - m[i1][j2] * m[i2][j1]) / det;
    }
  }
  return r;
}

// Smallest eigenvalue of a symmetric positive semi-definite 3x3 matrix, rounded down for safety.
double min_eigen(const Mat3& a) {
  const double tr = a[0][0] + a[1][1] + a[2][2];
  const double p1 = a[0][1] * a[0][1] + a[0][2] * a[0][2] + a[1][2] * a[1][2];
  const double q = tr / 3.0;
  const double p2 = (a[0][0] - q) * (a[0][0] - q) + (a[1][1] - q) * (a[1][1] - q) +
                    (a[2][2] - q) * (a[2][2] - q) + 2.0 * p1;
  double lo = q;
  if (p2 > 1e-30 * tr * tr) {
    const double p = std::sqrt(p2 / 6.0);
    Mat3 b;
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) b[i][j] = (a[i][j] - (i == j ? q : 0.0)) / p;
    const double r = std::clamp(det3(b) / 2.0, -1.0, 1.0);
    lo = q + 2.0 * p * std::cos(std::acos(r) / 3.0 + 2.0 * M_PI / 3.0);
  }
  return std::max(0.0, lo - 1e-7 * tr);
}

// Bins per axis for a target bin width w (Å): extent / w, at least one; and the reach in bins.
struct AxisPlan {
  int nb[3];
  int reach[3];
  double width[3];
};

AxisPlan plan_axes(const double extent[3], const bool periodic[3], double cutoff, double w) {
  AxisPlan p{};
  for (int k = 0; k < 3; ++k) {
    const double nb = std::floor(extent[k] / w);
    p.nb[k] = static_cast<int>(std::clamp(nb, 1.0, 1e6));
    p.width[k] = extent[k] / p.nb[k];
    if (p.width[k] <= 0) {  // flat non-periodic extent: one bin, nothing to reach
      p.reach[k] = 0;
      continue;
    }
    const double r = std::ceil(cutoff * (1.0 + kSlack) / p.width[k]);
    p.reach[k] = static_cast<int>(periodic[k] ? std::min(r, 1e6) : std::min(r, double(p.nb[k] - 1)));
  }
  return p;
}

// Pick the bin width with the smallest modelled cost per atom: row segments visited (overhead)
// plus candidate atoms tested, from the bins an atom's cutoff sphere spans on each axis. Total
// bins are capped near the atom count so memory stays O(N).
AxisPlan choose_axes(const double extent[3], const bool periodic[3], double cutoff, int64_t n) {
  constexpr double kSegmentCost = 24.0;  // in units of one candidate test
  const double cap = std::max<double>(8.0, 2.0 * n);
  AxisPlan best{};
  double best_cost = std::numeric_limits<double>::infinity();
  for (double div : {1.0, 2.0, 3.0, 4.0}) {
    AxisPlan p = plan_axes(extent, periodic, cutoff, cutoff / div);
    const double bins = double(p.nb[0]) * p.nb[1] * p.nb[2];
    if (bins > cap) continue;
    double span[3];
    for (int k = 0; k < 3; ++k) {
      span[k] = p.width[k] > 0 ? 2.0 * cutoff / p.width[k] + 1.0 : 1.0;
      if (!periodic[k]) span[k] = std::min(span[k], double(p.nb[k]));
    }
    const double rows = span[1] * span[2];
    const double segments = rows * (1.0 + (periodic[0] ? span[0] / p.nb[0] : 0.0));
    const double cost = kSegmentCost * segments + span[0] * span[1] * span[2] * double(n) / bins;
    if (cost < best_cost) best_cost = cost, best = p;
  }
  if (best_cost == std::numeric_limits<double>::infinity()) {  // sparse cell: widen until capped
    double w = cutoff;
    do {
      best = plan_axes(extent, periodic, cutoff, w);
      w *= 2;
    } while (double(best.nb[0]) * best.nb[1] * best.nb[2] > cap);
  }
  return best;
}

template <typename scalar_t>
void fill_tables(Grid<scalar_t>& g, const Mat3& cell, const bool periodic[3]) {
  for (int k = 0; k < 3; ++k) {
    const int nb = g.nb[k], r = g.reach[k], len = nb + 2 * r;
    g.wrap[k].resize(len);
    g.shift[k].resize(len);
    g.off[k].resize(3 * len);
    for (int e = 0; e < len; ++e) {
      const int t = e - r;
      int s = 0, w = t;
      if (periodic[k]) {
        s = (t >= 0) ? t / nb : -((-t + nb - 1) / nb);
        w = t - s * nb;
      } else if (t < 0 || t >= nb) {
        w = -1;
      }
      g.wrap[k][e] = w;
      g.shift[k][e] = s;
      for (int c = 0; c < 3; ++c) g.off[k][3 * e + c] = static_cast<scalar_t>(s * cell[k][c]);
    }
  }
}

// Bin the atoms of crystal b (global ids lo..hi) and build its grid.
template <typename scalar_t>
void build_grid(Grid<scalar_t>& g, Binned<scalar_t>& bd, const scalar_t* pos, const scalar_t* cellp,
                const bool* pbcp, int64_t lo, int64_t hi, int64_t b, double cutoff) {
  Mat3 cell;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) cell[i][j] = static_cast<double>(cellp[3 * i + j]);
  const double det = det3(cell);
  double scale = 1;
  for (int i = 0; i < 3; ++i)
    scale *= std::sqrt(cell[i][0] * cell[i][0] + cell[i][1] * cell[i][1] + cell[i][2] * cell[i][2]);
  CB_CHECK(kOp, std::isfinite(det) && std::abs(det) > 1e-10 * scale, "cell of crystal ", b,
           " is singular or not finite (det = ", det, " Å^3); expected three independent lattice vectors");
  const Mat3 inv = inverse3(cell, det);
  g.volume = std::abs(det);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) g.cell[i][j] = cell[i][j];
  const bool periodic[3] = {pbcp[0], pbcp[1], pbcp[2]};
  for (int k = 0; k < 3; ++k) g.periodic[k] = periodic[k];
  const int64_t n = hi - lo;
  CB_CHECK(kOp, n < std::numeric_limits<int32_t>::max(), "crystal ", b, " has ", n,
           " atoms; at most 2^31 - 2 fit");

  // Fractional coordinates, wrapped on periodic axes; non-periodic axes span [fmin, fmax].
  std::vector<double> frac(3 * n);
  std::vector<int32_t> img(3 * n, 0);
  double fmin[3] = {0, 0, 0}, span[3] = {1, 1, 1}, extent[3];
  for (int64_t a = 0; a < n; ++a) {
    const scalar_t* p = pos + 3 * (lo + a);
    for (int k = 0; k < 3; ++k) {
      double f = p[0] * inv[0][k] + p[1] * inv[1][k] + p[2] * inv[2][k];
      CB_CHECK(kOp, std::isfinite(f), "position of atom ", lo + a, " is not finite");
      if (periodic[k]) {
        const double fl = std::floor(f);
        CB_CHECK(kOp, std::abs(fl) < 1e9, "atom ", lo + a, " lies ", fl, " cells away from its cell");
        img[3 * a + k] = static_cast<int32_t>(fl);
        f -= fl;
      }
      frac[3 * a + k] = f;
    }
  }
  for (int k = 0; k < 3; ++k) {
    const double h = 1.0 / std::sqrt(inv[0][k] * inv[0][k] + inv[1][k] * inv[1][k] + inv[2][k] * inv[2][k]);
    if (!periodic[k] && n > 0) {
      double mn = frac[k], mx = frac[k];
      for (int64_t a = 1; a < n; ++a) mn = std::min(mn, frac[3 * a + k]), mx = std::max(mx, frac[3 * a + k]);
      fmin[k] = mn;
      span[k] = mx - mn;
    }
    extent[k] = span[k] * h;
  }
  const AxisPlan plan = choose_axes(extent, periodic, cutoff, n);
  for (int k = 0; k < 3; ++k) {
    g.nb[k] = plan.nb[k];
    g.reach[k] = plan.reach[k];
    g.width[k] = plan.width[k];
    CB_CHECK(kOp, g.reach[k] <= kMaxReach, "cutoff ", cutoff, " Å spans more than ", kMaxReach,
             " images of cell ", b, " along lattice vector ", k,
             "; expected a cutoff comparable to the cell");
    if (span[k] <= 0) span[k] = 1;  // flat extent: one bin of any width
  }
  Mat3 metric;  // Gram matrix of the bin edge vectors
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      double s = 0;
      for (int c = 0; c < 3; ++c) s += cell[i][c] * cell[j][c];
      metric[i][j] = s * (span[i] / g.nb[i]) * (span[j] / g.nb[j]);
    }
  g.lam = min_eigen(metric);
  fill_tables(g, cell, periodic);

  // Counting sort into bins (stable, so the order inside a bin follows the atom order).
  const int64_t nbins = int64_t(g.nb[0]) * g.nb[1] * g.nb[2];
  std::vector<int64_t> bin_of(n);
  g.start.assign(nbins + 1, 0);
  for (int64_t a = 0; a < n; ++a) {
    int bc[3];
    for (int k = 0; k < 3; ++k) {
      const double u = (frac[3 * a + k] - fmin[k]) / span[k] * g.nb[k];
      bc[k] = std::clamp(static_cast<int>(std::floor(u)), 0, g.nb[k] - 1);
      bd.bin3[3 * (lo + a) + k] = bc[k];
      bd.frac_in[3 * (lo + a) + k] = static_cast<float>(std::clamp(u - bc[k], 0.0, 1.0));
    }
    bin_of[a] = (int64_t(bc[2]) * g.nb[1] + bc[1]) * g.nb[0] + bc[0];
    ++g.start[bin_of[a] + 1];
  }
  g.start[0] = lo;
  for (int64_t s = 0; s < nbins; ++s) g.start[s + 1] += g.start[s];
  std::vector<int64_t> fill(g.start.begin(), g.start.end() - 1);
  for (int64_t a = 0; a < n; ++a) {
    const int64_t s = fill[bin_of[a]]++;
    const scalar_t* p = pos + 3 * (lo + a);
    double w[3];
    for (int c = 0; c < 3; ++c) {
      w[c] = p[c];
      for (int k = 0; k < 3; ++k) w[c] -= img[3 * a + k] * cell[k][c];
    }
    bd.x[s] = static_cast<scalar_t>(w[0]);
    bd.y[s] = static_cast<scalar_t>(w[1]);
    bd.z[s] = static_cast<scalar_t>(w[2]);
    bd.id[s] = lo + a;
    for (int k = 0; k < 3; ++k) bd.img[3 * s + k] = img[3 * a + k];
    bd.slot[lo + a] = s;
  }
}

template <typename scalar_t>
struct Out {
  int64_t *ei, *ej, *sh;
  scalar_t *dist, *vec;  // vec may be null
};

// Which of n <= 64 contiguous binned atoms, shifted by (rx, ry, rz) from a centre, lie strictly
// within the cutoff (d^2 < c2): bit k of the result is atom k. SSE2 (baseline on x86-64) tests 2
// doubles or 4 floats at once; the tail and other architectures use the same arithmetic in scalar.
inline uint64_t within(const double* X, const double* Y, const double* Z, int n, double rx, double ry,
                       double rz, double c2) {
  uint64_t bits = 0;
  int k = 0;
#if defined(__SSE2__)
  const __m128d RX = _mm_set1_pd(rx), RY = _mm_set1_pd(ry), RZ = _mm_set1_pd(rz), C2 = _mm_set1_pd(c2);
  for (; k + 2 <= n; k += 2) {
    const __m128d vx = _mm_add_pd(_mm_loadu_pd(X + k), RX), vy = _mm_add_pd(_mm_loadu_pd(Y + k), RY),
                  vz = _mm_add_pd(_mm_loadu_pd(Z + k), RZ);
    const __m128d d2 = _mm_add_pd(_mm_add_pd(_mm_mul_pd(vx, vx), _mm_mul_pd(vy, vy)), _mm_mul_pd(vz, vz));
    bits |= uint64_t(_mm_movemask_pd(_mm_cmplt_pd(d2, C2))) << k;
  }
#endif
  for (; k < n; ++k) {
    const double vx = X[k] + rx, vy = Y[k] + ry, vz = Z[k] + rz;
    bits |= uint64_t(vx * vx + vy * vy + vz * vz < c2) << k;
  }
  return bits;
}

inline uint64_t within(const float* X, const float* Y, const float* Z, int n, float rx, float ry, float rz,
                       float c2) {
  uint64_t bits = 0;
  int k = 0;
#if defined(__SSE2__)
  const __m128 RX = _mm_set1_ps(rx), RY = _mm_set1_ps(ry), RZ = _mm_set1_ps(rz), C2 = _mm_set1_ps(c2);
  for (; k + 4 <= n; k += 4) {
    const __m128 vx = _mm_add_ps(_mm_loadu_ps(X + k), RX), vy = _mm_add_ps(_mm_loadu_ps(Y + k), RY),
                 vz = _mm_add_ps(_mm_loadu_ps(Z + k), RZ);
    const __m128 d2 = _mm_add_ps(_mm_add_ps(_mm_mul_ps(vx, vx), _mm_mul_ps(vy, vy)), _mm_mul_ps(vz, vz));
    bits |= uint64_t(_mm_movemask_ps(_mm_cmplt_ps(d2, C2))) << k;
  }
#endif
  for (; k < n; ++k) {
    const float vx = X[k] + rx, vy = Y[k] + ry, vz = Z[k] + rz;
    bits |= uint64_t(vx * vx + vy * vy + vz * vz < c2) << k;
  }
  return bits;
}

// Gap (in bins) between a point at in-bin position t and the bin d bins away along one axis.
inline double gap(double t, int d) { return d > 0 ? d - t : (d < 0 ? t - d - 1 : 0.0); }

// Large buffers written once front to back are advised to use transparent huge pages: first-touch
// page faults (one per 4 KiB) otherwise dominate the cost of writing tens of millions of edges.
// numpy gives the same advice for its large arrays. A hint only; where it fails nothing changes.
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1), hi = (begin + bytes) & ~(kHuge - 1);
  if (bytes >= 4 * kHuge && hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)data, (void)bytes;
#endif
}

// One accepted pair, as the scan finds it: the partner's slot (relative to its crystal's first
// slot) and the image shift S' between wrapped positions. The output is expanded from these.
struct Hit {
  int32_t slot;
  int16_t s[3];
};

// A growable array of hits (trivially copyable) whose storage gets the huge-page advice.
class HitBuffer {
 public:
  HitBuffer() = default;
  HitBuffer(const HitBuffer&) = delete;
  HitBuffer& operator=(const HitBuffer&) = delete;
  ~HitBuffer() { std::free(data_); }
  const Hit* data() const { return data_; }
  Hit* end() { return data_ + size_; }
  void reserve(size_t n) {
    if (n <= cap_) return;
    Hit* p = static_cast<Hit*>(std::malloc(n * sizeof(Hit)));
    TORCH_CHECK(p != nullptr, "crysbench.neighbor_list: out of memory for ", n, " neighbour pairs");
    advise_huge_pages(p, n * sizeof(Hit));
    if (size_) std::memcpy(p, data_, size_ * sizeof(Hit));
    std::free(data_);
    data_ = p;
    cap_ = n;
  }
  void make_room(size_t extra) {
    if (size_ + extra > cap_) reserve(std::max(2 * cap_, size_ + extra + 1024));
  }
  void grow_by(size_t k) { size_ += k; }
  void release() {
    std::free(data_);
    data_ = nullptr;
    size_ = cap_ = 0;
  }

 private:
  Hit* data_ = nullptr;
  size_t size_ = 0, cap_ = 0;
};

// Scan the bins within reach of atom i, one row of x-bins at a time (a row is contiguous in slot
// order, split only where it crosses a periodic image), and append i's neighbours to `hits`.
// The pair (i, i, S = 0) is skipped; it sits in the unshifted segment of i's own row.
template <typename scalar_t>
int64_t scan_atom(const Grid<scalar_t>& g, const Binned<scalar_t>& bd, int64_t i, int64_t base,
                  double cutoff, scalar_t c2, HitBuffer& hits) {
  const int64_t si = bd.slot[i];
  const scalar_t xi = bd.x[si], yi = bd.y[si], zi = bd.z[si];
  const int32_t* bi = &bd.bin3[3 * i];
  const float* ti = &bd.frac_in[3 * i];
  const double reach = cutoff * (1.0 + kSlack), reach2 = reach * reach;
  const int nbx = g.nb[0], rxm = g.reach[0];
  const bool px = g.periodic[0];
  int64_t count = 0;
  for (int dz = -g.reach[2]; dz <= g.reach[2]; ++dz) {
    const double gz = gap(ti[2], dz);
    const int ez = bi[2] + dz + g.reach[2];
    const int wz = g.wrap[2][ez];
    if (gz * g.width[2] >= reach || wz < 0) continue;
    for (int dy = -g.reach[1]; dy <= g.reach[1]; ++dy) {
      const double gy = gap(ti[1], dy);
      const int ey = bi[1] + dy + g.reach[1];
      const int wy = g.wrap[1][ey];
      const double rem = reach2 - g.lam * (gz * gz + gy * gy);
      if (gy * g.width[1] >= reach || wy < 0 || rem <= 0) continue;
      // x-bins whose gap stays below gmax (slab bound, and the metric bound for this row)
      double gmax = reach / g.width[0];
      if (g.lam > 0) gmax = std::min(gmax, std::sqrt(rem / g.lam));
      int t0 = bi[0] + std::max(-rxm, static_cast<int>(std::floor(ti[0] - 1.0 - gmax)) + 1);
      int t1 = bi[0] + std::min(rxm, static_cast<int>(std::ceil(ti[0] + gmax)) - 1);
      if (!px) t0 = std::max(t0, 0), t1 = std::min(t1, nbx - 1);
      const int64_t row = (int64_t(wz) * g.nb[1] + wy) * nbx;
      const scalar_t* oz = &g.off[2][3 * ez];
      const scalar_t* oy = &g.off[1][3 * ey];
      const int16_t sy = static_cast<int16_t>(g.shift[1][ey]), sz = static_cast<int16_t>(g.shift[2][ez]);
      while (t0 <= t1) {
        const int ex = t0 + rxm, w0 = g.wrap[0][ex];
        const int w1 = px ? std::min(nbx - 1, w0 + (t1 - t0)) : w0 + (t1 - t0);
        t0 += w1 - w0 + 1;
        const int64_t s = g.start[row + w0], n = g.start[row + w1 + 1] - s;
        if (n == 0) continue;
        const scalar_t* ox = &g.off[0][3 * ex];
        const scalar_t rx = (ox[0] + oy[0] + oz[0]) - xi;
        const scalar_t ry = (ox[1] + oy[1] + oz[1]) - yi;
        const scalar_t rz = (ox[2] + oy[2] + oz[2]) - zi;
        const int16_t sx = static_cast<int16_t>(g.shift[0][ex]);
        const int64_t skip = (dy == 0 && dz == 0 && (sx | sy | sz) == 0) ? si - s : -1;
        for (int64_t k0 = 0; k0 < n; k0 += 64) {  // 64 candidates per bit mask
          const int len = static_cast<int>(std::min<int64_t>(64, n - k0));
          const int64_t f = s + k0;
          uint64_t bits = within(bd.x.data() + f, bd.y.data() + f, bd.z.data() + f, len, rx, ry, rz, c2);
          if (skip >= k0 && skip < k0 + len) bits &= ~(uint64_t(1) << (skip - k0));
          if (bits == 0) continue;
          const int m = __builtin_popcountll(bits);
          hits.make_room(m);
          Hit* h = hits.end();
          const int32_t first = static_cast<int32_t>(s + k0 - base);
          for (; bits; bits &= bits - 1) *h++ = Hit{first + __builtin_ctzll(bits), {sx, sy, sz}};
          hits.grow_by(m);
          count += m;
        }
      }
    }
  }
  return count;
}

// Write atom i's edges from its hits: shifts back to the original positions (S = S' + n_i - n_j),
// distances and, when asked, vectors, recomputed exactly as the scan computed them.
template <typename scalar_t>
void expand_atom(const Grid<scalar_t>& g, const Binned<scalar_t>& bd, int64_t i, int64_t base,
                 const Hit* hit, int64_t n, const Out<scalar_t>& out, int64_t o) {
  const int64_t si = bd.slot[i];
  const scalar_t xi = bd.x[si], yi = bd.y[si], zi = bd.z[si];
  const int32_t* ni = &bd.img[3 * si];
  scalar_t r[3] = {0, 0, 0};  // image offset minus the centre, as the scan computed it
  int16_t last[3] = {0, 0, 0};
  for (int64_t a = 0; a < n; ++a) {
    const Hit& h = hit[a];
    const int64_t j = base + h.slot, q = o + a;
    if (a == 0 || h.s[0] != last[0] || h.s[1] != last[1] || h.s[2] != last[2]) {  // hits come in runs
      scalar_t off[3][3];  // offset of each axis, as the axis tables hold it
      for (int k = 0; k < 3; ++k)
        for (int c = 0; c < 3; ++c) off[k][c] = static_cast<scalar_t>(h.s[k] * g.cell[k][c]);
      r[0] = (off[0][0] + off[1][0] + off[2][0]) - xi;
      r[1] = (off[0][1] + off[1][1] + off[2][1]) - yi;
      r[2] = (off[0][2] + off[1][2] + off[2][2]) - zi;
      std::copy(h.s, h.s + 3, last);
    }
    const scalar_t vx = bd.x[j] + r[0], vy = bd.y[j] + r[1], vz = bd.z[j] + r[2];
    const int32_t* nj = &bd.img[3 * j];
    out.ei[q] = i;
    out.ej[q] = bd.id[j];
    out.sh[3 * q] = h.s[0] + ni[0] - nj[0];
    out.sh[3 * q + 1] = h.s[1] + ni[1] - nj[1];
    out.sh[3 * q + 2] = h.s[2] + ni[2] - nj[2];
    out.dist[q] = std::sqrt(vx * vx + vy * vy + vz * vz);
    if (out.vec) {
      out.vec[3 * q] = vx;
      out.vec[3 * q + 1] = vy;
      out.vec[3 * q + 2] = vz;
    }
  }
}

// Fixed chunks of atoms, each scanned by one task into its own hit list; the output does not
// depend on the chunking (edges are written per atom at offsets from a prefix sum).
struct Chunks {
  int64_t n_atoms, count;
  int64_t begin(int64_t c) const { return n_atoms * c / count; }
};

void check_inputs(const at::Tensor& positions, const at::Tensor& cells, const at::Tensor& pbc,
                  const at::Tensor& ptr, double cutoff) {
  CB_CHECK(kOp, std::isfinite(cutoff) && cutoff > 0, "cutoff must be a finite number > 0 Å, got ", cutoff);
  check_float(kOp, positions, "positions");
  CB_CHECK(kOp, positions.dim() == 2 && positions.size(1) == 3, "positions must have shape [N, 3], got ",
           positions.sizes());
  CB_CHECK(kOp, cells.dim() == 3 && cells.size(1) == 3 && cells.size(2) == 3,
           "cells must have shape [B, 3, 3], got ", cells.sizes());
  CB_CHECK(kOp, cells.scalar_type() == positions.scalar_type(), "cells (", cells.scalar_type(),
           ") must have the dtype of positions (", positions.scalar_type(), ")");
  CB_CHECK(kOp, pbc.scalar_type() == at::kBool && pbc.dim() == 2 && pbc.size(0) == cells.size(0) &&
               pbc.size(1) == 3,
           "pbc must be a bool tensor of shape [", cells.size(0), ", 3], got ", pbc.scalar_type(), " ",
           pbc.sizes());
  check_index(kOp, ptr, "ptr");
  CB_CHECK(kOp, ptr.dim() == 1 && ptr.numel() == cells.size(0) + 1, "ptr must have B + 1 = ",
           cells.size(0) + 1, " entries, got shape ", ptr.sizes());
  for (const auto* t : {&positions, &cells, &pbc, &ptr})
    CB_CHECK(kOp, t->device().is_cpu(), "the CPU kernel got a tensor on ", t->device());
}

void check_ptr(const int64_t* ptr, int64_t nb, int64_t n) {
  CB_CHECK(kOp, ptr[0] == 0 && ptr[nb] == n, "ptr must rise from 0 to N = ", n, ", got ", ptr[0], " ... ",
           ptr[nb]);
  for (int64_t b = 0; b < nb; ++b)
    CB_CHECK(kOp, ptr[b + 1] >= ptr[b], "ptr must be non-decreasing, got ptr[", b, "] = ", ptr[b],
             " > ptr[", b + 1, "] = ", ptr[b + 1]);
}

// An output tensor, written once front to back (see advise_huge_pages).
at::Tensor empty_output(at::IntArrayRef shape, const at::TensorOptions& options) {
  at::Tensor t = at::empty(shape, options);
  advise_huge_pages(t.data_ptr(), t.nbytes());
  return t;
}

// Reserve a chunk's hit list for the expected pair count (number density x sphere volume per
// atom, with a margin), so it rarely reallocates.
template <typename scalar_t>
void reserve_hits(HitBuffer& hits, const std::vector<Grid<scalar_t>>& grids, const int64_t* ptr,
                  int64_t nb, int64_t lo, int64_t hi, double cutoff) {
  const double sphere = 4.0 / 3.0 * M_PI * cutoff * cutoff * cutoff;
  double expect = 0;
  for (int64_t b = std::upper_bound(ptr, ptr + nb + 1, lo) - ptr - 1; b < nb && ptr[b] < hi; ++b) {
    const double atoms = double(std::min(hi, ptr[b + 1]) - std::max(lo, ptr[b]));
    expect += atoms * double(ptr[b + 1] - ptr[b]) / grids[b].volume * sphere;
  }
  hits.reserve(static_cast<size_t>(std::min(1.2 * expect + 64.0, double(1 << 24))));  // grows if needed
}

template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> neighbor_list_impl(
    const at::Tensor& positions, const at::Tensor& cells, const at::Tensor& pbc, const at::Tensor& ptr_t,
    double cutoff, bool return_vectors) {
  const int64_t n = positions.size(0), nb = cells.size(0);
  const scalar_t* pos = positions.data_ptr<scalar_t>();
  const scalar_t* cellp = cells.data_ptr<scalar_t>();
  const bool* pbcp = pbc.data_ptr<bool>();
  const int64_t* ptr = ptr_t.data_ptr<int64_t>();
  check_ptr(ptr, nb, n);

  std::vector<Grid<scalar_t>> grids(nb);
  Binned<scalar_t> bd(n);
  at::parallel_for(0, nb, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      build_grid(grids[b], bd, pos, cellp + 9 * b, pbcp + 3 * b, ptr[b], ptr[b + 1], b, cutoff);
  });

  // pass 1: scan every atom, keeping its hits and its count
  const scalar_t c2 = static_cast<scalar_t>(cutoff) * static_cast<scalar_t>(cutoff);
  const Chunks chunks{n, std::max<int64_t>(1, std::min<int64_t>(n, 4 * at::get_num_threads()))};
  std::vector<HitBuffer> hits(chunks.count);
  std::vector<int64_t> offset(n + 1, 0);
  at::parallel_for(0, chunks.count, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t lo = chunks.begin(c), hi = chunks.begin(c + 1);
      reserve_hits(hits[c], grids, ptr, nb, lo, hi, cutoff);
      int64_t b = std::upper_bound(ptr, ptr + nb + 1, lo) - ptr - 1;
      for (int64_t i = lo; i < hi; ++i) {
        while (ptr[b + 1] <= i) ++b;
        offset[i + 1] = scan_atom(grids[b], bd, i, ptr[b], cutoff, c2, hits[c]);
      }
    }
  });
  for (int64_t i = 0; i < n; ++i) offset[i + 1] += offset[i];
  const int64_t e = offset[n];

  // pass 2: expand the hits into the outputs, each atom at its offset
  const auto lopt = positions.options().dtype(at::kLong);
  at::Tensor ei = empty_output({e}, lopt), ej = empty_output({e}, lopt), sh = empty_output({e, 3}, lopt);
  at::Tensor dist = empty_output({e}, positions.options());
  at::Tensor vec = empty_output({return_vectors ? e : 0, 3}, positions.options());
  const Out<scalar_t> out{ei.data_ptr<int64_t>(), ej.data_ptr<int64_t>(), sh.data_ptr<int64_t>(),
                          dist.data_ptr<scalar_t>(), return_vectors ? vec.data_ptr<scalar_t>() : nullptr};
  at::parallel_for(0, chunks.count, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t lo = chunks.begin(c), hi = chunks.begin(c + 1);
      const Hit* h = hits[c].data();
      int64_t b = std::upper_bound(ptr, ptr + nb + 1, lo) - ptr - 1;
      for (int64_t i = lo; i < hi; ++i) {
        while (ptr[b + 1] <= i) ++b;
        const int64_t k = offset[i + 1] - offset[i];
        expand_atom(grids[b], bd, i, ptr[b], h, k, out, offset[i]);
        h += k;
      }
      hits[c].release();  // free as we go
    }
  });
  return {ei, ej, sh, dist, vec};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> neighbor_list_cpu(
    const at::Tensor& positions, const at::Tensor& cells, const at::Tensor& pbc, const at::Tensor& ptr,
    double cutoff, bool return_vectors) {
  check_inputs(positions, cells, pbc, ptr, cutoff);
  const at::Tensor p = positions.contiguous(), c = cells.contiguous(), f = pbc.contiguous(),
                   r = ptr.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "crysbench_neighbor_list_cpu", [&] {
    return neighbor_list_impl<scalar_t>(p, c, f, r, cutoff, return_vectors);
  });
}

// --------------------------------------------------------------------------------------------
// k-nearest cap
// --------------------------------------------------------------------------------------------
template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> knn_cap_impl(const at::Tensor& edge_i, const at::Tensor& distances,
                                                int64_t num_atoms, int64_t k, double tol) {
  const int64_t e = edge_i.numel();
  const int64_t* ei = edge_i.data_ptr<int64_t>();
  const scalar_t* d = distances.data_ptr<scalar_t>();
  at::Tensor counts = at::zeros({num_atoms}, edge_i.options());
  int64_t* cnt = counts.data_ptr<int64_t>();
  for (int64_t q = 0; q < e; ++q) {
    CB_CHECK("knn_cap", ei[q] >= 0 && ei[q] < num_atoms, "edge_i[", q, "] = ", ei[q],
             " is outside [0, num_atoms = ", num_atoms, ")");
    CB_CHECK("knn_cap", q == 0 || ei[q] >= ei[q - 1], "edge_i must be sorted (non-decreasing) as ",
             "neighbor_list returns it; edge_i[", q - 1, "] = ", ei[q - 1], " > edge_i[", q, "] = ", ei[q]);
    ++cnt[ei[q]];
  }
  std::vector<int64_t> start(num_atoms + 1, 0), kept(num_atoms + 1, 0);
  for (int64_t a = 0; a < num_atoms; ++a) start[a + 1] = start[a] + cnt[a];
  // Per atom: the threshold d_k + tol (computed in the input dtype, as the reference does).
  std::vector<scalar_t> thr(num_atoms, std::numeric_limits<scalar_t>::infinity());
  const scalar_t stol = static_cast<scalar_t>(tol);
  at::parallel_for(0, num_atoms, 64, [&](int64_t a0, int64_t a1) {
    std::vector<scalar_t> buf;
    for (int64_t a = a0; a < a1; ++a) {
      const int64_t lo = start[a], hi = start[a + 1];
      if (hi - lo <= k) {
        kept[a + 1] = hi - lo;
        continue;
      }
      buf.assign(d + lo, d + hi);
      std::nth_element(buf.begin(), buf.begin() + (k - 1), buf.end());
      thr[a] = buf[k - 1] + stol;
      int64_t c = 0;
      for (int64_t q = lo; q < hi; ++q) c += d[q] <= thr[a];
      kept[a + 1] = c;
    }
  });
  for (int64_t a = 0; a < num_atoms; ++a) kept[a + 1] += kept[a];
  at::Tensor keep = at::empty({kept[num_atoms]}, edge_i.options());
  int64_t* kp = keep.data_ptr<int64_t>();
  at::parallel_for(0, num_atoms, 64, [&](int64_t a0, int64_t a1) {
    for (int64_t a = a0; a < a1; ++a) {
      int64_t o = kept[a];
      for (int64_t q = start[a]; q < start[a + 1]; ++q)
        if (d[q] <= thr[a]) kp[o++] = q;
    }
  });
  return {keep, counts};
}

std::tuple<at::Tensor, at::Tensor> knn_cap_cpu(const at::Tensor& edge_i, const at::Tensor& distances,
                                               int64_t num_atoms, int64_t k, double tol) {
  const char* op = "knn_cap";
  check_index(op, edge_i, "edge_i");
  check_dim(op, edge_i, "edge_i", 1);
  check_float(op, distances, "distances");
  CB_CHECK(op, distances.dim() == 1 && distances.numel() == edge_i.numel(), "distances ",
           distances.sizes(), " must match edge_i ", edge_i.sizes());
  CB_CHECK(op, num_atoms >= 0, "num_atoms must be >= 0, got ", num_atoms);
  CB_CHECK(op, k >= 1, "k must be >= 1, got ", k);
  CB_CHECK(op, std::isfinite(tol), "tol must be finite, got ", tol);
  CB_CHECK(op, edge_i.device().is_cpu() && distances.device().is_cpu(), "the CPU kernel got tensors on ",
           edge_i.device(), " and ", distances.device());
  const at::Tensor ei = edge_i.contiguous(), d = distances.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "crysbench_knn_cap_cpu", [&] {
    return knn_cap_impl<scalar_t>(ei, d, num_atoms, k, tol);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(crysbench, CPU, m) {
  m.impl("neighbor_list", &neighbor_list_cpu);
  m.impl("knn_cap", &knn_cap_cpu);
}

}  // namespace crysbench
