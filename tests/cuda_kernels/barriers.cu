// __syncthreads semantics: results that are only right with a real block barrier, and misuse.
#include "emu_test.cuh"

// Tree reduction in shared memory, 256 threads per block: out[b] = sum of x[b*256 .. +256].
extern "C" __global__ void tree_sum(const float* x, float* out) {
    __shared__ float s[256];
    const unsigned t = threadIdx.x;
    s[t] = x[blockIdx.x * 256 + t];
    __syncthreads();
    for (unsigned stride = 128; stride > 0; stride >>= 1) {
        if (t < stride) s[t] += s[t + stride];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}
FL_EXPORT(tree_sum)

// Every thread writes its slot, then reads its right neighbour's (written by a later thread).
extern "C" __global__ void neighbour(int* out) {
    __shared__ int s[1024];
    const unsigned t = threadIdx.x, n = blockDim.x;
    s[t] = static_cast<int>(t * t) + 1;
    __syncthreads();
    const int right = s[(t + 1) % n];
    __syncthreads();
    s[t] = right * 2;  // overwrite only after everyone has read
    __syncthreads();
    out[t] = s[(t + n - 1) % n];
}
FL_EXPORT(neighbour)

// __syncthreads_count / _and / _or of flags[t].
extern "C" __global__ void vote_block(const int* flags, int* out) {
    const int f = flags[threadIdx.x];
    const int c = __syncthreads_count(f);
    const int a = __syncthreads_and(f);
    const int o = __syncthreads_or(f);
    if (threadIdx.x == 0) {
        out[0] = c;
        out[1] = a;
        out[2] = o;
    }
}
FL_EXPORT(vote_block)

// Threads at or past `limit` return before the barrier the others wait at.
extern "C" __global__ void early_exit(int* out, int limit) {
    if (static_cast<int>(threadIdx.x) >= limit) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}
FL_EXPORT(early_exit)

// The two halves of the block wait at different __syncthreads.
extern "C" __global__ void split_barrier(int* out) {
    if (threadIdx.x < 16) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1;
}
FL_EXPORT(split_barrier)

// Thread `who` of block `block` traps (mode 0) or fails an assert (mode 1).
extern "C" __global__ void faulty(int* out, int block, int who, int mode) {
    if (static_cast<int>(blockIdx.x) == block && static_cast<int>(threadIdx.x) == who) {
        if (mode == 0) __trap();
        assert(out[0] == 12345);
    }
    out[blockIdx.x * blockDim.x + threadIdx.x] = 7;
}
FL_EXPORT(faulty)

// `iters` barriers per thread (benchmark and multi-OS-thread checks); the address of the block's
// shared array tells which OS thread ran it.
extern "C" __global__ void barrier_loop(int iters, float* acc, unsigned long long* where) {
    __shared__ float s[1024];
    const unsigned t = threadIdx.x, n = blockDim.x;
    float v = static_cast<float>(blockIdx.x + t);
    for (int i = 0; i < iters; ++i) {
        s[t] = v;
        __syncthreads();
        v = 0.5f * (v + s[(t + 1) % n]);
        __syncthreads();
    }
    acc[blockIdx.x * n + t] = v;
    if (t == 0 && where) where[blockIdx.x] = reinterpret_cast<unsigned long long>(&s[0]);
}
FL_EXPORT(barrier_loop)

// A kernel without barriers: y = a*x + y.
extern "C" __global__ void axpy(float a, const float* x, float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}
FL_EXPORT(axpy)
