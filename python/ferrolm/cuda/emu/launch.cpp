// The kernel registry and the launch: blocks are handed out to worker OS threads (the caller plus a
// pool), each running its blocks one after another with its own BlockRunner. This file holds the C
// API that the Python side (ferrolm/backends/cuda/emulator.py) calls through ctypes.
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include "scheduler.h"

#define FL_EMU_EXPORT extern "C" __attribute__((visibility("default")))

namespace fl_emu {
namespace {

struct KernelEntry {
    std::string name;
    Invoker invoke;
    int nparams;
    std::string signature;
};

std::vector<KernelEntry>& registry() {
    static std::vector<KernelEntry> kernels;  // filled by the FL_EXPORT static initialisers
    return kernels;
}

// Flush-to-zero and denormals-are-zero, as the GPU build's -ftz=true; returns the previous MXCSR.
unsigned set_ftz() {
#if defined(__x86_64__) || defined(__i386__)
    unsigned old = _mm_getcsr();
    _mm_setcsr(old | 0x8040u);
    return old;
#else
    return 0;
#endif
}

void restore_fp(unsigned old) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_setcsr(old);
#else
    (void)old;
#endif
}

// One launch: the blocks still to run and the first error.
struct Job {
    LaunchSpec spec;
    std::uint64_t total = 0;
    std::atomic<std::uint64_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex error_mu;
    std::string error;

    void work() {
        BlockRunner& runner = BlockRunner::for_this_thread();
        const std::uint64_t gx = spec.grid[0], gy = spec.grid[1];
        while (!failed.load(std::memory_order_relaxed)) {
            const std::uint64_t b = next.fetch_add(1, std::memory_order_relaxed);
            if (b >= total) break;
            const unsigned idx[3] = {unsigned(b % gx), unsigned(b / gx % gy), unsigned(b / (gx * gy))};
            if (!runner.run(spec, idx)) {
                std::lock_guard<std::mutex> lock(error_mu);
                if (!failed.exchange(true)) error = runner.error();
            }
        }
    }
};

// Worker threads that help the calling thread with a launch's blocks. They live as long as the
// process (the pool is never destroyed: detached threads wait on its condition variable).
class Pool {
public:
    // Runs job.work() on the calling thread and on `helpers` pool threads, and waits for all.
    void run(Job& job, unsigned helpers) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            while (threads_ < helpers) {
                std::thread(&Pool::worker, this, threads_).detach();
                ++threads_;
            }
            job_ = &job;
            helpers_ = helpers;
            pending_ = helpers;
            ++generation_;
        }
        work_cv_.notify_all();
        job.work();
        std::unique_lock<std::mutex> lock(mu_);
        done_cv_.wait(lock, [&] { return pending_ == 0; });
        job_ = nullptr;
    }

    std::mutex launch_mu;  // one launch at a time per library

private:
    void worker(unsigned index) {
        set_ftz();
        std::uint64_t seen = 0;
        for (;;) {
            Job* job;
            {
                std::unique_lock<std::mutex> lock(mu_);
                work_cv_.wait(lock, [&] { return generation_ != seen; });
                seen = generation_;
                if (index >= helpers_) continue;
                job = job_;
            }
            job->work();
            std::lock_guard<std::mutex> lock(mu_);
            if (--pending_ == 0) done_cv_.notify_all();
        }
    }

    std::mutex mu_;
    std::condition_variable work_cv_, done_cv_;
    unsigned threads_ = 0, helpers_ = 0, pending_ = 0;
    std::uint64_t generation_ = 0;
    Job* job_ = nullptr;
};

Pool* g_pool = nullptr;
std::once_flag g_atfork_once;

Pool& pool() {
    // A forked child has none of the parent's threads: it starts a fresh pool (the old one leaks).
    std::call_once(g_atfork_once, [] { pthread_atfork(nullptr, nullptr, [] { g_pool = nullptr; }); });
    static std::mutex create_mu;
    std::lock_guard<std::mutex> lock(create_mu);
    if (!g_pool) g_pool = new Pool();
    return *g_pool;
}

void copy_error(const std::string& msg, char* err, std::size_t errlen) {
    if (!err || errlen == 0) return;
    std::size_t n = std::min(msg.size(), errlen - 1);
    std::memcpy(err, msg.data(), n);
    err[n] = '\0';
}

}  // namespace
}  // namespace fl_emu

using namespace fl_emu;

extern "C" __attribute__((visibility("hidden"))) void fl_emu_register(const char* name, Invoker invoke, int nparams,
                                                                      const char* signature) {
    registry().push_back(KernelEntry{name, invoke, nparams, signature});
}

FL_EMU_EXPORT int fl_emu_kernel_count(void) { return static_cast<int>(registry().size()); }
FL_EMU_EXPORT const char* fl_emu_kernel_name(int i) { return registry().at(i).name.c_str(); }
// Space-separated parameter tokens (see emu_registry.h): p<align>, i<n>, u<n>, f<n>, b1, s<n>.
FL_EMU_EXPORT const char* fl_emu_kernel_signature(int i) { return registry().at(i).signature.c_str(); }

// Runs kernel `kernel` over grid × block threads; the Python side has checked the geometry and the
// arguments. Returns 0, or -1 with a message in err on a fault.
FL_EMU_EXPORT int fl_emu_launch(int kernel, const unsigned* grid, const unsigned* block, std::size_t shared_bytes,
                                void** args, int threads, std::size_t stack_bytes, char* err, std::size_t errlen) {
    try {
        const KernelEntry& k = registry().at(kernel);
        Job job;
        job.spec.kernel = k.name.c_str();
        job.spec.invoke = k.invoke;
        job.spec.args = args;
        for (int i = 0; i < 3; ++i) {
            job.spec.grid[i] = grid[i];
            job.spec.block[i] = block[i];
        }
        job.spec.shared_bytes = shared_bytes;
        job.spec.stack_bytes = stack_bytes;
        job.total = std::uint64_t(grid[0]) * grid[1] * grid[2];
        const std::uint64_t workers = std::min<std::uint64_t>(std::max(threads, 1), job.total);

        const unsigned old_fp = set_ftz();
        if (workers <= 1) {
            job.work();  // one block or one thread: no pool round trip
        } else {
            Pool& p = pool();
            std::lock_guard<std::mutex> lock(p.launch_mu);
            p.run(job, static_cast<unsigned>(workers - 1));
        }
        restore_fp(old_fp);
        if (job.failed) {
            copy_error(job.error, err, errlen);
            return -1;
        }
        return 0;
    } catch (const std::exception& e) {
        copy_error(std::string("emulator failure: ") + e.what(), err, errlen);
        return -1;
    }
}
