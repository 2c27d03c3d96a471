//! Opening a preallocated file or a block device for O_DIRECT I/O: the checks that turn a
//! wrong path into an error that names the problem before any I/O is queued.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::constants::{
    BLOCK_SIZE_MIN_BYTES, BUFFER_ALIGNMENT_BYTES, IO_SIZE_MAX_BYTES, QUEUE_DEPTH_MAX,
    REGISTERED_BUFFERS_MAX,
};
use crate::{DeviceError, Geometry};

/// How to open a device. `Default` gives a read-write device of the whole file, 64 slots
/// and 64 buffers of 64 KiB (4 MiB, inside the default 8 MiB locked-memory limit).
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Refuse writes, flushes and trims; open the file read-only.
    pub read_only: bool,
    /// Use this many bytes from the start of the device (`None`: all of it). More than the
    /// device has is `TooSmall`.
    pub size_bytes: Option<u64>,
    /// When the path is missing, create a preallocated file of `size_bytes` (mode 0600).
    pub create: bool,
    /// Requests in flight at once (slots and ring entries).
    pub queue_depth: u32,
    /// Buffers in the DMA pool.
    pub buffer_count: u32,
    /// Size of each pool buffer: the largest single read or write.
    pub buffer_size_bytes: u32,
    /// Let a kernel thread poll the submission queue, idling after this many ms. Off by
    /// default: it burns a core, which a two-core machine cannot spare.
    pub sqpoll_idle_ms: Option<u32>,
    /// Register the pool's buffers with the ring (fixed buffers). On by default; off only to
    /// measure what it saves.
    pub register_buffers: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            size_bytes: None,
            create: false,
            queue_depth: 64,
            buffer_count: 64,
            buffer_size_bytes: 64 << 10,
            sqpoll_idle_ms: None,
            register_buffers: true,
        }
    }
}

impl OpenOptions {
    /// Checks the queue and pool options every backend shares: depth, buffer count, and a
    /// buffer size that is a multiple of the minimum block size up to the largest I/O.
    pub(crate) fn check_queue_and_pool(&self) -> Result<(), DeviceError> {
        let invalid = |reason: String| Err(DeviceError::InvalidOptions { reason });
        if self.queue_depth == 0 || self.queue_depth > QUEUE_DEPTH_MAX {
            return invalid(format!(
                "queue depth {} not in 1..={QUEUE_DEPTH_MAX}",
                self.queue_depth
            ));
        }
        if self.buffer_count == 0 || self.buffer_count > REGISTERED_BUFFERS_MAX {
            return invalid(format!(
                "buffer count {} not in 1..={REGISTERED_BUFFERS_MAX}",
                self.buffer_count
            ));
        }
        let size = self.buffer_size_bytes;
        if size == 0 || size > IO_SIZE_MAX_BYTES || !size.is_multiple_of(BLOCK_SIZE_MIN_BYTES) {
            return invalid(format!(
                "buffer size {size} is not a multiple of {BLOCK_SIZE_MIN_BYTES} up to \
                 {IO_SIZE_MAX_BYTES}"
            ));
        }
        Ok(())
    }
}

/// What the path turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    RegularFile,
    BlockDevice,
}

/// An open file descriptor with O_DIRECT, checked and measured.
#[derive(Debug)]
pub(crate) struct OpenedFile {
    pub fd: OwnedFd,
    pub kind: DeviceKind,
    pub geometry: Geometry,
    pub name: String,
}

pub(crate) fn open(path: &Path, options: &OpenOptions) -> Result<OpenedFile, DeviceError> {
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound && options.create => {
            create_preallocated(path, options)?;
            fs::metadata(path).map_err(|e| path_error(path, e))?
        }
        Err(e) => return Err(path_error(path, e)),
    };
    let file_type = metadata.file_type();
    let kind = if file_type.is_file() {
        DeviceKind::RegularFile
    } else if file_type.is_block_device() {
        DeviceKind::BlockDevice
    } else {
        return Err(DeviceError::NotFileOrBlockDevice { path: path.to_owned() });
    };

    let file = fs::OpenOptions::new()
        .read(true)
        .write(!options.read_only)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| path_error(path, e))?;
    let fd = OwnedFd::from(file);
    let name = path.display().to_string();

    let (actual_bytes, block_size_bytes) = match kind {
        DeviceKind::RegularFile => (metadata.len(), BLOCK_SIZE_MIN_BYTES),
        DeviceKind::BlockDevice => block_device_geometry(&fd, path)?,
    };
    let wanted_bytes = options.size_bytes.unwrap_or(actual_bytes);
    if wanted_bytes > actual_bytes {
        return Err(DeviceError::TooSmall {
            device: name,
            size_bytes: actual_bytes,
            required_bytes: wanted_bytes,
        });
    }
    let size_bytes = wanted_bytes - wanted_bytes % u64::from(block_size_bytes);
    if size_bytes == 0 {
        return Err(DeviceError::TooSmall {
            device: name,
            size_bytes: actual_bytes,
            required_bytes: u64::from(block_size_bytes),
        });
    }
    probe_direct_io(&fd, path, block_size_bytes)?;
    Ok(OpenedFile { fd, kind, geometry: Geometry { size_bytes, block_size_bytes }, name })
}

