//! Allocations whose size comes from a file or a caller: checked against the machine's memory
//! and made fallibly, so a request too large to fit is an `Error::Memory` saying what and how
//! much, never an abort of the process.

use crate::error::{Error, Result};

/// Physical memory of this machine in bytes (`/proc/meminfo` MemTotal); `usize::MAX` where it
/// cannot be read. The bound for a single buffer of the model or a session.
pub fn memory_limit() -> usize {
    #[cfg(target_os = "linux")]
    if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
        let kib = text
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<usize>().ok());
        if let Some(kib) = kib {
            return kib.saturating_mul(1024);
        }
    }
    usize::MAX
}

/// `bytes` in a readable unit.
pub fn human(bytes: usize) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `n · size` bytes, or an error naming `what` when the product overflows.
pub fn checked_bytes(n: usize, size: usize, what: &str) -> Result<usize> {
    n.checked_mul(size).ok_or_else(|| Error::Memory(format!("{what} would need more than {} of memory", human(usize::MAX))))
}

/// Refuses a buffer of `bytes` that cannot fit in this machine's memory.
pub fn check_fits(bytes: usize, what: &str) -> Result<()> {
    let limit = memory_limit();
    if bytes > limit {
        return Err(Error::Memory(format!("{what} needs {}, more than this machine's {} of memory", human(bytes), human(limit))));
    }
    Ok(())
}

/// A zeroed `Vec<T>` of `n` elements, allocated fallibly (zeroed pages are committed by the
/// operating system only when written). `T` must be valid as all-zero bytes (numbers).
pub fn zeroed<T: Copy + Default + ZeroValid>(n: usize, what: &str) -> Result<Vec<T>> {
    let bytes = checked_bytes(n, std::mem::size_of::<T>(), what)?;
    check_fits(bytes, what)?;
    if n == 0 || bytes == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<T>(n).map_err(|_| Error::Memory(format!("{what} of {} is too large", human(bytes))))?;
    // SAFETY: the layout has a non-zero size; a null result is handled. The memory is zeroed,
    // which is a valid `T` (ZeroValid), and was allocated by the global allocator with the
    // layout of `[T; n]`, exactly what `Vec::from_raw_parts` with capacity `n` frees.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<T>();
        if ptr.is_null() {
            return Err(Error::Memory(format!("could not allocate {} for {what}", human(bytes))));
        }
        Ok(Vec::from_raw_parts(ptr, n, n))
    }
}

/// Buffers from this size on are mapped pages of their own ([`Pages`]).
const MAP_MIN_BYTES: usize = 64 << 10;

/// A zeroed buffer of `n` values whose memory the operating system commits page by page as it
/// is written, and takes back whole when the buffer is dropped: an anonymous mapping of its
/// own from 64 KiB on, a `Vec` below. (A heap block can be memory freed earlier and reused:
/// zeroing it writes, and so commits, every page at once; and freed heap memory need not go
/// back to the system. A KV cache must cost only the positions used; buffers sized for a long
/// prompt must cost nothing once it has run.)
pub struct Pages<T: ZeroValid + Copy + Default> {
    map: Option<memmap2::MmapMut>,
    vec: Vec<T>,
    len: usize,
}

impl<T: ZeroValid + Copy + Default> Pages<T> {
    /// `n` zeros, allocated fallibly.
    pub fn zeroed(n: usize, what: &str) -> Result<Self> {
        let bytes = checked_bytes(n, std::mem::size_of::<T>(), what)?;
        check_fits(bytes, what)?;
        if bytes < MAP_MIN_BYTES || std::mem::align_of::<T>() > 4096 {
            return Ok(Self { map: None, vec: zeroed(n, what)?, len: n });
        }
        let map = memmap2::MmapMut::map_anon(bytes).map_err(|e| Error::Memory(format!("could not allocate {} for {what}: {e}", human(bytes))))?;
        Ok(Self { map: Some(map), vec: Vec::new(), len: n })
    }

