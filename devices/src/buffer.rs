//! The DMA buffer pool: one aligned allocation made at start-up, cut into equal buffers.
//!
//! A device owns one pool; the io_uring backend registers every buffer with its ring, so a
//! request names its buffer by index and the kernel skips pinning pages per I/O. The region
//! is mapped anonymously (zeroed by the kernel); a pool of 2 MiB or more is aligned to 2 MiB
//! and advised onto transparent huge pages, so that a large buffer is physically contiguous
//! (see `HUGE_PAGE_BYTES`). Buffers move
//! by value: a request takes its `DmaBuf`, the completion gives it back, so no code can touch
//! a buffer the kernel is writing into. `DmaBuf` is neither `Send` nor `Sync`: a pool and its
//! buffers live on one core.

use std::alloc::{self, Layout};
use std::fmt;
use std::rc::Rc;

use crate::constants::{BUFFER_ALIGNMENT_BYTES, HUGE_PAGE_BYTES};

/// The pool's memory. Freed when the pool and every buffer from it are gone.
struct Region {
    base: *mut u8,
    total_bytes: usize,
    release: Release,
    buffer_size_bytes: u32,
    count: u32,
}

/// Where the region's memory came from, and so how it goes back.
enum Release {
    /// An anonymous mapping of this many bytes, starting at the region's base.
    Mapping(usize),
    /// A backend's own DMA allocator (SPDK's `spdk_dma_zmalloc`), freed with this function.
    External(unsafe extern "C" fn(*mut libc::c_void)),
}

impl Drop for Region {
    fn drop(&mut self) {
        match self.release {
            Release::Mapping(len) => {
                // SAFETY: `base..base + len` is a mapping made by `map_region` and unmapped
                // only here, once, when the last `Rc<Region>` goes.
                let rc = unsafe { libc::munmap(self.base.cast(), len) };
                assert_eq!(rc, 0, "munmap of a pool's own mapping cannot fail");
            }
            // SAFETY: `from_external`'s caller promised that `free(base)` releases the
            // memory; it runs once, when the last `Rc<Region>` goes.
            Release::External(free) => unsafe { free(self.base.cast()) },
        }
    }
}

/// A fixed set of aligned buffers of one size, allocated once.
pub struct BufferPool {
    region: Rc<Region>,
    free: Vec<u32>,
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("buffer_size_bytes", &self.region.buffer_size_bytes)
            .field("count", &self.region.count)
            .field("free", &self.free.len())
            .finish()
    }
}

impl BufferPool {
    /// Allocates `count` zeroed buffers of `buffer_size_bytes` each, every one aligned to
    /// `BUFFER_ALIGNMENT_BYTES`. Sizes are checked by the device that owns the pool.
    pub fn new(count: u32, buffer_size_bytes: u32) -> BufferPool {
        check_shape(count, buffer_size_bytes);
        let total = (count as usize)
            .checked_mul(buffer_size_bytes as usize)
            .expect("buffer pool size overflows usize");
        let (base, mapped) = map_region(total);
        let release = Release::Mapping(mapped);
        BufferPool::with_region(Region {
            base,
            total_bytes: total,
            release,
            buffer_size_bytes,
            count,
        })
    }

    /// Adopts `count` buffers of `buffer_size_bytes` at `base`, allocated by a backend that
    /// must own its DMA memory (SPDK), and frees them with `free(base)` once the pool and
    /// every buffer are gone.
    ///
    /// # Safety
    /// `base` must point to `count * buffer_size_bytes` bytes, aligned to
    /// `BUFFER_ALIGNMENT_BYTES`, readable and writable, used by nothing else, and valid
    /// until `free(base)`, which must release exactly that memory.
    pub unsafe fn from_external(
        base: std::ptr::NonNull<u8>,
        count: u32,
        buffer_size_bytes: u32,
        free: unsafe extern "C" fn(*mut libc::c_void),
    ) -> BufferPool {
        check_shape(count, buffer_size_bytes);
        assert!(
            (base.as_ptr() as usize).is_multiple_of(BUFFER_ALIGNMENT_BYTES),
            "external pool memory must be aligned to {BUFFER_ALIGNMENT_BYTES}"
        );
        let total_bytes = count as usize * buffer_size_bytes as usize;
        let release = Release::External(free);
        let base = base.as_ptr();
        BufferPool::with_region(Region { base, total_bytes, release, buffer_size_bytes, count })
    }

    fn with_region(region: Region) -> BufferPool {
        // Reversed so that buffers come out in index order, which keeps tests readable.
        let free = (0..region.count).rev().collect();
        BufferPool { region: Rc::new(region), free }
    }

