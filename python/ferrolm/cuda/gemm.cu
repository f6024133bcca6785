// GEMM (prefill, any m): y[i, j] = (accumulate ? y[i, j] : 0) + alpha·Σ_p x[i, p]·w[j, p] + bias[j].
// A 64×64 tile of y per block of 256 threads (grid (ceil(n / 64), ceil(m / 64))), k in slabs of
// 32: the slab's 64×32 tiles of x and w go through shared memory (transposed, so a thread reads
// its 4 rows and 4 columns as one 16-byte load each) and each thread accumulates a 4×4
// micro-tile. The next slab is loaded into registers while the current one is multiplied.
#include "common.cuh"

#define GEMM_TILE 64
#define GEMM_BK 32
#define GEMM_LDS 68  // padded row of a transposed tile: 16-byte aligned, conflict-free stores

// The 4 consecutive inputs of a 64×32 tile that thread tid loads in step s (0, 1): row r,
// inputs 4·kq .. 4·kq + 3. Two lanes read 8 consecutive inputs of one row (a 32-byte sector
// of x), and a warp's transposed stores ([4·kq + q][r], row length 68) hit 32 different banks.
FL_DEV void gemm_tile_coord(int tid, int s, int& r, int& kq) {
    const int lane = tid & 31, warp = tid >> 5;
    r = (lane >> 1) + 16 * (warp & 3);
    kq = (lane & 1) + 2 * (warp >> 2) + 4 * s;
}

// v = row[p .. p + 4) widened to f32, zero from k on; vec: S's 4-element vector load is legal
// at every p that is a multiple of 4 (row start aligned to it).
template <class S>
FL_DEV void gemm_load4(const typename S::T* __restrict__ row, int p, int k, bool vec, float (&v)[4]) {
    if (vec && p + 4 <= k) {
        S::load4(row + p, v);
    } else {
        FL_UNROLL
        for (int e = 0; e < 4; ++e) v[e] = p + e < k ? S::load(row, p + e) : 0.0f;
    }
}

// acc[r][c] += Σ_kk a[r]·b[c] for the thread's 4×4 micro-tile, from transposed tiles at + 4·ty,
// + 4·tx. The slab's 32 products are summed apart and then added to acc: a two-level sum whose
// rounding error grows with 32 + k/32 terms instead of k (it keeps the prefill logits as close to
// the CPU's blocked sums as the GEMV's lane-split sums are, under large activations).
FL_DEV void gemm_fp_slab(const float (*xt)[GEMM_LDS], const float (*wt)[GEMM_LDS], int ty, int tx,
                         float (&acc)[4][4]) {
    float part[4][4];
    FL_UNROLL
    for (int r = 0; r < 4; ++r) {
        FL_UNROLL
        for (int c = 0; c < 4; ++c) part[r][c] = 0.0f;
    }
    FL_UNROLL
    for (int kk = 0; kk < GEMM_BK; ++kk) {
        float a[4], b[4];
        fl_load_f32_vec<4>(&xt[kk][4 * ty], a);
        fl_load_f32_vec<4>(&wt[kk][4 * tx], b);
        FL_UNROLL
        for (int r = 0; r < 4; ++r) {
            FL_UNROLL
            for (int c = 0; c < 4; ++c) part[r][c] += a[r] * b[c];
        }
    }
    FL_UNROLL
    for (int r = 0; r < 4; ++r) {
        FL_UNROLL
        for (int c = 0; c < 4; ++c) acc[r][c] += part[r][c];
    }
}

template <int R, int C>
FL_DEV void gemm_store(float (&acc)[R][C], float* y, int ldy, int m, int n, int row0, int col0, float alpha,
                       const float* bias, int accumulate) {
    FL_UNROLL
    for (int r = 0; r < R; ++r) {
        const int row = row0 + r;
        if (row >= m) break;
        FL_UNROLL
        for (int c = 0; c < C; ++c) {
            const int col = col0 + c;
            if (col < n) fl_store_out(y + (long long)row * ldy + col, acc[r][c], alpha, bias, col, accumulate);
        }
    }
}

