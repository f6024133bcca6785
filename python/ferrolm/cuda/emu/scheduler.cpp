// The block scheduler: fibers, __syncthreads, warp-synchronous functions and traps (see scheduler.h).
#include "scheduler.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

#include "emu_ops.h"
#include "emu_types.h"

#define FL_EMU_HIDDEN __attribute__((visibility("hidden")))

// The values behind threadIdx, blockIdx, blockDim, gridDim and dynamic shared memory
// (declared in emu_thread.h). They are per OS thread; the scheduler updates them on every switch.
extern "C" {
__thread uint3 fl_emu_t_thread_idx FL_EMU_HIDDEN;
__thread uint3 fl_emu_t_block_idx FL_EMU_HIDDEN;
__thread uint3 fl_emu_t_block_dim FL_EMU_HIDDEN;
__thread uint3 fl_emu_t_grid_dim FL_EMU_HIDDEN;
__thread unsigned char* fl_emu_t_dynamic_shared FL_EMU_HIDDEN;
}

namespace fl_emu {
namespace {

thread_local std::unique_ptr<BlockRunner> t_owned;
thread_local BlockRunner* t_running = nullptr;

const char* op_name(int op) {
    static const char* names[] = {"__syncwarp", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                  "__shfl_xor_sync", "__ballot_sync", "__any_sync", "__all_sync"};
    return op >= 0 && op < 8 ? names[op] : "a warp function";
}

std::string site(const char* file, int line) {
    return std::string(file ? file : "?") + ":" + std::to_string(line);
}

std::string hex(unsigned v) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "0x%08x", v);
    return buf;
}

bool same_site(const Lane& a, const Lane& b) {
    return a.line == b.line && (a.file == b.file || (a.file && b.file && std::strcmp(a.file, b.file) == 0));
}

// The source lane of a shuffle, as PTX's shfl.sync defines it: `width` splits the warp into
// segments; idx reads within the lane's segment; up/down/xor outside [segment start, segment end]
// (up: below the segment start) read the lane's own value. Returns -1 for "own value".
int shuffle_source(int op, int lane, int arg, int width) {
    const long long seg_mask = 32 - width;  // PTX's c[12:8]
    const long long min_lane = lane & seg_mask;
    const long long max_lane = min_lane | (31 & ~seg_mask);
    const long long b = static_cast<unsigned>(arg);
    long long j;
    switch (op) {
        case kShflIdx: j = min_lane | (b & 31 & ~seg_mask); break;
        case kShflUp: j = lane - b; return j >= min_lane ? static_cast<int>(j) : -1;
        case kShflDown: j = lane + b; break;
        default: j = lane ^ b; break;  // xor
    }
    return j <= max_lane ? static_cast<int>(j) : -1;
}

}  // namespace

BlockRunner& BlockRunner::for_this_thread() {
    if (!t_owned) {
        install_fault_handler();
        ensure_signal_stack();
        t_owned.reset(new BlockRunner());
    }
    return *t_owned;
}

BlockRunner* BlockRunner::running() { return t_running; }

std::string BlockRunner::where() const {
    return "kernel '" + std::string(spec_->kernel) + "', block (" + std::to_string(block_idx_[0]) + "," +
           std::to_string(block_idx_[1]) + "," + std::to_string(block_idx_[2]) + ")";
}

std::string BlockRunner::thread_name(const Lane& l) const {
    return "thread (" + std::to_string(l.tid[0]) + "," + std::to_string(l.tid[1]) + "," + std::to_string(l.tid[2]) + ")";
}

Stack* BlockRunner::take_stack() {
    if (free_stacks_.empty()) {
        stacks_.emplace_back(new Stack(stack_bytes_));
        return stacks_.back().get();
    }
    Stack* s = free_stacks_.back();
    free_stacks_.pop_back();
    return s;
}

void BlockRunner::push_ready(Lane& l) {
    l.state = LaneState::kReady;
    std::size_t tail = head_ + count_;
    if (tail >= n_) tail -= n_;
    queue_[tail] = l.linear;
    ++count_;
}

void BlockRunner::enter(Lane& l) {
    if (!l.started) {
        // A fiber takes a stack when it starts and gives it back when it finishes, so a kernel
        // without barriers runs all its threads on two stacks that stay in cache.
        l.stack = take_stack();
        start_context(&l.ctx, *l.stack, &lane_main, &l);
        l.started = true;
    }
    l.state = LaneState::kRunning;
    current_ = &l;
    fl_emu_t_thread_idx = uint3{l.tid[0], l.tid[1], l.tid[2]};
}

