// Row norms: one block of 256 threads per row; x rows are ldx apart, out: [t, d].
// Sums run per thread, then over the warp and the block (fl_block_sum), in FP32 like the CPU.
#include "common.cuh"

// out[i, :] = w · (x[i, :] · inv),  inv = 1 / sqrt(mean(x²) + eps)
extern "C" __global__ void rms_norm(const float* __restrict__ x, int ldx, const float* __restrict__ w,
                                    float* __restrict__ out, int d, float eps) {
    __shared__ float red[32];
    const int i = blockIdx.x;
    const float* xr = x + (long long)i * ldx;
    float* o = out + (long long)i * d;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) ss += xr[c] * xr[c];
    ss = fl_block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / (float)d + eps);
    for (int c = threadIdx.x; c < d; c += blockDim.x) o[c] = w[c] * (xr[c] * inv);
}
FL_EXPORT(rms_norm);

// out[i, :] = (x − mean) · inv · w + b,  inv = 1 / sqrt(var + eps), var = mean((x − mean)²)
extern "C" __global__ void layer_norm(const float* __restrict__ x, int ldx, const float* __restrict__ w,
                                      const float* __restrict__ b, float* __restrict__ out, int d,
                                      float eps) {
    __shared__ float red[32];
    const int i = blockIdx.x;
    const float* xr = x + (long long)i * ldx;
    float* o = out + (long long)i * d;
    float sum = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) sum += xr[c];
    const float mean = fl_block_sum(sum, red) / (float)d;
    float sq = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        const float u = xr[c] - mean;
        sq += u * u;
    }
    const float var = fl_block_sum(sq, red) / (float)d;
    const float inv = 1.0f / sqrtf(var + eps);
    for (int c = threadIdx.x; c < d; c += blockDim.x) o[c] = (xr[c] - mean) * inv * w[c] + b[c];
}
FL_EXPORT(layer_norm);
