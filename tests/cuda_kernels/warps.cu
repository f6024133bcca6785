// Warp-synchronous functions: shuffles of each kind and type, votes, and their misuse.
#include "emu_test.cuh"

// out[t] = shuffle `op` (0 idx, 1 up, 2 down, 3 xor) of in[t] with argument `arg` and `width`.
extern "C" __global__ void shuffle_int(const int* in, int* out, int op, int arg, int width) {
    const unsigned t = threadIdx.x;
    const int v = in[t];
    int r;
    switch (op) {
        case 0: r = __shfl_sync(0xffffffffu, v, arg, width); break;
        case 1: r = __shfl_up_sync(0xffffffffu, v, static_cast<unsigned>(arg), width); break;
        case 2: r = __shfl_down_sync(0xffffffffu, v, static_cast<unsigned>(arg), width); break;
        default: r = __shfl_xor_sync(0xffffffffu, v, arg, width); break;
    }
    out[t] = r;
}
FL_EXPORT(shuffle_int)

// The other shuffled types: each reads lane ^ 1 (xor), lane + 3 (down), lane - 2 (up), lane 5 (idx).
extern "C" __global__ void shuffle_types(const float* f, const double* d, const long long* q, const unsigned* u,
                                         float* fo, double* dout, long long* qo, unsigned* uo) {
    const unsigned t = threadIdx.x;
    fo[t] = __shfl_xor_sync(0xffffffffu, f[t], 1);
    dout[t] = __shfl_down_sync(0xffffffffu, d[t], 3);
    qo[t] = __shfl_up_sync(0xffffffffu, q[t], 2);
    uo[t] = __shfl_sync(0xffffffffu, u[t], 5);
}
FL_EXPORT(shuffle_types)

// The usual warp sum: out[warp] = sum of x over the warp's lanes.
extern "C" __global__ void warp_sum(const float* x, float* out) {
    float v = x[threadIdx.x];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    if (threadIdx.x % 32 == 0) out[threadIdx.x / 32] = v;
}
FL_EXPORT(warp_sum)

// Votes of pred[t]: per thread the ballot, any and all of its warp; then the same among even lanes.
extern "C" __global__ void votes(const int* pred, unsigned* ballot, int* any, int* all, unsigned* even_ballot) {
    const unsigned t = threadIdx.x;
    const int p = pred[t];
    ballot[t] = __ballot_sync(0xffffffffu, p);
    any[t] = __any_sync(0xffffffffu, p);
    all[t] = __all_sync(0xffffffffu, p);
    if (t % 2 == 0) {
        __syncwarp(0x55555555u);
        even_ballot[t] = __ballot_sync(0x55555555u, p);
    } else {
        even_ballot[t] = 0;
    }
}
FL_EXPORT(votes)

// Lane 3 returns early; the others then shuffle with a full mask (undefined in CUDA: an error here).
extern "C" __global__ void shuffle_after_exit(int* out) {
    if (threadIdx.x == 3) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}
FL_EXPORT(shuffle_after_exit)

// Even lanes shuffle, odd lanes wait at a barrier: a deadlock.
extern "C" __global__ void shuffle_vs_barrier(int* out) {
    if (threadIdx.x % 2 == 0) out[threadIdx.x] = __shfl_sync(0xffffffffu, 1, 0);
    else __syncthreads();
}
FL_EXPORT(shuffle_vs_barrier)
