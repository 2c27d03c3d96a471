//! Kiseki's storage engine: a crash-safe, content-addressed chunk store.
//!
//! What it does: a [`Shard`] keeps chunks (opaque byte strings, in practice sealed
//! envelopes) keyed by a 32-byte chunk id on one region of a [`BlockDevice`]. A region holds
//! a superblock (cluster, node and device ids, format version, layout, CRC32C), a journal
//! (a ring of checksummed 4 KiB blocks of sequenced records), two checkpoint slots A/B (the
//! index and the allocator bitmap, CRC32C, the journal position they cover) and a data area
//! of block-granular extents. Byte maps are in [`format`]; every limit is in [`constants`].
//! Storing a chunk id twice adds a reference; space comes back when the count reaches zero.
//! A stored chunk's bytes can be replaced under the same id (a re-sealed envelope of the
//! same plaintext), its references unchanged; chunks are listed in id order from a cursor.
//! Every extent's CRC32C is checked on every read and by the scrubber.
//!
//! Threads: an [`Engine`] runs one pinned reactor thread per shard; front ends reach them
//! through an [`EngineHandle`] (bounded queues, `Busy` when full, a doorbell to wake an idle
//! reactor; see `reactor.rs`). The shard itself is a single-threaded state machine.
//!
//! What it does not do: encryption (the engine stores envelopes and never holds a key),
//! retries, or repair from replicas. Its I/O boundary is the `BlockDevice` trait: a shard pushes requests
//! and calls `submit_and_reap`; it never blocks in steady state (`poll` reaps with
//! `min_complete = 0`); only `format` and `open` (recovery) wait for the device.
//!
//! Invariants:
//! - The ack rule: a put or release is acknowledged only after its extent's write and its
//!   journal record's write have completed and a flush pushed after both completed has
//!   completed. Records are applied (and acked) in the order their operations were queued,
//!   so after any crash the store holds a prefix of the queued operations that includes
//!   every acknowledged one.
//! - Recovery = newest valid checkpoint + the journal after it up to the first torn,
//!   checksum-failing or out-of-sequence block; a last group commit whose puts' data fails
//!   its checksum was never acknowledged and is dropped whole. The recovered state is then
//!   written as a checkpoint (so the last group is never judged again, against extents
//!   reused since) and the journal blocks a crashed group may have left past the end are
//!   trimmed, before anything new is written.
//! - Reads see only acknowledged chunks; an extent is not freed while a read of it is in
//!   flight.
//! - A replace writes the new bytes to a new extent and switches the index to it only when
//!   its journal record is durable, so after any crash a chunk reads as its old bytes or its
//!   new ones, never neither; the old extent is freed after the switch (and after the reads
//!   of it in flight).
//! - An extent is reused only after the release that freed it is durable; journal blocks
//!   are overwritten only after a durable checkpoint covers them.
//! - Extents of stored chunks never overlap, and the allocator's map is exactly their union
//!   (checked when a checkpoint loads, and by `Shard::check_consistency`).
//! - After a failed write or flush the shard refuses puts and releases until reopened;
//!   reads go on.
//! - Every queue is bounded (`constants.rs`); a full one answers `EngineError::Busy`.

#![forbid(unsafe_code)]

pub mod constants;
pub mod format;
pub mod store_file;

mod allocator;
mod device_state;
mod error;
mod reactor;
mod shard;

pub use device_state::{DeviceState, Transition};
pub use error::{DecodeError, EngineError};
pub use format::DeviceIds;
pub use reactor::{Engine, EngineHandle, ShardOpener};
pub use shard::{Ack, CapacityLevel, FormatOptions, OpenOptions, Outcome, Shard, Stats, Ticket};

/// A chunk's id: SHA-256 of its plaintext, or an HMAC for isolated tenants (computed by the
/// security crate; opaque here).
pub type ChunkId = [u8; 32];

pub use kiseki_devices::BlockDevice;
