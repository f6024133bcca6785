//! A persistent worker pool: `run(f)` calls `f(thread_id, n_threads)` once on every
//! thread (the caller is thread 0) and returns when all are done. Kernels split their
//! own work by `thread_id`, so a call costs no allocation and no thread start-up.
//! (Naive version: one scoped spawn per call; replaced by the persistent pool.)

use crate::error::{Error, Result};

pub struct ThreadPool {
    n_threads: usize,
}

impl ThreadPool {
    pub fn new(n_threads: usize) -> Result<Self> {
        if n_threads == 0 || n_threads > 1024 {
            return Err(Error::InvalidArgument(format!(
                "threads must be between 1 and 1024, got {n_threads}"
            )));
        }
        Ok(Self { n_threads })
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    pub fn run<F: Fn(usize, usize) + Sync>(&self, f: F) {
        let n = self.n_threads;
        if n == 1 {
            f(0, 1);
            return;
        }
        std::thread::scope(|s| {
            for t in 1..n {
                let f = &f;
                s.spawn(move || f(t, n));
            }
            f(0, n);
        });
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

/// A raw pointer that threads may share to write disjoint parts of one output slice.
#[derive(Clone, Copy)]
pub struct SyncPtr<T>(pub *mut T);
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}