    /// Gives the pages wholly past value `start` back to the system: they read as zeros again
    /// and cost nothing until written (a mapped buffer on Unix; otherwise nothing changes).
    pub fn release_from(&mut self, start: usize) {
        #[cfg(unix)]
        if let Some(m) = &mut self.map {
            let page = 4096;
            let from = (start.saturating_mul(std::mem::size_of::<T>())).div_ceil(page) * page;
            if from < m.len() {
                // SAFETY: the range lies inside the mapping, which only this buffer borrows
                // (through `&mut self`): no reference into it outlives this call. An
                // anonymous private mapping reads as zeros after MADV_DONTNEED, a valid T.
                // Failure leaves the pages as they are, which is harmless.
                let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, m.len() - from) };
            }
        }
        #[cfg(not(unix))]
        let _ = start;
    }
}

impl<T: ZeroValid + Copy + Default> Default for Pages<T> {
    fn default() -> Self {
        Self { map: None, vec: Vec::new(), len: 0 }
    }
}

impl<T: ZeroValid + Copy + Default> std::ops::Deref for Pages<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.map {
            // SAFETY: the mapping holds `len` values of T (page-aligned, so aligned for T),
            // zero-initialized (a valid T: ZeroValid), and lives as long as `self`.
            Some(m) => unsafe { std::slice::from_raw_parts(m.as_ptr().cast::<T>(), self.len) },
            None => &self.vec,
        }
    }
}

impl<T: ZeroValid + Copy + Default> std::ops::DerefMut for Pages<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.map {
            // SAFETY: as in `deref`, borrowed mutably through `self`.
            Some(m) => unsafe { std::slice::from_raw_parts_mut(m.as_mut_ptr().cast::<T>(), self.len) },
            None => &mut self.vec,
        }
    }
}

/// An empty `Vec<T>` with room for `n` elements, reserved fallibly.
pub fn with_capacity<T>(n: usize, what: &str) -> Result<Vec<T>> {
    let bytes = checked_bytes(n, std::mem::size_of::<T>(), what)?;
    check_fits(bytes, what)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::Memory(format!("could not allocate {} for {what}", human(bytes))))?;
    Ok(v)
}

/// Types whose all-zero bit pattern is a valid value (zero).
pub trait ZeroValid {}
impl ZeroValid for f32 {}
impl ZeroValid for u8 {}
impl ZeroValid for u16 {}
impl ZeroValid for i8 {}
impl ZeroValid for u32 {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_requests_are_errors_not_aborts() {
        assert!(matches!(zeroed::<f32>(usize::MAX / 2, "a test buffer"), Err(Error::Memory(_))));
        assert!(matches!(with_capacity::<f32>(usize::MAX / 8, "a test buffer"), Err(Error::Memory(_))));
        let limit = memory_limit();
        if limit < usize::MAX / 8 {
            let e = zeroed::<f32>(limit / 4 + 1, "the KV cache").unwrap_err();
            assert!(e.to_string().contains("the KV cache") && e.to_string().contains("more than this machine"), "{e}");
        }
        let v = zeroed::<f32>(1000, "x").unwrap();
        assert_eq!((v.len(), v.iter().sum::<f32>()), (1000, 0.0));
        assert!(with_capacity::<u8>(10, "x").unwrap().capacity() >= 10);
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
        assert!(matches!(Pages::<f32>::zeroed(usize::MAX / 2, "a test buffer"), Err(Error::Memory(_))));
    }

    /// How many pages of `buf` are resident (Linux: the "present" bit of /proc/self/pagemap,
    /// which unprivileged processes can read), so that other threads' memory does not count.
    #[cfg(target_os = "linux")]
    fn resident_pages(buf: &[f32]) -> Option<usize> {
        use std::io::{Read, Seek, SeekFrom};
        let (first, last) = (buf.as_ptr() as usize / 4096, (buf.as_ptr() as usize + buf.len() * 4 - 1) / 4096);
        let mut f = std::fs::File::open("/proc/self/pagemap").ok()?;
        f.seek(SeekFrom::Start(first as u64 * 8)).ok()?;
        let mut raw = vec![0u8; (last - first + 1) * 8];
        f.read_exact(&mut raw).ok()?;
        Some(raw.chunks_exact(8).filter(|e| u64::from_le_bytes((*e).try_into().unwrap()) >> 63 == 1).count())
    }

