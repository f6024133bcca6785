// Causal attention over the KV cache, flash-decoding style: the keys of each query are split in
// chunks (attention_partial, one block per (head, query row, chunk)), each giving its max score
// m, Σ exp(score − m) and Σ exp(score − m)·v; attention_combine merges the chunks. Online softmax
// in FP32 with expf (accurate to 2 ulp: the result matches the CPU's softmax to ~1e-6).
#include "common.cuh"

#define ATTN_WARPS 4  // 128 threads
#define ATTN_KEYS 4   // keys a warp scores at once (loads in flight)

// One warp's keys: p = start + (round·ATTN_WARPS + warp)·ATTN_KEYS + b while p < end. The lane
// holds dims c = lane + 32·j (j < NC) of q and of its running o; m and l are the warp's running
// max score and Σ exp(score − m) (m = −inf, l = 0 while it has seen no key).
template <int NC>
FL_DEV void attn_warp(const float* __restrict__ qr, const float* __restrict__ kb, const float* __restrict__ vb,
                      int kv_dim, int head_dim, float scale, int start, int end, float (&o)[NC], float& m,
                      float& l) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float q[NC];
    FL_UNROLL
    for (int j = 0; j < NC; ++j) {
        const int c = lane + 32 * j;
        q[j] = c < head_dim ? qr[c] : 0.0f;
        o[j] = 0.0f;
    }
    m = -FL_INF;
    l = 0.0f;
    for (int p0 = start + warp * ATTN_KEYS; p0 < end; p0 += ATTN_WARPS * ATTN_KEYS) {
        // the keys' k and v rows, all loads issued together; a key past the end reads the last
        // valid row and is masked out (score −inf, weight 0)
        float kx[ATTN_KEYS][NC], vx[ATTN_KEYS][NC];
        FL_UNROLL
        for (int b = 0; b < ATTN_KEYS; ++b) {
            const long long row = (long long)fl_min_i(p0 + b, end - 1) * kv_dim;
            FL_UNROLL
            for (int j = 0; j < NC; ++j) {
                const int c = lane + 32 * j;
                kx[b][j] = c < head_dim ? kb[row + c] : 0.0f;
                vx[b][j] = c < head_dim ? vb[row + c] : 0.0f;
            }
        }
        float sc[ATTN_KEYS];
        float mn = m;
        FL_UNROLL
        for (int b = 0; b < ATTN_KEYS; ++b) {
            float d = 0.0f;
            FL_UNROLL
            for (int j = 0; j < NC; ++j) d += q[j] * kx[b][j];
            d = scale * fl_warp_sum(d);
            sc[b] = p0 + b < end ? d : -FL_INF;
            mn = fmaxf(mn, sc[b]);
        }
        // mn is finite (key p0 is valid); corr = 0 for the warp's first keys (m = −inf)
        const float corr = expf(m - mn);
        l *= corr;
        FL_UNROLL
        for (int j = 0; j < NC; ++j) o[j] *= corr;
        FL_UNROLL
        for (int b = 0; b < ATTN_KEYS; ++b) {
            const float e = expf(sc[b] - mn);
            l += e;
            FL_UNROLL
            for (int j = 0; j < NC; ++j) o[j] += e * vx[b][j];
        }
        m = mn;
    }
}

