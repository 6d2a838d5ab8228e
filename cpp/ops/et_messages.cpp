// Registration, argument checks and threading of the fused ET message operators (et_messages.h).
#include "et_messages.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "et_kernels.h"

using at::Tensor;

namespace {

// which build of the kernels runs: AVX2 + FMA where the CPU has them, unless
// POLYGET_OPS_ISA=generic (tests, comparisons). An AVX-512 build was measured no faster
// (bench/README.md, "Fused message operators"): the kernels wait on memory, not arithmetic.
bool use_avx2() {
#if defined(__x86_64__) && defined(POLYGET_OPS_HAVE_AVX2) && (defined(__GNUC__) || defined(__clang__))
  static const bool ok = [] {
    const char* env = std::getenv("POLYGET_OPS_ISA");
    if (env && std::string(env) == "generic") return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
#else
  return false;
#endif
}

template <typename T>
void run_forward(const polyget::et::Args<T>& a, int64_t e0, int64_t e1, T* xa, T* va) {
  if (use_avx2())
    polyget::et::avx2::forward(a, e0, e1, xa, va);
  else
    polyget::et::generic::forward(a, e0, e1, xa, va);
}

template <typename T>
void run_backward(const polyget::et::Args<T>& a, int64_t e0, int64_t e1, int64_t n, T* node) {
  if (use_avx2())
    polyget::et::avx2::backward(a, e0, e1, n, node);
  else
    polyget::et::generic::backward(a, e0, e1, n, node);
}

void check_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                  const Tensor& vec, const Tensor& i, const Tensor& j, const Tensor& c,
                  const Tensor& cu, const Tensor& filt, int64_t heads) {
  TORCH_CHECK(q.device().is_cpu(), op, ": CPU tensors only (packages for other devices are "
              "compiled without the fused operators)");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble, op,
              ": float32 or float64 only, got ", q.scalar_type());
  TORCH_CHECK(q.dim() == 2, op, ": q must be [N, F]");
  const int64_t n = q.size(0), f = q.size(1), e = c.size(0);
  TORCH_CHECK(heads > 0 && f % heads == 0 && f <= polyget::et::kMaxChannels, op, ": F = ", f,
              " is not heads (", heads, ") x head size, or more than ",
              polyget::et::kMaxChannels, " channels");
  for (const Tensor* t : {&k, &v, &vec, &c, &cu, &filt}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == q.scalar_type(), op,
                ": all floating inputs must be CPU tensors of q's dtype");
  }
  TORCH_CHECK(k.sizes() == q.sizes(), op, ": k must be [N, F]");
  TORCH_CHECK(v.dim() == 2 && v.size(0) == n && v.size(1) == 3 * f, op, ": v must be [N, 3F]");
  TORCH_CHECK(vec.dim() == 3 && vec.size(0) == n && vec.size(1) == 3 && vec.size(2) == f, op,
              ": vec must be [N, 3, F]");
  TORCH_CHECK(i.scalar_type() == at::kLong && j.scalar_type() == at::kLong && i.dim() == 1 &&
              j.dim() == 1 && i.size(0) == e && j.size(0) == e, op,
              ": i, j must be int64 [E] like c");
  TORCH_CHECK(cu.dim() == 2 && cu.size(0) == e && cu.size(1) == 3, op, ": cu must be [E, 3]");
  TORCH_CHECK(filt.dim() == 2 && (filt.size(0) == e || 2 * filt.size(0) == e) &&
              filt.size(1) == 4 * f, op,
              ": filt must be [E, 4F], or [E/2, 4F] for mirrored edges (edge E/2 + r the "
              "reverse of edge r, sharing its filter row)");
}

// Private accumulation blocks of the threads other than the first, kept per calling thread and
// reused between calls: a fresh multi-megabyte block per call costs a page fault per 4 kB page
// (glibc hands such blocks back to the system), which was more than the kernels themselves.
// The blocks never leave the operator (outputs are fresh tensors).
template <typename T>
T* scratch(int64_t numel) {
  thread_local std::vector<T> buf;
  if (static_cast<int64_t>(buf.size()) < numel) buf.resize(static_cast<size_t>(numel));
  return buf.data();
}

