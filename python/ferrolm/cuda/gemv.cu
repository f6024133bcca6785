// GEMV (decode, m ≤ 4): y[i, j] = (accumulate ? y[i, j] : 0) + alpha·Σ_p x[i, p]·w[j, p] + bias[j].
// Memory-bound on w: one warp per output row j (grid ceil(n / 4), 128 threads), each row of w
// read once for all m rows of x, which stay in registers (m is a template parameter), with
// 16-byte loads (4 f32 / 8 bf16 / 16 int8), several in flight per lane.
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
// INT8 weights × quantized activations (W8A8). Lanes take blocks of 32 inputs (two 16-byte loads
// of w, the same of each xq row); a block lies inside one group (group is a multiple of 32), so
// its 8 __dp4a give an exact integer sum, scaled by xs[i, g]·ws[j, g] into the f32 accumulator.
// Rows whose w or xq start is not 16-byte aligned (k not a multiple of 16) take a plain byte loop
// instead, as do the last k % 32 inputs (one lane's exact integer tail).

// acc[i] += (xs[i, g]·ws[j, g]) · Σ xq[i, p]·wq[j, p] over block b; wv: its 32 weights as words.
template <int M>
FL_DEV void gemv_q8_block(const int (&wv)[8], float wsc, const signed char* __restrict__ xq,
                          const float* __restrict__ xs, int k, int ng, int g, int b, float (&acc)[M]) {
    FL_UNROLL
    for (int i = 0; i < M; ++i) {
        const int4* xp = reinterpret_cast<const int4*>(xq + (long long)i * k + 32 * b);
        const int4 x0 = xp[0], x1 = xp[1];
        const int xv[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
        int s = 0;
        FL_UNROLL
        for (int e = 0; e < 8; ++e) s = __dp4a(xv[e], wv[e], s);
        acc[i] += (float)s * (xs[(long long)i * ng + g] * wsc);
    }
}

// The same for inputs [p0, p0 + len) (len ≤ 32, inside group g) at any alignment, byte by byte.
template <int M>
FL_DEV void gemv_q8_bytes(const signed char* __restrict__ wr, float wsc, const signed char* __restrict__ xq,
                          const float* __restrict__ xs, int k, int ng, int g, int p0, int len, float (&acc)[M]) {
    int s[M];
    FL_UNROLL
    for (int i = 0; i < M; ++i) s[i] = 0;
    FL_UNROLL_N(4)
    for (int e = 0; e < len; ++e) {
        const int w = wr[p0 + e];
        FL_UNROLL
        for (int i = 0; i < M; ++i) s[i] += (int)xq[(long long)i * k + p0 + e] * w;
    }
    FL_UNROLL
    for (int i = 0; i < M; ++i) acc[i] += (float)s[i] * (xs[(long long)i * ng + g] * wsc);
}

template <int M>
FL_DEV void gemv_q8_warp(const signed char* __restrict__ xq, const float* __restrict__ xs,
                         const signed char* __restrict__ wq, const float* __restrict__ ws, int group,
                         const float* bias, float* y, int ldy, int k, int j, float alpha, int accumulate) {
    const int lane = threadIdx.x & 31;
    const int ng = (k + group - 1) / group;
    const signed char* wr = wq + (long long)j * k;
    const float* wsr = ws + (long long)j * ng;
    bool aligned = fl_misalign16(wr) == 0;
    FL_UNROLL
    for (int i = 0; i < M; ++i) aligned = aligned && fl_misalign16(xq + (long long)i * k) == 0;
    float acc[M];
    FL_UNROLL
    for (int i = 0; i < M; ++i) acc[i] = 0.0f;

    const int nb = k >> 5;  // whole blocks of 32
    int b = lane;
    if (aligned) {
        for (; b + 32 < nb; b += 64) {  // two blocks (four 16-byte loads of w) in flight
            const int4* p0 = reinterpret_cast<const int4*>(wr + 32 * b);
            const int4* p1 = reinterpret_cast<const int4*>(wr + 32 * (b + 32));
            const int4 a0 = p0[0], a1 = p0[1], c0 = p1[0], c1 = p1[1];
            const int g0 = (32 * b) / group, g1 = (32 * (b + 32)) / group;
            const float s0 = wsr[g0], s1 = wsr[g1];
            const int w0[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const int w1[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
            gemv_q8_block<M>(w0, s0, xq, xs, k, ng, g0, b, acc);
            gemv_q8_block<M>(w1, s1, xq, xs, k, ng, g1, b + 32, acc);
        }
        if (b < nb) {
            const int4* p0 = reinterpret_cast<const int4*>(wr + 32 * b);
            const int4 a0 = p0[0], a1 = p0[1];
            const int g0 = (32 * b) / group;
            const int w0[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            gemv_q8_block<M>(w0, wsr[g0], xq, xs, k, ng, g0, b, acc);
        }
    } else {
        for (; b < nb; b += 32) gemv_q8_bytes<M>(wr, wsr[(32 * b) / group], xq, xs, k, ng, (32 * b) / group, 32 * b, 32, acc);
    }
    const int p0 = nb << 5;
    if (p0 < k && lane == (nb & 31))  // the next lane in turn takes the tail
        gemv_q8_bytes<M>(wr, wsr[p0 / group], xq, xs, k, ng, p0 / group, p0, k - p0, acc);
    gemv_store<M>(acc, y, ldy, j, alpha, bias, accumulate);
}

// xq: [m, k] int8 (rows k apart), xs: [m, ng], wq: [n, k] int8, ws: [n, ng], ng = ceil(k / group)
extern "C" __global__ void gemv_q8(const signed char* __restrict__ xq, const float* __restrict__ xs,
                                   const signed char* __restrict__ wq, const float* __restrict__ ws, int group,
                                   const float* __restrict__ bias, float* __restrict__ y, int ldy, int m, int k,
                                   int n, float alpha, int accumulate) {
    const int j = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (j >= n) return;
    switch (m) {
        case 1: gemv_q8_warp<1>(xq, xs, wq, ws, group, bias, y, ldy, k, j, alpha, accumulate); break;
        case 2: gemv_q8_warp<2>(xq, xs, wq, ws, group, bias, y, ldy, k, j, alpha, accumulate); break;
        case 3: gemv_q8_warp<3>(xq, xs, wq, ws, group, bias, y, ldy, k, j, alpha, accumulate); break;
        case 4: gemv_q8_warp<4>(xq, xs, wq, ws, group, bias, y, ldy, k, j, alpha, accumulate); break;
        default: break;
    }
}
FL_EXPORT(gemv_q8);
