// Context switching and fiber stacks (see fiber.h).
#include "fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <new>

namespace fl_emu {

#ifdef FL_EMU_ASM_SWITCH
// fl_emu_switch(from_sp, to_sp): push the System V callee-saved registers, store the stack
// pointer in *from_sp, load *to_sp, pop that context's registers and return into it. MXCSR and the
// x87 control word are not switched: all fibers of an OS thread share the worker's FTZ/DAZ setting.
extern "C" void fl_emu_switch(void** from_sp, void* to_sp);
// First entry of a new fiber: start_context leaves the entry function in r12 and its argument in
// rbx, and a stack pointer 16-byte aligned here, so the call below sees the ABI's alignment.
extern "C" void fl_emu_fiber_trampoline();
asm(R"(
    .text
    .globl fl_emu_switch
    .hidden fl_emu_switch
    .type fl_emu_switch, @function
fl_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size fl_emu_switch, .-fl_emu_switch

    .globl fl_emu_fiber_trampoline
    .hidden fl_emu_fiber_trampoline
    .type fl_emu_fiber_trampoline, @function
fl_emu_fiber_trampoline:
    movq %rbx, %rdi
    callq *%r12
    ud2
    .size fl_emu_fiber_trampoline, .-fl_emu_fiber_trampoline
)");

void switch_context(Context* from, Context* to) { fl_emu_switch(&from->sp, to->sp); }

void start_context(Context* ctx, Stack& stack, void (*entry)(void*), void* arg) {
    // After the six pops and the ret of fl_emu_switch, rsp == top (16-byte aligned).
    auto top = reinterpret_cast<std::uintptr_t>(stack.top()) & ~std::uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top) - 7;
    sp[0] = nullptr;                                           // r15
    sp[1] = nullptr;                                           // r14
    sp[2] = nullptr;                                           // r13
    sp[3] = reinterpret_cast<void*>(entry);                    // r12
    sp[4] = arg;                                               // rbx
    sp[5] = nullptr;                                           // rbp
    sp[6] = reinterpret_cast<void*>(&fl_emu_fiber_trampoline);  // return address
    ctx->sp = sp;
}
#else
namespace {
// makecontext passes only int arguments: the entry function and its argument travel as 32-bit halves.
void ucontext_entry(unsigned eh, unsigned el, unsigned ah, unsigned al) {
    auto entry = reinterpret_cast<void (*)(void*)>((std::uintptr_t(eh) << 32) | el);
    entry(reinterpret_cast<void*>((std::uintptr_t(ah) << 32) | al));
}
}  // namespace

void switch_context(Context* from, Context* to) { swapcontext(&from->uc, &to->uc); }

void start_context(Context* ctx, Stack& stack, void (*entry)(void*), void* arg) {
    getcontext(&ctx->uc);
    ctx->uc.uc_stack.ss_sp = stack.bottom();
    ctx->uc.uc_stack.ss_size = stack.size();
    ctx->uc.uc_link = nullptr;
    auto e = reinterpret_cast<std::uintptr_t>(entry), a = reinterpret_cast<std::uintptr_t>(arg);
    makecontext(&ctx->uc, reinterpret_cast<void (*)()>(ucontext_entry), 4, unsigned(e >> 32), unsigned(e),
                unsigned(a >> 32), unsigned(a));
}
#endif

Stack::Stack(std::size_t size) {
    guard_ = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    size_ = (size + guard_ - 1) / guard_ * guard_;
    void* p = mmap(nullptr, guard_ + size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    base_ = static_cast<char*>(p);
    mprotect(base_, guard_, PROT_NONE);
    static std::atomic<unsigned> next_color{0};
    color_ = (next_color.fetch_add(1, std::memory_order_relaxed) % 64 + 1) * 64;
}

Stack::~Stack() { munmap(base_, guard_ + size_); }

}  // namespace fl_emu
