// Elementwise activations, one thread per output value, FP32 with expf (the CPU's exp is
// accurate to 3e-7, expf to 2 ulp).
#include "common.cuh"

// gu: [t, 2·ffn] rows ldgu apart ([gate | up]); out: [t, ffn] rows ldout apart.
// out[i, c] = silu(gate) · up,  silu(g) = g / (1 + exp(−g)).  grid (ceil(ffn / 256), t)
extern "C" __global__ void silu_mul(const float* __restrict__ gu, int ldgu, float* __restrict__ out,
                                    int ldout, int t, int ffn) {
    const int i = blockIdx.y;
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= t || c >= ffn) return;
    const float* row = gu + (long long)i * ldgu;
    const float g = row[c];
    out[(long long)i * ldout + c] = g / (1.0f + expf(-g)) * row[ffn + c];
}
FL_EXPORT(silu_mul);

// x: [n] in place, GPT-2 "gelu_new": 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), computed as
// the CPU does: x · (1 − 1 / (exp(2u) + 1)) with u the tanh argument (the same function).
extern "C" __global__ void gelu_tanh(float* __restrict__ x, int n) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= n) return;
    const float v = x[c];
    const float u = 2.0f * 0.7978846f * (v + 0.044715f * v * v * v);
    x[c] = v * (1.0f - 1.0f / (expf(u) + 1.0f));
}
FL_EXPORT(gelu_tanh);
