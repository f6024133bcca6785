// W8A16 activation quantization, bit-identical to the CPU core (matmul_int8_kernels.rs,
// quantize_rows_a16_impl): per group of 32 inputs of a row,
//   amax = max |x| (taken on the bit patterns: NaN and ±inf are exactly those ≥ 0x7f800000),
//   a non-finite value → x16 = 0, s = NaN (the output row turns NaN, as on the CPU);
//   amax < 1e-30 → x16 = 0, s = 0;
//   else x16 = round_half_even(x · (32639 / amax)) clamped to ±32639, s = amax / 32639.
// The divisions and the product are single correctly rounded IEEE operations whatever the
// compile options (__fdiv_rn, __fmul_rn: no approximate division, no contraction); -ftz cannot
// change a result: amax ≥ 1e-30 is normal, so are 32639 / amax and amax / 32639, and an x whose
// product with the inverse is subnormal quantizes to 0 either way (as does a subnormal amax).
#include "common.cuh"

// The largest |x16| (32639 = 127·256 + 127, as the CPU's A16_MAX).
#define FL_A16_MAX 32639.0f
#define FL_A16_MAX_I 32639

// x: [m, k] rows ldx apart; x16: [m, kp] (rows kp apart, kp = 32·ng, zero from k on; 16-byte
// aligned); xs: [m, ng], ng = ceil(k / 32). One warp per group, one lane per input:
// grid (ceil(ng / 4), m), 128 threads.
extern "C" __global__ void quantize_a16(const float* __restrict__ x, int ldx, short* __restrict__ x16,
                                        float* __restrict__ xs, int m, int k) {
    const int lane = threadIdx.x & 31;
    const int ng = (k + 31) >> 5;
    const int g = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int i = blockIdx.y;
    if (g >= ng || i >= m) return;
    const int p = 32 * g + lane;
    const float v = p < k ? x[(long long)i * ldx + p] : 0.0f;  // padding past k quantizes to 0
    const unsigned abits = fl_warp_max_u(__float_as_uint(v) & 0x7fffffffu);

    int q = 0;
    float s;
    if (abits >= 0x7f800000u) {
        s = FL_NAN;
    } else if (__uint_as_float(abits) < 1e-30f) {
        s = 0.0f;
    } else {
        const float amax = __uint_as_float(abits);
        const float inv = __fdiv_rn(FL_A16_MAX, amax);
        q = fl_max_i(-FL_A16_MAX_I, fl_min_i(FL_A16_MAX_I, __float2int_rn(__fmul_rn(v, inv))));
        s = __fdiv_rn(amax, FL_A16_MAX);
    }
    x16[(long long)i * (32 * ng) + p] = (short)q;
    if (lane == 0) xs[(long long)i * ng + g] = s;
}
FL_EXPORT(quantize_a16);
