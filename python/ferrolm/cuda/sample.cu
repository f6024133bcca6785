// Greedy decoding on the device: the argmax of the logits, so a plain greedy step copies one
// token id to the host instead of the [vocab] logits. The host sampler still decides whenever
// its error checks apply (a NaN, or every logit -inf): it raises the CPU backend's errors.
#include "common.cuh"

// (v, i) beats (bv, bi): larger value, or the same value at a smaller index (the CPU's argmax
// keeps the first of equal maxima).
FL_DEV bool fl_argmax_better(float v, int i, float bv, int bi) { return v > bv || (v == bv && i < bi); }

// The warp's best (value, index) and NaN flag, in every lane.
FL_DEV void fl_argmax_warp(float& best, int& bi, int& nan) {
    FL_UNROLL
    for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(FL_FULL_MASK, best, off);
        const int oi = __shfl_xor_sync(FL_FULL_MASK, bi, off);
        nan |= __shfl_xor_sync(FL_FULL_MASK, nan, off);
        if (fl_argmax_better(ov, oi, best, bi)) {
            best = ov;
            bi = oi;
        }
    }
}

// x: [n]; out[0] = the first index of the largest value; out[1] = 1 when x holds a NaN or
// nothing above -inf (then the host samples from a copy of x). grid (1), block 1024.
extern "C" __global__ void argmax_f32(const float* __restrict__ x, int n, int* __restrict__ out) {
    __shared__ float s_val[32];
    __shared__ int s_idx[32];
    __shared__ int s_nan[32];
    float best = -FL_INF;
    int bi = 0x7fffffff, nan = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = x[i];
        if (v != v) {
            nan = 1;
        } else if (fl_argmax_better(v, i, best, bi)) {
            best = v;
            bi = i;
        }
    }
    fl_argmax_warp(best, bi, nan);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    if (lane == 0) {
        s_val[warp] = best;
        s_idx[warp] = bi;
        s_nan[warp] = nan;
    }
    __syncthreads();
    if (warp == 0) {
        best = lane < nw ? s_val[lane] : -FL_INF;
        bi = lane < nw ? s_idx[lane] : 0x7fffffff;
        nan = lane < nw ? s_nan[lane] : 0;
        fl_argmax_warp(best, bi, nan);
        if (lane == 0) {
            out[0] = bi < n ? bi : 0;
            out[1] = (nan || best == -FL_INF) ? 1 : 0;
        }
    }
}
FL_EXPORT(argmax_f32);
