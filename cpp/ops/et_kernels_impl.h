// The kernels of et_kernels.h; included by one .cpp per instruction set with POLYGET_ET_ISA set.
#include "et_kernels.h"

#ifndef POLYGET_ET_ISA
#error "define POLYGET_ET_ISA before including et_kernels_impl.h"
#endif

// channel loops: outputs never alias inputs (tell the compiler, so it vectorises without
// run-time overlap checks, of which a loop with many arrays needs too many)
#if defined(__GNUC__) && !defined(__clang__)
#define POLYGET_IVDEP _Pragma("GCC ivdep")
#elif defined(__clang__)
#define POLYGET_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#else
#define POLYGET_IVDEP
#endif

// sums over channels: vectorised with partial sums per lane (OpenMP simd reduction; the order
// of the additions differs from a serial loop, by rounding only), instead of one chain of
// dependent scalar additions, which cost more than the rest of an edge's arithmetic
#if defined(_OPENMP) || defined(__clang__) || defined(__GNUC__)
#define POLYGET_SIMD_SUM(...) _Pragma(POLYGET_STR(omp simd reduction(+ : __VA_ARGS__)))
#define POLYGET_STR(x) #x
#else
#define POLYGET_SIMD_SUM(...)
#endif

namespace polyget {
namespace et {
namespace POLYGET_ET_ISA {
namespace {

template <typename T>
inline T sigmoid(T s) { return T(1) / (T(1) + std::exp(-s)); }

// the filter row of edge e (Args::half)
inline int64_t filter_row(int64_t half, int64_t e) { return half > 0 && e >= half ? e - half : e; }

template <typename T, bool HasVec>
void forward_range(const Args<T>& A, int64_t e0, int64_t e1, T* __restrict xa, T* __restrict va) {
  const int64_t F = A.F, H = A.H, D = F / H;
  const T* __restrict q = A.q;
  const T* __restrict k = A.k;
  const T* __restrict v = A.v;
  const T* __restrict vec = A.vec;
  const T* __restrict filt = A.filt;
  T att[kMaxChannels], tmp[kMaxChannels];
  const int64_t lo = A.lo, hi = A.hi;
  for (int64_t e = e0; e < e1; ++e) {
    const int64_t i = A.i[e], j = A.j[e];
    if (i < lo || i >= hi) continue;  // another thread's atom
    const T* __restrict qi = q + i * F;
    const T* __restrict kj = k + j * F;
    const T* __restrict vx = v + j * 3 * F;  // [x | v1 | v2], F channels each
    const T* __restrict dk = filt + filter_row(A.half, e) * 4 * F;
    const T* __restrict dx = dk + F;  // [dk | dv_x | dv_1 | dv_2]
    const T ce = A.c[e], c0 = A.cu[3 * e], c1 = A.cu[3 * e + 1], c2 = A.cu[3 * e + 2];
    POLYGET_IVDEP
    for (int64_t c = 0; c < F; ++c) tmp[c] = qi[c] * kj[c] * dk[c];
    for (int64_t h = 0; h < H; ++h) {
      T s = 0;
      POLYGET_SIMD_SUM(s)
      for (int64_t d = 0; d < D; ++d) s += tmp[h * D + d];
      const T a = s * sigmoid(s) * ce;
      for (int64_t d = 0; d < D; ++d) att[h * D + d] = a;
    }
    T* __restrict xo = xa + i * F;
    T* __restrict o0 = va + i * 3 * F;
    T* __restrict o1 = o0 + F;
    T* __restrict o2 = o0 + 2 * F;
    POLYGET_IVDEP
    for (int64_t c = 0; c < F; ++c) xo[c] += vx[c] * dx[c] * att[c];
    if (HasVec) {
      const T* __restrict w = vec + j * 3 * F;
      POLYGET_IVDEP
      for (int64_t c = 0; c < F; ++c) {
        const T m1 = vx[F + c] * dx[F + c] * ce;
        const T m2 = vx[2 * F + c] * dx[2 * F + c];
        o0[c] += m2 * c0 + w[c] * m1;
        o1[c] += m2 * c1 + w[F + c] * m1;
        o2[c] += m2 * c2 + w[2 * F + c] * m1;
      }
    } else {
      POLYGET_IVDEP
      for (int64_t c = 0; c < F; ++c) {
        const T m2 = vx[2 * F + c] * dx[2 * F + c];
        o0[c] += m2 * c0;
        o1[c] += m2 * c1;
        o2[c] += m2 * c2;
      }
    }
  }
}

template <typename T, bool HasVec>
void backward_range(const Args<T>& A, int64_t e0, int64_t e1, int64_t n, T* __restrict node) {
  const int64_t F = A.F, H = A.H, D = F / H;
  const T* __restrict q = A.q;
  const T* __restrict k = A.k;
  const T* __restrict v = A.v;
  const T* __restrict vec = A.vec;
  const T* __restrict filt = A.filt;
  T* __restrict gq = node;
  T* __restrict gk = node + n * F;
  T* __restrict gv = node + 2 * n * F;
  T* __restrict gvec = node + 5 * n * F;
  T att[kMaxChannels], gsc[kMaxChannels], tga[kMaxChannels], tmp[kMaxChannels];
  T P0[kMaxChannels], P1[kMaxChannels], P2[kMaxChannels], PC[kMaxChannels];
  T silu[kMaxChannels], sgm[kMaxChannels], sv[kMaxChannels];
  const int64_t lo = A.lo, hi = A.hi;
  for (int64_t e = e0; e < e1; ++e) {
    const int64_t i = A.i[e], j = A.j[e];
    if (i < lo || i >= hi) continue;  // another thread's atom
    const T* __restrict qi = q + i * F;
    const T* __restrict kj = k + j * F;
    const T* __restrict vx = v + j * 3 * F;
    const T* __restrict dk = filt + filter_row(A.half, e) * 4 * F;
    const T* __restrict dx = dk + F;
    T* __restrict gdk = A.gfilt + e * 4 * F;
    T* __restrict gdx = gdk + F;
    const T* __restrict gx = A.gxa + i * F;
    const T* __restrict g0 = A.gva + i * 3 * F;
    const T* __restrict g1 = g0 + F;
    const T* __restrict g2 = g0 + 2 * F;
    T* __restrict gqi = gq + i * F;
    // j-side gradients: into the outputs for own atoms, else into this thread's far block
    T* gkj_ = gk + j * F;
    T* gvx_ = gv + j * 3 * F;
    T* gw_ = gvec + j * 3 * F;
    if (A.far && (j < lo || j >= hi)) {
      T* fk = A.far;
      T* fv = fk + n * F;
      T* fw = fk + 4 * n * F;
      if (!A.touched[j]) {
        A.touched[j] = 1;
        std::memset(fk + j * F, 0, sizeof(T) * F);
        std::memset(fv + j * 3 * F, 0, sizeof(T) * 3 * F);
        std::memset(fw + j * 3 * F, 0, sizeof(T) * 3 * F);
      }
      gkj_ = fk + j * F;
      gvx_ = fv + j * 3 * F;
      gw_ = fw + j * 3 * F;
    }
    T* __restrict gkj = gkj_;
    T* __restrict gvx = gvx_;
    const T ce = A.c[e], c0 = A.cu[3 * e], c1 = A.cu[3 * e + 1], c2 = A.cu[3 * e + 2];
    // attention weights per head, spread over their channels
    POLYGET_IVDEP
    for (int64_t c = 0; c < F; ++c) tmp[c] = qi[c] * kj[c] * dk[c];
    for (int64_t h = 0; h < H; ++h) {
      T s = 0;
      POLYGET_SIMD_SUM(s)
      for (int64_t d = 0; d < D; ++d) s += tmp[h * D + d];
      const T sg = sigmoid(s);
      sv[h] = s;
      sgm[h] = sg;
      silu[h] = s * sg;
      const T a = s * sg * ce;
      for (int64_t d = 0; d < D; ++d) att[h * D + d] = a;
    }
    // x messages
    POLYGET_IVDEP
    for (int64_t c = 0; c < F; ++c) {
      const T x = vx[c], f = dx[c], g = gx[c];
      tga[c] = g * (x * f);
      gvx[c] += g * att[c] * f;
      gdx[c] = g * att[c] * x;
    }
    // vector messages, the (v2 dv2) cu term
    POLYGET_IVDEP
    for (int64_t c = 0; c < F; ++c) {
      const T x = vx[2 * F + c], f = dx[2 * F + c];
      const T m2 = x * f;
      const T gm2 = g0[c] * c0 + g1[c] * c1 + g2[c] * c2;
      P0[c] = g0[c] * m2;
      P1[c] = g1[c] * m2;
      P2[c] = g2[c] * m2;
      gvx[2 * F + c] += gm2 * f;
      gdx[2 * F + c] = gm2 * x;
    }
    // vector messages, the vec_j (v1 dv1 c) term
    if (HasVec) {
      const T* __restrict w = vec + j * 3 * F;
      T* __restrict gw = gw_;
      POLYGET_IVDEP
      for (int64_t c = 0; c < F; ++c) {
        const T x = vx[F + c], f = dx[F + c];
        const T m1 = x * f * ce;
        const T gm1 = g0[c] * w[c] + g1[c] * w[F + c] + g2[c] * w[2 * F + c];
        gw[c] += g0[c] * m1;
        gw[F + c] += g1[c] * m1;
        gw[2 * F + c] += g2[c] * m1;
        gvx[F + c] += gm1 * f * ce;
        gdx[F + c] = gm1 * x * ce;
        PC[c] = gm1 * x * f;
      }
    } else {
      POLYGET_IVDEP
      for (int64_t c = 0; c < F; ++c) {
        gdx[F + c] = 0;
        PC[c] = 0;
      }
    }
    // attention: d/ds of silu(s) c, per head
    T gce = 0;
    for (int64_t h = 0; h < H; ++h) {
      T ga = 0;
      POLYGET_SIMD_SUM(ga)
      for (int64_t d = 0; d < D; ++d) ga += tga[h * D + d];
      gce += ga * silu[h];
      const T s = sv[h], sg = sgm[h];
      const T gs = ga * ce * sg * (T(1) + s * (T(1) - sg));
      for (int64_t d = 0; d < D; ++d) gsc[h * D + d] = gs;
    }
    POLYGET_IVDEP
    for (int64_t c = 0; c < F; ++c) {
      gqi[c] += gsc[c] * kj[c] * dk[c];
      gkj[c] += gsc[c] * qi[c] * dk[c];
      gdk[c] = gsc[c] * qi[c] * kj[c];
    }
    T s0 = 0, s1 = 0, s2 = 0, sc = 0;
    POLYGET_SIMD_SUM(s0, s1, s2, sc)
    for (int64_t c = 0; c < F; ++c) {
      s0 += P0[c];
      s1 += P1[c];
      s2 += P2[c];
      sc += PC[c];
    }
    A.gc[e] = gce + sc;
    A.gcu[3 * e] = s0;
    A.gcu[3 * e + 1] = s1;
    A.gcu[3 * e + 2] = s2;
  }
}

template <typename T>
void forward_any(const Args<T>& a, int64_t e0, int64_t e1, T* xa, T* va) {
  if (a.vec)
    forward_range<T, true>(a, e0, e1, xa, va);
  else
    forward_range<T, false>(a, e0, e1, xa, va);
}

template <typename T>
void backward_any(const Args<T>& a, int64_t e0, int64_t e1, int64_t n, T* node) {
  if (a.vec)
    backward_range<T, true>(a, e0, e1, n, node);
  else
    backward_range<T, false>(a, e0, e1, n, node);
}

}  // namespace

void forward(const Args<float>& a, int64_t e0, int64_t e1, float* xa, float* va) {
  forward_any(a, e0, e1, xa, va);
}
void forward(const Args<double>& a, int64_t e0, int64_t e1, double* xa, double* va) {
  forward_any(a, e0, e1, xa, va);
}
void backward(const Args<float>& a, int64_t e0, int64_t e1, int64_t n, float* node) {
  backward_any(a, e0, e1, n, node);
}
void backward(const Args<double>& a, int64_t e0, int64_t e1, int64_t n, double* node) {
  backward_any(a, e0, e1, n, node);
}

}  // namespace POLYGET_ET_ISA
}  // namespace et
}  // namespace polyget
