// GEMV (decode, m ≤ 4): y[i, j] = (accumulate ? y[i, j] : 0) + alpha·Σ_p x[i, p]·w[j, p] + bias[j].
// Memory-bound on w: one warp per output row j (grid ceil(n / 4), 128 threads), each row of w
// read once for all m rows of x, which stay in registers (m is a template parameter), with
// 16-byte loads (4 f32 / 8 bf16 / 16 int8; INT8's x as 16-bit integers), several in flight per
// lane.
#include "common.cuh"

// Epilogue of one warp: sums acc over the lanes; lane i stores row i.
template <int M>
FL_DEV void gemv_store(float (&acc)[M], float* y, int ldy, int j, float alpha, const float* bias,
                       int accumulate) {
    const int lane = threadIdx.x & 31;
    FL_UNROLL
    for (int i = 0; i < M; ++i) {
        const float s = fl_warp_sum(acc[i]);
        if (lane == i) fl_store_out(y + (long long)i * ldy + j, s, alpha, bias, j, accumulate);
    }
}

// ---------------------------------------------------------------------------------------------
// f32 / bf16 weights (S: FlWeightF32 or FlWeightBF16).
//
// Row j of w starts wherever j·k puts it, so the row is cut into a scalar head up to the first
// 16-byte boundary of w, a vector body and a scalar tail. The body needs every x row at a
// 16-byte boundary at the same element; when one is not (odd ldx), the whole row runs scalar.
// Scalar parts are lane-strided, so their loads still coalesce.

#define GEMV_UNROLL 4  // 16-byte loads of w in flight per lane

// acc[i] += x[i, chunk c]·w[chunk c] for one raw 16-byte chunk of w (x from a 16-byte boundary).
template <class S, int M>
FL_DEV void gemv_fp_chunk(const float* __restrict__ xb, int ldx, const typename S::Raw& raw, int c,
                          float (&acc)[M]) {
    const int V = S::VEC;
    float wv[V];
    S::widen(raw, wv);
    FL_UNROLL
    for (int i = 0; i < M; ++i) {
        float xv[V];
        fl_load_f32_vec<V>(xb + (long long)i * ldx + (long long)c * V, xv);
        FL_UNROLL
        for (int e = 0; e < V; ++e) acc[i] += xv[e] * wv[e];
    }
}

// acc[i] += Σ_p x[i, p]·w[p] over one row of w (this warp's share in each lane).
template <class S, int M>
FL_DEV void gemv_fp_row(const float* __restrict__ x, int ldx, const typename S::T* __restrict__ wr, int k,
                        float (&acc)[M]) {
    typedef typename S::T T;
    const int V = S::VEC;
    const int lane = threadIdx.x & 31;
    int head = fl_min_i((int)(((16u - fl_misalign16(wr)) & 15u) / sizeof(T)), k);
    bool vec = true;
    FL_UNROLL
    for (int i = 0; i < M; ++i) vec = vec && fl_misalign16(x + (long long)i * ldx + head) == 0;
    if (!vec) head = k;

    for (int p = lane; p < head; p += 32) {
        const float wv = S::load(wr, p);
        FL_UNROLL
        for (int i = 0; i < M; ++i) acc[i] += x[(long long)i * ldx + p] * wv;
    }

    // body: chunks of V elements from `head`; lane takes chunks lane, lane + 32, ...
    const int nv = (k - head) / V;
    const T* wb = wr + head;
    const float* xb = x + head;
    int c = lane;
    for (; c + 32 * (GEMV_UNROLL - 1) < nv; c += 32 * GEMV_UNROLL) {
        typename S::Raw raw[GEMV_UNROLL];
        FL_UNROLL
        for (int u = 0; u < GEMV_UNROLL; ++u) raw[u] = S::load_raw(wb + (long long)(c + 32 * u) * V);
        FL_UNROLL
        for (int u = 0; u < GEMV_UNROLL; ++u) gemv_fp_chunk<S, M>(xb, ldx, raw[u], c + 32 * u, acc);
    }
    for (; c < nv; c += 32) gemv_fp_chunk<S, M>(xb, ldx, S::load_raw(wb + (long long)c * V), c, acc);

    for (int p = head + nv * V + lane; p < k; p += 32) {
        const float wv = S::load(wr, p);
        FL_UNROLL
        for (int i = 0; i < M; ++i) acc[i] += x[(long long)i * ldx + p] * wv;
    }
}

