// __nv_bfloat16 / __nv_bfloat162 and the conversions of cuda_bf16.h, bit-exact: float -> bf16
// rounds to nearest, ties to even; NaN becomes the canonical NaN 0x7FFF as on the GPU (cvt.rn.bf16.f32);
// bf16 -> float is exact.
#pragma once

#include <cstdint>
#include <cmath>
#include <cstring>

namespace fl_emu {
inline std::uint32_t f32_bits(float f) { std::uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(std::uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// Round-to-nearest-even on the bit pattern: adding 0x7FFF plus the lowest kept bit carries into the
// kept half exactly when the dropped half is above one half, or exactly one half with an odd
// kept half. Overflow of the largest finite values carries into the exponent and gives inf.
inline std::uint16_t f32_to_bf16_rne(float f) {
    std::uint32_t u = f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FFF;  // NaN
    u += 0x7FFFu + ((u >> 16) & 1u);
    return static_cast<std::uint16_t>(u >> 16);
}
// double -> bf16 in one rounding: first to float rounding to odd (truncate, then set the lowest
// bit when anything was dropped), which float's 16 extra bits make exact for the final RNE step.
inline std::uint16_t f64_to_bf16_rne(double d) {
    float f = static_cast<float>(d);
    if (static_cast<double>(f) != d && d == d) {
        if (std::fabs(static_cast<double>(f)) > std::fabs(d)) f = std::nextafter(f, 0.0f);
        f = bits_f32(f32_bits(f) | 1u);
    }
    return f32_to_bf16_rne(f);
}
inline float bf16_to_f32(std::uint16_t h) { return bits_f32(static_cast<std::uint32_t>(h) << 16); }
}  // namespace fl_emu

struct __nv_bfloat16_raw { unsigned short x; };

struct __attribute__((aligned(2))) __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    constexpr __nv_bfloat16(__nv_bfloat16_raw r) : __x(r.x) {}
    __nv_bfloat16(float f) : __x(fl_emu::f32_to_bf16_rne(f)) {}
    __nv_bfloat16(double d) : __x(fl_emu::f64_to_bf16_rne(d)) {}
    operator float() const { return fl_emu::bf16_to_f32(__x); }
    operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{__x}; }
};

struct __attribute__((aligned(4))) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

inline __nv_bfloat16 fl_emu_bf16_from_bits(unsigned short b) { return __nv_bfloat16(__nv_bfloat16_raw{b}); }

inline __nv_bfloat16 __float2bfloat16(float f) { return fl_emu_bf16_from_bits(fl_emu::f32_to_bf16_rne(f)); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline __nv_bfloat16 __double2bfloat16(double d) { return fl_emu_bf16_from_bits(fl_emu::f64_to_bf16_rne(d)); }
inline float __bfloat162float(__nv_bfloat16 h) { return fl_emu::bf16_to_f32(h.__x); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return __nv_bfloat162{__float2bfloat16(a), __float2bfloat16(b)}; }
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return __floats2bfloat162_rn(f.x, f.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return float2{__bfloat162float(h.x), __bfloat162float(h.y)}; }
inline float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
inline float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat162{a, b}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) { return fl_emu_bf16_from_bits(b); }
