// polyget's custom torch operators (library libpolyget_ops.so, namespace "polyget"):
//   polyget::et_messages(q, k, v, vec, i, j, c, cu, filt, heads, vec_is_zero) -> (x_agg, vec_agg)
//   polyget::et_messages_backward(gxa, gva, q, k, v, vec, i, j, c, cu, filt, heads, vec_is_zero)
//       -> (gq, gk, gv, gvec, gc, gcu, gfilt)
// CPU, float32/float64. The compiled packages of ET models call them (python/polyget/compile.py,
// LeanEnergyForces with fused=True); the package runtime finds them through the dispatcher, so
// this library must be loaded in the process first: polyget._core and the LAMMPS plugin link it,
// python/polyget/ops.py loads it for Python. One shared library, so that a process holding both
// (LAMMPS with the plugin and mliap unified) registers the operators once.
#pragma once

// 3: filt may also be [E/2, 4F] for mirrored edges (packages of version 2 still run)
#define POLYGET_OPS_ABI_VERSION 3
// the oldest operator version whose packages this library runs
#define POLYGET_OPS_ABI_OLDEST 2

extern "C" {
// POLYGET_OPS_ABI_VERSION of the loaded library (the C++ core checks it, and the call keeps the
// library a dependency of whatever links it)
int polyget_ops_abi_version();
// POLYGET_OPS_ABI_OLDEST: packages compiled against versions oldest..abi_version run here
int polyget_ops_abi_oldest();
// "avx2" or "generic": the kernels chosen for this CPU (POLYGET_OPS_ISA=generic forces generic)
const char* polyget_ops_isa();
}
