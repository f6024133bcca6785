//! How every matmul kernel family (the f32-accumulating matmul over f32/bf16/int8 weights,
//! and the integer W8A8/W8A16/W4A16 kernels) splits its output y: [m, n] among the pool's
//! threads.
//!
//! Small problems run on the calling thread. Otherwise y is cut into parts that the threads
//! claim dynamically (a thread that is slow or descheduled takes fewer): the memory-bound GEMV
//! gets several column chunks (rows of w) per thread; the packed GEMM one part per thread —
//! whole NR-column blocks, or whole MR-row tiles when y has more row tiles than column blocks
//! (each part repacks its own x block, so more parts would cost more packing).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::threadpool::{chunk, ThreadPool};

/// Problems below this many multiply-adds run on the calling thread only.
const INLINE_MACS: usize = 32 * 1024;
/// GEMV: parts per thread (claimed dynamically) and minimum rows of w per part. Four measured
/// best: whole decodes at 2 threads (128-token prompt, 128 new tokens, builds alternated, 6
/// pairs, median pair ratios against 4): 8 parts 0.84 (llama-135m INT4), 0.90 (INT8), 0.93
/// (gpt2-124m INT4) — each part restarts its weight streams; 2 parts 1.03, 0.90, 1.00 — the
/// last part's wait grows.
const PARTS_PER_THREAD: usize = 4;
const MIN_PART_ROWS: usize = 16;

/// How y is cut into parts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Split {
    /// The GEMV: chunks of the columns, every row of x in each.
    Columns,
    /// The GEMM with an `mr × nr` register tile: whole tiles only.
    Tiles { mr: usize, nr: usize },
}

/// Calls `f(rows, cols)` for rectangles (half-open ranges) that cover y: [m, n] exactly once
/// between them, on the pool's threads when the problem (m·n·k multiply-adds) is big enough.
/// Rectangles never overlap, so `f` may write its rectangle of y without synchronization.
pub(crate) fn run_parts(
    pool: &ThreadPool,
    m: usize,
    n: usize,
    k: usize,
    split: Split,
    f: impl Fn((usize, usize), (usize, usize)) + Sync,
) {
    let macs = m.saturating_mul(n).saturating_mul(k);
    let nt = pool.n_threads();
    if nt == 1 || macs < INLINE_MACS {
        f((0, m), (0, n));
        return;
    }
    let parts = match split {
        Split::Columns => (nt * PARTS_PER_THREAD).min(n.div_ceil(MIN_PART_ROWS)),
        Split::Tiles { .. } => nt,
    };
    let next = AtomicUsize::new(0);
    pool.run(|_, _| loop {
        let p = next.fetch_add(1, Ordering::Relaxed);
        if p >= parts {
            break;
        }
        let (rows, cols) = part(m, n, split, p, parts);
        f(rows, cols);
    });
}

/// Part `t` of `nt` of y: [m, n] as (rows, cols).
fn part(m: usize, n: usize, split: Split, t: usize, nt: usize) -> ((usize, usize), (usize, usize)) {
    match split {
        Split::Columns => {
            let c = chunk(n, t, nt);
            ((0, m), (c.start, c.end))
        }
        Split::Tiles { mr, nr } => {
            let (mb, nb) = (m.div_ceil(mr), n.div_ceil(nr));
            if nb >= mb {
                let c = chunk(nb, t, nt);
                ((0, m), ((c.start * nr).min(n), (c.end * nr).min(n)))
            } else {
                let r = chunk(mb, t, nt);
                (((r.start * mr).min(m), (r.end * mr).min(m)), (0, n))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Every element of y is covered by exactly one part, for every split and thread count.
    #[test]
    fn parts_cover_y_exactly_once() {
        for threads in 1..=4 {
            let pool = ThreadPool::new(threads).unwrap();
            for &(m, n, k) in &[
                (1, 1, 1),
                (1, 203, 300),
                (3, 17, 1000),
                (130, 33, 64),
                (7, 1000, 64),
                (200, 5, 100),
            ] {
                for split in [
                    Split::Columns,
                    Split::Tiles { mr: 4, nr: 6 },
                    Split::Tiles { mr: 3, nr: 16 },
                ] {
                    let hits = Mutex::new(vec![0u32; m * n]);
                    run_parts(&pool, m, n, k, split, |rows, cols| {
                        let empty = rows.0 >= rows.1 || cols.0 >= cols.1;
                        if let (Split::Tiles { mr, nr }, false) = (split, empty) {
                            // whole tiles: a part starts on a tile boundary
                            assert_eq!((rows.0 % mr, cols.0 % nr), (0, 0), "{split:?}");
                        }
                        let mut h = hits.lock().unwrap();
                        for i in rows.0..rows.1 {
                            for j in cols.0..cols.1 {
                                h[i * n + j] += 1;
                            }
                        }
                    });
                    let h = hits.into_inner().unwrap();
                    assert!(
                        h.iter().all(|&c| c == 1),
                        "threads={threads} m={m} n={n} {split:?}"
                    );
                }
            }
        }
    }
}
