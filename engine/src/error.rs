//! The engine's one error type. Every variant names the problem and, where it helps, what to
//! do about it.

use std::fmt;

use kiseki_devices::{DeviceError, OpKind};
use kiseki_security::CryptoError;

use crate::ChunkId;
use crate::device_state::DeviceState;

/// What a shard can refuse or fail with.
///
/// Expected operating errors (a full device, a corrupt extent, a failed disk) come back as
/// values; programmer errors (a broken internal invariant) are assertions.
#[derive(Debug)]
#[non_exhaustive]
pub enum EngineError {
    /// The device refused or failed a request.
    Device { context: &'static str, source: DeviceError },
    /// An earlier write or flush failed: the shard refuses puts and releases until the device
    /// is reopened and the shard recovered, so that nothing is acknowledged on a lost write.
    ShardFailed { failed: OpKind },
    /// The outcome of this operation is unknown: the device failed while it was in flight.
    /// Recovery decides whether it happened.
    Interrupted { failed: OpKind },
    /// A stored extent does not match its checksum.
    Integrity { chunk_id: ChunkId, expected_crc32c: u32, actual_crc32c: u32 },
    /// A stored extent passes its checksum but is not a well-formed envelope (it was
    /// stored through the shard's raw interface, or the format is newer than this build).
    NotAnEnvelope { chunk_id: ChunkId, source: CryptoError },
    /// A stored extent holds the envelope of another chunk id.
    ChunkIdMismatch { chunk_id: ChunkId, found: ChunkId },
    /// The caller's fill of a put's write buffer (`Shard::put_with`: sealing into it)
    /// failed; nothing was stored.
    Fill { source: CryptoError },
    /// No such chunk (or its put is not yet acknowledged).
    NotFound { chunk_id: ChunkId },
    /// A bounded queue is full; poll and retry.
    Busy { queue: &'static str },
    /// The engine is shut down (or its reactor died): no request is taken.
    Stopped,
    /// The device's state machine does not allow this change.
    DeviceStateChange { from: DeviceState, to: DeviceState },
    /// The device takes no new chunks in its state (evacuating, failed, removed).
    DeviceNotWritable { device_id: [u8; 16], state: DeviceState },
    /// A reactor thread could not start or run.
    Reactor { index: usize, reason: String },
    /// The shard's data area is filled past the Critical threshold: puts are refused, reads
    /// go on.
    CapacityCritical { device_id: [u8; 16], fill_percent: u8, critical_percent: u8 },
    /// No free extent of the size asked (fragmentation or a full data area).
    NoSpace { blocks: u32 },
    /// The index holds as many chunks as the checkpoint region can describe.
    IndexFull { capacity: u64 },
    /// A chunk of zero bytes or larger than the shard stores.
    BadChunkSize { len_bytes: usize, max_bytes: u32 },
    /// The device is too small or its geometry unsupported.
    Geometry { reason: String },
    /// The superblock, a checkpoint or a journal block failed to decode.
    Decode { structure: &'static str, source: DecodeError },
    /// The superblock was written by another format version.
    FormatVersion { found: u32, supported: u32 },
    /// The device belongs to another cluster.
    WrongCluster { expected: [u8; 16], found: [u8; 16] },
    /// Neither checkpoint slot holds a valid checkpoint.
    NoValidCheckpoint { a: DecodeError, b: DecodeError },
    /// Journal replay met a record that contradicts the recovered state.
    JournalInconsistent { record_sequence: u64, reason: &'static str },
}

/// Why an on-device structure failed to decode. Never a panic: every input is either a
/// value of the structure or one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the structure needs.
    Truncated { len_bytes: usize, needed_bytes: usize },
    /// The magic number is not this structure's (not formatted, or another structure).
    BadMagic,
    /// A version this code does not read.
    BadVersion { found: u32 },
    /// The checksum does not match: torn or corrupt.
    BadChecksum { stored: u32, computed: u32 },
    /// Checksum-valid but out of place (another device, sequence or region).
    Mismatch { field: &'static str },
    /// Checksum-valid but a field is out of range.
    Invalid { field: &'static str },
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use EngineError::*;
        match self {
            Device { context, source } => write!(f, "{context}: {source}"),
            ShardFailed { failed } => write!(
                f,
                "shard refuses changes after a failed {failed}; reopen the device to recover"
            ),
            Interrupted { failed } => {
                write!(f, "a {failed} failed while this operation was in flight; outcome unknown")
            }
            Integrity { chunk_id, expected_crc32c, actual_crc32c } => write!(
                f,
                "chunk {} fails its checksum: stored crc32c {expected_crc32c:#010x}, read \
                 {actual_crc32c:#010x}",
                hex(chunk_id)
            ),
            NotAnEnvelope { chunk_id, source } => {
                write!(f, "chunk {} is stored but is not an envelope: {source}", hex(chunk_id))
            }
            ChunkIdMismatch { chunk_id, found } => {
                write!(f, "chunk {} holds the envelope of chunk {}", hex(chunk_id), hex(found))
            }
            Fill { source } => write!(f, "filling the write buffer failed: {source}"),
            NotFound { chunk_id } => write!(f, "chunk {} not found", hex(chunk_id)),
            Busy { queue } => write!(f, "busy: the {queue} is full; retry after a poll"),
            Stopped => write!(f, "the engine is stopped"),
            DeviceStateChange { from, to } => {
                write!(f, "a {from} device cannot become {to}")
            }
            DeviceNotWritable { device_id, state } => {
                write!(f, "device {} is {state}: it takes no new chunks", hex(device_id))
            }
            Reactor { index, reason } => write!(f, "reactor {index}: {reason}"),
            CapacityCritical { device_id, fill_percent, critical_percent } => write!(
                f,
                "device {} is {fill_percent}% full (critical from {critical_percent}%): \
                 puts refused, reads continue",
                hex(device_id)
            ),
            NoSpace { blocks } => write!(f, "no free extent of {blocks} blocks"),
            IndexFull { capacity } => write!(f, "index full: {capacity} chunks"),
            BadChunkSize { len_bytes, max_bytes } => {
                write!(f, "chunk of {len_bytes} bytes: must be between 1 and {max_bytes}")
            }
            Geometry { reason } => write!(f, "unsupported device: {reason}"),
            Decode { structure, source } => write!(f, "{structure}: {source}"),
            FormatVersion { found, supported } => write!(
                f,
                "device has format version {found}; this build reads only version {supported}"
            ),
            WrongCluster { expected, found } => write!(
                f,
                "device belongs to cluster {}, not to this cluster {}",
                hex(found),
                hex(expected)
            ),
            NoValidCheckpoint { a, b } => {
                write!(f, "no valid checkpoint: slot A {a}; slot B {b}")
            }
            JournalInconsistent { record_sequence, reason } => {
                write!(f, "journal record {record_sequence} contradicts the index: {reason}")
            }
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecodeError::*;
        match self {
            Truncated { len_bytes, needed_bytes } => {
                write!(f, "truncated: {len_bytes} bytes, {needed_bytes} needed")
            }
            BadMagic => f.write_str("bad magic (not formatted, or not this structure)"),
            BadVersion { found } => write!(f, "unknown version {found}"),
            BadChecksum { stored, computed } => {
                write!(f, "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")
            }
            Mismatch { field } => write!(f, "{field} does not match"),
            Invalid { field } => write!(f, "{field} out of range"),
        }
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EngineError::Device { source, .. } => Some(source),
            EngineError::Decode { source, .. } => Some(source),
            EngineError::NotAnEnvelope { source, .. } => Some(source),
            EngineError::Fill { source } => Some(source),
            _ => None,
        }
    }
}

impl std::error::Error for DecodeError {}

/// Lower-case hex of an id, for messages.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
