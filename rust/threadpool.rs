//! A persistent worker pool: `run(f)` calls `f(thread_id, n_threads)` once for every
//! thread id (the caller runs id 0) and returns when all are done. Kernels split their
//! own work by `thread_id`, so a call costs no allocation and no thread start-up.
//!
//! Protocol (n_threads - 1 workers, spawned once in `new`):
//! - the caller (holding the dispatch mutex) publishes a pointer to `f`, sets
//!   `remaining = n_threads - 1`, and stores a new `state` word = (generation, next id 1);
//! - workers spin on `state` for a short while (`SPIN`), then sleep on a condvar, so an
//!   idle pool burns no CPU. On a new generation each worker *claims* ids 1.. with a CAS
//!   on `state` (a claim only succeeds while that generation is current), runs
//!   `f(id, n)` (panics caught), and decrements `remaining`;
//! - the caller runs id 0, then claims whatever ids no worker has picked up yet (so a
//!   worker that is descheduled or slow to wake cannot stall the call), and finally
//!   spins / sleeps until `remaining == 0`. Only then does `run` return, so the borrowed
//!   `f` outlives every use of it.
//!
//! Consequence: ids normally run on distinct threads, but an id may run on the caller
//! (after id 0) — `f` must not wait for other ids of the same call (no barriers inside).

use std::any::Any;
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long a waiting thread spins before it falls back to sleeping.
const SPIN: Duration = Duration::from_micros(100);