    /// Takes a free buffer, its window covering the whole buffer; `None` when all are out.
    pub fn acquire(&mut self) -> Option<DmaBuf> {
        let index = self.free.pop()?;
        Some(DmaBuf {
            region: Rc::clone(&self.region),
            index,
            start: 0,
            len: self.region.buffer_size_bytes,
        })
    }

    /// Gives a buffer back. It must come from this pool.
    pub fn release(&mut self, buf: DmaBuf) {
        assert!(self.owns(&buf), "buffer released to a pool it does not come from");
        debug_assert!(!self.free.contains(&buf.index), "buffer released twice");
        self.free.push(buf.index);
    }

    /// Whether `buf` was cut from this pool.
    pub fn owns(&self, buf: &DmaBuf) -> bool {
        Rc::ptr_eq(&self.region, &buf.region)
    }

    pub fn buffer_size_bytes(&self) -> u32 {
        self.region.buffer_size_bytes
    }

    pub fn count(&self) -> u32 {
        self.region.count
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// One `iovec` per buffer, in index order, for `IORING_REGISTER_BUFFERS`.
    pub(crate) fn iovecs(&self) -> Vec<libc::iovec> {
        let size = self.region.buffer_size_bytes as usize;
        (0..self.region.count as usize)
            .map(|i| libc::iovec {
                // SAFETY: i < count, so the offset stays inside the allocation.
                iov_base: unsafe { self.region.base.add(i * size) }.cast(),
                iov_len: size,
            })
            .collect()
    }

    pub(crate) fn total_bytes(&self) -> u64 {
        self.region.total_bytes as u64
    }
}

/// Maps `total` zeroed bytes; from `HUGE_PAGE_BYTES` up, aligned to a huge page and advised
/// to use huge pages (a hint: with THP disabled the pool still works on small pages). Returns
/// the base and the mapped length.
fn map_region(total: usize) -> (*mut u8, usize) {
    let huge = total >= HUGE_PAGE_BYTES;
    let len = if huge { total.next_multiple_of(HUGE_PAGE_BYTES) } else { total };
    let slack = if huge { HUGE_PAGE_BYTES } else { 0 };
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    let protection = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: an anonymous private mapping at an address of the kernel's choice; no memory of
    // ours is touched.
    let raw = unsafe { libc::mmap(std::ptr::null_mut(), len + slack, protection, flags, -1, 0) };
    if raw == libc::MAP_FAILED {
        let layout = Layout::from_size_align(len, BUFFER_ALIGNMENT_BYTES).expect("valid layout");
        alloc::handle_alloc_error(layout);
    }
    let raw = raw.cast::<u8>();
    if !huge {
        return (raw, len);
    }
    let head = raw.align_offset(HUGE_PAGE_BYTES);
    // SAFETY: head < HUGE_PAGE_BYTES = slack, so base..base + len lies inside the mapping.
    let base = unsafe { raw.add(head) };
    // SAFETY: unmaps the unaligned head and the unused tail of our own mapping, both outside
    // base..base + len; a zero-length munmap is skipped.
    unsafe {
        if head > 0 {
            libc::munmap(raw.cast(), head);
        }
        if slack - head > 0 {
            libc::munmap(base.add(len).cast(), slack - head);
        }
        // A hint only: failure (THP compiled out) leaves ordinary pages.
        libc::madvise(base.cast(), len, libc::MADV_HUGEPAGE);
    }
    (base, len)
}

fn check_shape(count: u32, buffer_size_bytes: u32) {
    assert!(count > 0, "a buffer pool needs at least one buffer");
    assert!(buffer_size_bytes > 0, "buffers must not be empty");
    assert!(
        (buffer_size_bytes as usize).is_multiple_of(BUFFER_ALIGNMENT_BYTES),
        "buffer size must be a multiple of {BUFFER_ALIGNMENT_BYTES}"
    );
}

/// One buffer of a pool, with a window (`start..start + len`) that an I/O reads into or
/// writes from. The window starts as the whole buffer.
pub struct DmaBuf {
    region: Rc<Region>,
    index: u32,
    start: u32,
    len: u32,
}

impl fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaBuf")
            .field("index", &self.index)
            .field("start", &self.start)
            .field("len", &self.len)
            .finish()
    }
}

impl DmaBuf {
    /// Index of the buffer in its pool (the registered-buffer index in io_uring).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Size of the whole buffer.
    pub fn capacity(&self) -> u32 {
        self.region.buffer_size_bytes
    }

    /// Length of the window.
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of the window inside the buffer.
    pub fn start(&self) -> u32 {
        self.start
    }

