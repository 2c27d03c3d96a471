//! Block devices for Kiseki.
//!
//! A [`BlockDevice`] moves aligned extents between a DMA buffer and a device, flushes, and
//! trims. It is a submission/completion queue, not a set of futures: the caller pushes any
//! number of requests ([`BlockDevice::push`]), then one call ([`BlockDevice::submit_and_reap`])
//! submits them all and collects finished ones into a caller-owned `Vec`. That is the shape of
//! the hardware and of io_uring; it costs no allocation, no waker and no lock per I/O, and
//! lets the engine's state machines (and the simulator in `tests/`) drive any backend the same
//! way.
//!
//! Backends:
//! - [`IoUringDevice`] (default): a preallocated file or a block device, O_DIRECT, one ring
//!   per owning thread, registered buffers and file, `user_data` = slot index.
//! - [`MemoryDevice`]: the same semantics in memory, with durable and live bytes kept apart
//!   so that a simulated power cut can lose exactly what was not flushed.
//! - [`FaultyDevice`]: wraps any backend to fail the Nth I/O and flip bits on read.
//! - `SpdkDevice` (feature `spdk`): SPDK's bdev API, loaded at run time; without SPDK it
//!   refuses to open and says why.
//!
//! What this crate does not do: it knows nothing of chunks, journals or encryption, retries
//! nothing, and never copies to fix alignment (a misaligned request is an error).
//!
//! Invariants every backend keeps:
//! - offsets, lengths and buffer addresses are multiples of `geometry().block_size_bytes`;
//! - a completed flush makes durable every write that completed before the flush was pushed;
//! - after trim, the trimmed range reads as zeros;
//! - after a failed write, flush or trim the device refuses to change data until reopened;
//! - a device and its buffers stay on the thread that opened it (`DmaBuf` is `!Send`).

pub mod affinity;
pub mod constants;
pub mod rng;

mod buffer;
mod crc;
mod doorbell;
mod error;
mod fault;
mod file;
mod memory;
#[cfg(feature = "spdk")]
mod spdk;
mod uring;

pub use buffer::{BufferPool, DmaBuf};
pub use crc::{crc32c, crc32c_parts};
pub use doorbell::{Doorbell, DoorbellRinger};
pub use error::{DeviceError, Misalignment};
pub use fault::{FaultPlan, FaultyDevice};
pub use file::{DeviceKind, OpenOptions};
pub use memory::MemoryDevice;
#[cfg(feature = "spdk")]
pub use spdk::SpdkDevice;
pub use uring::IoUringDevice;

use std::fmt;

/// Size and alignment of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Usable bytes, a multiple of `block_size_bytes`.
    pub size_bytes: u64,
    /// Alignment of every offset, length and buffer address.
    pub block_size_bytes: u32,
}

/// What a request does.
#[derive(Debug)]
pub enum Op {
    /// Reads `buf.len()` bytes at `offset` into the buffer's window.
    Read { offset: u64, buf: DmaBuf },
    /// Writes the buffer's window at `offset`.
    Write { offset: u64, buf: DmaBuf },
    /// Makes every write completed before this flush was pushed durable.
    Flush,
    /// Discards `len_bytes` at `offset`; the range then reads as zeros.
    Trim { offset: u64, len_bytes: u64 },
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Read { .. } => OpKind::Read,
            Op::Write { .. } => OpKind::Write,
            Op::Flush => OpKind::Flush,
            Op::Trim { .. } => OpKind::Trim,
        }
    }

    /// Whether the op changes what the device holds.
    pub fn mutates(&self) -> bool {
        !matches!(self, Op::Read { .. })
    }

    /// Takes the buffer out of a read or write.
    pub fn into_buf(self) -> Option<DmaBuf> {
        match self {
            Op::Read { buf, .. } | Op::Write { buf, .. } => Some(buf),
            Op::Flush | Op::Trim { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Read,
    Write,
    Flush,
    Trim,
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Flush => "flush",
            OpKind::Trim => "trim",
        })
    }
}

/// A request: an op and a caller's tag that comes back with its completion.
#[derive(Debug)]
pub struct Request {
    pub tag: u64,
    pub op: Op,
}

/// A finished request. The buffer of a read or write always comes back, failed or not.
#[derive(Debug)]
pub struct Completion {
    pub tag: u64,
    pub kind: OpKind,
    /// Bytes moved (reads and writes), or 0.
    pub result: Result<u32, DeviceError>,
    pub buf: Option<DmaBuf>,
}