/// The job as published: `&dyn Fn` behind a thin pointer, lifetime erased.
type JobRef<'a> = &'a (dyn Fn(usize, usize) + Sync + 'a);

/// `state` packs the generation (high 32 bits) and the next unclaimed id (low 32 bits).
fn pack(generation: u32, next: usize) -> u64 {
    (u64::from(generation) << 32) | next as u64
}
fn generation_of(state: u64) -> u32 {
    (state >> 32) as u32
}
fn next_of(state: u64) -> usize {
    (state & 0xffff_ffff) as usize
}

/// Pads a value to its own cache-line pair so that caller-written and worker-written
/// words don't false-share.
#[repr(align(128))]
struct Padded<T>(T);

/// State shared by the caller and the workers.
struct Shared {
    n_threads: usize,
    /// (generation, next unclaimed id) of the current job; see the module docs.
    state: Padded<AtomicU64>,
    /// Ids ≥ 1 of the current job not finished yet.
    remaining: Padded<AtomicUsize>,
    /// Points at the caller's `JobRef` (valid while the current job is incomplete).
    job: AtomicPtr<()>,
    shutdown: AtomicBool,
    /// Workers asleep on `wake` (or about to be).
    sleepers: AtomicUsize,
    wake_lock: Mutex<()>,
    wake: Condvar,
    /// Whether the caller is asleep on `done` (or about to be).
    caller_sleeping: AtomicBool,
    done_lock: Mutex<()>,
    done: Condvar,
    /// The first panic payload caught on a worker during the current job.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

/// A fixed set of threads that run borrowed closures; see the module docs.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serializes `run` calls from different threads; holds the last generation used.
    dispatch: Mutex<u32>,
}

thread_local! {
    /// True while this thread executes a pool job; a nested `run` then runs inline.
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as inside a job until dropped (also on unwind).
struct InJob(bool);

impl InJob {
    fn enter() -> Self {
        InJob(IN_JOB.with(|c| c.replace(true)))
    }
}

impl Drop for InJob {
    fn drop(&mut self) {
        let prev = self.0;
        IN_JOB.with(|c| c.set(prev));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spins until `done()` holds or `SPIN` elapses; returns whether it holds.
#[inline]
fn spin_until(mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            if done() {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() > SPIN {
            return done();
        }
    }
}

impl ThreadPool {
    /// Starts `n_threads - 1` workers (the caller of `run` is the n-th thread).
    pub fn new(n_threads: usize) -> Result<Self> {
        if n_threads == 0 || n_threads > 1024 {
            return Err(Error::InvalidArgument(format!(
                "threads must be between 1 and 1024, got {n_threads}"
            )));
        }
        let shared = Arc::new(Shared {
            n_threads,
            // Generation 0 is "no job": nothing to claim.
            state: Padded(AtomicU64::new(pack(0, n_threads))),
            remaining: Padded(AtomicUsize::new(0)),
            job: AtomicPtr::new(std::ptr::null_mut()),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            wake_lock: Mutex::new(()),
            wake: Condvar::new(),
            caller_sleeping: AtomicBool::new(false),
            done_lock: Mutex::new(()),
            done: Condvar::new(),
            panic: Mutex::new(None),
        });
        let mut pool = ThreadPool {
            shared,
            workers: Vec::new(),
            dispatch: Mutex::new(0),
        };
        for id in 1..n_threads {
            let shared = Arc::clone(&pool.shared);
            let handle = std::thread::Builder::new()
                .name(format!("ferrolm-worker-{id}"))
                .spawn(move || worker_loop(&shared))
                .map_err(|e| Error::Io(format!("could not start worker thread: {e}")))?;
            // On error, `pool` drops here and joins the workers already started.
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    pub fn n_threads(&self) -> usize {
        self.shared.n_threads
    }

    /// Calls `f(range, rows)` on ranges of the rows of `out` (rows of `width` values) that
    /// cover them once between them, `rows` being that range's rows of `out`: one range per
    /// thread from [`ROWS_ON_POOL`] rows on, else one on the calling thread. For row-wise work
    /// whose result does not depend on how the rows are cut.
    pub fn rows_mut<T: Send, F: Fn(std::ops::Range<usize>, &mut [T]) + Sync>(&self, out: &mut [T], width: usize, f: F) {
        let rows = out.len() / width.max(1);
        if self.n_threads() == 1 || rows < ROWS_ON_POOL {
            f(0..rows, out);
            return;
        }
        let p = &SyncPtr(out.as_mut_ptr()); // shared whole: its raw field is not Sync on its own
        self.run(|t, nt| {
            let r = chunk(rows, t, nt);
            // SAFETY: the ranges of the threads are disjoint rows of `out`, borrowed for the call.
            let mine = unsafe { std::slice::from_raw_parts_mut(p.0.add(r.start * width), r.len() * width) };
            f(r, mine);
        });
    }

    /// Calls `f(thread_id, n_threads)` once for every id in `0..n_threads` and returns
    /// when all are done. The caller runs id 0 (and any id no worker picked up in time).
    /// A panic in `f` is re-raised here after all ids finished. Concurrent calls are
    /// serialized; a call from inside `f` runs all ids inline.
    pub fn run<F: Fn(usize, usize) + Sync>(&self, f: F) {
        let n = self.shared.n_threads;
        if n == 1 {
            f(0, 1);
            return;
        }
        if IN_JOB.with(|c| c.get()) {
            // Nested call: the workers are busy with the outer job, so run serially.
            for t in 0..n {
                f(t, n);
            }
            return;
        }
        let mut last_gen = lock(&self.dispatch);
        let s = &*self.shared;
        // Generation 0 means "no job"; skip it on wrap-around.
        let gen = last_gen.wrapping_add(1).max(1);
        *last_gen = gen;
        let job: JobRef<'_> = &f;
        // `run` doesn't return (nor unwind) before every claimed id has finished, and ids
        // can only be claimed while this generation is current, so `job` outlives its uses.
        s.job
            .store(&job as *const JobRef<'_> as *mut (), Ordering::Relaxed);
        s.remaining.0.store(n - 1, Ordering::Relaxed);
        s.state.0.store(pack(gen, 1), Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = lock(&s.wake_lock);
            s.wake.notify_all();
        }

        let mine = {
            let _in_job = InJob::enter();
            let r = panic::catch_unwind(AssertUnwindSafe(|| f(0, n)));
            // Take over the ids that no worker has claimed yet.
            claim_and_run(s, gen);
            r
        };
        self.wait_done();
        let theirs = lock(&s.panic).take();
        drop(last_gen);
        if let Err(p) = mine {
            panic::resume_unwind(p);
        }
        if let Some(p) = theirs {
            panic::resume_unwind(p);
        }
    }

    /// Waits until every id ≥ 1 of the current job has finished.
    fn wait_done(&self) {
        let s = &*self.shared;
        let done = || s.remaining.0.load(Ordering::Acquire) == 0;
        if spin_until(done) {
            return;
        }
        let mut g = lock(&s.done_lock);
        s.caller_sleeping.store(true, Ordering::SeqCst);
        while s.remaining.0.load(Ordering::SeqCst) != 0 {
            g = s.done.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        s.caller_sleeping.store(false, Ordering::Relaxed);
    }
}

/// Claims and runs ids of generation `gen` until none is left (or the generation is over).
fn claim_and_run(s: &Shared, gen: u32) {
    let n = s.n_threads;
    let mut state = s.state.0.load(Ordering::Acquire);
    loop {
        if generation_of(state) != gen || next_of(state) >= n {
            return;
        }
        let id = next_of(state);
        if let Err(now) =
            s.state
                .0
                .compare_exchange_weak(state, state + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            state = now;
            continue;
        }
        // SAFETY: the claim succeeded while `gen` was current with ids left, so the job is
        // incomplete until we decrement `remaining`: the caller is still inside `run`,
        // and `job` (published before `state`, read after our Acquire) points at its JobRef.
        let f: JobRef<'_> = unsafe { *(s.job.load(Ordering::Acquire) as *const JobRef<'_>) };
        if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| f(id, n))) {
            lock(&s.panic).get_or_insert(p);
        }
        if s.remaining.0.fetch_sub(1, Ordering::SeqCst) == 1
            && s.caller_sleeping.load(Ordering::SeqCst)
        {
            let _g = lock(&s.done_lock);
            s.done.notify_one();
        }
        state = s.state.0.load(Ordering::Acquire);
    }
}

/// A worker: waits for a new generation, claims and runs ids, repeats.
fn worker_loop(s: &Shared) {
    let mut seen = 0u32;
    loop {
        seen = wait_generation(s, seen);
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        let _in_job = InJob::enter();
        claim_and_run(s, seen);
    }
}

/// Waits (spin, then sleep) until the generation differs from `seen`; returns it.
fn wait_generation(s: &Shared, seen: u32) -> u32 {
    let current = || generation_of(s.state.0.load(Ordering::Acquire));
    if spin_until(|| current() != seen) {
        return current();
    }
    let mut g = lock(&s.wake_lock);
    s.sleepers.fetch_add(1, Ordering::SeqCst);
    while generation_of(s.state.0.load(Ordering::SeqCst)) == seen {
        g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
    }
    s.sleepers.fetch_sub(1, Ordering::Relaxed);
    current()
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        let mut last_gen = lock(&self.dispatch);
        let s = &*self.shared;
        s.shutdown.store(true, Ordering::SeqCst);
        // A new generation with no ids to claim wakes every worker, which then exits.
        let gen = last_gen.wrapping_add(1).max(1);
        *last_gen = gen;
        s.state.0.store(pack(gen, s.n_threads), Ordering::SeqCst);
        {
            let _g = lock(&s.wake_lock);
            s.wake.notify_all();
        }
        for h in self.workers.drain(..) {
            // Workers catch job panics, so a join error is not expected; ignore it.
            let _ = h.join();
        }
    }
}

/// Splits `0..len` into `n` near-equal contiguous chunks and returns chunk `i`.
pub fn chunk(len: usize, i: usize, n: usize) -> std::ops::Range<usize> {
    let base = len / n;
    let rem = len % n;
    let start = i * base + i.min(rem);
    let end = start + base + usize::from(i < rem);
    start..end
}

/// [`ThreadPool::rows_mut`] splits the rows among the threads from this many on (a prompt's
/// element-wise work; a decode step's one row stays on the calling thread).
pub const ROWS_ON_POOL: usize = 16;

/// A raw pointer that threads may share to write disjoint parts of one output slice.
#[derive(Clone, Copy)]
pub struct SyncPtr<T>(pub *mut T);
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn pool_is_send_and_sync() {
        assert_send_sync::<ThreadPool>();
    }

    #[test]
    fn rejects_bad_thread_counts() {
        assert!(matches!(ThreadPool::new(0), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            ThreadPool::new(1025),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(ThreadPool::new(3).unwrap().n_threads(), 3);
    }

    #[test]
    fn single_thread_runs_inline() {
        let pool = ThreadPool::new(1).unwrap();
        let me = std::thread::current().id();
        let calls = AtomicUsize::new(0);
        pool.run(|t, n| {
            assert_eq!((t, n), (0, 1));
            assert_eq!(std::thread::current().id(), me);
            calls.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn every_thread_id_runs_exactly_once() {
        for n in 1..=6 {
            let pool = ThreadPool::new(n).unwrap();
            for _ in 0..50 {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                let caller = std::thread::current().id();
                pool.run(|t, nt| {
                    assert_eq!(nt, n);
                    if t == 0 {
                        assert_eq!(
                            std::thread::current().id(),
                            caller,
                            "thread 0 is the caller"
                        );
                    }
                    hits[t].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn many_consecutive_runs() {
        for n in [2, 3, 4] {
            let pool = ThreadPool::new(n).unwrap();
            let runs = if n == 2 { 10_000 } else { 2_000 };
            let total = AtomicU64::new(0);
            for r in 0..runs as u64 {
                let sum = AtomicU64::new(0);
                pool.run(|t, _| {
                    sum.fetch_add(t as u64 + 1 + r, Ordering::Relaxed);
                });
                // Σ (t + 1 + r) over t < n: every contribution is visible once run returns.
                let want = (n * (n + 1) / 2) as u64 + n as u64 * r;
                assert_eq!(
                    sum.load(Ordering::Relaxed),
                    want,
                    "run {r} with {n} threads"
                );
                total.fetch_add(1, Ordering::Relaxed);
            }
            assert_eq!(total.load(Ordering::Relaxed), runs as u64);
        }
    }

    #[test]
    fn oversubscribed_pool_stays_correct() {
        // More threads than cores: some ids get taken over by the caller when a worker
        // isn't scheduled in time; every id must still run exactly once per call.
        let pool = ThreadPool::new(8).unwrap();
        let caller = std::thread::current().id();
        let on_caller = AtomicUsize::new(0);
        for _ in 0..2_000 {
            let hits: Vec<AtomicUsize> = (0..8).map(|_| AtomicUsize::new(0)).collect();
            pool.run(|t, _| {
                hits[t].fetch_add(1, Ordering::Relaxed);
                if t != 0 && std::thread::current().id() == caller {
                    on_caller.fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
        println!(
            "ids ≥ 1 run by the caller: {}",
            on_caller.load(Ordering::Relaxed)
        );
    }

    #[test]
    fn writes_of_workers_are_visible_after_run() {
        let pool = ThreadPool::new(3).unwrap();
        let mut data = vec![0u32; 1000];
        for round in 1..=200u32 {
            let p = SyncPtr(data.as_mut_ptr());
            let len = data.len();
            pool.run(|t, n| {
                #[allow(clippy::redundant_locals)]
                let p = p; // capture the whole (Sync) wrapper, not its raw-pointer field
                for i in chunk(len, t, n) {
                    // SAFETY: chunks are disjoint.
                    unsafe { *p.0.add(i) = round * 7 + i as u32 };
                }
            });
            assert!(data
                .iter()
                .enumerate()
                .all(|(i, &v)| v == round * 7 + i as u32));
        }
    }

    #[test]
    fn concurrent_callers_are_serialized() {
        let pool = ThreadPool::new(3).unwrap();
        let active = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for caller in 0..2u64 {
                let (pool, active) = (&pool, &active);
                s.spawn(move || {
                    for r in 0..1_000u64 {
                        let sum = AtomicU64::new(0);
                        pool.run(|t, n| {
                            // At most one job is in flight: n threads of one run.
                            assert!(active.fetch_add(1, Ordering::SeqCst) < n);
                            sum.fetch_add(caller * 1000 + r + t as u64, Ordering::Relaxed);
                            active.fetch_sub(1, Ordering::SeqCst);
                        });
                        assert_eq!(sum.load(Ordering::Relaxed), 3 * (caller * 1000 + r) + 3);
                    }
                });
            }
        });
    }

    #[test]
    fn sleeping_workers_wake_up() {
        let pool = ThreadPool::new(2).unwrap();
        for _ in 0..5 {
            // Idle well past the spin window so workers park on the condvar.
            std::thread::sleep(Duration::from_millis(3));
            let hits = AtomicUsize::new(0);
            pool.run(|_, _| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(hits.load(Ordering::Relaxed), 2);
        }
    }

    #[test]
    fn caller_waits_for_slow_worker() {
        // Thread 0 finishes at once; the worker outlasts the spin window, so the
        // caller must sleep and be woken by the last worker.
        let pool = ThreadPool::new(3).unwrap();
        for _ in 0..5 {
            let done = AtomicUsize::new(0);
            pool.run(|t, _| {
                if t == 2 {
                    std::thread::sleep(Duration::from_millis(2));
                }
                done.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(done.load(Ordering::Relaxed), 3);
        }
    }

    #[test]
    fn worker_panic_propagates_and_pool_survives() {
        let pool = ThreadPool::new(3).unwrap();
        let finished = AtomicUsize::new(0);
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.run(|t, _| {
                if t == 1 {
                    panic!("boom on worker");
                }
                finished.fetch_add(1, Ordering::Relaxed);
            })
        }));
        let msg = r.expect_err("panic must reach the caller");
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"boom on worker"));
        assert_eq!(
            finished.load(Ordering::Relaxed),
            2,
            "other threads still ran"
        );
        let hits = AtomicUsize::new(0);
        pool.run(|_, _| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn caller_panic_waits_for_workers() {
        let pool = ThreadPool::new(2).unwrap();
        let worker_done = AtomicUsize::new(0);
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.run(|t, _| {
                if t == 0 {
                    panic!("boom on caller");
                }
                std::thread::sleep(Duration::from_millis(1));
                worker_done.fetch_add(1, Ordering::Relaxed);
            })
        }));
        assert!(r.is_err());
        // `run` unwound only after the worker had finished with the closure.
        assert_eq!(worker_done.load(Ordering::Relaxed), 1);
        let hits = AtomicUsize::new(0);
        pool.run(|_, _| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn nested_run_executes_inline() {
        let pool = ThreadPool::new(2).unwrap();
        let inner = AtomicUsize::new(0);
        pool.run(|_, _| {
            pool.run(|t, n| {
                assert!(t < n);
                inner.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(inner.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn drop_joins_workers() {
        for n in [2, 4] {
            let counter = Arc::new(AtomicUsize::new(0));
            let pool = ThreadPool::new(n).unwrap();
            let c = Arc::clone(&counter);
            pool.run(move |_, _| {
                c.fetch_add(1, Ordering::Relaxed);
            });
            let shared = Arc::clone(&pool.shared);
            drop(pool);
            // Every worker has exited and released its reference to the shared state.
            assert_eq!(Arc::strong_count(&shared), 1);
            assert_eq!(counter.load(Ordering::Relaxed), n);
        }
        // Dropping idle (sleeping) pools, and many pools in a row, neither hangs nor leaks.
        for _ in 0..50 {
            let pool = ThreadPool::new(3).unwrap();
            pool.run(|_, _| {});
        }
        let pool = ThreadPool::new(2).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        drop(pool);
    }

    #[test]
    fn chunk_covers_range() {
        for len in [0, 1, 5, 64, 67, 1000] {
            for n in 1..=7 {
                let mut next = 0;
                for i in 0..n {
                    let c = chunk(len, i, n);
                    assert_eq!(c.start, next);
                    assert!(c.len() == len / n || c.len() == len / n + 1);
                    next = c.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    /// Per-call overhead of `run`, by hand:
    /// `cargo test --release --lib threadpool -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench_run_overhead() {
        for n in [1, 2] {
            let pool = ThreadPool::new(n).unwrap();
            let iters = 200_000;
            let t = Instant::now();
            for _ in 0..iters {
                pool.run(|t, _| {
                    std::hint::black_box(t);
                });
            }
            let per = t.elapsed().as_secs_f64() / iters as f64 * 1e6;
            println!("run() with {n} threads: {per:.2} µs/call");
        }
    }
}
