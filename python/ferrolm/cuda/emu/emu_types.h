// CUDA's built-in vector types (dim3, uint3, float4, ...) and their make_* constructors, laid out
// and aligned as in CUDA's vector_types.h so that reinterpret_casts between buffers behave alike.
#pragma once

// Aggregates (no user-provided constructors) so they can live in __shared__ (static thread_local)
// storage without dynamic initialisation, exactly like CUDA's own definitions.
#define FL_EMU_VEC1(T, N, A)                                                          \
    struct __attribute__((aligned(A))) N##1 { T x; };                                 \
    inline N##1 make_##N##1(T x) { return N##1{x}; }
#define FL_EMU_VEC2(T, N, A)                                                          \
    struct __attribute__((aligned(A))) N##2 { T x, y; };                              \
    inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; }
#define FL_EMU_VEC3(T, N)                                                             \
    struct N##3 { T x, y, z; };                                                       \
    inline N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; }
#define FL_EMU_VEC4(T, N, A)                                                          \
    struct __attribute__((aligned(A))) N##4 { T x, y, z, w; };                        \
    inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }
#define FL_EMU_VECS(T, N, S)                                                          \
    FL_EMU_VEC1(T, N, S) FL_EMU_VEC2(T, N, 2 * S) FL_EMU_VEC3(T, N)                   \
    FL_EMU_VEC4(T, N, 4 * S)

FL_EMU_VECS(signed char, char, 1)
FL_EMU_VECS(unsigned char, uchar, 1)
FL_EMU_VECS(short, short, 2)
FL_EMU_VECS(unsigned short, ushort, 2)
FL_EMU_VECS(int, int, 4)
FL_EMU_VECS(unsigned int, uint, 4)
FL_EMU_VECS(float, float, 4)
// 64-bit element types: CUDA aligns the 4-vectors to 16 bytes only.
FL_EMU_VEC1(long long, longlong, 8)
FL_EMU_VEC2(long long, longlong, 16)
FL_EMU_VEC1(unsigned long long, ulonglong, 8)
FL_EMU_VEC2(unsigned long long, ulonglong, 16)
FL_EMU_VEC1(double, double, 8)
FL_EMU_VEC2(double, double, 16)
FL_EMU_VEC3(double, double)
FL_EMU_VEC4(double, double, 16)

#undef FL_EMU_VEC1
#undef FL_EMU_VEC2
#undef FL_EMU_VEC3
#undef FL_EMU_VEC4
#undef FL_EMU_VECS

// Launch dimensions: dim3 defaults missing components to 1 and converts to and from uint3.
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};
