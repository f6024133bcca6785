// CUDA's device intrinsics and math functions, computed on the host.
//
// Fast-math intrinsics (__expf, __logf, __fdividef, __sinf, ...) are computed with the precise
// libm function: CUDA documents them as approximations with a maximum error, and the exact value
// lies within it. Conversions with an explicit rounding mode, __dp4a and __dp2a_lo/_hi are bit-exact.
#pragma once

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// ---- bit reinterpretation --------------------------------------------------------------------
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }
inline long long __double_as_longlong(double d) { long long i; std::memcpy(&i, &d, 8); return i; }

#define CUDART_INF_F (__builtin_inff())
#define CUDART_NAN_F (__builtin_nanf(""))
#define CUDART_INF (__builtin_inf())
#define CUDART_NAN (__builtin_nan(""))

// ---- float -> integer conversions: saturate like cvt.*.s32.f32 (NaN -> 0) ---------------------
namespace fl_emu {
inline int sat_int(float r) {
    if (std::isnan(r)) return 0;
    if (r >= 2147483648.0f) return INT_MAX;
    if (r < -2147483648.0f) return INT_MIN;
    return static_cast<int>(r);
}
inline unsigned int sat_uint(float r) {
    if (std::isnan(r) || r <= 0.0f) return 0;
    if (r >= 4294967296.0f) return UINT_MAX;
    return static_cast<unsigned int>(r);
}
}  // namespace fl_emu
// nearbyintf rounds in the current mode, which is round-to-nearest-even (the emulator never changes it).
inline int __float2int_rn(float x) { return fl_emu::sat_int(std::nearbyintf(x)); }
inline int __float2int_rz(float x) { return fl_emu::sat_int(std::truncf(x)); }
inline int __float2int_rd(float x) { return fl_emu::sat_int(std::floor(x)); }
inline int __float2int_ru(float x) { return fl_emu::sat_int(std::ceil(x)); }
inline unsigned int __float2uint_rn(float x) { return fl_emu::sat_uint(std::nearbyintf(x)); }
inline unsigned int __float2uint_rz(float x) { return fl_emu::sat_uint(std::truncf(x)); }
inline float __int2float_rn(int i) { return static_cast<float>(i); }
inline float __uint2float_rn(unsigned int i) { return static_cast<float>(i); }

