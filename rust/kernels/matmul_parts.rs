//! How every matmul kernel family (the f32-accumulating matmul over f32/bf16/int8 weights,
//! and the integer W8A8/W8A16/W4A16 kernels) splits its output y: [m, n] among the pool's
//! threads.
//!
//! Small problems run on the calling thread. Otherwise:
//! - the memory-bound GEMV gives each thread one contiguous range of the columns (rows of w),
//!   which it takes from the front in blocks, so its weights stream from memory as one run;
//!   a thread done with its own range takes from the back of another's (half of what is left
//!   there, then half again), so a thread that is slow or descheduled does less;
//! - the packed GEMM is cut into one part per thread, claimed dynamically — whole NR-column
//!   blocks, or whole MR-row tiles when y has more row tiles than column blocks (each part
//!   repacks its own x block, so more parts would cost more packing).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::threadpool::{chunk, ThreadPool};

/// Problems below this many multiply-adds run on the calling thread only.
const INLINE_MACS: usize = 32 * 1024;
/// GEMV: the rows of w are handed out in units of this many (a multiple of the 4 rows the
/// int4 and int8 GEMVs take per pass).
const UNIT_ROWS: usize = 16;
/// GEMV: a thread takes its own range in blocks of at most 1/OWN_BLOCKS of it, so that
/// another thread can still take a share of it from the back.
const OWN_BLOCKS: usize = 8;

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
    match split {
        Split::Columns => run_ranges(pool, n.div_ceil(UNIT_ROWS), |u| f((0, m), ((u.0 * UNIT_ROWS).min(n), (u.1 * UNIT_ROWS).min(n)))),
        Split::Tiles { mr, nr } => {
            let next = AtomicUsize::new(0);
            pool.run(|_, nt| loop {
                let p = next.fetch_add(1, Ordering::Relaxed);
                if p >= nt {
                    break;
                }
                let (rows, cols) = tiles_part(m, n, mr, nr, p, nt);
                f(rows, cols);
            });
        }
    }
}

/// (front, back) of a thread's range, packed in one word so that its owner (taking from the
/// front) and the others (taking from the back) claim disjoint blocks with one CAS each.
#[repr(align(128))]
struct Range(AtomicU64);

fn unpack(s: u64) -> (usize, usize) {
    ((s & 0xffff_ffff) as usize, (s >> 32) as usize)
}

/// Claims `want(left)` units of `r` (at least 1, at most the `left` unclaimed ones) from its
/// front (`own`) or its back; the claimed units, or None when the range is empty.
fn claim(r: &Range, own: bool, want: impl Fn(usize) -> usize) -> Option<(usize, usize)> {
    let mut s = r.0.load(Ordering::Relaxed);
    loop {
        let (front, back) = unpack(s);
        if front >= back {
            return None;
        }
        let take = want(back - front).clamp(1, back - front);
        let (got, next) = if own { ((front, front + take), (front + take, back)) } else { ((back - take, back), (front, back - take)) };
        let packed = next.0 as u64 | (next.1 as u64) << 32;
        match r.0.compare_exchange_weak(s, packed, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(got),
            Err(now) => s = now,
        }
    }
}

/// Calls `f` for blocks of units that cover 0..units exactly once, on the pool's threads:
/// thread t owns the t-th of n_threads contiguous ranges and takes it from the front in
/// blocks of 1/OWN_BLOCKS of its share, fewer near the end (1/(2·n_threads) of what is left:
/// the block a thread is still in when the others run dry is what they wait for); then it
/// takes half of what is left of the others' ranges from their backs, until every range is
/// empty. Default model, 2 threads, against blocks of a fixed size, alternated raw decode
/// steps, medians of 8 / 6 pairs: INT4 305.4 -> 332.0 tok/s (pair ratio 1.04), INT8 250.1 ->
/// 257.0 (0.99).
fn run_ranges(pool: &ThreadPool, units: usize, f: impl Fn((usize, usize)) + Sync) {
    let nt = pool.n_threads();
    assert!(units < 1 << 32, "units fit the packed range");
    let ranges: Vec<Range> = (0..nt)
        .map(|t| {
            let c = chunk(units, t, nt);
            Range(AtomicU64::new(c.start as u64 | (c.end as u64) << 32))
        })
        .collect();
    let block = units.div_ceil(nt * OWN_BLOCKS);
    pool.run(|tid, nt| {
        while let Some(b) = claim(&ranges[tid], true, |left| block.min(left.div_ceil(2 * nt))) {
            f(b);
        }
        for v in (1..nt).map(|i| (tid + i) % nt) {
            while let Some(b) = claim(&ranges[v], false, |left| left / 2) {
                f(b);
            }
        }
    });
}

/// Part `t` of `nt` of y: [m, n] as (rows, cols), whole `mr × nr` tiles.
fn tiles_part(m: usize, n: usize, mr: usize, nr: usize, t: usize, nt: usize) -> ((usize, usize), (usize, usize)) {
    let (mb, nb) = (m.div_ceil(mr), n.div_ceil(nr));
    if nb >= mb {
        let c = chunk(nb, t, nt);
        ((0, m), ((c.start * nr).min(n), (c.end * nr).min(n)))
    } else {
        let r = chunk(mb, t, nt);
        (((r.start * mr).min(m), (r.end * mr).min(m)), (0, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// The owner takes blocks from the front, the others half of what is left from the back,
    /// and the two never overlap.
    #[test]
    fn claims_take_disjoint_blocks_from_both_ends() {
        let r = Range(AtomicU64::new(10 | 30 << 32));
        assert_eq!(claim(&r, true, |_| 4), Some((10, 14)));
        assert_eq!(claim(&r, false, |left| left / 2), Some((22, 30)));
        assert_eq!(claim(&r, true, |_| 4), Some((14, 18)));
        assert_eq!(claim(&r, false, |left| left / 2), Some((20, 22)));
        // more than is left: what is left; half of 1: at least 1
        assert_eq!(claim(&r, true, |_| 100), Some((18, 20)));
        assert_eq!(claim(&r, false, |left| left / 2), None);
        assert_eq!(claim(&r, true, |_| 4), None);
        let one = Range(AtomicU64::new(5 | 6 << 32));
        assert_eq!(claim(&one, false, |left| left / 2), Some((5, 6)));
    }

    /// Ranges are covered exactly once, also when one thread is much slower than the others
    /// (its range is then mostly taken from the back by them).
    #[test]
    fn ranges_cover_every_unit_once_with_a_slow_thread() {
        for threads in 1..=4 {
            let pool = ThreadPool::new(threads).unwrap();
            for units in [1usize, 2, 7, 64, 301] {
                let hits = Mutex::new(vec![0u32; units]);
                let first = chunk(units, 0, threads);
                run_ranges(&pool, units, |(a, b)| {
                    assert!(a < b && b <= units);
                    if first.contains(&a) {
                        std::thread::sleep(std::time::Duration::from_micros(200));
                    }
                    let mut h = hits.lock().unwrap();
                    for u in a..b {
                        h[u] += 1;
                    }
                });
                let h = hits.into_inner().unwrap();
                assert!(h.iter().all(|&c| c == 1), "threads={threads} units={units}");
            }
        }
    }

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