template <class S, int M>
FL_DEV void gemv_fp_warp(const float* x, int ldx, const typename S::T* w, const float* bias, float* y,
                         int ldy, int k, int j, float alpha, int accumulate) {
    float acc[M];
    FL_UNROLL
    for (int i = 0; i < M; ++i) acc[i] = 0.0f;
    gemv_fp_row<S, M>(x, ldx, w + (long long)j * k, k, acc);
    gemv_store<M>(acc, y, ldy, j, alpha, bias, accumulate);
}

template <class S>
FL_DEV void gemv_fp(const float* x, int ldx, const typename S::T* w, const float* bias, float* y, int ldy,
                    int m, int k, int n, float alpha, int accumulate) {
    const int j = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (j >= n) return;
    switch (m) {
        case 1: gemv_fp_warp<S, 1>(x, ldx, w, bias, y, ldy, k, j, alpha, accumulate); break;
        case 2: gemv_fp_warp<S, 2>(x, ldx, w, bias, y, ldy, k, j, alpha, accumulate); break;
        case 3: gemv_fp_warp<S, 3>(x, ldx, w, bias, y, ldy, k, j, alpha, accumulate); break;
        case 4: gemv_fp_warp<S, 4>(x, ldx, w, bias, y, ldy, k, j, alpha, accumulate); break;
        default: break;
    }
}

// x: [m, k] rows ldx apart, w: [n, k], bias: [n] or null, y: [m, n] rows ldy apart; m ≤ 4
extern "C" __global__ void gemv_f32(const float* __restrict__ x, int ldx, const float* __restrict__ w,
                                    const float* __restrict__ bias, float* __restrict__ y, int ldy, int m,
                                    int k, int n, float alpha, int accumulate) {
    gemv_fp<FlWeightF32>(x, ldx, w, bias, y, ldy, m, k, n, alpha, accumulate);
}
FL_EXPORT(gemv_f32);

extern "C" __global__ void gemv_bf16(const float* __restrict__ x, int ldx, const __nv_bfloat16* __restrict__ w,
                                     const float* __restrict__ bias, float* __restrict__ y, int ldy, int m,
                                     int k, int n, float alpha, int accumulate) {
    gemv_fp<FlWeightBF16>(x, ldx, w, bias, y, ldy, m, k, n, alpha, accumulate);
}
FL_EXPORT(gemv_bf16);

// ---------------------------------------------------------------------------------------------
// INT8 weights × 16-bit activations (W8A16, groups of 32). Lanes take blocks of 32 inputs, one
// group each: 32 bytes of w (two 16-byte loads) against 64 bytes of each x16 row (four), whose
// 16 __dp2a_lo/__dp2a_hi give the exact integer group sum S (|x16·w| ≤ 32639·127, 32 of them
// fit an int); acc += f32(S)·(xs[i, g]·ws[j, g]), each operation rounded on its own as in the
// CPU's reference kernel (__fmul_rn: never contracted into an FMA), so only the order of the
// additions differs from the CPU. x16 rows are kp = 32·ng apart
// and zero from k on, so only w is masked in the last, short group; rows of w off 16-byte
// boundaries (k not a multiple of 16) are loaded word by word.

// The 8 words (32 int8) of block b of a row of w of k inputs, zero from k on; mis: the row's
// fl_misalign16.
FL_DEV void gemv_w8a16_wblock(const signed char* __restrict__ wr, int b, int k, unsigned mis, int (&wv)[8]) {
    const int p0 = 32 * b;
    if (mis == 0 && p0 + 32 <= k) {
        const int4* p = reinterpret_cast<const int4*>(wr + p0);
        const int4 a0 = p[0], a1 = p[1];
        wv[0] = a0.x; wv[1] = a0.y; wv[2] = a0.z; wv[3] = a0.w;
        wv[4] = a1.x; wv[5] = a1.y; wv[6] = a1.z; wv[7] = a1.w;
    } else {
        FL_UNROLL
        for (int e = 0; e < 8; ++e) wv[e] = fl_load_i8x4(wr, p0 + 4 * e, k, (mis & 3u) == 0);
    }
}