// ---- fast-math and rounding-mode float intrinsics (computed precisely, see above) --------------
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __log10f(float x) { return std::log10(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline void __sincosf(float x, float* s, float* c) { *s = std::sin(x); *c = std::cos(x); }
inline void sincosf(float x, float* s, float* c) { *s = std::sin(x); *c = std::cos(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / std::sqrt(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
// Clamp to [0, 1]; NaN gives 0 as on the GPU.
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }

// ---- integer intrinsics ---------------------------------------------------------------------
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned int>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned int __brev(unsigned int x) {
    unsigned int r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
// Product of the low 24 bits of a and b (sign-extended), low 32 bits of the result.
inline int __mul24(int a, int b) {
    const long long x = static_cast<int>(static_cast<unsigned>(a) << 8) >> 8;
    const long long y = static_cast<int>(static_cast<unsigned>(b) << 8) >> 8;
    return static_cast<int>(static_cast<unsigned long long>(x * y));
}
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<long long>(a) * b) >> 32); }
inline unsigned int __umulhi(unsigned int a, unsigned int b) { return static_cast<unsigned int>((static_cast<unsigned long long>(a) * b) >> 32); }

// Four-way byte dot product with 32-bit accumulate; the sum wraps modulo 2^32 as on the GPU.
inline int __dp4a(int a, int b, int c) {
    unsigned int acc = static_cast<unsigned int>(c);
    for (int i = 0; i < 4; ++i) {
        int x = static_cast<signed char>(static_cast<unsigned int>(a) >> (8 * i));
        int y = static_cast<signed char>(static_cast<unsigned int>(b) >> (8 * i));
        acc += static_cast<unsigned int>(x * y);
    }
    return static_cast<int>(acc);
}
inline unsigned int __dp4a(unsigned int a, unsigned int b, unsigned int c) {
    unsigned int acc = c;
    for (int i = 0; i < 4; ++i) acc += ((a >> (8 * i)) & 0xFFu) * ((b >> (8 * i)) & 0xFFu);
    return acc;
}
inline int __dp4a(char4 a, char4 b, int c) {
    int ia, ib;
    std::memcpy(&ia, &a, 4);
    std::memcpy(&ib, &b, 4);
    return __dp4a(ia, ib, c);
}
inline unsigned int __dp4a(uchar4 a, uchar4 b, unsigned int c) {
    unsigned int ia, ib;
    std::memcpy(&ia, &a, 4);
    std::memcpy(&ib, &b, 4);
    return __dp4a(ia, ib, c);
}

// Two-way dot product of two 16-bit halves of a with two bytes of b (dp2a.lo: bytes 0, 1;
// dp2a.hi: bytes 2, 3), 32-bit accumulate wrapping modulo 2^32 as on the GPU. The int forms
// are dp2a.*.s32.s32 (signed halves and bytes), the unsigned forms dp2a.*.u32.u32.
namespace fl_emu {
inline int dp2a_s(int a, int b, int c, int byte0) {
    unsigned int acc = static_cast<unsigned int>(c);
    for (int i = 0; i < 2; ++i) {
        int x = static_cast<short>(static_cast<unsigned int>(a) >> (16 * i));
        int y = static_cast<signed char>(static_cast<unsigned int>(b) >> (8 * (byte0 + i)));
        acc += static_cast<unsigned int>(x * y);
    }
    return static_cast<int>(acc);
}
inline unsigned int dp2a_u(unsigned int a, unsigned int b, unsigned int c, int byte0) {
    unsigned int acc = c;
    for (int i = 0; i < 2; ++i) acc += ((a >> (16 * i)) & 0xFFFFu) * ((b >> (8 * (byte0 + i))) & 0xFFu);
    return acc;
}
}  // namespace fl_emu
inline int __dp2a_lo(int a, int b, int c) { return fl_emu::dp2a_s(a, b, c, 0); }
inline int __dp2a_hi(int a, int b, int c) { return fl_emu::dp2a_s(a, b, c, 2); }
inline unsigned int __dp2a_lo(unsigned int a, unsigned int b, unsigned int c) { return fl_emu::dp2a_u(a, b, c, 0); }
inline unsigned int __dp2a_hi(unsigned int a, unsigned int b, unsigned int c) { return fl_emu::dp2a_u(a, b, c, 2); }
inline int __dp2a_lo(short2 a, char4 b, int c) {
    int ia, ib;
    std::memcpy(&ia, &a, 4);
    std::memcpy(&ib, &b, 4);
    return __dp2a_lo(ia, ib, c);
}
inline int __dp2a_hi(short2 a, char4 b, int c) {
    int ia, ib;
    std::memcpy(&ia, &a, 4);
    std::memcpy(&ib, &b, 4);
    return __dp2a_hi(ia, ib, c);
}
inline unsigned int __dp2a_lo(ushort2 a, uchar4 b, unsigned int c) {
    unsigned int ia, ib;
    std::memcpy(&ia, &a, 4);
    std::memcpy(&ib, &b, 4);
    return __dp2a_lo(ia, ib, c);
}
inline unsigned int __dp2a_hi(ushort2 a, uchar4 b, unsigned int c) {
    unsigned int ia, ib;
    std::memcpy(&ia, &a, 4);
    std::memcpy(&ib, &b, 4);
    return __dp2a_hi(ia, ib, c);
}

// ---- min / max: CUDA declares these for the integer and floating types in the global namespace --
#define FL_EMU_MINMAX(T)                                                   \
    inline T min(T a, T b) { return b < a ? b : a; }                       \
    inline T max(T a, T b) { return a < b ? b : a; }
FL_EMU_MINMAX(int)
FL_EMU_MINMAX(unsigned int)
FL_EMU_MINMAX(long)
FL_EMU_MINMAX(unsigned long)
FL_EMU_MINMAX(long long)
FL_EMU_MINMAX(unsigned long long)
#undef FL_EMU_MINMAX
inline unsigned int min(int a, unsigned int b) { return min(static_cast<unsigned int>(a), b); }
inline unsigned int min(unsigned int a, int b) { return min(a, static_cast<unsigned int>(b)); }
inline unsigned int max(int a, unsigned int b) { return max(static_cast<unsigned int>(a), b); }
inline unsigned int max(unsigned int a, int b) { return max(a, static_cast<unsigned int>(b)); }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

// ---- memory access hints ----------------------------------------------------------------------
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }

// ---- atomics: real atomics, because blocks on different worker threads run concurrently --------
namespace fl_emu {
// Compare-and-swap loop on the value's bits; op 0 adds, op 1 exchanges.
template <class T> inline T atomic_update_float(T* addr, T val, int op) {
    using U = typename std::conditional<sizeof(T) == 4, std::uint32_t, std::uint64_t>::type;
    U* ua = reinterpret_cast<U*>(addr);
    U cur = __atomic_load_n(ua, __ATOMIC_RELAXED);
    for (;;) {
        T f;
        std::memcpy(&f, &cur, sizeof(T));
        T nf = op == 0 ? f + val : val;
        U nu;
        std::memcpy(&nu, &nf, sizeof(T));
        if (__atomic_compare_exchange_n(ua, &cur, nu, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return f;
    }
}
}  // namespace fl_emu

#define FL_EMU_INT_ATOMICS(T)                                                                       \
    inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }            \
    inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }            \
    inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }            \
    inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }              \
    inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST); }            \
    inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }          \
    inline T atomicCAS(T* p, T cmp, T v) {                                                          \
        __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);        \
        return cmp;                                                                                  \
    }                                                                                                \
    inline T atomicMax(T* p, T v) {                                                                 \
        T cur = __atomic_load_n(p, __ATOMIC_RELAXED);                                               \
        while (cur < v && !__atomic_compare_exchange_n(p, &cur, v, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {} \
        return cur;                                                                                  \
    }                                                                                                \
    inline T atomicMin(T* p, T v) {                                                                 \
        T cur = __atomic_load_n(p, __ATOMIC_RELAXED);                                               \
        while (v < cur && !__atomic_compare_exchange_n(p, &cur, v, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {} \
        return cur;                                                                                  \
    }
FL_EMU_INT_ATOMICS(int)
FL_EMU_INT_ATOMICS(unsigned int)
FL_EMU_INT_ATOMICS(long long)
FL_EMU_INT_ATOMICS(unsigned long long)
#undef FL_EMU_INT_ATOMICS
inline float atomicAdd(float* p, float v) { return fl_emu::atomic_update_float(p, v, 0); }
inline double atomicAdd(double* p, double v) { return fl_emu::atomic_update_float(p, v, 0); }
inline float atomicExch(float* p, float v) { return fl_emu::atomic_update_float(p, v, 1); }
// CUDA has no atomicMax/atomicMin on float: kernels build them from atomicCAS on the bits, and so
// must code compiled here, or the NVRTC build would fail where the emulator passes.

inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
