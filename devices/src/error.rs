//! The device layer's one error type. Every variant names the problem and what to do.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::OpKind;

/// What a device can refuse or fail with.
///
/// Expected operating errors (bad input, a failed disk, a missing file) come back as values;
/// programmer errors (a buffer from another device's pool) are assertions.
#[derive(Debug)]
#[non_exhaustive]
pub enum DeviceError {
    /// A buffer address, offset or length is not a multiple of the device's block size.
    Misaligned { what: Misalignment, value: u64, alignment_bytes: u32 },
    /// The extent does not lie inside the device.
    OutOfRange { offset: u64, len_bytes: u64, size_bytes: u64 },
    /// A read, write or trim of zero bytes, or longer than it may be (`IO_SIZE_MAX_BYTES`
    /// for reads and writes, the device for trims).
    BadLength { len_bytes: u64, max_bytes: u64 },
    /// The device (or the size asked of it) is smaller than required.
    TooSmall { device: String, size_bytes: u64, required_bytes: u64 },
    /// A write, flush or trim on a device opened read-only, or on a read-only file system.
    ReadOnly { device: String },
    /// The path does not exist.
    PathMissing { path: PathBuf },
    /// The path is neither a regular file nor a block device.
    NotFileOrBlockDevice { path: PathBuf },
    /// The file system under the path refuses O_DIRECT (tmpfs before 6.6, some FUSE, ...).
    DirectIoUnsupported { path: PathBuf },
    /// Opening the path was refused for lack of permission.
    PermissionDenied { path: PathBuf },
    /// An earlier write, flush or trim failed; the device refuses to change its data until it
    /// is reopened, so that nothing is acknowledged on top of a lost write.
    Poisoned { failed: OpKind },
    /// Every request slot (the queue depth) is in use: reap completions first.
    QueueFull { queue_depth: u32 },
    /// The device answered a request with an error.
    Io { op: OpKind, source: io::Error },
    /// The device moved fewer bytes than asked.
    ShortTransfer { op: OpKind, expected_bytes: u32, actual_bytes: u32 },
    /// Setting the device up failed (ring creation, buffer registration, fstat...).
    Setup { what: &'static str, source: io::Error },
    /// Registering the DMA buffers was refused: the locked-memory limit is too low.
    MemlockLimit { requested_bytes: u64, limit_bytes: u64 },
    /// A backend whose hardware or library is absent on this machine.
    BackendUnavailable { backend: &'static str, reason: String },
    /// Options that cannot work together or at all.
    InvalidOptions { reason: String },
}

/// Which part of a request broke the alignment rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misalignment {
    BufferAddress,
    Offset,
    Length,
}

impl fmt::Display for Misalignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Misalignment::BufferAddress => "buffer address",
            Misalignment::Offset => "offset",
            Misalignment::Length => "length",
        })
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DeviceError::*;
        match self {
            Misaligned { what, value, alignment_bytes } => write!(
                f,
                "misaligned {what} {value:#x}: must be a multiple of {alignment_bytes} bytes"
            ),
            OutOfRange { offset, len_bytes, size_bytes } => write!(
                f,
                "extent at offset {offset} of {len_bytes} bytes lies outside the device \
                 ({size_bytes} bytes)"
            ),
            BadLength { len_bytes, max_bytes } => {
                write!(f, "I/O length {len_bytes} bytes: must be between 1 and {max_bytes}")
            }
            TooSmall { device, size_bytes, required_bytes } => write!(
                f,
                "device {device} is too small: {size_bytes} bytes, {required_bytes} required"
            ),
            ReadOnly { device } => write!(f, "device {device} is read-only"),
            PathMissing { path } => write!(f, "{}: no such file or device", path.display()),
            NotFileOrBlockDevice { path } => {
                write!(f, "{}: neither a regular file nor a block device", path.display())
            }
            DirectIoUnsupported { path } => write!(
                f,
                "{}: the file system does not support O_DIRECT; put the device file on a disk \
                 file system (ext4, xfs) or use a block device",
                path.display()
            ),
            PermissionDenied { path } => write!(f, "{}: permission denied", path.display()),
            Poisoned { failed } => write!(
                f,
                "device refuses writes after a failed {failed}; reopen it once the cause is fixed"
            ),
            QueueFull { queue_depth } => {
                write!(f, "all {queue_depth} request slots are in flight; reap completions first")
            }
            Io { op, source } => write!(f, "{op} failed: {source}"),
            ShortTransfer { op, expected_bytes, actual_bytes } => {
                write!(f, "{op} moved {actual_bytes} of {expected_bytes} bytes")
            }
            Setup { what, source } => write!(f, "{what}: {source}"),
            MemlockLimit { requested_bytes, limit_bytes } => write!(
                f,
                "registering {} KiB of I/O buffers exceeds the locked-memory limit ({} KiB); \
                 raise it with `ulimit -l` or LimitMEMLOCK= in the systemd unit",
                requested_bytes / 1024,
                limit_bytes / 1024
            ),
            BackendUnavailable { backend, reason } => {
                write!(f, "{backend} backend unavailable: {reason}")
            }
            InvalidOptions { reason } => write!(f, "invalid device options: {reason}"),
        }
    }
}

impl std::error::Error for DeviceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DeviceError::Io { source, .. } | DeviceError::Setup { source, .. } => Some(source),
            _ => None,
        }
    }
}
