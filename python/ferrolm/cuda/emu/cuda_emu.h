// Host C++17 shim that lets ferrolm's CUDA kernels (python/ferrolm/cuda/*.cu) compile with g++ and
// run on the CPU emulator of the CUDA execution model (python/ferrolm/backends/cuda/emulator.py).
// common.cuh includes it when __CUDACC_RTC__ is not defined. Each CUDA thread runs as a fiber;
// see docs/cuda.md, "The emulator", for how blocks, barriers and warps are emulated.
#pragma once

#ifdef NDEBUG
#undef NDEBUG  // device-side assert() stays on, as in CUDA builds without -DNDEBUG
#endif
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <math.h>

// ---- execution-space and storage qualifiers ----------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// __restrict__ is understood by g++ itself.

// Shared memory is one copy per block: a block's threads all run on one OS thread, and the blocks of
// one OS thread run one after another, so per-OS-thread storage is exactly block storage.
#define __shared__ static thread_local

#include "emu_types.h"
#include "emu_bf16.h"
#include "emu_math.h"
#include "emu_thread.h"
#include "emu_registry.h"

// Dynamic shared memory: the buffer of the size given at launch, 16-byte aligned. The macro is
// meant for function scope (inside the kernel); at namespace scope the capture-default lambda is
// a compile error rather than a pointer read once at load time.
#define FL_DYNAMIC_SHARED(type, name) \
    type* const name = [&]() { return reinterpret_cast<type*>(fl_emu_t_dynamic_shared); }()