void BlockRunner::switch_away(Lane& from) {
    if (count_ > 0 && !faulted_) {
        Lane& next = lanes_[queue_[head_]];
        if (++head_ == n_) head_ = 0;
        --count_;
        enter(next);
        switch_context(&from.ctx, &next.ctx);
    } else {
        switch_context(&from.ctx, &scheduler_);
    }
    reap();  // resumed: the fiber that ran before may have finished
}

void BlockRunner::reap() {
    if (Lane* l = finished_) {
        finished_ = nullptr;
        free_stacks_.push_back(l->stack);
        l->stack = nullptr;
        ++done_;
        warps_[l->linear / 32].exited |= 1u << (l->linear % 32);
    }
}

void BlockRunner::lane_main(void* p) {
    Lane* lane = static_cast<Lane*>(p);
    BlockRunner* r = t_running;
    r->reap();
    r->spec_->invoke(r->spec_->args);
    lane->state = LaneState::kDone;
    r->finished_ = lane;
    r->switch_away(*lane);
    __builtin_unreachable();  // a finished fiber is never resumed
}

bool BlockRunner::run(const LaunchSpec& spec, const unsigned block_idx[3]) {
    spec_ = &spec;
    for (int i = 0; i < 3; ++i) block_idx_[i] = block_idx[i];
    const unsigned bx = spec.block[0], by = spec.block[1];
    n_ = bx * by * spec.block[2];
    done_ = at_barrier_ = 0;
    faulted_ = false;
    finished_ = nullptr;
    error_.clear();

    if (stack_bytes_ != spec.stack_bytes) {
        free_stacks_.clear();
        stacks_.clear();
        stack_bytes_ = spec.stack_bytes;
    }
    free_stacks_.clear();
    for (auto& s : stacks_) free_stacks_.push_back(s.get());

    if (shared_capacity_ < spec.shared_bytes || !shared_) {
        shared_capacity_ = spec.shared_bytes;
        shared_.reset(new unsigned char[shared_capacity_ + 16]);
    }
    auto base = reinterpret_cast<std::uintptr_t>(shared_.get());
    fl_emu_t_dynamic_shared = reinterpret_cast<unsigned char*>((base + 15) & ~std::uintptr_t(15));
    fl_emu_t_block_idx = uint3{block_idx[0], block_idx[1], block_idx[2]};
    fl_emu_t_block_dim = uint3{spec.block[0], spec.block[1], spec.block[2]};
    fl_emu_t_grid_dim = uint3{spec.grid[0], spec.grid[1], spec.grid[2]};

    lanes_.resize(n_);
    warps_.assign((n_ + 31) / 32, WarpState{});
    queue_.resize(n_);
    head_ = count_ = 0;
    for (unsigned i = 0; i < n_; ++i) {
        Lane& l = lanes_[i];
        l.tid[0] = i % bx;
        l.tid[1] = (i / bx) % by;
        l.tid[2] = i / (bx * by);
        l.linear = i;
        l.started = false;
        l.stack = nullptr;
        warps_[i / 32].exists |= 1u << (i % 32);
        push_ready(l);
    }

    t_running = this;
    bool ok = true;
    for (;;) {
        if (count_ > 0) {
            // Start the first ready fiber; the fibers pass control among themselves and come back
            // here when none is ready.
            Lane& l = lanes_[queue_[head_]];
            if (++head_ == n_) head_ = 0;
            --count_;
            enter(l);
            switch_context(&scheduler_, &l.ctx);
            current_ = nullptr;
            reap();
        }
        if (faulted_) { ok = false; break; }
        if (count_ > 0) continue;
        if (done_ == n_) break;
        if (at_barrier_ == n_) {
            if (!release_barrier()) { ok = false; break; }
            continue;
        }
        error_ = describe_stall();
        ok = false;
        break;
    }
    t_running = nullptr;
    return ok;
}

// ---- __syncthreads -----------------------------------------------------------------------------

int BlockRunner::block_sync(int pred, const char* file, int line) {
    Lane& l = *current_;
    l.state = LaneState::kAtBarrier;
    l.file = file;
    l.line = line;
    l.pred = pred != 0;
    ++at_barrier_;
    switch_away(l);
    return barrier_result_;  // set by release_barrier; read before any thread can reach the next barrier
}

