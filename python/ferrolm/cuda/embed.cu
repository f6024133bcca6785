// Token embeddings: one block of 256 threads per row of x: [t, d] (row-major, stride d).
// x[i, :] = table[ids[i], :] widened to f32 (+ wpe[pos + i, :] when wpe is given, GPT-2).
#include "common.cuh"

// wpe row of chunk row i, or null.
FL_DEV const float* embed_wpe_row(const float* wpe, const int* pos, int i, int d) {
    return wpe ? wpe + (long long)(*pos + i) * d : 0;
}

// ids: [t], table: [vocab, d], wpe: [max_pos, d] or null, x: [t, d]
extern "C" __global__ void embed_f32(const int* __restrict__ ids, const float* __restrict__ table,
                                     const float* __restrict__ wpe, const int* __restrict__ pos,
                                     float* __restrict__ x, int d) {
    const int i = blockIdx.x;
    const float* row = table + (long long)ids[i] * d;
    const float* pe = embed_wpe_row(wpe, pos, i, d);
    float* xr = x + (long long)i * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float v = row[c];
        if (pe) v += pe[c];
        xr[c] = v;
    }
}
FL_EXPORT(embed_f32);

// table: [vocab, d] bf16
extern "C" __global__ void embed_bf16(const int* __restrict__ ids, const __nv_bfloat16* __restrict__ table,
                                      const float* __restrict__ wpe, const int* __restrict__ pos,
                                      float* __restrict__ x, int d) {
    const int i = blockIdx.x;
    const __nv_bfloat16* row = table + (long long)ids[i] * d;
    const float* pe = embed_wpe_row(wpe, pos, i, d);
    float* xr = x + (long long)i * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float v = fl_bf16_load(row, c);
        if (pe) v += pe[c];
        xr[c] = v;
    }
}
FL_EXPORT(embed_bf16);

// q: [vocab, d] int8, s: [vocab, ceil(d / group)] f16 bits; value (r, c) = q[r, c] · s[r, c / group]
extern "C" __global__ void embed_q8(const int* __restrict__ ids, const signed char* __restrict__ q,
                                    const unsigned short* __restrict__ s, int group, const float* __restrict__ wpe,
                                    const int* __restrict__ pos, float* __restrict__ x, int d) {
    const int i = blockIdx.x;
    const int ng = (d + group - 1) / group;
    const long long id = ids[i];
    const signed char* row = q + id * d;
    const unsigned short* srow = s + id * ng;
    const float* pe = embed_wpe_row(wpe, pos, i, d);
    float* xr = x + (long long)i * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float v = (float)row[c] * fl_f16_bits(srow[c / group]);
        if (pe) v += pe[c];
        xr[c] = v;
    }
}
FL_EXPORT(embed_q8);

// x: [t, d] += wpe[pos .. pos + t, :] (input embeddings given directly, GPT-2)
extern "C" __global__ void add_pos_embed(const float* __restrict__ wpe, const int* __restrict__ pos,
                                         float* __restrict__ x, int d) {
    const int i = blockIdx.x;
    const float* pe = wpe + (long long)(*pos + i) * d;
    float* xr = x + (long long)i * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) xr[c] += pe[c];
}
FL_EXPORT(add_pos_embed);
