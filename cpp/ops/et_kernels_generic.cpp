// The ET message kernels for the build's baseline instruction set.
#define POLYGET_ET_ISA generic
#include "et_kernels_impl.h"