bool BlockRunner::release_barrier() {
    const Lane& first = lanes_[0];
    int count = 0;
    for (const Lane& l : lanes_) {
        if (!same_site(l, first)) {
            error_ = where() + ": threads wait at different __syncthreads: " + thread_name(first) + " at " +
                     site(first.file, first.line) + ", " + thread_name(l) + " at " + site(l.file, l.line);
            return false;
        }
        count += l.pred;
    }
    barrier_result_ = count;  // __syncthreads_count
    at_barrier_ = 0;
    for (Lane& l : lanes_) push_ready(l);
    return true;
}

// ---- warp-synchronous functions ----------------------------------------------------------------

unsigned BlockRunner::active_mask() const {
    const WarpState& w = warps_[current_->linear / 32];
    return w.exists & ~w.exited;
}

std::uint64_t BlockRunner::warp_sync(unsigned mask, int op, std::uint64_t value, int arg, int width,
                                     const char* file, int line) {
    Lane& l = *current_;
    const unsigned warp = l.linear / 32, bit = 1u << (l.linear % 32);
    WarpState& w = warps_[warp];
    if (!(mask & bit))
        trap(std::string(op_name(op)) + " with mask " + hex(mask) + " that does not name the calling lane " +
                 std::to_string(l.linear % 32), file, line);
    if (width < 1 || width > 32 || (width & (width - 1)))
        trap(std::string(op_name(op)) + " with width " + std::to_string(width) + " (must be a power of two, 1 to 32)",
             file, line);
    const unsigned needed = mask & w.exists;  // lanes past the end of a partial warp do not take part
    if (needed & w.exited) {
        int gone = __builtin_ctz(needed & w.exited);
        trap(std::string(op_name(op)) + " with mask " + hex(mask) + " names lane " + std::to_string(gone) + ", " +
                 thread_name(lanes_[warp * 32 + gone]) + ", which has exited", file, line);
    }
    l.wmask = mask;
    l.wop = op;
    l.wval = value;
    l.warg = arg;
    l.wwidth = width;
    l.file = file;
    l.line = line;
    l.state = LaneState::kAtWarp;
    w.arrived |= bit;
    if ((w.arrived & needed) == needed) {
        complete_warp_op(warp, needed, l);  // the last lane to arrive computes everyone's result
        l.state = LaneState::kRunning;
    } else {
        switch_away(l);
    }
    return l.wout;
}

void BlockRunner::complete_warp_op(unsigned warp, unsigned needed, const Lane& caller) {
    Lane* lanes = &lanes_[warp * 32];
    unsigned votes = 0;
    for (unsigned m = needed; m; m &= m - 1) {
        const Lane& o = lanes[__builtin_ctz(m)];
        if (o.wmask != caller.wmask || o.wop != caller.wop)
            trap(thread_name(caller) + " calls " + op_name(caller.wop) + " with mask " + hex(caller.wmask) + " while " +
                     thread_name(o) + " of its mask waits in " + op_name(o.wop) + " with mask " + hex(o.wmask) +
                     " at " + site(o.file, o.line),
                 caller.file, caller.line);
        if (o.wval) votes |= 1u << __builtin_ctz(m);
    }
    // Reading a lane that does not take part (outside the mask, past a partial warp's end) is
    // undefined in CUDA; the emulator returns all-ones bits (NaN for floats) so such a result shows.
    const std::uint64_t poison = ~std::uint64_t(0);
    for (unsigned m = needed; m; m &= m - 1) {
        const int j = __builtin_ctz(m);
        Lane& o = lanes[j];
        switch (o.wop) {
            case kSyncWarp: o.wout = 0; break;
            case kBallot: o.wout = votes; break;
            case kAny: o.wout = votes != 0; break;
            case kAll: o.wout = votes == needed; break;
            default: {
                int src = shuffle_source(o.wop, j, o.warg, o.wwidth);
                if (src < 0 || src == j) o.wout = o.wval;
                else o.wout = (needed >> src) & 1u ? lanes[src].wval : poison;
            }
        }
        if (&o != &caller) push_ready(o);
    }
    warps_[warp].arrived &= ~needed;
}

// ---- stalls and traps --------------------------------------------------------------------------

