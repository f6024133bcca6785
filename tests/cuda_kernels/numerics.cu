// Conversions and integer intrinsics, element-wise over n values.
#include "emu_test.cuh"

extern "C" __global__ void to_bf16(const float* x, unsigned short* rn, unsigned short* plain, float* back, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const __nv_bfloat16 h = __float2bfloat16_rn(x[i]);
    rn[i] = __bfloat16_as_ushort(h);
    plain[i] = __bfloat16_as_ushort(__float2bfloat16(x[i]));
    back[i] = __bfloat162float(h);
}
FL_EXPORT(to_bf16)

// Pairs: (x[2i], x[2i+1]) -> bf16x2 -> float2.
extern "C" __global__ void bf16_pairs(const float* x, float* y, int pairs) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= pairs) return;
    const __nv_bfloat162 h = __floats2bfloat162_rn(x[2 * i], x[2 * i + 1]);
    const float2 f = __bfloat1622float2(h);
    y[2 * i] = f.x;
    y[2 * i + 1] = f.y;
}
FL_EXPORT(bf16_pairs)

extern "C" __global__ void dp4a(const int* a, const int* b, const int* c, int* s, unsigned* u, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    s[i] = __dp4a(a[i], b[i], c[i]);
    u[i] = __dp4a(static_cast<unsigned>(a[i]), static_cast<unsigned>(b[i]), static_cast<unsigned>(c[i]));
}
FL_EXPORT(dp4a)

// dp2a.lo and dp2a.hi (signed and unsigned) of the same operands: s: [n, 2], u: [n, 2].
extern "C" __global__ void dp2a(const int* a, const int* b, const int* c, int* s, unsigned* u, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const unsigned ua = static_cast<unsigned>(a[i]), ub = static_cast<unsigned>(b[i]), uc = static_cast<unsigned>(c[i]);
    s[2 * i] = __dp2a_lo(a[i], b[i], c[i]);
    s[2 * i + 1] = __dp2a_hi(a[i], b[i], c[i]);
    u[2 * i] = __dp2a_lo(ua, ub, uc);
    u[2 * i + 1] = __dp2a_hi(ua, ub, uc);
}
FL_EXPORT(dp2a)

// The vector-type overloads give the int forms' results: s: [n, 2], u: [n, 2].
extern "C" __global__ void dp2a_vec(const short2* a, const char4* b, const int* c, int* s, unsigned* u, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    s[2 * i] = __dp2a_lo(a[i], b[i], c[i]);
    s[2 * i + 1] = __dp2a_hi(a[i], b[i], c[i]);
    const ushort2 ua = make_ushort2((unsigned short)a[i].x, (unsigned short)a[i].y);
    const uchar4 ub = make_uchar4((unsigned char)b[i].x, (unsigned char)b[i].y, (unsigned char)b[i].z, (unsigned char)b[i].w);
    u[2 * i] = __dp2a_lo(ua, ub, (unsigned)c[i]);
    u[2 * i + 1] = __dp2a_hi(ua, ub, (unsigned)c[i]);
}
FL_EXPORT(dp2a_vec)

extern "C" __global__ void float_to_int(const float* x, int* rn, int* rz, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    rn[i] = __float2int_rn(x[i]);
    rz[i] = __float2int_rz(x[i]);
}
FL_EXPORT(float_to_int)

// y = x * scale: with flush-to-zero a subnormal product becomes 0.
extern "C" __global__ void scale(const float* x, float* y, float s, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] * s;
}
FL_EXPORT(scale)

// A few math intrinsics at once: expf, __expf, tanhf, rsqrtf, __saturatef, __fdividef, popc, clz.
extern "C" __global__ void math_mix(const float* x, float* y, int* bits, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = x[i];
    y[6 * i + 0] = expf(v) - __expf(v);
    y[6 * i + 1] = tanhf(v);
    y[6 * i + 2] = rsqrtf(fabsf(v) + 1.0f);
    y[6 * i + 3] = __saturatef(v);
    y[6 * i + 4] = __fdividef(v, 3.0f);
    y[6 * i + 5] = fmaxf(v, 0.0f) + static_cast<float>(max(i, 2) - min(i, 2));
    bits[2 * i] = __popc(static_cast<unsigned>(__float_as_int(v)));
    bits[2 * i + 1] = __clz(__float_as_int(v));
}
FL_EXPORT(math_mix)
