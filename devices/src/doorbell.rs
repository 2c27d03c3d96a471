//! A doorbell: an eventfd that wakes a device's owner from `submit_and_reap`.
//!
//! An engine reactor sleeps in one place only, its device's `submit_and_reap`. Requests from
//! other threads (tokio front ends) arrive through bounded channels; the sender then rings
//! the doorbell, whose read the device keeps armed in its own queue, so the reactor wakes
//! without a second blocking point (no poll of the channel, no epoll). Ringing is one
//! `write(2)` of 8 bytes; many rings before the reactor wakes coalesce into one wake-up.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// The receiving side, given to a device with `BlockDevice::attach_doorbell`.
#[derive(Debug)]
pub struct Doorbell {
    fd: Arc<OwnedFd>,
}

/// The ringing side: cheap to clone, `Send + Sync`, usable from any thread.
#[derive(Debug, Clone)]
pub struct DoorbellRinger {
    fd: Arc<OwnedFd>,
}

impl Doorbell {
    pub fn new() -> io::Result<Doorbell> {
        // SAFETY: eventfd takes two integers and returns a new descriptor or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Doorbell { fd: Arc::new(fd) })
    }

    pub fn ringer(&self) -> DoorbellRinger {
        DoorbellRinger { fd: Arc::clone(&self.fd) }
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Blocks until the doorbell has rung at least once since the last wait, and clears it.
    pub(crate) fn wait(&self) -> io::Result<()> {
        let mut count = 0u64;
        loop {
            // SAFETY: reads 8 bytes into `count`, which is 8 bytes long.
            let n = unsafe { libc::read(self.raw_fd(), (&raw mut count).cast(), 8) };
            if n == 8 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EINTR) {
                return Err(error);
            }
        }
    }
}

impl DoorbellRinger {
    /// Wakes the device's owner (or makes its next wait return at once).
    pub fn ring(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from `one`, which is 8 bytes long. An eventfd write fails
        // only when the counter would overflow u64::MAX - 1, which means it is already rung.
        unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
    }
}