std::string BlockRunner::describe_stall() const {
    auto state_of = [&](const Lane& o) -> std::string {
        switch (o.state) {
            case LaneState::kDone: return "has exited";
            case LaneState::kAtBarrier: return "waits at __syncthreads at " + site(o.file, o.line);
            case LaneState::kAtWarp:
                return "waits in " + std::string(op_name(o.wop)) + " with mask " + hex(o.wmask) + " at " + site(o.file, o.line);
            default: return "is runnable";
        }
    };
    for (const Lane& l : lanes_) {
        if (l.state != LaneState::kAtWarp) continue;
        const unsigned warp = l.linear / 32;
        const unsigned missing = l.wmask & warps_[warp].exists & ~warps_[warp].arrived;
        const Lane& o = lanes_[warp * 32 + __builtin_ctz(missing ? missing : 1u)];
        return where() + ": deadlock: " + thread_name(l) + " waits in " + op_name(l.wop) + " with mask " +
               hex(l.wmask) + " at " + site(l.file, l.line) + " for lane " + std::to_string(o.linear % 32) + ", " +
               thread_name(o) + ", which " + state_of(o);
    }
    const Lane* waiting = nullptr;
    const Lane* exited = nullptr;
    for (const Lane& l : lanes_) {
        if (l.state == LaneState::kAtBarrier && !waiting) waiting = &l;
        if (l.state == LaneState::kDone && !exited) exited = &l;
    }
    if (waiting && exited)
        return where() + ": barrier divergence: " + std::to_string(at_barrier_) + " of " + std::to_string(n_) +
               " threads wait at __syncthreads at " + site(waiting->file, waiting->line) + " but " +
               std::to_string(done_) + " exited without reaching it (e.g. " + thread_name(*exited) + ")";
    return where() + ": the block stalled (" + std::to_string(done_) + " of " + std::to_string(n_) + " threads finished)";
}

void BlockRunner::trap(const std::string& what, const char* file, int line) {
    faulted_ = true;
    error_ = where() + ", " + thread_name(*current_) + ": " + what + (file ? " at " + site(file, line) : "");
    Lane& l = *current_;
    switch_context(&l.ctx, &scheduler_);  // never resumed: the block is abandoned
    __builtin_unreachable();
}

}  // namespace fl_emu

// ---- the C entry points the shim's inline functions call (emu_thread.h) --------------------------

using fl_emu::BlockRunner;

namespace {
[[noreturn]] void outside_kernel(const char* what, const char* file, int line) {
    std::fprintf(stderr, "ferrolm CUDA emulator: %s at %s:%d outside a kernel launch\n", what, file ? file : "?", line);
    std::abort();
}
}  // namespace

extern "C" FL_EMU_HIDDEN int fl_emu_block_sync(int op, int pred, const char* file, int line) {
    BlockRunner* r = BlockRunner::running();
    if (!r) outside_kernel("__syncthreads", file, line);
    int count = r->block_sync(pred, file, line);
    const int n = static_cast<int>(fl_emu_t_block_dim.x * fl_emu_t_block_dim.y * fl_emu_t_block_dim.z);
    switch (op) {
        case 1: return count;
        case 2: return count == n;
        case 3: return count > 0;
        default: return 0;
    }
}

extern "C" FL_EMU_HIDDEN std::uint64_t fl_emu_warp_sync(unsigned mask, int op, std::uint64_t value, int arg, int width,
                                                        const char* file, int line) {
    BlockRunner* r = BlockRunner::running();
    if (!r) outside_kernel("a warp function", file, line);
    return r->warp_sync(mask, op, value, arg, width, file, line);
}

extern "C" FL_EMU_HIDDEN unsigned fl_emu_active_mask(void) {
    BlockRunner* r = BlockRunner::running();
    return r ? r->active_mask() : 0u;
}

extern "C" FL_EMU_HIDDEN void fl_emu_trap(const char* what, const char* file, int line) {
    BlockRunner* r = BlockRunner::running();
    if (!r) outside_kernel(what, file, line);
    r->trap(what, file, line);
}

// glibc's assert() calls __assert_fail. The library is linked with -Bsymbolic, so this definition
// serves every assert() in it, also one from a <cassert> included after the shim: a failed device
// assertion ends the launch with an error instead of aborting the Python process.
extern "C" void __assert_fail(const char* expr, const char* file, unsigned int line, const char* function) noexcept {
    std::string what = std::string("assertion '") + expr + "' failed in " + (function ? function : "?");
    BlockRunner* r = BlockRunner::running();
    if (!r) outside_kernel(what.c_str(), file, static_cast<int>(line));
    r->trap(what, file, static_cast<int>(line));
}
