// Fibers for the emulator's CUDA threads: a stack with a guard page and a saved context that a
// single OS thread switches between cooperatively. On x86-64 the switch is a few instructions
// (save the callee-saved registers and the stack pointer, load another's); elsewhere it falls back
// to ucontext, whose swapcontext also saves the signal mask with a system call per switch.
#pragma once

#include <cstddef>

#if defined(__x86_64__) && !defined(FL_EMU_USE_UCONTEXT)
#define FL_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

namespace fl_emu {

struct Context {
#ifdef FL_EMU_ASM_SWITCH
    void* sp = nullptr;  // the saved registers lie on the fiber's stack, below this
#else
    ucontext_t uc;
#endif
};

// Saves the running context into `from` and resumes `to`.
void switch_context(Context* from, Context* to);


// A fiber stack: `size` usable bytes above one PROT_NONE guard page, so an overflow faults
// instead of silently overwriting the neighbouring stack.
class Stack {
public:
    explicit Stack(std::size_t size);
    ~Stack();
    Stack(const Stack&) = delete;
    Stack& operator=(const Stack&) = delete;
    char* bottom() const { return base_ + guard_; }
    // Stack tops are staggered by multiples of a cache line, so that the hot top frames of many
    // fibers do not all map to the same cache sets (measured: barrier-heavy blocks ~30% faster).
    char* top() const { return base_ + guard_ + size_ - color_; }
    std::size_t size() const { return size_; }
    bool contains_guard(const void* p) const { return p >= base_ && p < base_ + guard_; }

private:
    char* base_;
    std::size_t guard_;
    std::size_t size_;
    std::size_t color_;
};

// Prepares `ctx` so that switching to it calls entry(arg) on `stack`. `entry` must never return:
// a finished fiber switches away for good.
void start_context(Context* ctx, Stack& stack, void (*entry)(void*), void* arg);

}  // namespace fl_emu
