#pragma once
#ifdef __CUDACC_RTC__
#include <cuda_bf16.h>
#define FL_EXPORT(name)
#define FL_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#else
#include "emu/cuda_emu.h"
#endif

// Device helpers shared by the kernels (cuda/*.cu; the ABI is in docs/cuda.md). NVRTC has no
// standard library headers, so nothing here includes one: integers are int / unsigned /
// long long / signed char, constants are spelled out as bit patterns.

#ifdef __CUDACC_RTC__
#define FL_PRAGMA(x) _Pragma(#x)
#define FL_UNROLL _Pragma("unroll")
#define FL_UNROLL_N(n) FL_PRAGMA(unroll n)
#else
#define FL_UNROLL
#define FL_UNROLL_N(n)
#endif

#define FL_DEV __device__ __forceinline__
#define FL_FULL_MASK 0xffffffffu

// +inf and the quiet NaN the CPU core writes (Rust's f32::NAN).
#define FL_INF __int_as_float(0x7f800000)
#define FL_NAN __int_as_float(0x7fc00000)

FL_DEV int fl_min_i(int a, int b) { return a < b ? a : b; }
FL_DEV int fl_max_i(int a, int b) { return a > b ? a : b; }
FL_DEV unsigned fl_max_u(unsigned a, unsigned b) { return a > b ? a : b; }

// ---------------------------------------------------------------------------------------------
// Reductions. Every lane of the warp receives the result (butterfly with __shfl_xor_sync).

FL_DEV float fl_warp_sum(float v) {
    FL_UNROLL
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FL_FULL_MASK, v, o);
    return v;
}

FL_DEV float fl_warp_max(float v) {
    FL_UNROLL
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FL_FULL_MASK, v, o));
    return v;
}

FL_DEV unsigned fl_warp_max_u(unsigned v) {
    FL_UNROLL
    for (int o = 16; o > 0; o >>= 1) v = fl_max_u(v, __shfl_xor_sync(FL_FULL_MASK, v, o));
    return v;
}

// Sum of v over the block (blockDim.x a multiple of 32), returned to every thread.
// scratch: 32 floats of shared memory; the call is a barrier, so scratch can be reused at once.
FL_DEV float fl_block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = fl_warp_sum(v);
    __syncthreads();  // a previous call's readers are done with scratch
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    // every warp sums the partials in the same order: all threads get the same value
    return fl_warp_sum(lane < nw ? scratch[lane] : 0.0f);
}

// ---------------------------------------------------------------------------------------------
// Loads.

// Bytes past the last 16-byte boundary (0 when a 16-byte vector load from p is legal).
FL_DEV unsigned fl_misalign16(const void* p) {
    return (unsigned)(reinterpret_cast<unsigned long long>(p) & 15ull);
}

// bf16 → f32 is exact: the bf16 bits are the upper half of the f32.
FL_DEV float fl_bf16_bits(unsigned short b) { return __uint_as_float((unsigned)b << 16); }
FL_DEV float fl_bf16_lo(unsigned w) { return __uint_as_float(w << 16); }          // element 2i
FL_DEV float fl_bf16_hi(unsigned w) { return __uint_as_float(w & 0xffff0000u); }  // element 2i+1
FL_DEV float fl_bf16_load(const __nv_bfloat16* p, long long i) {
    return fl_bf16_bits(reinterpret_cast<const unsigned short*>(p)[i]);
}

// IEEE half bits → f32, exact (subnormals, ±inf and NaN included): the INT8 scales.
FL_DEV float fl_f16_bits(unsigned short h) {
    const unsigned sign = (unsigned)(h & 0x8000u) << 16;
    const unsigned em = h & 0x7fffu;
    if (em >= 0x7c00u) return __uint_as_float(sign | 0x7f800000u | ((em & 0x3ffu) << 13));
    if (em >= 0x0400u) return __uint_as_float(sign | ((em << 13) + 0x38000000u));  // exponent + 112
    const float v = (float)em * 5.9604644775390625e-08f;  // subnormal: frac · 2^-24
    return sign ? -v : v;
}

