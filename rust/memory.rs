//! Allocations whose size comes from a file or a caller: checked against the machine's memory
//! and made fallibly, so a request too large to fit is an `Error::Memory` saying what and how
//! much, never an abort of the process.

use crate::error::{Error, Result};

/// Physical memory of this machine in bytes (`/proc/meminfo` MemTotal); `usize::MAX` where it
/// cannot be read. The bound for a single buffer of the model or a session.
pub fn memory_limit() -> usize {
    #[cfg(target_os = "linux")]
    if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
        if let Some(kib) = text.lines().find_map(|l| l.strip_prefix("MemTotal:")).and_then(kib_value) {
            return kib.saturating_mul(1024);
        }
    }
    usize::MAX
}

/// The number of a `/proc` field's value in kB ("   12345 kB" → 12345).
#[cfg(target_os = "linux")]
fn kib_value(rest: &str) -> Option<usize> {
    rest.trim().trim_end_matches("kB").trim().parse().ok()
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

/// Size of a transparent huge page on x86-64 and most aarch64 kernels.
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// The address range of a buffer: (first byte's address, length in bytes).
pub fn span_of<T>(data: &[T]) -> (usize, usize) {
    (data.as_ptr() as usize, std::mem::size_of_val(data))
}

/// Bytes of the 2 MiB pages that `spans` (address, length) overlap, each counted once.
pub fn huge_page_bytes(spans: &[(usize, usize)]) -> usize {
    huge_pages_touched(spans).len() * HUGE_PAGE
}

/// The 2 MiB-aligned huge pages that `spans` (address, length) overlap: their first
/// addresses, in order, each once.
fn huge_pages_touched(spans: &[(usize, usize)]) -> Vec<usize> {
    let mut pages: Vec<usize> = spans
        .iter()
        .filter(|&&(_, len)| len > 0)
        .flat_map(|&(start, len)| {
            let last = start.saturating_add(len - 1) / HUGE_PAGE;
            (start / HUGE_PAGE..=last).map(|p| p * HUGE_PAGE)
        })
        .collect();
    pages.sort_unstable();
    pages.dedup();
    pages
}

/// A huge page is collapsed when at least this share (in 1/16) of its small pages are
/// resident already: the collapse fills the others, so this bounds the memory it adds to
/// 1/16 of what it collapses.
const RESIDENT_SIXTEENTHS: usize = 15;

/// Asks the kernel to back with huge pages, now (`MADV_COLLAPSE`, Linux 6.1+), the 2 MiB
/// pages that the buffers `spans` (address, length) overlap and that are resident already
/// (at least 15/16 of their small pages, `mincore`): the values stay the same, and a stream
/// through the buffers then needs 512 times fewer page translations. Not only the whole huge
/// pages inside each buffer: a model's matrices are mostly smaller than a huge page, but they
/// lie side by side in the heap, so only together do they fill whole ones (what else shares
/// such a page is resident memory of the same heap, which the collapse moves as it is).
/// Returns the bytes the kernel reports collapsed; does nothing (0) where it cannot (older
/// kernels, other systems, huge pages turned off, pages not mapped or not resident).
pub fn collapse_spans_to_huge_pages(spans: &[(usize, usize)]) -> usize {
    let pages = huge_pages_touched(spans);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pages;
        0
    }
    #[cfg(target_os = "linux")]
    {
        /// `MADV_COLLAPSE` (include/uapi/asm-generic/mman-common.h).
        const MADV_COLLAPSE: libc::c_int = 25;
        // SAFETY: sysconf has no preconditions.
        let small = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0);
        if small == 0 || !HUGE_PAGE.is_multiple_of(small) {
            return 0;
        }
        let mut residency = vec![0u8; HUGE_PAGE / small];
        let mut collapsed = 0;
        for page in pages {
            // SAFETY: `page` is page-aligned and `residency` holds one byte per small page of the
            // range; mincore only reports residency (ENOMEM where part of it is unmapped).
            if unsafe { libc::mincore(page as *mut libc::c_void, HUGE_PAGE, residency.as_mut_ptr()) } != 0 {
                continue;
            }
            let resident = residency.iter().filter(|&&v| v & 1 == 1).count();
            if resident * 16 < residency.len() * RESIDENT_SIXTEENTHS {
                continue;
            }
            // SAFETY: the range is mapped (mincore succeeded on it); MADV_COLLAPSE moves the
            // pages' contents into a huge page without changing them, or fails and leaves
            // them as they were. Nothing is read or written here.
            if unsafe { libc::madvise(page as *mut libc::c_void, HUGE_PAGE, MADV_COLLAPSE) } == 0 {
                collapsed += HUGE_PAGE;
            }
        }
        collapsed
    }
}

