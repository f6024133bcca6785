// RoPE and KV-cache write for a chunk of t rows: one block of 128 threads per row i of
// qkv: [t, (n_heads + 2·n_kv_heads)·head_dim] (rows ldqkv apart, [q | k | v]).
// q and k are rotated in place ("rotate_half": dim j pairs with j + head_dim/2) when inv_freq
// is given; then k and v are copied to the cache row pos + i (k_cache, v_cache: [max_seq, kv_dim]).
// The angles are those of the CPU core (rope.rs): (double)(pos + i)·inv_freq[j], cosine and sine
// in double, rounded to f32; the rotation is computed without FMA (__fmul_rn, __fadd_rn), as there.
#include "common.cuh"

// inv_freq: [head_dim / 2] (double), head_dim even and ≤ 256
extern "C" __global__ void rope_store_kv(float* __restrict__ qkv, int ldqkv, int t, const int* __restrict__ pos,
                                         const double* __restrict__ inv_freq, int n_heads, int n_kv_heads,
                                         int head_dim, float* __restrict__ k_cache, float* __restrict__ v_cache) {
    __shared__ float cs[128], sn[128];
    const int i = blockIdx.x;
    if (i >= t) return;
    const int p = *pos + i;
    const int half = head_dim >> 1;
    const int kv_dim = n_kv_heads * head_dim;
    float* row = qkv + (long long)i * ldqkv;
    float* kr = row + n_heads * head_dim;
    const float* vr = kr + kv_dim;
    float* kc = k_cache + (long long)p * kv_dim;
    float* vc = v_cache + (long long)p * kv_dim;
    if (inv_freq) {
        for (int j = threadIdx.x; j < half; j += blockDim.x) {
            const double a = (double)p * inv_freq[j];
            cs[j] = (float)cos(a);
            sn[j] = (float)sin(a);
        }
        __syncthreads();
        // pairs (head hh, dim j) over the q heads then the k heads, which follow them in the row
        const int pairs = (n_heads + n_kv_heads) * half;
        for (int idx = threadIdx.x; idx < pairs; idx += blockDim.x) {
            const int hh = idx / half, j = idx - hh * half;
            float* hp = row + hh * head_dim;
            const float a = hp[j], b = hp[j + half], c = cs[j], s = sn[j];
            const float a2 = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
            const float b2 = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
            hp[j] = a2;
            hp[j + half] = b2;
            if (hh >= n_heads) {
                float* kh = kc + (hh - n_heads) * head_dim;
                kh[j] = a2;
                kh[j + half] = b2;
            }
        }
    } else {
        for (int c = threadIdx.x; c < kv_dim; c += blockDim.x) kc[c] = kr[c];
    }
    for (int c = threadIdx.x; c < kv_dim; c += blockDim.x) vc[c] = vr[c];
}
FL_EXPORT(rope_store_kv);