// This thread's 2×4 values of the slab at k0 of the x and w tiles (zero outside the matrices).
template <class S>
FL_DEV void gemm_fp_fetch(const float* __restrict__ x, int ldx, bool vx, const typename S::T* __restrict__ w,
                          bool vw, int m, int k, int n, int m0, int n0, int k0, float (&rx)[2][4],
                          float (&rw)[2][4]) {
    FL_UNROLL
    for (int s = 0; s < 2; ++s) {
        int r, kq;
        gemm_tile_coord(threadIdx.x, s, r, kq);
        const int p = k0 + 4 * kq;
        if (m0 + r < m) {
            gemm_load4<FlWeightF32>(x + (long long)(m0 + r) * ldx, p, k, vx, rx[s]);
        } else {
            FL_UNROLL
            for (int e = 0; e < 4; ++e) rx[s][e] = 0.0f;
        }
        if (n0 + r < n) {
            gemm_load4<S>(w + (long long)(n0 + r) * k, p, k, vw, rw[s]);
        } else {
            FL_UNROLL
            for (int e = 0; e < 4; ++e) rw[s][e] = 0.0f;
        }
    }
}

// f32 / bf16 weights (S: FlWeightF32 or FlWeightBF16), widened to f32 in shared memory.
template <class S>
FL_DEV void gemm_fp(const float* __restrict__ x, int ldx, const typename S::T* __restrict__ w,
                    const float* bias, float* y, int ldy, int m, int k, int n, float alpha, int accumulate) {
    __shared__ __align__(16) float xt[GEMM_BK][GEMM_LDS];  // x tile: [kk][row]
    __shared__ __align__(16) float wt[GEMM_BK][GEMM_LDS];  // w tile: [kk][col]
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int m0 = blockIdx.y * GEMM_TILE, n0 = blockIdx.x * GEMM_TILE;
    // vector loads of 4 inputs: every row start aligned to them
    const bool vx = fl_misalign16(x) == 0 && (ldx & 3) == 0;
    const bool vw = fl_misalign16(w) % (4 * sizeof(typename S::T)) == 0 && (k & 3) == 0;
    float acc[4][4];
    FL_UNROLL
    for (int r = 0; r < 4; ++r) {
        FL_UNROLL
        for (int c = 0; c < 4; ++c) acc[r][c] = 0.0f;
    }
    float rx[2][4], rw[2][4];  // the slab in flight
    gemm_fp_fetch<S>(x, ldx, vx, w, vw, m, k, n, m0, n0, 0, rx, rw);
    for (int k0 = 0; k0 < k; k0 += GEMM_BK) {
        FL_UNROLL
        for (int s = 0; s < 2; ++s) {
            int r, kq;
            gemm_tile_coord(tid, s, r, kq);
            FL_UNROLL
            for (int e = 0; e < 4; ++e) {
                xt[4 * kq + e][r] = rx[s][e];
                wt[4 * kq + e][r] = rw[s][e];
            }
        }
        __syncthreads();
        if (k0 + GEMM_BK < k) gemm_fp_fetch<S>(x, ldx, vx, w, vw, m, k, n, m0, n0, k0 + GEMM_BK, rx, rw);
        gemm_fp_slab(xt, wt, ty, tx, acc);
        __syncthreads();
    }
    gemm_store<4, 4>(acc, y, ldy, m, n, m0 + 4 * ty, n0 + 4 * tx, alpha, bias, accumulate);
}

// x: [m, k] rows ldx apart, w: [n, k], bias: [n] or null, y: [m, n] rows ldy apart
extern "C" __global__ void gemm_f32(const float* __restrict__ x, int ldx, const float* __restrict__ w,
                                    const float* __restrict__ bias, float* __restrict__ y, int ldy, int m,
                                    int k, int n, float alpha, int accumulate) {
    gemm_fp<FlWeightF32>(x, ldx, w, bias, y, ldy, m, k, n, alpha, accumulate);
}
FL_EXPORT(gemm_f32);

extern "C" __global__ void gemm_bf16(const float* __restrict__ x, int ldx, const __nv_bfloat16* __restrict__ w,
                                     const float* __restrict__ bias, float* __restrict__ y, int ldy, int m,
                                     int k, int n, float alpha, int accumulate) {
    gemm_fp<FlWeightBF16>(x, ldx, w, bias, y, ldy, m, k, n, alpha, accumulate);
}
FL_EXPORT(gemm_bf16);

