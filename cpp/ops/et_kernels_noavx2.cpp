// CPUs other than x86-64: the avx2 entry points exist (et_messages.cpp names them) but are never
// called; they are the generic kernels compiled once more.
#define POLYGET_ET_ISA avx2
#include "et_kernels_impl.h"