    #[test]
    fn whole_huge_pages_lie_inside_the_buffer() {
        const H: usize = HUGE_PAGE;
        assert_eq!(whole_huge_pages(H, 3 * H), Some((H, 4 * H)));
        assert_eq!(whole_huge_pages(H + 1, 3 * H), Some((2 * H, 4 * H)));
        assert_eq!(whole_huge_pages(H - 1, 2 * H + 1), Some((H, 3 * H)));
        assert_eq!(whole_huge_pages(H + 1, 2 * H - 2), None); // ends before the next boundary but one
        assert_eq!(whole_huge_pages(H + 1, H), None);
        assert_eq!(whole_huge_pages(0, 0), None);
        assert_eq!(whole_huge_pages(usize::MAX - 5, 10), None);
        // the values of a buffer asked into huge pages stay as they were (where the kernel
        // collapses it, the pages are copied)
        let v: Vec<u32> = (0..3 * H as u32 / 4).map(|i| i.wrapping_mul(2654435761)).collect();
        collapse_to_huge_pages(&v);
        assert!(v.iter().enumerate().all(|(i, &x)| x == (i as u32).wrapping_mul(2654435761)));
        collapse_to_huge_pages::<u8>(&[]);
    }

    #[test]
    fn pages_are_zeros_committed_when_written_and_released_from_a_position() {
        for n in [10, 1 << 20] {
            let mut p = Pages::<f32>::zeroed(n, "x").unwrap();
            assert_eq!(p.len(), n);
            assert!(p.iter().all(|&v| v == 0.0));
            p.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32 + 1.0);
            // values before the first whole page past `keep` stay; from that page on: zeros
            let keep = n / 3;
            p.release_from(keep);
            let page_values = 4096 / 4;
            let from = if n < (64 << 10) / 4 { n } else { keep.div_ceil(page_values) * page_values };
            assert!(p[..from].iter().enumerate().all(|(i, &v)| v == i as f32 + 1.0), "n={n}");
            assert!(p[from..].iter().all(|&v| v == 0.0), "n={n}");
            p.release_from(n + 5); // past the end: nothing
        }
        assert_eq!(Pages::<u16>::default().len(), 0);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_mapped_buffer_costs_memory_only_where_written() {
        let n = 4 << 20; // 16 MiB, 4096 pages
        let mut p = Pages::<f32>::zeroed(n, "x").unwrap();
        let Some(before) = resident_pages(&p) else {
            eprintln!("skipped: /proc/self/pagemap cannot be read here");
            return;
        };
        assert_eq!(before, 0);
        p[..n / 4].fill(1.0);
        // 1024 pages written (up to one 2 MiB huge page more where the system backs mappings
        // with them)
        let written = resident_pages(&p).unwrap();
        assert!((1024..=1536).contains(&written), "{written}");
        p.release_from(n / 8);
        assert_eq!(resident_pages(&p), Some(512));
        p.release_from(0);
        assert_eq!(resident_pages(&p), Some(0));
        assert!(p.iter().all(|&v| v == 0.0));
    }
}

/// Size of a transparent huge page on x86-64 and most aarch64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// The whole huge pages inside the `len` bytes at address `start`: (first, end) addresses.
fn whole_huge_pages(start: usize, len: usize) -> Option<(usize, usize)> {
    let (from, to) = (start.checked_next_multiple_of(HUGE_PAGE)?, start.checked_add(len)? / HUGE_PAGE * HUGE_PAGE);
    (from < to).then_some((from, to))
}

/// Asks the kernel to back the whole 2 MiB pages inside `data` with huge pages, now
/// (`MADV_COLLAPSE`, Linux 6.1+): the values and the memory in use stay the same; a stream
/// through them then needs 512 times fewer page translations. Does nothing where it cannot
/// (older kernels, other systems, huge pages turned off, less than one whole huge page inside).
pub fn collapse_to_huge_pages<T>(data: &[T]) {
    let Some((from, to)) = whole_huge_pages(data.as_ptr() as usize, std::mem::size_of_val(data)) else {
        return;
    };
    #[cfg(not(target_os = "linux"))]
    let _ = (from, to);
    #[cfg(target_os = "linux")]
    {
        /// `MADV_COLLAPSE` (include/uapi/asm-generic/mman-common.h).
        const MADV_COLLAPSE: libc::c_int = 25;
        // SAFETY: [from, to) lies inside `data`, which is mapped and readable for this call;
        // MADV_COLLAPSE moves the pages' contents into huge pages without changing them, or
        // fails and leaves them as they were (either way nothing is read or written here).
        let _ = unsafe { libc::madvise(from as *mut libc::c_void, to - from, MADV_COLLAPSE) };
    }
}