// ---------------------------------------------------------------------------------------------
// INT8 weights × 16-bit activations (W8A16, groups of 32): a slab of 32 inputs is one group. The
// tiles stay integer — x16 as pairs of inputs ([16 words][row]), w as quads ([8 words][col]) —
// and each thread keeps exact integer sums of its 4×4 micro-tile over the slab (16 __dp2a_lo /
// __dp2a_hi per output), added at the end of the slab as f32(S)·(xs[i, g]·ws[j, g]), each
// operation rounded on its own as in the CPU's reference kernel (__fmul_rn: never contracted
// into an FMA). x16 rows are zero from k on (quantize_a16), so only w is masked in the last,
// short slab.

// The word of a 64×8-word w tile that thread tid loads in step s (0, 1): row r, word kw. Eight
// lanes read one row's 32 bytes; a warp's stores ([kw][r], row length 68) hit 32 banks.
FL_DEV void gemm_w8_coord(int tid, int s, int& r, int& kw) {
    const int lane = tid & 31, warp = tid >> 5;
    r = (lane >> 3) + 4 * warp + 32 * s;
    kw = lane & 7;
}

// The x16 tile (64 rows × 16 words): thread tid loads words 4q .. 4q + 3 of row r = tid / 4
// (q = tid % 4: four lanes read a row's 64 bytes) and stores word kw at [kw][r ^ swizzle(kw)].
// Rows xor 8 in words 8..15 make a warp's stores hit 32 banks; a reader finds rows
// 4·ty .. 4·ty + 3 of word kw, in order, from column (4·ty) ^ swizzle(kw).
FL_DEV int gemm_a16_swizzle(int kw) { return kw & 8; }

// This thread's part of the slab at k0 (zero outside the matrices): a 16-byte piece of the x16
// tile, 2 words of the w tile, and its scale (threads 0..63: xs of row m0 + tid, 64..127: ws of
// column n0 + tid − 64).
FL_DEV void gemm_w8a16_fetch(const short* __restrict__ x16, const float* __restrict__ xs,
                             const signed char* __restrict__ wq, const unsigned short* __restrict__ ws, int m, int k,
                             int n, int m0, int n0, int k0, bool aligned4, int4& rx, int (&rw)[2], float& rs) {
    const int tid = threadIdx.x;
    const int ng = (k + 31) >> 5, g = k0 >> 5;
    {
        const int r = tid >> 2, q = tid & 3;
        rx = m0 + r < m ? *reinterpret_cast<const int4*>(x16 + (long long)(m0 + r) * 32 * ng + k0 + 8 * q)
                        : make_int4(0, 0, 0, 0);
    }
    FL_UNROLL
    for (int s = 0; s < 2; ++s) {
        int r, kw;
        gemm_w8_coord(tid, s, r, kw);
        rw[s] = n0 + r < n ? fl_load_i8x4(wq + (long long)(n0 + r) * k, k0 + 4 * kw, k, aligned4) : 0;
    }
    rs = 0.0f;
    if (tid < GEMM_TILE) {
        if (m0 + tid < m) rs = xs[(long long)(m0 + tid) * ng + g];
    } else if (tid < 2 * GEMM_TILE) {
        if (n0 + tid - GEMM_TILE < n) rs = fl_f16_bits(ws[(long long)(n0 + tid - GEMM_TILE) * ng + g]);
    }
}

