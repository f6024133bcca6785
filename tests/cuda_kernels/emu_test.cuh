// The emulator tests' own copy of common.cuh's prologue: real CUDA under NVRTC, the emulator's
// shim otherwise (found through -I python/ferrolm/cuda, which EmulatedModule always adds).
#pragma once
#ifdef __CUDACC_RTC__
#include <cuda_bf16.h>
#define FL_EXPORT(name)
#define FL_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#else
#include "emu/cuda_emu.h"
#endif
