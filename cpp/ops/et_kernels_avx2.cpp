// The ET message kernels compiled for AVX2 + FMA (x86-64; CMake adds -mavx2 -mfma to this file
// only); et_messages.cpp calls them only on CPUs that have both.
#define POLYGET_ET_ISA avx2
#include "et_kernels_impl.h"
