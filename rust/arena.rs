//! One mapping for a model's matmul weights, in the order decode reads them.
//!
//! Decode streams every weight once per token. Loaded one by one into the heap, a model's
//! matrices can lie between the loader's freed temporaries: the 2 MiB pages they share are
//! then partly not resident, so they cannot become huge pages without committing those holes
//! ([`crate::memory::collapse_spans_to_huge_pages`] skips them), and every 4 KiB of the rest
//! takes a new page translation. [`place`] moves weights, once loaded, into one 2 MiB-aligned
//! anonymous mapping asked for as huge pages (`MADV_HUGEPAGE`), back to back in decode order;
//! `Model::place_weights` says which. A [`Buf`] holds a weight's values either way: in a `Vec`
//! of its own or in its range of the mapping.

use std::ptr::NonNull;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::memory::{self, human, HUGE_PAGE};

/// Every buffer starts on a cache line.
const ALIGN: usize = 64;

/// The placement gives the heap back to the system after every this many bytes of freed
/// weights, so that its peak memory stays the model's size plus this much.
const TRIM_EVERY: usize = 16 << 20;

/// One anonymous mapping; its buffers start at the first 2 MiB boundary inside it.
pub struct Arena {
    map: memmap2::MmapMut,
    /// Offset of the first 2 MiB boundary in `map`.
    start: usize,
    /// Bytes usable from `start`.
    len: usize,
}

impl Arena {
    /// A mapping with room for `bytes` from a 2 MiB boundary, asked for as huge pages. Its
    /// pages are committed only as they are written.
    fn new(bytes: usize) -> Result<Self> {
        let what = "the model's weights";
        let mapped = bytes.checked_add(HUGE_PAGE).ok_or_else(|| Error::Memory(format!("{what} are too large")))?;
        memory::check_fits(bytes, what)?;
        let map = memmap2::MmapMut::map_anon(mapped).map_err(|e| Error::Memory(format!("could not map {} for {what}: {e}", human(mapped))))?;
        let addr = map.as_ptr() as usize;
        let start = addr.next_multiple_of(HUGE_PAGE) - addr;
        #[cfg(target_os = "linux")]
        {
            let huge = (mapped - start) / HUGE_PAGE * HUGE_PAGE;
            // SAFETY: the range lies inside the mapping, which nothing has borrowed yet;
            // MADV_HUGEPAGE only changes how later page faults are served. Failure (huge pages
            // turned off) leaves small pages, which is harmless.
            unsafe { libc::madvise(map.as_ptr().add(start) as *mut libc::c_void, huge, libc::MADV_HUGEPAGE) };
        }
        Ok(Self { map, start, len: bytes })
    }

    fn base(&self) -> *mut u8 {
        // SAFETY: `start` < HUGE_PAGE ≤ the mapping's length
        unsafe { self.map.as_ptr().add(self.start) as *mut u8 }
    }
}

/// A weight's values: a `Vec` of their own, or a range of an [`Arena`] (which it keeps alive).
pub enum Buf<T> {
    Owned(Vec<T>),
    Placed(Placed<T>),
}

/// `len` values at `ptr`, inside `arena`; no other `Buf` covers them.
pub struct Placed<T> {
    ptr: NonNull<T>,
    len: usize,
    /// Kept alive while the values are.
    _arena: Arc<Arena>,
}

// SAFETY: a Placed owns its range alone (like a Vec its allocation); the arena it keeps alive
// is only unmapped when the last of them is dropped.
unsafe impl<T: Send> Send for Placed<T> {}
unsafe impl<T: Sync> Sync for Placed<T> {}

impl<T> Buf<T> {
    /// Whether the values lie in an arena.
    pub fn is_placed(&self) -> bool {
        matches!(self, Buf::Placed(_))
    }
}

impl<T> Placed<T> {
    fn as_slice(&self) -> &[T] {
        // SAFETY: `len` initialized values of T at `ptr` (copied in by `Movable::move_into`),
        // aligned (ALIGN is a multiple of T's alignment), alive as long as `arena`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> std::ops::Deref for Buf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Buf::Owned(v) => v,
            Buf::Placed(p) => p.as_slice(),
        }
    }
}