    /// Sets the window. Panics when it does not fit the buffer (a programmer error); whether
    /// it is aligned is for the device to check when the buffer is used.
    pub fn set_window(&mut self, start: u32, len: u32) {
        let end = start.checked_add(len).expect("window end overflows u32");
        assert!(end <= self.capacity(), "window {start}+{len} exceeds buffer {}", self.capacity());
        self.start = start;
        self.len = len;
    }

    /// Sets the window to the first `len` bytes.
    pub fn set_len(&mut self, len: u32) {
        self.set_window(0, len);
    }

    /// Address of the window's first byte.
    pub fn as_ptr(&self) -> *const u8 {
        self.window_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.window_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the window lies inside this buffer (checked by `set_window`), the region
        // lives as long as `self.region`, and no other `DmaBuf` has this index while we do.
        unsafe { std::slice::from_raw_parts(self.window_ptr(), self.len as usize) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.window_ptr(), self.len as usize) }
    }

    fn window_ptr(&self) -> *mut u8 {
        let offset = self.index as usize * self.region.buffer_size_bytes as usize;
        // SAFETY: index < count and start + len <= buffer size, so the pointer is inside the
        // allocation.
        unsafe { self.region.base.add(offset + self.start as usize) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_distinct_and_come_back() {
        let mut pool = BufferPool::new(4, 8192);
        let a = pool.acquire().unwrap();
        let b = pool.acquire().unwrap();
        assert_eq!(a.as_ptr() as usize % BUFFER_ALIGNMENT_BYTES, 0);
        assert_eq!(b.as_ptr() as usize % BUFFER_ALIGNMENT_BYTES, 0);
        assert_ne!(a.as_ptr(), b.as_ptr());
        assert_eq!(pool.free_count(), 2);
        pool.release(a);
        pool.release(b);
        assert_eq!(pool.free_count(), 4);
    }

    #[test]
    fn large_pools_start_on_a_huge_page_and_are_zeroed() {
        let mut pool = BufferPool::new(4, 1 << 20);
        let first = pool.acquire().unwrap();
        assert_eq!(first.as_ptr() as usize % HUGE_PAGE_BYTES, 0);
        assert!(first.as_slice().iter().all(|&b| b == 0));
        let small = BufferPool::new(2, 4096).acquire().unwrap();
        assert_eq!(small.as_ptr() as usize % BUFFER_ALIGNMENT_BYTES, 0);
    }

    #[test]
    fn pool_runs_dry_then_refills() {
        let mut pool = BufferPool::new(1, 4096);
        let a = pool.acquire().unwrap();
        assert!(pool.acquire().is_none());
        pool.release(a);
        assert!(pool.acquire().is_some());
    }

    #[test]
    fn window_moves_the_slice() {
        let mut pool = BufferPool::new(1, 8192);
        let mut a = pool.acquire().unwrap();
        a.as_mut_slice()[4096] = 7;
        a.set_window(4096, 4096);
        assert_eq!(a.as_slice()[0], 7);
        assert_eq!(a.len(), 4096);
    }

    static EXTERNAL_FREES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    unsafe extern "C" fn free_external(base: *mut libc::c_void) {
        EXTERNAL_FREES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let layout = Layout::from_size_align(2 * 4096, BUFFER_ALIGNMENT_BYTES).unwrap();
        // SAFETY: the test allocated `base` with this layout.
        unsafe { alloc::dealloc(base.cast(), layout) }
    }

    #[test]
    fn external_memory_is_used_and_freed_once_after_the_last_buffer() {
        let layout = Layout::from_size_align(2 * 4096, BUFFER_ALIGNMENT_BYTES).unwrap();
        // SAFETY: non-zero size.
        let base = std::ptr::NonNull::new(unsafe { alloc::alloc_zeroed(layout) }).unwrap();
        // SAFETY: two 4 KiB buffers, aligned, owned by the pool, freed by `free_external`.
        let mut pool = unsafe { BufferPool::from_external(base, 2, 4096, free_external) };
        let buf = pool.acquire().unwrap();
        assert_eq!(buf.as_ptr(), base.as_ptr().cast_const());
        drop(pool);
        assert_eq!(EXTERNAL_FREES.load(std::sync::atomic::Ordering::SeqCst), 0);
        drop(buf);
        assert_eq!(EXTERNAL_FREES.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    #[should_panic(expected = "does not come from")]
    fn foreign_buffer_is_refused() {
        let mut one = BufferPool::new(1, 4096);
        let mut other = BufferPool::new(1, 4096);
        let buf = one.acquire().unwrap();
        other.release(buf);
    }
}