/// Hands memory freed while building (tensors merged into fused matrices, conversion buffers)
/// back to the operating system. glibc keeps freed blocks below its (dynamic) mmap threshold in
/// the heap, where they would stay resident: without this, BF16/INT8 loads peaked tens of MiB
/// above their weights. Elsewhere a no-op.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only returns unused heap pages to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

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
        // SAFETY: any initialized f32 buffer is readable as bytes
        resident_pages_u8(unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), buf.len() * 4) })
    }

    #[cfg(target_os = "linux")]
    fn resident_pages_u8(buf: &[u8]) -> Option<usize> {
        use std::io::{Read, Seek, SeekFrom};
        let (first, last) = (buf.as_ptr() as usize / 4096, (buf.as_ptr() as usize + buf.len() - 1) / 4096);
        let mut f = std::fs::File::open("/proc/self/pagemap").ok()?;
        f.seek(SeekFrom::Start(first as u64 * 8)).ok()?;
        let mut raw = vec![0u8; (last - first + 1) * 8];
        f.read_exact(&mut raw).ok()?;
        Some(raw.chunks_exact(8).filter(|e| u64::from_le_bytes((*e).try_into().unwrap()) >> 63 == 1).count())
    }

    #[test]
    fn the_huge_pages_spans_touch() {
        const H: usize = HUGE_PAGE;
        // out of order, one empty, two in one page, one across three pages
        let spans = [(5 * H + 10, 3), (H + 1, 10), (H + 20, 10), (7 * H, 0), (2 * H - 1, H + 2)];
        assert_eq!(huge_pages_touched(&spans), vec![H, 2 * H, 3 * H, 5 * H]);
        assert_eq!(huge_pages_touched(&[(H, H)]), vec![H]);
        assert!(huge_pages_touched(&[(H, 0)]).is_empty());
        assert_eq!(huge_pages_touched(&[(usize::MAX - 5, 10)]), vec![usize::MAX / H * H]);
    }

    /// Matrices smaller than a huge page that lie side by side (here: 300 KiB parts of one
    /// resident buffer, 4 KiB apart) have no whole huge page each, but together they fill
    /// some: where the kernel collapses them, the mapping holds at least that many bytes of
    /// huge pages, and the values are unchanged. A buffer not yet written (not resident) is
    /// left as it is.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_run_of_small_buffers_fills_whole_huge_pages() {
        let buf: Vec<u8> = (0..12 << 20).map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
        let part = 300 << 10;
        let spans: Vec<(usize, usize)> = (0..buf.len() / (part + 4096))
            .map(|p| span_of(&buf[p * (part + 4096)..p * (part + 4096) + part]))
            .collect();
        let collapsed = collapse_spans_to_huge_pages(&spans);
        assert!(collapsed <= buf.len() && collapsed.is_multiple_of(HUGE_PAGE));
        if collapsed > 0 {
            assert!(huge_bytes_of_mapping(buf.as_ptr() as usize).unwrap() >= collapsed);
        }
        assert!(buf.iter().enumerate().all(|(i, &v)| v == ((i as u32).wrapping_mul(2654435761) >> 24) as u8));
        let unwritten = Pages::<u8>::zeroed(12 << 20, "a test buffer").unwrap();
        assert_eq!(collapse_spans_to_huge_pages(&[span_of(&unwritten)]), 0);
        assert!(matches!(resident_pages_u8(&unwritten), Some(0) | None));
    }

    /// AnonHugePages of the mapping holding address `a` (/proc/self/smaps), in bytes.
    #[cfg(target_os = "linux")]
    fn huge_bytes_of_mapping(a: usize) -> Option<usize> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().and_then(|r| r.split_once('-'));
            if let Some((lo, hi)) = range.and_then(|(lo, hi)| Some((usize::from_str_radix(lo, 16).ok()?, usize::from_str_radix(hi, 16).ok()?))) {
                inside = (lo..hi).contains(&a);
            } else if let (true, Some(kb)) = (inside, line.strip_prefix("AnonHugePages:")) {
                return kib_value(kb).map(|kb| kb << 10);
            }
        }
        None
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
