// W8A8 activation quantization, bit-identical to the CPU core (matmul_int8_kernels.rs,
// quantize_group): per group of `group` inputs of a row,
//   amax = max |x| (taken on the bit patterns: NaN and ±inf are exactly those ≥ 0x7f800000),
//   a non-finite value → q = 0, s = NaN (the output row turns NaN, as on the CPU);
//   amax < 1e-30 → q = 0, s = 0;
//   else q = round_half_even(x · (127 / amax)) clamped to ±127, s = amax / 127.
// The divisions and the product are single correctly rounded IEEE operations whatever the
// compile options (__fdiv_rn, __fmul_rn: no approximate division, no contraction); -ftz cannot
// change a result: amax ≥ 1e-30 is normal, and an x small enough to be subnormal quantizes to 0
// either way.
#include "common.cuh"

// x: [m, k] rows ldx apart; xq: [m, k] (rows k apart); xs: [m, ng], ng = ceil(k / group).
// One warp per group: grid (ceil(ng / 4), m), 128 threads.
extern "C" __global__ void quantize_q8(const float* __restrict__ x, int ldx, signed char* __restrict__ xq,
                                       float* __restrict__ xs, int m, int k, int group) {
    const int lane = threadIdx.x & 31;
    const int ng = (k + group - 1) / group;
    const int g = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int i = blockIdx.y;
    if (g >= ng || i >= m) return;
    const int p0 = g * group;
    const int len = fl_min_i(group, k - p0);
    const float* xg = x + (long long)i * ldx + p0;
    signed char* qg = xq + (long long)i * k + p0;

    unsigned abits = 0;
    for (int e = lane; e < len; e += 32) abits = fl_max_u(abits, __float_as_uint(xg[e]) & 0x7fffffffu);
    abits = fl_warp_max_u(abits);

    float s;
    if (abits >= 0x7f800000u || __uint_as_float(abits) < 1e-30f) {
        s = abits >= 0x7f800000u ? FL_NAN : 0.0f;
        for (int e = lane; e < len; e += 32) qg[e] = 0;
    } else {
        const float amax = __uint_as_float(abits);
        const float inv = __fdiv_rn(127.0f, amax);
        for (int e = lane; e < len; e += 32) {
            const int q = __float2int_rn(__fmul_rn(xg[e], inv));
            qg[e] = (signed char)fl_max_i(-127, fl_min_i(127, q));
        }
        s = __fdiv_rn(amax, 127.0f);
    }
    if (lane == 0) xs[(long long)i * ng + g] = s;
}
FL_EXPORT(quantize_q8);
