// Runs one thread block: every CUDA thread of the block is a fiber on the calling OS thread, and
// the fibers take turns cooperatively. A fiber runs until it finishes or waits: at __syncthreads
// (released when the whole block has arrived) or in a warp-synchronous function (released when
// every live lane of its mask has arrived). A fiber that stops switches straight to the next ready
// one (one switch, not two through a scheduler); only when none is ready does control go back to
// run(), which releases a complete barrier or, when nothing can run but the block is not finished,
// reports the misuse (barrier divergence, deadlock) instead of hanging.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fiber.h"

namespace fl_emu {

using Invoker = void (*)(void** args);

// What every block of one launch shares.
struct LaunchSpec {
    const char* kernel;       // name, for messages
    Invoker invoke;           // calls the kernel with the unpacked arguments
    void** args;              // one pointer per parameter value
    unsigned grid[3];
    unsigned block[3];
    std::size_t shared_bytes;  // dynamic shared memory
    std::size_t stack_bytes;   // per fiber
};

enum class LaneState : std::uint8_t { kReady, kRunning, kAtBarrier, kAtWarp, kDone };

// One CUDA thread.
struct Lane {
    Context ctx;
    Stack* stack = nullptr;
    unsigned tid[3] = {0, 0, 0};
    unsigned linear = 0;  // x + y·bx + z·bx·by; warp = linear / 32, lane = linear % 32
    LaneState state = LaneState::kReady;
    bool started = false;
    const char* file = nullptr;  // where it waits
    int line = 0;
    int pred = 0;                 // __syncthreads_{count,and,or} predicate
    unsigned wmask = 0;           // warp operation: mask, kind, value, argument, width, result
    int wop = 0;
    std::uint64_t wval = 0;
    int warg = 0;
    int wwidth = 32;
    std::uint64_t wout = 0;
};

struct WarpState {
    unsigned exists = 0;   // lanes that exist (a block's last warp may be partial)
    unsigned arrived = 0;  // lanes waiting in a warp-synchronous function
    unsigned exited = 0;   // lanes that have finished
};

class BlockRunner {
public:
    // The runner of the calling OS thread (created on first use; owns its fiber stacks).
    static BlockRunner& for_this_thread();
    // The runner whose block is running on this OS thread, or null outside a launch.
    static BlockRunner* running();

    // Runs block `block_idx` of `spec` to completion; false (with error()) on a fault.
    bool run(const LaunchSpec& spec, const unsigned block_idx[3]);
    const std::string& error() const { return error_; }

    // Called from the running fiber.
    int block_sync(int pred, const char* file, int line);
    std::uint64_t warp_sync(unsigned mask, int op, std::uint64_t value, int arg, int width, const char* file, int line);
    unsigned active_mask() const;
    [[noreturn]] void trap(const std::string& what, const char* file, int line);  // file may be null
    bool in_fiber() const { return current_ != nullptr; }
    [[noreturn]] void memory_fault(const char* signal_name, const void* address);  // faults.cpp

private:
    static void lane_main(void* lane);
    void enter(Lane& lane);           // makes `lane` the running one (starting its fiber if new)
    void switch_away(Lane& from);     // from a stopped fiber to the next ready one, or to run()
    void reap();                      // frees the stack of the fiber that just finished
    void push_ready(Lane& lane);
    Stack* take_stack();
    bool release_barrier();
    void complete_warp_op(unsigned warp, unsigned needed, const Lane& caller);
    std::string describe_stall() const;
    std::string where() const;                 // "kernel 'k', block (x,y,z)"
    std::string thread_name(const Lane& l) const;  // "thread (x,y,z)"

    const LaunchSpec* spec_ = nullptr;
    unsigned block_idx_[3] = {0, 0, 0};
    unsigned n_ = 0, done_ = 0, at_barrier_ = 0;
    int barrier_result_ = 0;
    std::vector<Lane> lanes_;
    std::vector<WarpState> warps_;
    std::vector<unsigned> queue_;  // ring of ready lanes; each lane is in it at most once
    std::size_t head_ = 0, count_ = 0;
    Context scheduler_;
    Lane* current_ = nullptr;
    Lane* finished_ = nullptr;  // finished, its stack still in use until the next fiber runs
    bool faulted_ = false;
    std::string error_;
    std::vector<std::unique_ptr<Stack>> stacks_;
    std::vector<Stack*> free_stacks_;
    std::size_t stack_bytes_ = 0;
    std::unique_ptr<unsigned char[]> shared_;  // dynamic shared memory, 16-byte aligned inside
    std::size_t shared_capacity_ = 0;
};

// faults.cpp: turn SIGSEGV/SIGBUS in a kernel fiber into a launch error (installed once per
// process), and give the calling OS thread an alternate signal stack to handle them on.
void install_fault_handler();
void ensure_signal_stack();

}  // namespace fl_emu