impl<T> std::ops::DerefMut for Buf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Buf::Owned(v) => v,
            // SAFETY: as in `as_slice`; no other Buf covers the range, and `&mut self` borrows
            // this one uniquely.
            Buf::Placed(p) => unsafe { std::slice::from_raw_parts_mut(p.ptr.as_ptr(), p.len) },
        }
    }
}

impl<T> From<Vec<T>> for Buf<T> {
    fn from(v: Vec<T>) -> Self {
        Buf::Owned(v)
    }
}

impl<T> Default for Buf<T> {
    fn default() -> Self {
        Buf::Owned(Vec::new())
    }
}

/// A copy is a `Vec` of its own.
impl<T: Clone> Clone for Buf<T> {
    fn clone(&self) -> Self {
        Buf::Owned(self.to_vec())
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Buf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: PartialEq> PartialEq for Buf<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// A buffer [`place`] can move: its size, and the move.
pub trait Movable {
    /// Bytes to move: the values' size, or 0 where they lie in an arena already.
    fn bytes(&self) -> usize;
    /// Moves the values into the placer's arena (a buffer placed already stays where it is);
    /// returns the heap bytes it gave up.
    fn move_into(&mut self, placer: &mut Placer) -> usize;
}

impl<T: Copy> Movable for Buf<T> {
    fn bytes(&self) -> usize {
        match self {
            Buf::Owned(v) => std::mem::size_of_val(v.as_slice()),
            Buf::Placed(_) => 0,
        }
    }

    fn move_into(&mut self, placer: &mut Placer) -> usize {
        let Buf::Owned(v) = self else { return 0 };
        let Some(ptr) = placer.take(std::mem::size_of_val(v.as_slice())) else { return 0 };
        let ptr = ptr.cast::<T>();
        // in chunks, each followed by the release of the source's pages it used up: the copy
        // of a large buffer (an embedding) never holds it twice
        let chunk = (COPY_CHUNK / std::mem::size_of::<T>().max(1)).max(1);
        let mut done = 0;
        while done < v.len() {
            let n = chunk.min(v.len() - done);
            // SAFETY: `take` returned `size_of_val(v)` unused bytes inside the arena, aligned
            // to ALIGN (≥ T's alignment); they do not overlap `v`.
            unsafe { std::ptr::copy_nonoverlapping(v.as_ptr().add(done), ptr.as_ptr().add(done), n) };
            done += n;
            // SAFETY: the first `done` values of `v` are never read again: `v` is dropped below,
            // unread, and the pages released read as zeros (a valid T) if anything did
            unsafe { release_copied(v.as_ptr().cast::<u8>(), done * std::mem::size_of::<T>()) };
        }
        let freed = v.capacity() * std::mem::size_of::<T>();
        *self = Buf::Placed(Placed { ptr, len: v.len(), _arena: placer.arena.clone() });
        freed
    }
}

/// Bytes copied between two releases of the source's pages.
const COPY_CHUNK: usize = 2 << 20;

/// Gives back to the system the whole pages of the `copied` bytes from `src`, but for the
/// first page (which an allocator may keep its own data next to): they are committed no more.
///
/// # Safety
/// `src` must start an allocation of at least `copied` bytes that its owner does not read
/// again (it reads as zeros where released).
unsafe fn release_copied(src: *const u8, copied: usize) {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0);
        if page == 0 {
            return;
        }
        let start = (src as usize / page + 1) * page;
        let end = (src as usize + copied) / page * page;
        if end > start {
            // SAFETY: the range holds whole pages inside the allocation (the caller's promise);
            // MADV_DONTNEED leaves them mapped, reading as zeros. Failure changes nothing.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
    }
    #[cfg(not(unix))]
    let _ = (src, copied);
}

/// Hands out consecutive ranges of one arena.
pub struct Placer {
    arena: Arc<Arena>,
    next: usize,
}

impl Placer {
    fn take(&mut self, bytes: usize) -> Option<NonNull<u8>> {
        let at = self.next.next_multiple_of(ALIGN);
        if bytes == 0 || at + bytes > self.arena.len {
            return None;
        }
        self.next = at + bytes;
        // SAFETY: `at` < len ≤ the mapping's length past `start`
        NonNull::new(unsafe { self.arena.base().add(at) })
    }
}

/// The arena's bytes for `bufs`, each from a cache line.
fn arena_bytes(bufs: &[&mut dyn Movable]) -> usize {
    bufs.iter().fold(0, |at, b| if b.bytes() == 0 { at } else { at.next_multiple_of(ALIGN) + b.bytes() })
}

/// Moves `bufs`, in their order, into one new arena (back to back, each from a cache line),
/// giving the freed heap back to the system as it goes: the process's peak memory stays
/// about the buffers' size plus [`TRIM_EVERY`]. Returns the arena's bytes (0: nothing to
/// move). An error (the mapping could not be made) leaves every buffer where it was.
pub fn place(mut bufs: Vec<&mut dyn Movable>) -> Result<usize> {
    let bytes = arena_bytes(&bufs);
    if bytes == 0 {
        return Ok(0);
    }
    let mut placer = Placer { arena: Arc::new(Arena::new(bytes)?), next: 0 };
    let mut freed = 0;
    for b in bufs.iter_mut() {
        freed += b.move_into(&mut placer);
        if freed >= TRIM_EVERY {
            memory::release_freed_memory();
            freed = 0;
        }
    }
    memory::release_freed_memory();
    // the mapping's pages were asked for as huge pages, and are all resident now: those the
    // kernel could not serve as huge pages at the first write are collapsed now
    let base = placer.arena.base() as usize;
    memory::collapse_spans_to_huge_pages(&[(base, placer.next)]);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placed_buffers_keep_their_values_in_order_and_alignment() {
        let mut a: Buf<f32> = (0..1000).map(|i| i as f32 * 0.5).collect::<Vec<_>>().into();
        let mut b: Buf<u16> = vec![7u16; 33].into();
        let mut empty: Buf<i8> = Vec::new().into();
        let mut c: Buf<i8> = (0..100).map(|i| i as i8 - 50).collect::<Vec<_>>().into();
        let (a0, b0, c0) = (a.to_vec(), b.to_vec(), c.to_vec());
        let bytes = place(vec![&mut a, &mut b, &mut empty, &mut c]).unwrap();
        // 4000 bytes, then 66 from 4032, then 100 from 4160
        assert_eq!(bytes, 4260);
        assert!(a.is_placed() && b.is_placed() && c.is_placed() && !empty.is_placed());
        assert_eq!((a.to_vec(), b.to_vec(), c.to_vec()), (a0.clone(), b0, c0));
        assert_eq!(a.as_ptr() as usize % HUGE_PAGE, 0, "the first buffer starts the arena, on a 2 MiB boundary");
        assert_eq!(b.as_ptr() as usize - a.as_ptr() as usize, 4032);
        assert_eq!(c.as_ptr() as usize - a.as_ptr() as usize, 4160);
        // writable in place; a clone is a Vec of its own; the arena outlives the other buffers
        a[3] = -1.0;
        let copy = a.clone();
        assert!(!copy.is_placed() && copy[3] == -1.0 && copy.len() == 1000);
        drop((b, c));
        assert_eq!(a[999], 499.5);
        assert_eq!(a[..4], [0.0, 0.5, 1.0, -1.0]);
    }

    #[test]
    fn placing_twice_leaves_placed_buffers_where_they_are() {
        let mut a: Buf<u8> = vec![1u8; 10].into();
        place(vec![&mut a]).unwrap();
        let at = a.as_ptr();
        assert_eq!(place(vec![&mut a]).unwrap(), 0);
        assert_eq!((a.as_ptr(), a.to_vec()), (at, vec![1u8; 10]));
        assert_eq!(place(Vec::new()).unwrap(), 0);
    }
}