/// A request the device refused before queueing it, handed back with its buffer.
#[derive(Debug)]
pub struct Rejected {
    pub error: DeviceError,
    pub request: Request,
}

impl Rejected {
    /// Drops the request and keeps the error; the caller must have no use for the buffer.
    pub fn into_error(self) -> DeviceError {
        self.error
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

/// A device driven by submission and completion.
pub trait BlockDevice {
    fn geometry(&self) -> Geometry;

    /// Takes a buffer from the device's DMA pool (`None` when all are out).
    fn acquire_buffer(&mut self) -> Option<DmaBuf>;

    /// Returns a buffer to the device's pool.
    fn release_buffer(&mut self, buf: DmaBuf);

    /// Whether the device would accept `op` now (alignment, range, read-only, poisoned),
    /// the queue depth aside. `push` runs the same check.
    fn check(&self, op: &Op) -> Result<(), DeviceError>;

    /// Queues a request. It is checked now (as `check`, plus the queue depth) and refused
    /// with its buffer handed back; it reaches the device at the next `submit_and_reap`.
    fn push(&mut self, request: Request) -> Result<(), Rejected>;

    /// Submits everything queued and appends finished requests to `completions`, waiting
    /// until at least `min_complete` have finished (capped at what is in flight). One system
    /// call at most. Returns how many completions were appended.
    fn submit_and_reap(
        &mut self,
        min_complete: usize,
        completions: &mut Vec<Completion>,
    ) -> Result<usize, DeviceError>;

    /// Requests queued or in flight, not yet reaped.
    fn in_flight(&self) -> usize;

    /// Keeps `doorbell` armed so that `submit_and_reap` also returns when it rings: then
    /// `min_complete` may exceed what is in flight, and a call with nothing in flight sleeps
    /// until a completion or a ring. Backends that cannot wait on one refuse it.
    fn attach_doorbell(&mut self, doorbell: Doorbell) -> Result<(), DeviceError> {
        drop(doorbell);
        Err(DeviceError::InvalidOptions { reason: "this backend cannot wait on a doorbell".into() })
    }

    /// How many requests may be in flight at once.
    fn queue_depth(&self) -> u32;
}

/// Checks a request against a device's geometry and state. Every backend calls this first,
/// so that all refuse the same inputs with the same errors.
pub(crate) fn validate(
    geometry: Geometry,
    read_only: bool,
    poisoned: Option<OpKind>,
    op: &Op,
    device_name: &str,
) -> Result<(), DeviceError> {
    if op.mutates() {
        if read_only {
            return Err(DeviceError::ReadOnly { device: device_name.to_owned() });
        }
        if let Some(failed) = poisoned {
            return Err(DeviceError::Poisoned { failed });
        }
    }
    let (offset, len_bytes) = match op {
        Op::Read { offset, buf } | Op::Write { offset, buf } => {
            check_buffer(geometry, buf)?;
            (*offset, u64::from(buf.len()))
        }
        Op::Trim { offset, len_bytes } => {
            if *len_bytes == 0 {
                let max_bytes = geometry.size_bytes;
                return Err(DeviceError::BadLength { len_bytes: 0, max_bytes });
            }
            (*offset, *len_bytes)
        }
        Op::Flush => return Ok(()),
    };
    let align = u64::from(geometry.block_size_bytes);
    if !offset.is_multiple_of(align) {
        return Err(misaligned(Misalignment::Offset, offset, geometry));
    }
    if !len_bytes.is_multiple_of(align) {
        return Err(misaligned(Misalignment::Length, len_bytes, geometry));
    }
    let end = offset.checked_add(len_bytes);
    if end.is_none_or(|end| end > geometry.size_bytes) {
        return Err(DeviceError::OutOfRange { offset, len_bytes, size_bytes: geometry.size_bytes });
    }
    Ok(())
}

fn check_buffer(geometry: Geometry, buf: &DmaBuf) -> Result<(), DeviceError> {
    let max = constants::IO_SIZE_MAX_BYTES;
    if buf.is_empty() || buf.len() > max {
        let (len_bytes, max_bytes) = (u64::from(buf.len()), u64::from(max));
        return Err(DeviceError::BadLength { len_bytes, max_bytes });
    }
    let address = buf.as_ptr() as u64;
    if !address.is_multiple_of(u64::from(geometry.block_size_bytes)) {
        return Err(misaligned(Misalignment::BufferAddress, address, geometry));
    }
    Ok(())
}

fn misaligned(what: Misalignment, value: u64, geometry: Geometry) -> DeviceError {
    DeviceError::Misaligned { what, value, alignment_bytes: geometry.block_size_bytes }
}
