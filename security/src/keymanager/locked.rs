//! Key bytes the key manager holds: one 32-byte key per page-aligned page, mlocked so it
//! is never swapped out, zeroed before the page is unlocked and freed; and the process
//! made non-dumpable so a core dump or a ptrace attach cannot read them.
//!
//! One key per page, because `munlock` does not count: unlocking one of two keys that
//! shared a page would unlock the other. A failed `mlock` (RLIMIT_MEMLOCK reached, or no
//! permission) is an error under [`MemoryLocking::Required`], and counted and logged once
//! (without any key byte) under [`MemoryLocking::BestEffort`]: never silently ignored.
//!
//! This is the security crate's only `unsafe` code: a raw page allocation and the two
//! system calls on it. Every block says why it holds.

#![allow(unsafe_code)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ffi::c_void;
use std::fmt;
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use zeroize::Zeroize;

use crate::constants::KEY_LEN;
use crate::keymanager::error::KeyManagerError;

/// What to do when a page of key material cannot be locked in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLocking {
    /// Refuse to hold the key: the operation fails with [`KeyManagerError::MemoryLock`].
    Required,
    /// Hold it unlocked, count the failure ([`mlock_failures`]) and log a warning once.
    BestEffort,
}

/// How many pages could not be locked since the process started.
pub fn mlock_failures() -> u64 {
    MLOCK_FAILURES.load(Ordering::Relaxed)
}

static MLOCK_FAILURES: AtomicU64 = AtomicU64::new(0);
static MLOCK_WARNED: OnceLock<()> = OnceLock::new();

/// Marks the process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`): no core dump, and no
/// ptrace attach by another process of the same user. Returns an error if the kernel
/// refuses, so a caller cannot believe it happened when it did not.
pub fn make_process_non_dumpable() -> Result<(), KeyManagerError> {
    nix::sys::prctl::set_dumpable(false)
        .map_err(|errno| KeyManagerError::NonDumpable { errno: errno.desc() })?;
    match nix::sys::prctl::get_dumpable() {
        Ok(false) => Ok(()),
        Ok(true) => Err(KeyManagerError::NonDumpable { errno: "still dumpable after prctl" }),
        Err(errno) => Err(KeyManagerError::NonDumpable { errno: errno.desc() }),
    }
}

/// True if the process is non-dumpable now.
pub fn process_is_non_dumpable() -> bool {
    matches!(nix::sys::prctl::get_dumpable(), Ok(false))
}

/// 32 key bytes alone on an mlocked page. Not `Clone`, no `Debug` of its bytes.
pub(crate) struct LockedKey {
    page: NonNull<u8>,
    layout: Layout,
    locked: bool,
}

// SAFETY: `LockedKey` owns its page exclusively (no aliasing pointer is ever handed out
// beyond borrows tied to `&self`/`&mut self`), like a `Box<[u8]>`.
unsafe impl Send for LockedKey {}
// SAFETY: shared access only reads the bytes through `&self`.
unsafe impl Sync for LockedKey {}

impl LockedKey {
    /// A zeroed key on its own locked page.
    pub(crate) fn zeroed(policy: MemoryLocking) -> Result<LockedKey, KeyManagerError> {
        let page_bytes = page_size();
        let layout = Layout::from_size_align(page_bytes, page_bytes)
            .map_err(|_| KeyManagerError::MemoryLock { errno: "bad page layout" })?;
        // SAFETY: the layout has a non-zero size (a page) and a power-of-two alignment.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(page) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout);
        };
        let mut key = LockedKey { page, layout, locked: false };
        // SAFETY: `page` points to `page_bytes` bytes we own, page-aligned, for as long as
        // `key` lives; mlock only changes the pages' residency.
        let result = unsafe { nix::sys::mman::mlock(page.cast::<c_void>(), page_bytes) };
        match result {
            Ok(()) => key.locked = true,
            Err(errno) => {
                MLOCK_FAILURES.fetch_add(1, Ordering::Relaxed);
                if policy == MemoryLocking::Required {
                    return Err(KeyManagerError::MemoryLock { errno: errno.desc() });
                }
                MLOCK_WARNED.get_or_init(|| {
                    tracing::warn!(
                        error = errno.desc(),
                        "key manager: mlock failed; key pages may be swapped (raise \
                         RLIMIT_MEMLOCK, or use MemoryLocking::Required to refuse)"
                    );
                });
            }
        }
        Ok(key)
    }

    pub(crate) fn from_bytes(
        bytes: &[u8; KEY_LEN],
        policy: MemoryLocking,
    ) -> Result<LockedKey, KeyManagerError> {
        let mut key = LockedKey::zeroed(policy)?;
        key.expose_mut().copy_from_slice(bytes);
        Ok(key)
    }

    pub(crate) fn is_locked(&self) -> bool {
        self.locked
    }

    pub(crate) fn expose(&self) -> &[u8; KEY_LEN] {
        // SAFETY: the page is at least KEY_LEN bytes, initialized (zeroed at allocation),
        // page-aligned (so aligned for u8 arrays), and borrowed no longer than `self`.
        unsafe { &*self.page.as_ptr().cast::<[u8; KEY_LEN]>() }
    }

    pub(crate) fn expose_mut(&mut self) -> &mut [u8; KEY_LEN] {
        // SAFETY: as in `expose`, and `&mut self` makes the borrow exclusive.
        unsafe { &mut *self.page.as_ptr().cast::<[u8; KEY_LEN]>() }
    }
}

impl Drop for LockedKey {
    fn drop(&mut self) {
        self.expose_mut().zeroize();
        if self.locked {
            // SAFETY: the same page and length that were locked in `zeroed`.
            let _ =
                unsafe { nix::sys::mman::munlock(self.page.cast::<c_void>(), self.layout.size()) };
        }
        // SAFETY: allocated in `zeroed` with exactly this layout, freed once here.
        unsafe { dealloc(self.page.as_ptr(), self.layout) };
    }
}

impl fmt::Debug for LockedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockedKey").field("locked", &self.locked).finish_non_exhaustive()
    }
}

fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|size| usize::try_from(size).ok())
            .filter(|size| size.is_power_of_two() && *size >= KEY_LEN)
            .unwrap_or(4096)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_key_keeps_its_bytes_on_its_own_locked_page() {
        let key = LockedKey::from_bytes(&[7; KEY_LEN], MemoryLocking::Required)
            .expect("RLIMIT_MEMLOCK here allows a page");
        assert!(key.is_locked());
        assert_eq!(key.expose(), &[7; KEY_LEN]);
        let other = LockedKey::zeroed(MemoryLocking::Required).unwrap();
        let distance = (other.page.as_ptr() as usize).abs_diff(key.page.as_ptr() as usize);
        assert!(distance >= page_size(), "two keys never share a page");
        assert_eq!(key.page.as_ptr() as usize % page_size(), 0);
        assert!(!format!("{key:?}").contains('7'));
    }
}