// acc[i] += (xs[i, b]·ws[j, b]) · Σ_{p ∈ block b} x16[i, p]·wq[j, p]; wv: the block's weights.
template <int M>
FL_DEV void gemv_w8a16_block(const int (&wv)[8], float wsc, const short* __restrict__ x16,
                             const float* __restrict__ xs, int ng, int b, float (&acc)[M]) {
    FL_UNROLL
    for (int i = 0; i < M; ++i) {
        const int4* xp = reinterpret_cast<const int4*>(x16 + (long long)i * 32 * ng + 32 * b);
        int s = 0;
        FL_UNROLL
        for (int h = 0; h < 4; ++h) {
            const int4 xv = xp[h];  // inputs 8h .. 8h + 7 in pairs, against words 2h and 2h + 1
            s = __dp2a_lo(xv.x, wv[2 * h], s);
            s = __dp2a_hi(xv.y, wv[2 * h], s);
            s = __dp2a_lo(xv.z, wv[2 * h + 1], s);
            s = __dp2a_hi(xv.w, wv[2 * h + 1], s);
        }
        acc[i] += __fmul_rn((float)s, xs[(long long)i * ng + b] * wsc);
    }
}

template <int M>
FL_DEV void gemv_w8a16_warp(const short* __restrict__ x16, const float* __restrict__ xs,
                            const signed char* __restrict__ wq, const unsigned short* __restrict__ ws, const float* bias,
                            float* y, int ldy, int k, int j, float alpha, int accumulate) {
    const int lane = threadIdx.x & 31;
    const int ng = (k + 31) >> 5;
    const signed char* wr = wq + (long long)j * k;
    const unsigned short* wsr = ws + (long long)j * ng;
    const unsigned mis = fl_misalign16(wr);
    float acc[M];
    FL_UNROLL
    for (int i = 0; i < M; ++i) acc[i] = 0.0f;
    int b = lane;
    for (; b + 32 < ng; b += 64) {  // two blocks (four 16-byte loads of w) in flight
        int w0[8], w1[8];
        gemv_w8a16_wblock(wr, b, k, mis, w0);
        gemv_w8a16_wblock(wr, b + 32, k, mis, w1);
        const float s0 = fl_f16_bits(wsr[b]), s1 = fl_f16_bits(wsr[b + 32]);
        gemv_w8a16_block<M>(w0, s0, x16, xs, ng, b, acc);
        gemv_w8a16_block<M>(w1, s1, x16, xs, ng, b + 32, acc);
    }
    if (b < ng) {
        int w0[8];
        gemv_w8a16_wblock(wr, b, k, mis, w0);
        gemv_w8a16_block<M>(w0, fl_f16_bits(wsr[b]), x16, xs, ng, b, acc);
    }
    gemv_store<M>(acc, y, ldy, j, alpha, bias, accumulate);
}

// x16: [m, kp] (quantize_a16's output: rows kp = 32·ng apart, 16-byte aligned), xs: [m, ng],
// wq: [n, k] int8, ws: [n, ng] f16 bits, ng = ceil(k / 32)
extern "C" __global__ void gemv_w8a16(const short* __restrict__ x16, const float* __restrict__ xs,
                                      const signed char* __restrict__ wq, const unsigned short* __restrict__ ws,
                                      const float* __restrict__ bias, float* __restrict__ y, int ldy, int m, int k,
                                      int n, float alpha, int accumulate) {
    const int j = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (j >= n) return;
    switch (m) {
        case 1: gemv_w8a16_warp<1>(x16, xs, wq, ws, bias, y, ldy, k, j, alpha, accumulate); break;
        case 2: gemv_w8a16_warp<2>(x16, xs, wq, ws, bias, y, ldy, k, j, alpha, accumulate); break;
        case 3: gemv_w8a16_warp<3>(x16, xs, wq, ws, bias, y, ldy, k, j, alpha, accumulate); break;
        case 4: gemv_w8a16_warp<4>(x16, xs, wq, ws, bias, y, ldy, k, j, alpha, accumulate); break;
        default: break;
    }
}
FL_EXPORT(gemv_w8a16);
