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

namespace polyget {
namespace et {
namespace POLYGET_ET_ISA {
namespace {

template <typename T>
inline T sigmoid(T s) { return T(1) / (T(1) + std::exp(-s)); }

template <typename T, bool HasVec>
void forward_range(const Args<T>& A, int64_t e0, int64_t e1, T* __restrict xa, T* __restrict va) {
  const int64_t F = A.F, H = A.H, D = F / H;
  const T* __restrict q = A.q;
  const T* __restrict k = A.k;
  const T* __restrict v = A.v;
  const T* __restrict vec = A.vec;
  const T* __restrict filt = A.filt;
  T att[kMaxHeadDim], tmp[kMaxHeadDim];
  for (int64_t e = e0; e < e1; ++e) {
    const int64_t i = A.i[e], j = A.j[e];
    const T* __restrict qi = q + i * F;
    const T* __restrict kj = k + j * F;
    const T* __restrict vj = v + j * 3 * F;
    const T* __restrict dk = filt + e * 4 * F;
    const T* __restrict dv = dk + F;
    const T ce = A.c[e], c0 = A.cu[3 * e], c1 = A.cu[3 * e + 1], c2 = A.cu[3 * e + 2];
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t d = 0; d < D; ++d) tmp[d] = qi[h * D + d] * kj[h * D + d] * dk[h * D + d];
      T s = 0;
      for (int64_t d = 0; d < D; ++d) s += tmp[d];
      att[h] = s * sigmoid(s) * ce;
    }
    T* __restrict xo = xa + i * F;
    T* __restrict vo = va + i * 3 * F;
    for (int64_t h = 0; h < H; ++h) {
      const T ah = att[h];
      const T* __restrict vb = vj + h * 3 * D;
      const T* __restrict db = dv + h * 3 * D;
      T* __restrict x_ = xo + h * D;
      T* __restrict o0 = vo + h * D;
      T* __restrict o1 = o0 + F;
      T* __restrict o2 = o0 + 2 * F;
      const T* __restrict w0 = HasVec ? vec + j * 3 * F + h * D : nullptr;
      POLYGET_IVDEP
      for (int64_t d = 0; d < D; ++d) {
        x_[d] += vb[d] * db[d] * ah;
        const T m2 = vb[2 * D + d] * db[2 * D + d];
        if (HasVec) {
          const T m1 = vb[D + d] * db[D + d] * ce;
          o0[d] += m2 * c0 + w0[d] * m1;
          o1[d] += m2 * c1 + w0[F + d] * m1;
          o2[d] += m2 * c2 + w0[2 * F + d] * m1;
        } else {
          o0[d] += m2 * c0;
          o1[d] += m2 * c1;
          o2[d] += m2 * c2;
        }
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
  T P0[kMaxHeadDim], P1[kMaxHeadDim], P2[kMaxHeadDim], PC[kMaxHeadDim], tga[kMaxHeadDim],
      tmp[kMaxHeadDim];
  for (int64_t e = e0; e < e1; ++e) {
    const int64_t i = A.i[e], j = A.j[e];
    const T* __restrict qi = q + i * F;
    const T* __restrict kj = k + j * F;
    const T* __restrict vj = v + j * 3 * F;
    const T* __restrict dk = filt + e * 4 * F;
    const T* __restrict dv = dk + F;
    T* __restrict gdk = A.gfilt + e * 4 * F;
    T* __restrict gdv = gdk + F;
    const T* __restrict gx = A.gxa + i * F;
    const T* __restrict gw = A.gva + i * 3 * F;
    T* __restrict gqi = gq + i * F;
    T* __restrict gkj = gk + j * F;
    T* __restrict gvj = gv + j * 3 * F;
    const T* __restrict w = HasVec ? vec + j * 3 * F : nullptr;
    T* __restrict gwj = HasVec ? gvec + j * 3 * F : nullptr;
    const T ce = A.c[e], c0 = A.cu[3 * e], c1 = A.cu[3 * e + 1], c2 = A.cu[3 * e + 2];
    for (int64_t d = 0; d < D; ++d) {
      P0[d] = 0;
      P1[d] = 0;
      P2[d] = 0;
      PC[d] = 0;
    }
    T gce = 0;
    for (int64_t h = 0; h < H; ++h) {
      const int64_t o = h * D;
      const int64_t b = h * 3 * D;
      for (int64_t d = 0; d < D; ++d) tmp[d] = qi[o + d] * kj[o + d] * dk[o + d];
      T s = 0;
      for (int64_t d = 0; d < D; ++d) s += tmp[d];
      const T sg = sigmoid(s);
      const T silu = s * sg;
      const T ah = silu * ce;
      // x messages
      POLYGET_IVDEP
      for (int64_t d = 0; d < D; ++d) {
        const T vx = vj[b + d], dx = dv[b + d], gxo = gx[o + d];
        tga[d] = gxo * (vx * dx);
        gvj[b + d] += gxo * ah * dx;
        gdv[b + d] = gxo * ah * vx;
      }
      // vector messages, the (v2 dv2) cu term
      POLYGET_IVDEP
      for (int64_t d = 0; d < D; ++d) {
        const T v2 = vj[b + 2 * D + d], d2 = dv[b + 2 * D + d];
        const T g0 = gw[o + d], g1 = gw[F + o + d], g2 = gw[2 * F + o + d];
        const T m2 = v2 * d2;
        const T gm2 = g0 * c0 + g1 * c1 + g2 * c2;
        P0[d] += g0 * m2;
        P1[d] += g1 * m2;
        P2[d] += g2 * m2;
        gvj[b + 2 * D + d] += gm2 * d2;
        gdv[b + 2 * D + d] = gm2 * v2;
      }
      // vector messages, the vec_j (v1 dv1 c) term
      if (HasVec) {
        POLYGET_IVDEP
      for (int64_t d = 0; d < D; ++d) {
          const T v1 = vj[b + D + d], d1 = dv[b + D + d];
          const T g0 = gw[o + d], g1 = gw[F + o + d], g2 = gw[2 * F + o + d];
          const T m1 = v1 * d1 * ce;
          const T gm1 = g0 * w[o + d] + g1 * w[F + o + d] + g2 * w[2 * F + o + d];
          gwj[o + d] += g0 * m1;
          gwj[F + o + d] += g1 * m1;
          gwj[2 * F + o + d] += g2 * m1;
          gvj[b + D + d] += gm1 * d1 * ce;
          gdv[b + D + d] = gm1 * v1 * ce;
          PC[d] += gm1 * v1 * d1;
        }
      } else {
        for (int64_t d = 0; d < D; ++d) gdv[b + D + d] = 0;
      }
      T ga = 0;
      for (int64_t d = 0; d < D; ++d) ga += tga[d];
      gce += ga * silu;
      const T gs = ga * ce * sg * (T(1) + s * (T(1) - sg));
      POLYGET_IVDEP
      for (int64_t d = 0; d < D; ++d) {
        gqi[o + d] += gs * kj[o + d] * dk[o + d];
        gkj[o + d] += gs * qi[o + d] * dk[o + d];
        gdk[o + d] = gs * qi[o + d] * kj[o + d];
      }
    }
    T s0 = 0, s1 = 0, s2 = 0, sc = 0;
    for (int64_t d = 0; d < D; ++d) {
      s0 += P0[d];
      s1 += P1[d];
      s2 += P2[d];
      sc += PC[d];
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
