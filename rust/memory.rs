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
    }
}