// x16: [m, kp] (quantize_a16's output: rows kp = 32·ng apart, 16-byte aligned), xs: [m, ng],
// wq: [n, k] int8, ws: [n, ng] f16 bits, ng = ceil(k / 32)
extern "C" __global__ void gemm_w8a16(const short* __restrict__ x16, const float* __restrict__ xs,
                                      const signed char* __restrict__ wq, const unsigned short* __restrict__ ws,
                                      const float* __restrict__ bias, float* __restrict__ y, int ldy, int m, int k,
                                      int n, float alpha, int accumulate) {
    __shared__ __align__(16) int xt[GEMM_BK / 2][GEMM_LDS];  // x16 tile: [pair][row ^ swizzle]
    __shared__ __align__(16) int wt[GEMM_BK / 4][GEMM_LDS];  // w tile: [word][col]
    __shared__ __align__(16) float sx[GEMM_TILE];            // xs[row, g] of the slab
    __shared__ __align__(16) float sw[GEMM_TILE];            // ws[col, g] of the slab
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int m0 = blockIdx.y * GEMM_TILE, n0 = blockIdx.x * GEMM_TILE;
    const bool aligned4 = (k & 3) == 0 && (fl_misalign16(wq) & 3u) == 0;
    float acc[4][4];
    FL_UNROLL
    for (int r = 0; r < 4; ++r) {
        FL_UNROLL
        for (int c = 0; c < 4; ++c) acc[r][c] = 0.0f;
    }
    int4 rx;    // the slab in flight
    int rw[2];
    float rs;
    gemm_w8a16_fetch(x16, xs, wq, ws, m, k, n, m0, n0, 0, aligned4, rx, rw, rs);
    for (int k0 = 0; k0 < k; k0 += GEMM_BK) {
        {
            const int r = tid >> 2, q = tid & 3;
            const int xv[4] = {rx.x, rx.y, rx.z, rx.w};
            FL_UNROLL
            for (int e = 0; e < 4; ++e) xt[4 * q + e][r ^ gemm_a16_swizzle(4 * q + e)] = xv[e];
        }
        FL_UNROLL
        for (int s = 0; s < 2; ++s) {
            int r, kw;
            gemm_w8_coord(tid, s, r, kw);
            wt[kw][r] = rw[s];
        }
        if (tid < GEMM_TILE)
            sx[tid] = rs;
        else if (tid < 2 * GEMM_TILE)
            sw[tid - GEMM_TILE] = rs;
        __syncthreads();
        if (k0 + GEMM_BK < k) gemm_w8a16_fetch(x16, xs, wq, ws, m, k, n, m0, n0, k0 + GEMM_BK, aligned4, rx, rw, rs);
        int isum[4][4];
        FL_UNROLL
        for (int r = 0; r < 4; ++r) {
            FL_UNROLL
            for (int c = 0; c < 4; ++c) isum[r][c] = 0;
        }
        FL_UNROLL
        for (int kw = 0; kw < GEMM_BK / 4; ++kw) {
            // inputs 4kw, 4kw + 1 (pair 2kw) and 4kw + 2, 4kw + 3 (pair 2kw + 1) against w word kw
            const int4 a0 = *reinterpret_cast<const int4*>(&xt[2 * kw][(4 * ty) ^ gemm_a16_swizzle(2 * kw)]);
            const int4 a1 = *reinterpret_cast<const int4*>(&xt[2 * kw + 1][(4 * ty) ^ gemm_a16_swizzle(2 * kw + 1)]);
            const int4 b = *reinterpret_cast<const int4*>(&wt[kw][4 * tx]);
            const int lo[4] = {a0.x, a0.y, a0.z, a0.w};
            const int hi[4] = {a1.x, a1.y, a1.z, a1.w};
            const int bv[4] = {b.x, b.y, b.z, b.w};
            FL_UNROLL
            for (int r = 0; r < 4; ++r) {
                FL_UNROLL
                for (int c = 0; c < 4; ++c) {
                    isum[r][c] = __dp2a_lo(lo[r], bv[c], isum[r][c]);
                    isum[r][c] = __dp2a_hi(hi[r], bv[c], isum[r][c]);
                }
            }
        }
        float fx[4], fw[4];
        fl_load_f32_vec<4>(&sx[4 * ty], fx);
        fl_load_f32_vec<4>(&sw[4 * tx], fw);
        FL_UNROLL
        for (int r = 0; r < 4; ++r) {
            FL_UNROLL
            for (int c = 0; c < 4; ++c) acc[r][c] += __fmul_rn((float)isum[r][c], fx[r] * fw[c]);
        }
        __syncthreads();
    }
    gemm_store<4, 4>(acc, y, ldy, m, n, m0 + 4 * ty, n0 + 4 * tx, alpha, bias, accumulate);
}
FL_EXPORT(gemm_w8a16);
