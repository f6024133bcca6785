// What a kernel sees of the emulated execution model: the built-in index variables, barriers,
// warp-synchronous functions (shuffles, votes) and traps. The runtime (scheduler.cpp) implements
// the functions declared here; the index variables are per-OS-thread values that the scheduler
// sets before it resumes each CUDA thread's fiber.
#pragma once

#include <cstdint>
#include <cstring>

#include "emu_ops.h"

#define FL_EMU_HIDDEN __attribute__((visibility("hidden")))

extern "C" {
extern __thread uint3 fl_emu_t_thread_idx FL_EMU_HIDDEN;
extern __thread uint3 fl_emu_t_block_idx FL_EMU_HIDDEN;
extern __thread uint3 fl_emu_t_block_dim FL_EMU_HIDDEN;
extern __thread uint3 fl_emu_t_grid_dim FL_EMU_HIDDEN;
extern __thread unsigned char* fl_emu_t_dynamic_shared FL_EMU_HIDDEN;

// Block barrier; op 0 plain, 1 count, 2 and, 3 or of `pred` over the block (the result).
FL_EMU_HIDDEN int fl_emu_block_sync(int op, int pred, const char* file, int line);
// One warp-synchronous operation (fl_emu::WarpOp) among the lanes of `mask`; returns this lane's result.
FL_EMU_HIDDEN std::uint64_t fl_emu_warp_sync(unsigned mask, int op, std::uint64_t value, int arg, int width,
                                             const char* file, int line);
FL_EMU_HIDDEN unsigned fl_emu_active_mask(void);
// Ends the launch with an error naming the kernel, block, thread and source location.
[[noreturn]] FL_EMU_HIDDEN void fl_emu_trap(const char* what, const char* file, int line);
}

#define threadIdx (static_cast<const uint3&>(fl_emu_t_thread_idx))
#define blockIdx (static_cast<const uint3&>(fl_emu_t_block_idx))
#define blockDim (static_cast<const dim3>(fl_emu_t_block_dim))
#define gridDim (static_cast<const dim3>(fl_emu_t_grid_dim))
static constexpr int warpSize = 32;

namespace fl_emu {
// A shuffle moves the value's bits; 64-bit types move whole as on the GPU (two 32-bit shuffles).
template <class T> inline T shuffle(unsigned mask, int op, T var, int arg, int width, const char* file, int line) {
    static_assert(sizeof(T) <= 8, "shuffled values are at most 64 bits");
    std::uint64_t bits = 0;
    std::memcpy(&bits, &var, sizeof(T));
    bits = fl_emu_warp_sync(mask, op, bits, arg, width, file, line);
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}
}  // namespace fl_emu

// Source locations come from __builtin_FILE/__builtin_LINE default arguments, which honour #line,
// so errors name the kernel's own file.
#define FL_EMU_SITE const char *fl_file = __builtin_FILE(), int fl_line = __builtin_LINE()

inline void __syncthreads(FL_EMU_SITE) { fl_emu_block_sync(0, 0, fl_file, fl_line); }
inline int __syncthreads_count(int p, FL_EMU_SITE) { return fl_emu_block_sync(1, p, fl_file, fl_line); }
inline int __syncthreads_and(int p, FL_EMU_SITE) { return fl_emu_block_sync(2, p, fl_file, fl_line); }
inline int __syncthreads_or(int p, FL_EMU_SITE) { return fl_emu_block_sync(3, p, fl_file, fl_line); }
inline void __syncwarp(unsigned mask = 0xFFFFFFFFu, FL_EMU_SITE) {
    fl_emu_warp_sync(mask, fl_emu::kSyncWarp, 0, 0, 32, fl_file, fl_line);
}
inline unsigned __ballot_sync(unsigned mask, int p, FL_EMU_SITE) {
    return static_cast<unsigned>(fl_emu_warp_sync(mask, fl_emu::kBallot, p != 0, 0, 32, fl_file, fl_line));
}
inline int __any_sync(unsigned mask, int p, FL_EMU_SITE) {
    return static_cast<int>(fl_emu_warp_sync(mask, fl_emu::kAny, p != 0, 0, 32, fl_file, fl_line));
}
inline int __all_sync(unsigned mask, int p, FL_EMU_SITE) {
    return static_cast<int>(fl_emu_warp_sync(mask, fl_emu::kAll, p != 0, 0, 32, fl_file, fl_line));
}
inline unsigned __activemask() { return fl_emu_active_mask(); }

// The four shuffles for each type CUDA overloads them on (non-template, so argument conversions
// resolve as they do under NVRTC).
#define FL_EMU_SHUFFLES(T)                                                                         \
    inline T __shfl_sync(unsigned m, T v, int src, int w = warpSize, FL_EMU_SITE) {                \
        return fl_emu::shuffle(m, fl_emu::kShflIdx, v, src, w, fl_file, fl_line);                  \
    }                                                                                               \
    inline T __shfl_up_sync(unsigned m, T v, unsigned d, int w = warpSize, FL_EMU_SITE) {          \
        return fl_emu::shuffle(m, fl_emu::kShflUp, v, static_cast<int>(d), w, fl_file, fl_line);   \
    }                                                                                               \
    inline T __shfl_down_sync(unsigned m, T v, unsigned d, int w = warpSize, FL_EMU_SITE) {        \
        return fl_emu::shuffle(m, fl_emu::kShflDown, v, static_cast<int>(d), w, fl_file, fl_line); \
    }                                                                                               \
    inline T __shfl_xor_sync(unsigned m, T v, int lm, int w = warpSize, FL_EMU_SITE) {             \
        return fl_emu::shuffle(m, fl_emu::kShflXor, v, lm, w, fl_file, fl_line);                   \
    }
FL_EMU_SHUFFLES(int)
FL_EMU_SHUFFLES(unsigned int)
FL_EMU_SHUFFLES(long)
FL_EMU_SHUFFLES(unsigned long)
FL_EMU_SHUFFLES(long long)
FL_EMU_SHUFFLES(unsigned long long)
FL_EMU_SHUFFLES(float)
FL_EMU_SHUFFLES(double)
FL_EMU_SHUFFLES(__nv_bfloat16)
FL_EMU_SHUFFLES(__nv_bfloat162)
#undef FL_EMU_SHUFFLES

[[noreturn]] inline void __trap(FL_EMU_SITE) { fl_emu_trap("__trap()", fl_file, fl_line); }
[[noreturn]] inline void __brkpt(FL_EMU_SITE) { fl_emu_trap("__brkpt()", fl_file, fl_line); }
