// Fused CPU kernels of the ET attention messages (python/polyget/nn/attention.py, messages()):
// forward (summed messages per centre atom) and backward (gradients of every input), for a
// range of edges, one edge at a time with everything per edge kept in registers and L1.
//
// The mathematics is that of EquivariantAttention.messages with the SiLU attention activation:
//   s_h   = sum_d q_i[h,d] k_j[h,d] dk_e[h,d]            a_h = silu(s_h) c_e
//   x_agg[i]   += (v_j^x dv_e^x) a_h
//   vec_agg[i] += (v_j^2 dv_e^2) cu_e + vec_j (v_j^1 dv_e^1 c_e)       (vec_j = 0 in layer 0)
// and the backward pass written out by hand (tests/test_ops.py checks both against autograd in
// float64). Layout: channel c = h * D + d (D = F / H); v [N, 3F] = [v^x | v^1 | v^2] and filt
// [E, 4F] = [dk | dv^x | dv^1 | dv^2], F channels each (or [E/2, 4F] for mirrored edges, Args::half) (component-major: the model's v_proj and
// dv_proj rows are per head [x | v1 | v2]; compile.LeanEnergyForces reorders them), so that
// every loop runs over all F channels at once.
//
// This header is compiled once per instruction set (et_kernels_generic.cpp, et_kernels_avx2.cpp)
// inside the namespace POLYGET_ET_ISA; et_messages.cpp picks one at run time. Loops over channels
// carry no scalar reductions (partial sums go to small per-channel arrays), so they vectorise;
// the sums over channels are OpenMP simd reductions (partial sums per vector lane).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace polyget {
namespace et {

// what the kernels read and write; the node outputs are passed separately (they may be
// thread-private blocks that the caller sums)
template <typename T>
struct Args {
  int64_t F = 0, H = 0;
  const T *q = nullptr, *k = nullptr, *v = nullptr, *vec = nullptr;  // vec null: layer 0
  const int64_t *i = nullptr, *j = nullptr;
  const T *c = nullptr, *cu = nullptr, *filt = nullptr;
  // mirrored edges (half > 0): edges half..2*half-1 are the reverses of edges 0..half-1 (or
  // carry c = 0) and share their filter rows, filt being [half, 4F]: edge e reads row
  // e - half for e >= half. gfilt stays one row per edge (the caller sums the two halves).
  int64_t half = 0;
  const T *gxa = nullptr, *gva = nullptr;    // backward: gradients of x_agg, vec_agg
  T *gc = nullptr, *gcu = nullptr, *gfilt = nullptr;  // backward: per-edge outputs
  // atoms owned by the calling thread: edges whose centre i is outside [lo, hi) are skipped
  // (each thread takes the edges of its own atoms and writes its own rows of the outputs)
  int64_t lo = 0, hi = INT64_MAX;
  // backward with owned atoms: the j-side gradients (gk, gv, gvec) of atoms outside [lo, hi)
  // go to the thread's block far ([gk N*F | gv N*3F | gvec N*3F], far_block), whose rows are
  // zeroed when first written and marked in touched [N]; null: everything goes to node
  T* far = nullptr;
  unsigned char* touched = nullptr;
};

// the backward pass's block of j-side gradients of atoms another thread owns (Args::far)
inline int64_t far_block(int64_t n, int64_t f) { return 7 * n * f; }

constexpr int64_t kMaxChannels = 1024;  // F (hidden channels) at most

// node block of the backward pass: [gq N*F | gk N*F | gv N*3F | gvec N*3F]
inline int64_t backward_block(int64_t n, int64_t f) { return 8 * n * f; }

#define POLYGET_ET_DECLARE(ISA)                                                                \
  namespace ISA {                                                                              \
  void forward(const Args<float>& a, int64_t e0, int64_t e1, float* xa, float* va);            \
  void forward(const Args<double>& a, int64_t e0, int64_t e1, double* xa, double* va);         \
  void backward(const Args<float>& a, int64_t e0, int64_t e1, int64_t n, float* node);         \
  void backward(const Args<double>& a, int64_t e0, int64_t e1, int64_t n, double* node);       \
  }
POLYGET_ET_DECLARE(generic)
POLYGET_ET_DECLARE(avx2)
#undef POLYGET_ET_DECLARE

}  // namespace et
}  // namespace polyget