// V consecutive floats (V a multiple of 4) from a 16-byte aligned p.
template <int V>
FL_DEV void fl_load_f32_vec(const float* p, float* v) {
    FL_UNROLL
    for (int e = 0; e < V; e += 4) {
        const float4 a = *reinterpret_cast<const float4*>(p + e);
        v[e] = a.x;
        v[e + 1] = a.y;
        v[e + 2] = a.z;
        v[e + 3] = a.w;
    }
}

// 4 int8 from p (any alignment) packed like an aligned 32-bit load (p[0] in the low byte).
FL_DEV int fl_pack_i8x4(const signed char* p) {
    return (int)((unsigned)(unsigned char)p[0] | ((unsigned)(unsigned char)p[1] << 8) |
                 ((unsigned)(unsigned char)p[2] << 16) | ((unsigned)(unsigned char)p[3] << 24));
}

// The same with p[e] read only for e < len (zero past it).
FL_DEV int fl_pack_i8x4_tail(const signed char* p, int len) {
    unsigned r = 0;
    for (int e = 0; e < 4 && e < len; ++e) r |= (unsigned)(unsigned char)p[e] << (8 * e);
    return (int)r;
}

// Inputs p .. p + 3 of an int8 row of k as one word (p[0] in the low byte), zero from k on.
// aligned4: row + p is 4-byte aligned.
FL_DEV int fl_load_i8x4(const signed char* row, int p, int k, bool aligned4) {
    if (p + 4 <= k) return aligned4 ? *reinterpret_cast<const int*>(row + p) : fl_pack_i8x4(row + p);
    return p < k ? fl_pack_i8x4_tail(row + p, k - p) : 0;
}

// ---------------------------------------------------------------------------------------------
// Weight sources of the FP matmuls (gemv.cu, gemm.cu): the tiling is written once, the format
// is a type parameter giving the element type, one element widened to f32, 4 consecutive
// elements widened to f32 (one 16- / 8-byte load), and one 16-byte vector of VEC elements
// (loaded raw, widened to f32 where it is used, so that several loads in flight cost 4
// registers each).

struct FlWeightF32 {
    typedef float T;
    typedef float4 Raw;
    static const int VEC = 4;
    static FL_DEV float load(const T* p, long long i) { return p[i]; }
    static FL_DEV void load4(const T* p, float (&v)[4]) { fl_load_f32_vec<4>(p, v); }
    static FL_DEV Raw load_raw(const T* p) { return *reinterpret_cast<const float4*>(p); }
    static FL_DEV void widen(const Raw& r, float* v) {
        v[0] = r.x; v[1] = r.y; v[2] = r.z; v[3] = r.w;
    }
};

struct FlWeightBF16 {
    typedef __nv_bfloat16 T;
    typedef uint4 Raw;
    static const int VEC = 8;
    static FL_DEV float load(const T* p, long long i) { return fl_bf16_load(p, i); }
    static FL_DEV void load4(const T* p, float (&v)[4]) {
        const uint2 u = *reinterpret_cast<const uint2*>(p);
        v[0] = fl_bf16_lo(u.x); v[1] = fl_bf16_hi(u.x);
        v[2] = fl_bf16_lo(u.y); v[3] = fl_bf16_hi(u.y);
    }
    static FL_DEV Raw load_raw(const T* p) { return *reinterpret_cast<const uint4*>(p); }
    static FL_DEV void widen(const Raw& u, float* v) {
        v[0] = fl_bf16_lo(u.x); v[1] = fl_bf16_hi(u.x);
        v[2] = fl_bf16_lo(u.y); v[3] = fl_bf16_hi(u.y);
        v[4] = fl_bf16_lo(u.z); v[5] = fl_bf16_hi(u.z);
        v[6] = fl_bf16_lo(u.w); v[7] = fl_bf16_hi(u.w);
    }
};

// ---------------------------------------------------------------------------------------------
// Matmul output: y = (accumulate ? y : 0) + (alpha·s + bias[col]). The bias joins the product
// first, as in the CPU core (Linear adds its bias to the matmul's output, then the residual).
FL_DEV void fl_store_out(float* y, float s, float alpha, const float* bias, int col, int accumulate) {
    float v = alpha * s;
    if (bias) v += bias[col];
    if (accumulate) v = *y + v;
    *y = v;
}