/// Maps an error from opening or inspecting `path` to what it means for a device.
fn path_error(path: &Path, e: io::Error) -> DeviceError {
    let path: PathBuf = path.to_owned();
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => DeviceError::PathMissing { path },
        Some(libc::EINVAL) => DeviceError::DirectIoUnsupported { path },
        Some(libc::EROFS) => DeviceError::ReadOnly { device: path.display().to_string() },
        Some(libc::EACCES) | Some(libc::EPERM) => DeviceError::PermissionDenied { path },
        _ => DeviceError::Setup { what: "opening the device", source: e },
    }
}

fn create_preallocated(path: &Path, options: &OpenOptions) -> Result<(), DeviceError> {
    let Some(size) = options.size_bytes.filter(|&size| size > 0) else {
        return Err(DeviceError::InvalidOptions {
            reason: format!("{} does not exist and no size was given to create it", path.display()),
        });
    };
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| path_error(path, e))?;
    let size_off = libc::off_t::try_from(size).map_err(|_| DeviceError::InvalidOptions {
        reason: format!("size {size} does not fit a file offset"),
    })?;
    // SAFETY: fallocate on a file descriptor we own; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size_off) };
    if rc != 0 {
        let source = io::Error::last_os_error();
        let _ = fs::remove_file(path);
        return Err(DeviceError::Setup { what: "preallocating the device file", source });
    }
    file.sync_all().map_err(|source| DeviceError::Setup { what: "syncing the new file", source })
}

/// `BLKGETSIZE64` and `BLKSSZGET`, from linux/fs.h.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;

fn block_device_geometry(fd: &OwnedFd, path: &Path) -> Result<(u64, u32), DeviceError> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc != 0 {
        return Err(DeviceError::Setup {
            what: "reading the block device size",
            source: io::Error::last_os_error(),
        });
    }
    let mut logical: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points at `logical`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), BLKSSZGET, &mut logical as *mut libc::c_int) };
    if rc != 0 {
        return Err(DeviceError::Setup {
            what: "reading the block device sector size",
            source: io::Error::last_os_error(),
        });
    }
    let logical = u32::try_from(logical).unwrap_or(0);
    if logical == 0 || !logical.is_power_of_two() {
        return Err(DeviceError::InvalidOptions {
            reason: format!("{} reports a logical block of {logical} bytes", path.display()),
        });
    }
    Ok((size, logical.max(BLOCK_SIZE_MIN_BYTES)))
}

/// Reads the first block with O_DIRECT. Some file systems accept the O_DIRECT flag at open
/// and refuse only the I/O; this finds them at open instead of at the first real read.
fn probe_direct_io(fd: &OwnedFd, path: &Path, block_size_bytes: u32) -> Result<(), DeviceError> {
    let layout = std::alloc::Layout::from_size_align(
        block_size_bytes as usize,
        BUFFER_ALIGNMENT_BYTES.max(block_size_bytes as usize),
    )
    .expect("probe layout is valid");
    // SAFETY: the layout has a non-zero size.
    let buf = unsafe { std::alloc::alloc(layout) };
    if buf.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `buf` holds `block_size_bytes` writable bytes.
    let rc = unsafe { libc::pread(fd.as_raw_fd(), buf.cast(), block_size_bytes as usize, 0) };
    let error = (rc < 0).then(io::Error::last_os_error);
    // SAFETY: allocated above with the same layout, freed once.
    unsafe { std::alloc::dealloc(buf, layout) };
    match error {
        None => Ok(()),
        Some(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            Err(DeviceError::DirectIoUnsupported { path: path.to_owned() })
        }
        Some(source) => Err(DeviceError::Setup { what: "probing O_DIRECT reads", source }),
    }
}
