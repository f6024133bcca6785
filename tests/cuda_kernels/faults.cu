// Memory faults inside kernels: a runaway recursion and a wild pointer.
#include "emu_test.cuh"

__device__ __noinline__ int deep(int depth, volatile int* sink) {
    volatile int frame[256];  // 1 KiB per level
    frame[depth % 256] = depth;
    if (depth == 0) return frame[0];
    const int r = deep(depth - 1, sink) + frame[depth % 256];
    *sink = r;
    return r;
}

// Recurses `depth` levels of 1 KiB: far more than a fiber's stack for large depths.
extern "C" __global__ void recurse(int depth, int* out) { out[threadIdx.x] = deep(depth, out + threadIdx.x); }
FL_EXPORT(recurse)

// Thread `who` writes through the pointer value `address`.
extern "C" __global__ void wild_write(unsigned long long address, int who, int* out) {
    if (static_cast<int>(threadIdx.x) == who) *reinterpret_cast<volatile int*>(address) = 1;
    out[threadIdx.x] = 2;
}
FL_EXPORT(wild_write)