// the inputs both operators read (contiguous tensors; vec undefined when vec_is_zero)
template <typename T>
polyget::et::Args<T> make_args(const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& vec, const Tensor& i, const Tensor& j,
                               const Tensor& c, const Tensor& cu, const Tensor& filt,
                               int64_t heads, bool vec_is_zero) {
  polyget::et::Args<T> a;
  a.F = q.size(1);
  a.H = heads;
  a.q = q.data_ptr<T>();
  a.k = k.data_ptr<T>();
  a.v = v.data_ptr<T>();
  a.vec = vec_is_zero ? nullptr : vec.data_ptr<T>();
  a.i = i.data_ptr<int64_t>();
  a.j = j.data_ptr<int64_t>();
  a.c = c.data_ptr<T>();
  a.cu = cu.data_ptr<T>();
  a.filt = filt.data_ptr<T>();
  a.half = filt.size(0) == c.size(0) ? 0 : filt.size(0);  // mirrored edges (check_inputs)
  return a;
}

// threads for e edges: at::get_num_threads(), fewer for small edge counts
int64_t threads_for(int64_t e) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), e / 64));
}

// How the threads share the work. "atoms" (default): each thread owns a range of atoms, takes
// the edges whose centre i is in it and writes only its own rows of the outputs, so no thread
// writes a cache line another reads, except the backward pass's gradients of neighbours j
// owned by another thread (few when atoms are numbered along the chain or sorted in space, as
// LAMMPS does), which go to small private blocks. "edges" (POLYGET_OPS_SPLIT=edges): contiguous
// blocks of edges, every thread adding into a private copy of all outputs, summed afterwards;
// on a machine whose two cores are far apart (bench/README.md, "The machine's two modes") the
// copies and sums cost more than the work. Read at every call (A/B timings in one process).
bool split_by_atoms() {
  const char* env = std::getenv("POLYGET_OPS_SPLIT");
  return !(env && std::string(env) == "edges");
}

// atom ranges [b[t], b[t + 1]) of nt threads with about equal numbers of edges (by centre i)
std::vector<int64_t> atom_bounds(const int64_t* i, int64_t e, int64_t n, int64_t nt) {
  std::vector<int64_t> count(static_cast<size_t>(n) + 1, 0);
  for (int64_t x = 0; x < e; ++x) ++count[i[x] + 1];
  std::vector<int64_t> b(static_cast<size_t>(nt) + 1, n);
  b[0] = 0;
  int64_t seen = 0, t = 1;
  for (int64_t a = 0; a < n && t < nt; ++a) {
    seen += count[a + 1];
    while (t < nt && seen * nt >= t * e) b[t++] = a + 1;
  }
  return b;
}

