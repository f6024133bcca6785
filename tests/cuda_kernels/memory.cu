// Dynamic shared memory, launch geometry and atomics.
#include "emu_test.cuh"

// y = reverse(x) through dynamic shared memory; align[0] = its address modulo 16.
extern "C" __global__ void reverse_dynamic(const float* x, float* y, int* align) {
    FL_DYNAMIC_SHARED(float, buf);
    const unsigned t = threadIdx.x, n = blockDim.x;
    buf[t] = x[blockIdx.x * n + t];
    __syncthreads();
    y[blockIdx.x * n + t] = buf[n - 1 - t];
    if (t == 0) align[blockIdx.x] = static_cast<int>(reinterpret_cast<unsigned long long>(buf) % 16);
}
FL_EXPORT(reverse_dynamic)

// Every thread writes its 12 built-in index values at its global linear position.
extern "C" __global__ void indices(unsigned* out) {
    const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned* o = out + 12ull * (block * blockDim.x * blockDim.y * blockDim.z + thread);
    const dim3 b = blockDim, g = gridDim;
    o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
    o[3] = blockIdx.x;  o[4] = blockIdx.y;  o[5] = blockIdx.z;
    o[6] = b.x; o[7] = b.y; o[8] = b.z;
    o[9] = g.x; o[10] = g.y; o[11] = g.z;
}
FL_EXPORT(indices)

// Atomics from every thread of every block.
extern "C" __global__ void atomics(int* count, float* fsum, int* imax, unsigned long long* usum) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    atomicAdd(count, 1);
    atomicAdd(fsum, 0.5f);
    atomicMax(imax, i);
    atomicAdd(usum, static_cast<unsigned long long>(i));
}
FL_EXPORT(atomics)

// Parameters of every scalar kind, for the argument checks: writes them back.
extern "C" __global__ void scalars(int a, unsigned b, long long c, float d, double e, double* out) {
    out[0] = a; out[1] = b; out[2] = static_cast<double>(c); out[3] = d; out[4] = e;
}
FL_EXPORT(scalars)

// Alignment check target: a float4 pointer parameter.
extern "C" __global__ void copy4(const float4* x, float4* y) { y[threadIdx.x] = x[threadIdx.x]; }
FL_EXPORT(copy4)