template <int NC>
FL_DEV void attn_partial(const float* __restrict__ q, int ldq, const float* __restrict__ k_cache,
                         const float* __restrict__ v_cache, const int* __restrict__ pos, int n_heads,
                         int n_kv_heads, int head_dim, float scale, int chunk, float* __restrict__ part_o,
                         float* __restrict__ part_ml) {
    __shared__ float sm_m[ATTN_WARPS], sm_l[ATTN_WARPS];
    __shared__ float sm_o[ATTN_WARPS][256];
    const int h = blockIdx.x, i = blockIdx.y, sp = blockIdx.z, splits = gridDim.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n_ctx = *pos + i + 1;  // query row i sees cache positions 0 ..= pos + i
    const int start = sp * chunk, end = fl_min_i(start + chunk, n_ctx);
    const int kv_dim = n_kv_heads * head_dim;
    const int kvh = h / (n_heads / n_kv_heads);
    const float* kb = k_cache + kvh * head_dim;
    const float* vb = v_cache + kvh * head_dim;

    float o[NC], m, l;
    attn_warp<NC>(q + (long long)i * ldq + h * head_dim, kb, vb, kv_dim, head_dim, scale, start, end, o, m, l);
    FL_UNROLL
    for (int j = 0; j < NC; ++j) {
        const int c = lane + 32 * j;
        if (c < head_dim) sm_o[warp][c] = o[j];
    }
    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
    __syncthreads();

    // merge the warps; a warp without keys (m = −inf) weighs 0, and so does an empty chunk
    float mb = -FL_INF;
    FL_UNROLL
    for (int w = 0; w < ATTN_WARPS; ++w) mb = fmaxf(mb, sm_m[w]);
    float f[ATTN_WARPS];
    float lb = 0.0f;
    FL_UNROLL
    for (int w = 0; w < ATTN_WARPS; ++w) {
        f[w] = sm_m[w] == -FL_INF ? 0.0f : expf(sm_m[w] - mb);
        lb += f[w] * sm_l[w];
    }
    const long long slot = ((long long)i * n_heads + h) * splits + sp;
    float* po = part_o + slot * head_dim;
    for (int c = threadIdx.x; c < head_dim; c += blockDim.x) {
        float v = 0.0f;
        FL_UNROLL
        for (int w = 0; w < ATTN_WARPS; ++w) v += f[w] * sm_o[w][c];
        po[c] = v;
    }
    if (threadIdx.x == 0) {
        part_ml[2 * slot] = mb;
        part_ml[2 * slot + 1] = lb;
    }
}

// q: [t, ·] rows ldq apart (head h at h·head_dim), k_cache / v_cache: [max_seq, n_kv_heads·head_dim],
// part_o: [t, n_heads, splits, head_dim], part_ml: [t, n_heads, splits, 2] (m, l).
// grid (n_heads, t, splits), 128 threads; keys of split s: [s·chunk, min((s + 1)·chunk, pos + i + 1)).
extern "C" __global__ void attention_partial(const float* __restrict__ q, int ldq, const float* __restrict__ k_cache,
                                             const float* __restrict__ v_cache, const int* __restrict__ pos, int t,
                                             int n_heads, int n_kv_heads, int head_dim, float scale, int chunk,
                                             float* __restrict__ part_o, float* __restrict__ part_ml) {
    if ((int)blockIdx.y >= t) return;
    const int args_nc = (head_dim + 31) >> 5;
    if (args_nc <= 1)
        attn_partial<1>(q, ldq, k_cache, v_cache, pos, n_heads, n_kv_heads, head_dim, scale, chunk, part_o, part_ml);
    else if (args_nc <= 2)
        attn_partial<2>(q, ldq, k_cache, v_cache, pos, n_heads, n_kv_heads, head_dim, scale, chunk, part_o, part_ml);
    else if (args_nc <= 4)
        attn_partial<4>(q, ldq, k_cache, v_cache, pos, n_heads, n_kv_heads, head_dim, scale, chunk, part_o, part_ml);
    else
        attn_partial<8>(q, ldq, k_cache, v_cache, pos, n_heads, n_kv_heads, head_dim, scale, chunk, part_o, part_ml);
}
FL_EXPORT(attention_partial);

// out[i, h·head_dim + c] = Σ_s e^{m_s − M}·o_s[c] / Σ_s e^{m_s − M}·l_s, M = max_s m_s.
// grid (n_heads, t), 128 threads.
extern "C" __global__ void attention_combine(const float* __restrict__ part_o, const float* __restrict__ part_ml,
                                             int t, int n_heads, int head_dim, int splits, float* __restrict__ out,
                                             int ldo) {
    const int h = blockIdx.x, i = blockIdx.y;
    if (i >= t) return;
    const long long slot0 = ((long long)i * n_heads + h) * splits;
    const float* ml = part_ml + 2 * slot0;
    const float* po = part_o + slot0 * head_dim;
    float mb = -FL_INF;
    for (int s = 0; s < splits; ++s) mb = fmaxf(mb, ml[2 * s]);
    float lb = 0.0f;
    for (int s = 0; s < splits; ++s)
        if (ml[2 * s] != -FL_INF) lb += expf(ml[2 * s] - mb) * ml[2 * s + 1];
    float* orow = out + (long long)i * ldo + h * head_dim;
    for (int c = threadIdx.x; c < head_dim; c += blockDim.x) {
        float v = 0.0f;
        for (int s = 0; s < splits; ++s)
            if (ml[2 * s] != -FL_INF) v += expf(ml[2 * s] - mb) * po[(long long)s * head_dim + c];
        orow[c] = lb > 0.0f ? v / lb : 0.0f;
    }
}
FL_EXPORT(attention_combine);
