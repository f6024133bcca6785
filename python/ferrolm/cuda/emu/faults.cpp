// Memory faults inside a kernel (a wild pointer, a fiber stack overflowing into its guard page)
// become launch errors, like CUDA's "illegal address", instead of killing the Python process.
//
// A SIGSEGV/SIGBUS handler runs on a per-thread alternate signal stack (the fiber's own stack may
// be the one that overflowed). When the fault comes from a kernel fiber, the handler records the
// error and switches to the block's scheduler for good, as a trap does; SA_NODEFER keeps the signal
// unblocked after that one-way exit. Faults elsewhere go to the handler installed before.
#include <signal.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>

#include "scheduler.h"

namespace fl_emu {
namespace {

struct sigaction g_previous_segv, g_previous_bus;

void on_fault(int sig, siginfo_t* info, void* uctx) {
    BlockRunner* r = BlockRunner::running();
    if (r && r->in_fiber()) r->memory_fault(sig == SIGBUS ? "SIGBUS" : "SIGSEGV", info->si_addr);  // no return
    const struct sigaction& prev = sig == SIGSEGV ? g_previous_segv : g_previous_bus;
    if (prev.sa_handler == SIG_IGN) return;
    if (prev.sa_handler == SIG_DFL) {
        signal(sig, SIG_DFL);  // the faulting instruction runs again and the process dies as before
        return;
    }
    if (prev.sa_flags & SA_SIGINFO) prev.sa_sigaction(sig, info, uctx);
    else prev.sa_handler(sig);
}

constexpr std::size_t kSignalStackBytes = 64 * 1024;

}  // namespace

void install_fault_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa = {};
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_previous_segv);
        sigaction(SIGBUS, &sa, &g_previous_bus);
    });
}

void ensure_signal_stack() {
    thread_local std::unique_ptr<char[]> memory;
    stack_t current;
    if (sigaltstack(nullptr, &current) == 0 && !(current.ss_flags & SS_DISABLE)) return;  // one is set already
    memory.reset(new char[kSignalStackBytes]);
    stack_t ss = {};
    ss.ss_sp = memory.get();
    ss.ss_size = kSignalStackBytes;
    sigaltstack(&ss, nullptr);
}

void BlockRunner::memory_fault(const char* signal_name, const void* address) {
    char addr[32];
    std::snprintf(addr, sizeof addr, "%p", address);
    if (current_->stack && current_->stack->contains_guard(address))
        trap("stack overflow (" + std::to_string(stack_bytes_ / 1024) +
                 " KiB per thread; FERROLM_EMU_STACK_KB sets more)", nullptr, 0);
    trap(std::string("invalid memory access at address ") + addr + " (" + signal_name + ")", nullptr, 0);
}

}  // namespace fl_emu