std::tuple<Tensor, Tensor> et_messages_cpu(const Tensor& q_, const Tensor& k_, const Tensor& v_,
                                           const Tensor& vec_, const Tensor& i_,
                                           const Tensor& j_, const Tensor& c_, const Tensor& cu_,
                                           const Tensor& filt_, int64_t heads, bool vec_is_zero) {
  check_inputs("polyget::et_messages", q_, k_, v_, vec_, i_, j_, c_, cu_, filt_, heads);
  const Tensor q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const Tensor i = i_.contiguous(), j = j_.contiguous(), c = c_.contiguous();
  const Tensor cu = cu_.contiguous(), filt = filt_.contiguous();
  const Tensor vec = vec_is_zero ? Tensor() : vec_.contiguous();
  const int64_t n = q.size(0), f = q.size(1), e = c.size(0);
  Tensor xa = at::empty({n, f}, q.options());
  Tensor va = at::empty({n, 3, f}, q.options());
  const int64_t nt = threads_for(e);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "et_messages", [&] {
    auto a = make_args<scalar_t>(q, k, v, vec, i, j, c, cu, filt, heads, vec_is_zero);
    scalar_t* xo = xa.data_ptr<scalar_t>();
    scalar_t* vo = va.data_ptr<scalar_t>();
    if (nt == 1) {
      std::memset(xo, 0, sizeof(scalar_t) * n * f);
      std::memset(vo, 0, sizeof(scalar_t) * 3 * n * f);
      run_forward(a, 0, e, xo, vo);
      return;
    }
    if (split_by_atoms()) {
      const std::vector<int64_t> bounds = atom_bounds(a.i, e, n, nt);
      at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          auto b = a;
          b.lo = bounds[t];
          b.hi = bounds[t + 1];
          std::memset(xo + b.lo * f, 0, sizeof(scalar_t) * (b.hi - b.lo) * f);
          std::memset(vo + 3 * b.lo * f, 0, sizeof(scalar_t) * 3 * (b.hi - b.lo) * f);
          run_forward(b, 0, e, xo, vo);
        }
      });
      return;
    }
    // thread 0 adds into the outputs, the others into private blocks summed afterwards
    scalar_t* pp = scratch<scalar_t>((nt - 1) * 4 * n * f);
    // blocks that were written (a parallel_for nested in another parallel region runs inline)
    std::vector<char> used(nt, 0);
    at::parallel_for(0, e, (e + nt - 1) / nt, [&](int64_t b, int64_t end) {
      const int64_t t = at::get_thread_num();
      TORCH_CHECK(t < nt, "polyget::et_messages: thread ", t, " of ", nt);
      used[t] = 1;
      scalar_t* x_ = t == 0 ? xo : pp + (t - 1) * 4 * n * f;
      scalar_t* v_ = t == 0 ? vo : x_ + n * f;
      std::memset(x_, 0, sizeof(scalar_t) * n * f);
      std::memset(v_, 0, sizeof(scalar_t) * 3 * n * f);
      run_forward(a, b, end, x_, v_);
    });
    if (!used[0]) {  // ran inline on another thread id: the outputs are still unwritten
      std::memset(xo, 0, sizeof(scalar_t) * n * f);
      std::memset(vo, 0, sizeof(scalar_t) * 3 * n * f);
    }
    // sum the blocks, rows split among the threads
    at::parallel_for(0, n, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t t = 1; t < nt; ++t) {
        if (!used[t]) continue;
        const scalar_t* bx = pp + (t - 1) * 4 * n * f;
        const scalar_t* bv = bx + n * f;
        for (int64_t x = r0 * f; x < r1 * f; ++x) xo[x] += bx[x];
        for (int64_t x = 3 * r0 * f; x < 3 * r1 * f; ++x) vo[x] += bv[x];
      }
    });
  });
  return {xa, va};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> et_messages_backward_cpu(
    const Tensor& gxa_, const Tensor& gva_, const Tensor& q_, const Tensor& k_, const Tensor& v_,
    const Tensor& vec_, const Tensor& i_, const Tensor& j_, const Tensor& c_, const Tensor& cu_,
    const Tensor& filt_, int64_t heads, bool vec_is_zero) {
  check_inputs("polyget::et_messages_backward", q_, k_, v_, vec_, i_, j_, c_, cu_, filt_, heads);
  TORCH_CHECK(gxa_.sizes() == q_.sizes() && gva_.sizes() == vec_.sizes() &&
              gxa_.scalar_type() == q_.scalar_type() && gva_.scalar_type() == q_.scalar_type() &&
              gxa_.device().is_cpu() && gva_.device().is_cpu(),
              "polyget::et_messages_backward: gxa must be like q, gva like vec");
  const Tensor gxa = gxa_.contiguous(), gva = gva_.contiguous();
  const Tensor q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const Tensor i = i_.contiguous(), j = j_.contiguous(), c = c_.contiguous();
  const Tensor cu = cu_.contiguous(), filt = filt_.contiguous();
  const Tensor vec = vec_is_zero ? Tensor() : vec_.contiguous();
  const int64_t n = q.size(0), f = q.size(1), e = c.size(0);
  const int64_t nt = threads_for(e);
  const int64_t blk = polyget::et::backward_block(n, f);
  Tensor tot = at::empty({blk}, q.options());
  Tensor gc = at::empty({e}, q.options());
  Tensor gcu = at::empty({e, 3}, q.options());
  Tensor gfilt = at::empty({e, 4 * f}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "et_messages_backward", [&] {
    auto a = make_args<scalar_t>(q, k, v, vec, i, j, c, cu, filt, heads, vec_is_zero);
    a.gxa = gxa.data_ptr<scalar_t>();
    a.gva = gva.data_ptr<scalar_t>();
    a.gc = gc.data_ptr<scalar_t>();
    a.gcu = gcu.data_ptr<scalar_t>();
    a.gfilt = gfilt.data_ptr<scalar_t>();
    scalar_t* out = tot.data_ptr<scalar_t>();
    if (nt == 1) {
      std::memset(out, 0, sizeof(scalar_t) * blk);
      run_backward(a, 0, e, n, out);
      return;
    }
    if (split_by_atoms()) {
      const std::vector<int64_t> bounds = atom_bounds(a.i, e, n, nt);
      const int64_t fb = polyget::et::far_block(n, f);
      scalar_t* far = scratch<scalar_t>(nt * fb);
      unsigned char* touched = scratch<unsigned char>(nt * n);
      // rows of the node block [gq | gk | gv | gvec]: (offset, channels per atom)
      const int64_t part_off[4] = {0, n * f, 2 * n * f, 5 * n * f};
      const int64_t part_ch[4] = {f, f, 3 * f, 3 * f};
      at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          auto b = a;
          b.lo = bounds[t];
          b.hi = bounds[t + 1];
          b.far = far + t * fb;
          b.touched = touched + t * n;
          std::memset(b.touched, 0, static_cast<size_t>(n));
          for (int p = 0; p < 4; ++p)
            std::memset(out + part_off[p] + b.lo * part_ch[p], 0,
                        sizeof(scalar_t) * (b.hi - b.lo) * part_ch[p]);
          run_backward(b, 0, e, n, out);
        }
      });
      // each owner adds the other threads' gradients of its atoms (j-side parts: gk, gv, gvec)
      at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          for (int64_t u = 0; u < nt; ++u) {
            if (u == t) continue;
            const scalar_t* fu = far + u * fb;
            const unsigned char* tu = touched + u * n;
            for (int64_t r = bounds[t]; r < bounds[t + 1]; ++r) {
              if (!tu[r]) continue;
              for (int p = 1; p < 4; ++p) {
                const int64_t ch = part_ch[p];
                scalar_t* dst = out + part_off[p] + r * ch;
                const scalar_t* src = fu + (part_off[p] - n * f) + r * ch;
                for (int64_t x = 0; x < ch; ++x) dst[x] += src[x];
              }
            }
          }
        }
      });
    } else {
    // thread 0 adds into the output block, the others into private blocks summed afterwards
    scalar_t* pp = scratch<scalar_t>((nt - 1) * blk);
    std::vector<char> used(nt, 0);
    at::parallel_for(0, e, (e + nt - 1) / nt, [&](int64_t b, int64_t end) {
      const int64_t t = at::get_thread_num();
      TORCH_CHECK(t < nt, "polyget::et_messages_backward: thread ", t, " of ", nt);
      used[t] = 1;
      scalar_t* base = t == 0 ? out : pp + (t - 1) * blk;
      std::memset(base, 0, sizeof(scalar_t) * blk);
      run_backward(a, b, end, n, base);
    });
    if (!used[0]) std::memset(out, 0, sizeof(scalar_t) * blk);
    at::parallel_for(0, blk, 4096, [&](int64_t x0, int64_t x1) {
      for (int64_t t = 1; t < nt; ++t) {
        if (!used[t]) continue;
        const scalar_t* bt = pp + (t - 1) * blk;
        for (int64_t x = x0; x < x1; ++x) out[x] += bt[x];
      }
    });
    }
  });
  Tensor gq = tot.narrow(0, 0, n * f).view({n, f});
  Tensor gk = tot.narrow(0, n * f, n * f).view({n, f});
  Tensor gv = tot.narrow(0, 2 * n * f, 3 * n * f).view({n, 3 * f});
  Tensor gvec = tot.narrow(0, 5 * n * f, 3 * n * f).view({n, 3, f});
  return {gq, gk, gv, gvec, gc, gcu, gfilt};
}

}  // namespace

extern "C" int polyget_ops_abi_version() { return POLYGET_OPS_ABI_VERSION; }
extern "C" int polyget_ops_abi_oldest() { return POLYGET_OPS_ABI_OLDEST; }
extern "C" const char* polyget_ops_isa() { return use_avx2() ? "avx2" : "generic"; }

TORCH_LIBRARY(polyget, m) {
  m.def("et_messages(Tensor q, Tensor k, Tensor v, Tensor vec, Tensor i, Tensor j, Tensor c, "
        "Tensor cu, Tensor filt, int heads, bool vec_is_zero) -> (Tensor, Tensor)");
  m.def("et_messages_backward(Tensor gxa, Tensor gva, Tensor q, Tensor k, Tensor v, "
        "Tensor vec, Tensor i, Tensor j, Tensor c, Tensor cu, Tensor filt, int heads, "
        "bool vec_is_zero) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(polyget, CPU, m) {
  m.impl("et_messages", &et_messages_cpu);
  m.impl("et_messages_backward", &et_messages_backward_cpu);
}
