//! The shard: one region of one device, driven by its caller.
//!
//! Steady state never blocks: `put`, `release`, `get` and `scrub_step` check, queue and push
//! device requests; `poll` submits them with one `submit_and_reap(0)`, handles what finished,
//! pushes what follows (a journal write after data writes, a flush after a journal write) and
//! hands back acknowledgements. `format` and `open` are one-time and wait for the device.
//!
//! Operations (puts, increfs, releases) form one FIFO queue. A put is ready when its data
//! write completed; the group commit takes the longest ready prefix of the queue, writes its
//! records as journal blocks with one write, then, after that write completed, one flush;
//! when the flush completes the records are applied and acknowledged. Applying in queue
//! order means recovery always finds a prefix of the queue, never a hole.
//!
//! A replace (a re-sealed envelope for a stored chunk id) is a put into a new extent whose
//! record, once durable, moves the entry there and frees the old extent: until then the
//! index, every checkpoint and every recovery see the old bytes; after, the new ones. The
//! old extent is reused only once no read of it is in flight.

use std::collections::{BTreeMap, VecDeque};

use kiseki_devices::{BlockDevice, Completion, DmaBuf, Op, OpKind, Rejected, Request, crc32c};
use kiseki_security::CryptoError;

use crate::allocator::Allocator;
use crate::constants::{
    BLOCK_SIZE_BYTES, CAPACITY_CRITICAL_PERCENT, CAPACITY_FULL_PERCENT, CAPACITY_WARNING_PERCENT,
    CHECKPOINT_TRIGGER_PERCENT, CHUNK_SIZE_MAX_BYTES, DEVICE_QUEUE_DEPTH_MIN,
    DEVICE_SLOTS_RESERVED, FORMAT_VERSION, JOURNAL_GROUP_BLOCKS_MAX, JOURNAL_RECORDS_PER_BLOCK,
    PENDING_OPS_MAX, READS_IN_FLIGHT_MAX,
};
use crate::device_state::{DeviceState, DeviceStates, Transition};
use crate::error::DecodeError;
use crate::format::{
    Checkpoint, CheckpointEntry, CheckpointHeader, DeviceIds, Extent, JOURNAL_HEADER_SIZE_BYTES,
    JournalHeader, Layout, RECORD_SIZE_BYTES, Record, RecordKind, SUPERBLOCK_SIZE_BYTES,
    Superblock, bitmap_words, blocks_for, decode_checkpoint, encode_checkpoint,
};
use crate::{ChunkId, EngineError};

const BLOCK: usize = BLOCK_SIZE_BYTES as usize;

/// Identifies an operation; its acknowledgement carries the same ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// A finished operation.
#[derive(Debug)]
pub struct Ack {
    pub ticket: Ticket,
    pub chunk_id: ChunkId,
    pub outcome: Outcome,
}

/// What a finished operation did. A put or release that is `Ok` is durable.
#[derive(Debug)]
pub enum Outcome {
    Put(Result<(), EngineError>),
    Release(Result<(), EngineError>),
    /// A replace: `Ok` once the new bytes are durable and in force.
    Replace(Result<(), EngineError>),
    Get(Result<Vec<u8>, EngineError>),
}

/// Where a shard lies on its device and which ids it carries, for `format`.
#[derive(Debug, Clone, Copy)]
pub struct FormatOptions {
    pub ids: DeviceIds,
    /// Start of the shard's region on the device, a multiple of 4 KiB.
    pub region_offset_bytes: u64,
    /// Size of the region; `None`: the rest of the device.
    pub region_size_bytes: Option<u64>,
}

/// How to open a shard.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Start of the shard's region on the device.
    pub region_offset_bytes: u64,
    /// Refuse a device of another cluster.
    pub expected_cluster_id: Option<[u8; 16]>,
}

/// Fill level of the data area against the capacity thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CapacityLevel {
    Normal,
    Warning,
    Critical,
    Full,
}

/// A snapshot of a shard's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Chunks whose put is acknowledged and whose last release is not.
    pub chunks: u64,
    pub data_bytes_total: u64,
    /// Blocks allocated, including extents of puts not yet acknowledged.
    pub data_bytes_used: u64,
    pub data_bytes_free: u64,
    pub fill_percent: u8,
    pub capacity: CapacityLevel,
    /// Gets and scrub reads whose extent failed its checksum.
    pub integrity_errors: u64,
    pub scrub_reads: u64,
    pub journal_blocks_used: u64,
    pub journal_blocks_total: u64,
    pub journal_fill_percent: u8,
    pub pending_ops: usize,
    pub checkpoints_written: u64,
    pub max_chunk_bytes: u32,
    pub device_state: DeviceState,
}

/// A crash-safe, content-addressed chunk store on one region of a [`BlockDevice`].
#[derive(Debug)]
pub struct Shard<D: BlockDevice> {
    device: D,
    superblock: Superblock,
    max_chunk_bytes: u32,
    group_blocks_max: u32,

    index: Index,
    allocator: Allocator,

    ops: VecDeque<PendingOp>,
    /// Number of `ops.front()`; data-write tags carry op numbers.
    first_op_number: u64,
    next_ticket: u64,

    journal_buf: Option<DmaBuf>,
    commit: Commit,
    /// Next journal block and record to write.
    next_block_sequence: u64,
    next_record_sequence: u64,
    /// Blocks and records before these are durable and applied.
    applied_block_sequence: u64,
    applied_record_sequence: u64,

    /// The newest durable checkpoint: its slot, sequence and first uncovered journal block
    /// (journal blocks before it may be overwritten).
    checkpoint_slot: u32,
    checkpoint_sequence: u64,
    checkpoint_block_sequence: u64,
    checkpoint_write: Option<CheckpointWrite>,
    checkpoint_bytes: Vec<u8>,
    checkpoint_bitmap: Vec<u64>,

    reads: Vec<Option<ReadSlot>>,
    free_reads: Vec<u32>,
    scrub_cursor: usize,
    /// Extents a replace left behind while a read of them was in flight; each is freed
    /// once no read slot names it (at most one per read slot).
    deferred_frees: Vec<Extent>,

    completions: Vec<Completion>,
    failed: Option<OpKind>,
    integrity_errors: u64,
    scrub_reads: u64,
    checkpoints_written: u64,
    /// Healthy → Degraded → Evacuating → Failed → Removed, with the changes' history.
    states: DeviceStates,
}

/// The in-memory index: a slab of entries and a map from chunk id to slab position. The
/// map is ordered so that `chunk_ids_after` can list chunks from a cursor in id order
/// (about the memory of a hash map; a lookup walks a few nodes more).
#[derive(Debug)]
struct Index {
    entries: Vec<Entry>,
    free: Vec<u32>,
    by_id: BTreeMap<ChunkId, u32>,
    /// Entries with `durable_refs > 0`.
    durable_chunks: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    chunk_id: ChunkId,
    extent: Extent,
    payload_len_bytes: u32,
    payload_crc32c: u32,
    /// References as of the applied journal.
    durable_refs: u32,
    /// References once every queued op is applied. Decides between put and incref and
    /// whether a release is allowed.
    live_refs: u32,
    /// Ops queued for this entry and not yet applied; the entry stays while there are any.
    queued_ops: u32,
    /// Reads of its extent in flight; the extent is not freed (and so not rewritten) under
    /// them.
    reads_in_flight: u32,
    in_use: bool,
    /// Where the chunk's bytes are once every queued op is applied: `extent` and its
    /// payload, or a queued replace's. A put that revives the entry names this.
    latest: Placement,
}

/// Where a chunk's bytes lie and what they check against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Placement {
    extent: Extent,
    payload_len_bytes: u32,
    payload_crc32c: u32,
}

#[derive(Debug)]
struct PendingOp {
    ticket: Ticket,
    record: Record,
    slot: u32,
    /// A put's data write completed (always true for increfs and releases).
    ready: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    Idle,
    /// A journal write of `blocks` blocks holding the first `ops` ops is in flight.
    Writing {
        ops: usize,
        blocks: u32,
    },
    /// The write completed; a flush is to be pushed.
    NeedFlush {
        ops: usize,
        blocks: u32,
    },
    Flushing {
        ops: usize,
        blocks: u32,
    },
}

#[derive(Debug)]
struct CheckpointWrite {
    slot: u32,
    sequence: u64,
    block_sequence: u64,
    written_bytes: usize,
    in_flight: bool,
    flushing: bool,
}

#[derive(Debug)]
struct ReadSlot {
    ticket: Option<Ticket>,
    entry_slot: u32,
    /// The extent read (a replace applied meanwhile does not free it under the read).
    extent: Extent,
    chunk_id: ChunkId,
    payload_len_bytes: u32,
    payload_crc32c: u32,
}

const TAG_KIND_SHIFT: u32 = 56;
const TAG_DATA_WRITE: u64 = 1;
const TAG_JOURNAL_WRITE: u64 = 2;
const TAG_JOURNAL_FLUSH: u64 = 3;
const TAG_CHECKPOINT_WRITE: u64 = 4;
const TAG_CHECKPOINT_FLUSH: u64 = 5;
const TAG_READ: u64 = 6;
const TAG_SYNC: u64 = 7;

fn tag(kind: u64, value: u64) -> u64 {
    assert!(value < 1 << TAG_KIND_SHIFT, "tag value overflows");
    kind << TAG_KIND_SHIFT | value
}

impl<D: BlockDevice> Shard<D> {
    /// Writes a fresh shard onto the device region: trims the journal and checkpoint slots,
    /// writes an empty checkpoint to slot A, flushes, then writes the superblock and flushes.
    /// Waits for the device. A format cut short leaves no valid superblock.
    pub fn format(device: &mut D, options: &FormatOptions) -> Result<Layout, EngineError> {
        let buffer_bytes = check_device(device)?;
        let geometry = device.geometry();
        let region_size =
            match options.region_size_bytes {
                Some(size) => size,
                None => geometry.size_bytes.checked_sub(options.region_offset_bytes).ok_or_else(
                    || EngineError::Geometry { reason: "region offset past the device end".into() },
                )?,
            };
        if options
            .region_offset_bytes
            .checked_add(region_size)
            .is_none_or(|end| end > geometry.size_bytes)
        {
            return Err(EngineError::Geometry {
                reason: format!("region of {region_size} bytes does not fit the device"),
            });
        }
        let group_blocks = (buffer_bytes / BLOCK_SIZE_BYTES).min(JOURNAL_GROUP_BLOCKS_MAX);
        let layout = Layout::compute(options.region_offset_bytes, region_size, group_blocks)?;
        let block = u64::from(BLOCK_SIZE_BYTES);
        // First unmake any old shard here, so that a format cut short leaves no superblock.
        sync_op(device, Op::Trim { offset: layout.region_offset_bytes, len_bytes: block })?;
        sync_op(device, Op::Flush)?;
        let journal_bytes = u64::from(layout.journal_blocks) * block;
        sync_op(
            device,
            Op::Trim { offset: layout.journal_offset_bytes(), len_bytes: journal_bytes },
        )?;
        let checkpoints = 2 * layout.checkpoint_bytes();
        let (offset, len_bytes) = (layout.checkpoint_offset_bytes(0), checkpoints);
        sync_op(device, Op::Trim { offset, len_bytes })?;
        let header = CheckpointHeader {
            slot: 0,
            checkpoint_sequence: 1,
            journal_block_sequence: 0,
            journal_record_sequence: 0,
            entry_count: 0,
            data_blocks: layout.data_blocks,
        };
        let bitmap = vec![0u64; bitmap_words(layout.data_blocks) as usize];
        let mut bytes = Vec::new();
        encode_checkpoint(&header, &options.ids.device_id, std::iter::empty(), &bitmap, &mut bytes);
        sync_write(device, layout.checkpoint_offset_bytes(0), &bytes)?;
        sync_op(device, Op::Flush)?;
        let mut sb = [0u8; SUPERBLOCK_SIZE_BYTES];
        Superblock { ids: options.ids, layout }.encode(&mut sb);
        let mut block_bytes = vec![0u8; BLOCK];
        block_bytes[..SUPERBLOCK_SIZE_BYTES].copy_from_slice(&sb);
        sync_write(device, layout.region_offset_bytes, &block_bytes)?;
        sync_op(device, Op::Flush)?;
        Ok(layout)
    }

    /// Opens and recovers a shard: reads the superblock, loads the newest valid checkpoint,
    /// replays the journal after it up to the first torn, corrupt or out-of-sequence block,
    /// drops the last group commit if any of its puts' data fails its checksum (that group
    /// was never acknowledged), checkpoints the result when the journal held anything, and
    /// erases the journal blocks a crashed group may have left after the end. Waits for the
    /// device. On error the device is dropped with the attempt.
    pub fn open(mut device: D, options: &OpenOptions) -> Result<Shard<D>, EngineError> {
        let buffer_bytes = check_device(&mut device)?;
        let superblock = read_superblock(&mut device, options)?;
        let layout = superblock.layout;
        let device_id = superblock.ids.device_id;
        let mut checkpoint: Option<Checkpoint> = None;
        let mut errors: [Option<DecodeError>; 2] = [None, None];
        let mut bytes = vec![0u8; layout.checkpoint_bytes() as usize];
        for slot in 0..2u32 {
            bytes.resize(layout.checkpoint_bytes() as usize, 0);
            sync_read(&mut device, layout.checkpoint_offset_bytes(slot as usize), &mut bytes)?;
            match decode_checkpoint(&bytes, &device_id, slot, layout.data_blocks) {
                Ok(found) => {
                    let newer = checkpoint.as_ref().is_none_or(|c| {
                        found.header.checkpoint_sequence > c.header.checkpoint_sequence
                    });
                    if newer {
                        checkpoint = Some(found);
                    }
                }
                Err(error) => errors[slot as usize] = Some(error),
            }
        }
        let Some(checkpoint) = checkpoint else {
            let [a, b] = errors.map(|e| e.expect("both slots failed"));
            return Err(EngineError::NoValidCheckpoint { a, b });
        };
        let mut shard = Shard::empty(device, superblock, buffer_bytes, bytes)?;
        shard.load_checkpoint(&checkpoint)?;
        drop(checkpoint);
        shard.replay()?;
        Ok(shard)
    }

    fn empty(
        mut device: D,
        superblock: Superblock,
        buffer_bytes: u32,
        checkpoint_bytes: Vec<u8>,
    ) -> Result<Shard<D>, EngineError> {
        let layout = superblock.layout;
        let journal_buf =
            device.acquire_buffer().ok_or(EngineError::Busy { queue: "buffer pool" })?;
        let index_capacity = layout.index_capacity.min(1 << 20) as usize;
        let depth = device.queue_depth() as usize;
        Ok(Shard {
            device,
            superblock,
            states: DeviceStates::default(),
            max_chunk_bytes: buffer_bytes.min(CHUNK_SIZE_MAX_BYTES),
            group_blocks_max: layout.journal_group_blocks.min(buffer_bytes / BLOCK_SIZE_BYTES),
            index: Index {
                entries: Vec::with_capacity(index_capacity),
                free: Vec::new(),
                by_id: BTreeMap::new(),
                durable_chunks: 0,
            },
            allocator: Allocator::new(layout.data_blocks),
            ops: VecDeque::with_capacity(PENDING_OPS_MAX),
            first_op_number: 0,
            next_ticket: 1,
            journal_buf: Some(journal_buf),
            commit: Commit::Idle,
            next_block_sequence: 0,
            next_record_sequence: 0,
            applied_block_sequence: 0,
            applied_record_sequence: 0,
            checkpoint_slot: 0,
            checkpoint_sequence: 0,
            checkpoint_block_sequence: 0,
            checkpoint_write: None,
            checkpoint_bytes,
            checkpoint_bitmap: vec![0; bitmap_words(layout.data_blocks) as usize],
            reads: (0..READS_IN_FLIGHT_MAX).map(|_| None).collect(),
            free_reads: (0..READS_IN_FLIGHT_MAX as u32).rev().collect(),
            scrub_cursor: 0,
            deferred_frees: Vec::with_capacity(READS_IN_FLIGHT_MAX),
            completions: Vec::with_capacity(depth),
            failed: None,
            integrity_errors: 0,
            scrub_reads: 0,
            checkpoints_written: 0,
        })
    }

    // -----------------------------------------------------------------------------------
    // The API
    // -----------------------------------------------------------------------------------

    /// Stores a chunk, or adds a reference when it is already stored (or queued). The ack
    /// comes from `poll` once the extent and the journal record are durable.
    pub fn put(&mut self, chunk_id: ChunkId, bytes: &[u8]) -> Result<Ticket, EngineError> {
        self.put_with(chunk_id, bytes.len(), |window| {
            window.copy_from_slice(bytes);
            Ok(())
        })
    }

    /// As [`Shard::put`], but `fill` writes the chunk's `len_bytes` straight into the
    /// device's write buffer: a writer that seals there
    /// ([`kiseki_security::Envelope::seal_to_slice`]) saves a copy of every chunk. `fill` is
    /// called only when the chunk is new (a chunk already stored or queued gets a reference,
    /// like `put`); if it fails, nothing is stored and its error comes back as
    /// [`EngineError::Fill`].
    pub fn put_with(
        &mut self,
        chunk_id: ChunkId,
        len_bytes: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), CryptoError>,
    ) -> Result<Ticket, EngineError> {
        self.check_takes_bytes(len_bytes)?;
        if let Some(&slot) = self.index.by_id.get(&chunk_id) {
            let entry = &mut self.index.entries[slot as usize];
            if entry.live_refs > 0 {
                entry.live_refs += 1;
                return Ok(self.queue(Record::reference(RecordKind::Incref, chunk_id), slot, true));
            }
            // Its last release is queued but not applied: the extent still holds the chunk
            // and stays allocated, so a new put record can name it again.
            entry.live_refs = 1;
            let record = put_record(entry);
            return Ok(self.queue(record, slot, true));
        }
        self.put_new(chunk_id, len_bytes, fill)
    }

    /// The checks of every request that writes new bytes (a put or a replace).
    fn check_takes_bytes(&self, len_bytes: usize) -> Result<(), EngineError> {
        if let Some(failed) = self.failed {
            return Err(EngineError::ShardFailed { failed });
        }
        let state = self.states.state();
        if !state.takes_puts() {
            return Err(EngineError::DeviceNotWritable {
                device_id: self.superblock.ids.device_id,
                state,
            });
        }
        if len_bytes == 0 || len_bytes > self.max_chunk_bytes as usize {
            let max_bytes = self.max_chunk_bytes;
            return Err(EngineError::BadChunkSize { len_bytes, max_bytes });
        }
        let fill_percent = self.fill_percent();
        if fill_percent >= CAPACITY_CRITICAL_PERCENT {
            return Err(EngineError::CapacityCritical {
                device_id: self.superblock.ids.device_id,
                fill_percent,
                critical_percent: CAPACITY_CRITICAL_PERCENT,
            });
        }
        if self.ops.len() >= PENDING_OPS_MAX {
            return Err(EngineError::Busy { queue: "op queue" });
        }
        Ok(())
    }

    fn put_new(
        &mut self,
        chunk_id: ChunkId,
        len_bytes: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), CryptoError>,
    ) -> Result<Ticket, EngineError> {
        if self.index.by_id.len() as u64 >= self.superblock.layout.index_capacity {
            return Err(EngineError::IndexFull { capacity: self.superblock.layout.index_capacity });
        }
        let placement = self.write_new_extent(len_bytes, fill)?;
        let entry = Entry {
            chunk_id,
            extent: placement.extent,
            payload_len_bytes: placement.payload_len_bytes,
            payload_crc32c: placement.payload_crc32c,
            durable_refs: 0,
            live_refs: 1,
            queued_ops: 0,
            reads_in_flight: 0,
            in_use: true,
            latest: placement,
        };
        let slot = self.index.insert(entry);
        let record = put_record(&entry);
        Ok(self.queue(record, slot, false))
    }

    /// Allocates an extent for `len_bytes`, lets `fill` write them into a device buffer,
    /// and pushes the data write, tagged with the number of the op the caller queues next.
    /// On any refusal nothing stays allocated.
    fn write_new_extent(
        &mut self,
        len_bytes: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), CryptoError>,
    ) -> Result<Placement, EngineError> {
        if !self.device_slot_free() {
            return Err(EngineError::Busy { queue: "device queue" });
        }
        let len = len_bytes as u32;
        let blocks = blocks_for(len);
        let extent = self.allocator.allocate(blocks).ok_or(EngineError::NoSpace { blocks })?;
        let Some(mut buf) = self.device.acquire_buffer() else {
            self.allocator.free(extent);
            return Err(EngineError::Busy { queue: "buffer pool" });
        };
        buf.set_len(blocks * BLOCK_SIZE_BYTES);
        let window = buf.as_mut_slice();
        let (payload, padding) = window.split_at_mut(len_bytes);
        if let Err(source) = fill(payload) {
            self.device.release_buffer(buf);
            self.allocator.free(extent);
            return Err(EngineError::Fill { source });
        }
        padding.fill(0);
        let placement =
            Placement { extent, payload_len_bytes: len, payload_crc32c: crc32c(payload) };
        let op_number = self.first_op_number + self.ops.len() as u64;
        let offset = self.superblock.layout.data_block_offset_bytes(extent.block);
        let request =
            Request { tag: tag(TAG_DATA_WRITE, op_number), op: Op::Write { offset, buf } };
        if let Err(rejected) = self.device.push(request) {
            self.allocator.free(extent);
            return Err(self.rejected("pushing a data write", rejected));
        }
        Ok(placement)
    }

    /// Drops one reference; at zero the chunk goes and its space returns to the allocator
    /// once the release is durable. The ack comes from `poll`.
    pub fn release(&mut self, chunk_id: ChunkId) -> Result<Ticket, EngineError> {
        if let Some(failed) = self.failed {
            return Err(EngineError::ShardFailed { failed });
        }
        if self.ops.len() >= PENDING_OPS_MAX {
            return Err(EngineError::Busy { queue: "op queue" });
        }
        let slot = self.index.by_id.get(&chunk_id).copied();
        let Some(slot) = slot.filter(|&s| self.index.entries[s as usize].live_refs > 0) else {
            return Err(EngineError::NotFound { chunk_id });
        };
        self.index.entries[slot as usize].live_refs -= 1;
        Ok(self.queue(Record::reference(RecordKind::Release, chunk_id), slot, true))
    }

    /// Replaces a stored chunk's bytes with `bytes` under the same id (a re-sealed envelope
    /// of the same plaintext); its references stay as they are. The ack (a `Replace`
    /// outcome from `poll`) comes once the new extent and the record that switches to it are
    /// durable; until then gets read the old bytes, and a crash before it leaves them.
    pub fn replace(&mut self, chunk_id: ChunkId, bytes: &[u8]) -> Result<Ticket, EngineError> {
        self.replace_with(chunk_id, bytes.len(), |window| {
            window.copy_from_slice(bytes);
            Ok(())
        })
    }

    /// As [`Shard::replace`], filling the write buffer in place (see [`Shard::put_with`]).
    /// Refused as `NotFound` for a chunk not stored, not yet acknowledged, or whose last
    /// release is queued; refused like a put when the shard takes no new bytes (failed,
    /// device not writable, past Critical, queues full).
    pub fn replace_with(
        &mut self,
        chunk_id: ChunkId,
        len_bytes: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), CryptoError>,
    ) -> Result<Ticket, EngineError> {
        self.check_takes_bytes(len_bytes)?;
        let slot = self.index.by_id.get(&chunk_id).copied();
        let stored = |s: &u32| {
            let entry = &self.index.entries[*s as usize];
            entry.durable_refs > 0 && entry.live_refs > 0
        };
        let Some(slot) = slot.filter(stored) else {
            return Err(EngineError::NotFound { chunk_id });
        };
        let placement = self.write_new_extent(len_bytes, fill)?;
        self.index.entries[slot as usize].latest = placement;
        let record = placement_record(RecordKind::Replace, chunk_id, placement);
        Ok(self.queue(record, slot, false))
    }

    /// Up to `max` ids of acknowledged chunks after `after` (from the first if `None`), in
    /// ascending byte order: a cursor that stays valid whatever is put, released or
    /// replaced meanwhile (a chunk stored after the cursor passed its id is not listed).
    pub fn chunk_ids_after(&self, after: Option<&ChunkId>, max: usize) -> Vec<ChunkId> {
        use std::ops::Bound::{self, Excluded, Unbounded};
        let lower: Bound<&ChunkId> = after.map_or(Unbounded, Excluded);
        let entries = &self.index.entries;
        let ids = self.index.by_id.range::<ChunkId, _>((lower, Unbounded));
        let durable = ids.filter(|&(_, &slot)| entries[slot as usize].durable_refs > 0);
        durable.take(max).map(|(id, _)| *id).collect()
    }

    /// Reads a chunk; the bytes (checked against their CRC32C) come back in a `Get` ack.
    /// Only chunks whose put is acknowledged, until their last release is, are found.
    pub fn get(&mut self, chunk_id: ChunkId) -> Result<Ticket, EngineError> {
        let Some(slot) = self.durable_slot(&chunk_id) else {
            return Err(EngineError::NotFound { chunk_id });
        };
        let ticket = Ticket(self.next_ticket);
        self.start_read(Some(ticket), slot)?;
        self.next_ticket += 1;
        Ok(ticket)
    }

    /// Whether a chunk is stored and its put acknowledged.
    pub fn contains(&self, chunk_id: &ChunkId) -> bool {
        self.durable_entry(chunk_id).is_some()
    }

    /// The acknowledged reference count of a chunk, if stored.
    pub fn refcount(&self, chunk_id: &ChunkId) -> Option<u32> {
        self.durable_entry(chunk_id).map(|e| e.durable_refs)
    }

    /// Every acknowledged chunk and its reference count, in no particular order.
    pub fn chunks(&self) -> impl Iterator<Item = (ChunkId, u32)> + '_ {
        let entries = self.index.entries.iter();
        entries.filter(|e| e.in_use && e.durable_refs > 0).map(|e| (e.chunk_id, e.durable_refs))
    }

    /// Starts re-reading up to `n` stored extents, round-robin over the index; a checksum
    /// mismatch counts in `integrity_errors`. Returns how many reads started (fewer when
    /// read slots, buffers or device slots run out).
    pub fn scrub_step(&mut self, n: usize) -> usize {
        let total = self.index.entries.len();
        let mut started = 0;
        let mut visited = 0;
        while started < n && visited < total {
            let position = self.scrub_cursor % total;
            self.scrub_cursor = position + 1;
            visited += 1;
            let entry = self.index.entries[position];
            if !entry.in_use || entry.durable_refs == 0 {
                continue;
            }
            if self.start_read(None, position as u32).is_err() {
                self.scrub_cursor = position;
                break;
            }
            self.scrub_reads += 1;
            started += 1;
        }
        started
    }

    pub fn stats(&self) -> Stats {
        let block = u64::from(BLOCK_SIZE_BYTES);
        let journal_total = u64::from(self.superblock.layout.journal_blocks);
        let journal_used = self.next_block_sequence - self.checkpoint_block_sequence;
        let fill_percent = self.fill_percent();
        Stats {
            chunks: self.index.durable_chunks,
            data_bytes_total: self.allocator.blocks() * block,
            data_bytes_used: self.allocator.used_blocks() * block,
            data_bytes_free: self.allocator.free_blocks() * block,
            fill_percent,
            capacity: capacity_level(fill_percent),
            integrity_errors: self.integrity_errors,
            scrub_reads: self.scrub_reads,
            journal_blocks_used: journal_used,
            journal_blocks_total: journal_total,
            journal_fill_percent: (journal_used * 100 / journal_total) as u8,
            pending_ops: self.ops.len(),
            checkpoints_written: self.checkpoints_written,
            max_chunk_bytes: self.max_chunk_bytes,
            device_state: self.states.state(),
        }
    }

    /// Where the device is in its life (see `device_state.rs`).
    pub fn device_state(&self) -> DeviceState {
        self.states.state()
    }

    /// The device's state changes, oldest first, each with its reason and time.
    pub fn device_state_history(&self) -> impl Iterator<Item = &Transition> {
        self.states.history()
    }

    /// An operator's (or the control plane's) change of the device's state: evacuate it,
    /// mark it healthy after a repair, or remove it. Refused when the state machine does
    /// not allow it.
    pub fn change_device_state(
        &mut self,
        to: DeviceState,
        reason: &str,
    ) -> Result<(), EngineError> {
        self.states.change(to, reason)
    }

    pub fn superblock(&self) -> &Superblock {
        &self.superblock
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, for tests that inject faults. Pushing requests through it behind the
    /// shard's back breaks the shard.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Gives the device back (to reopen it, or to cut its power in a test). Requests in
    /// flight are abandoned; buffers the shard holds go back to the pool.
    pub fn into_device(mut self) -> D {
        if let Some(buf) = self.journal_buf.take() {
            self.device.release_buffer(buf);
        }
        self.device
    }

    /// Whether a write or flush failed (the shard then refuses puts and releases).
    pub fn failed(&self) -> Option<OpKind> {
        self.failed
    }

    /// One turn: pushes follow-up work, submits everything with one non-blocking
    /// `submit_and_reap`, handles completions, and appends acknowledgements to `acks`.
    /// Returns how many acks were appended.
    pub fn poll(&mut self, acks: &mut Vec<Ack>) -> Result<usize, EngineError> {
        self.turn(0, acks)
    }

    /// One turn that may sleep: like `poll`, but waits for at least one completion, or for
    /// the device's doorbell when one is attached (a reactor's only blocking point).
    pub fn poll_wait(&mut self, acks: &mut Vec<Ack>) -> Result<usize, EngineError> {
        self.turn(1, acks)
    }

    /// Polls until nothing is in flight, waiting for completions. For tests, tools and
    /// shutdown; a reactor calls `poll`.
    pub fn run_until_idle(&mut self, acks: &mut Vec<Ack>) -> Result<usize, EngineError> {
        let mut appended = 0;
        loop {
            let wait = usize::from(self.device.in_flight() > 0);
            appended += self.turn(wait, acks)?;
            if self.device.in_flight() == 0 {
                return Ok(appended);
            }
        }
    }

    /// Checks the index against the allocator: extents of live chunks lie in the data area,
    /// do not overlap, and are exactly the allocated blocks. Only meaningful with no put in
    /// flight (a put's extent is allocated before its entry is durable). For tests.
    pub fn check_consistency(&self) -> Result<(), String> {
        let mut map = Allocator::new(self.allocator.blocks());
        // Extents allocated but named by no entry yet or any more: queued replaces' and those
        // waiting for reads to finish.
        let queued = self.ops.iter().filter(|op| op.record.kind == RecordKind::Replace);
        let pending = queued.map(|op| op.record.extent).chain(self.deferred_frees.iter().copied());
        for extent in pending {
            if !map.mark(extent) {
                return Err(format!("replaced extent {extent:?} overlaps another"));
            }
        }
        for entry in self.index.entries.iter().filter(|e| e.in_use) {
            if !map.mark(entry.extent) {
                return Err(format!(
                    "extent {:?} overlaps another or leaves the area",
                    entry.extent
                ));
            }
            if entry.extent.blocks != blocks_for(entry.payload_len_bytes) {
                return Err(format!("extent {:?} does not fit its payload", entry.extent));
            }
        }
        if map.words() != self.allocator.words() {
            return Err("allocator bitmap differs from the index's extents".into());
        }
        let durable = self.index.entries.iter().filter(|e| e.in_use && e.durable_refs > 0);
        if durable.count() as u64 != self.index.durable_chunks {
            return Err("durable chunk count is off".into());
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // The loop
    // -----------------------------------------------------------------------------------

    fn turn(&mut self, min_complete: usize, acks: &mut Vec<Ack>) -> Result<usize, EngineError> {
        let before = acks.len();
        self.start_work(acks);
        let mut completions = std::mem::take(&mut self.completions);
        let reaped = self.device.submit_and_reap(min_complete, &mut completions);
        for completion in completions.drain(..) {
            self.complete(completion, acks);
        }
        self.completions = completions;
        reaped.map_err(|source| EngineError::Device { context: "submit_and_reap", source })?;
        self.start_work(acks);
        Ok(acks.len() - before)
    }

    fn start_work(&mut self, acks: &mut Vec<Ack>) {
        if self.failed.is_some() {
            return;
        }
        self.start_commit(acks);
        self.start_checkpoint(acks);
    }

    fn start_commit(&mut self, acks: &mut Vec<Ack>) {
        match self.commit {
            Commit::Idle => self.start_group(acks),
            Commit::NeedFlush { ops, blocks } if self.device_has_room() => {
                let request = Request { tag: tag(TAG_JOURNAL_FLUSH, 0), op: Op::Flush };
                match self.device.push(request) {
                    Ok(()) => self.commit = Commit::Flushing { ops, blocks },
                    Err(rejected) => self.fail(rejected.error.op_kind_or(OpKind::Flush), acks),
                }
            }
            _ => {}
        }
    }

    /// Writes the longest ready prefix of the op queue (bounded by the group size, the
    /// journal's free blocks and the ring's end) as one journal write.
    fn start_group(&mut self, acks: &mut Vec<Ack>) {
        let layout = self.superblock.layout;
        let journal_blocks = u64::from(layout.journal_blocks);
        let free = journal_blocks - (self.next_block_sequence - self.checkpoint_block_sequence);
        let to_ring_end = journal_blocks - self.next_block_sequence % journal_blocks;
        let blocks_max = u64::from(self.group_blocks_max).min(free).min(to_ring_end) as usize;
        let records_max = blocks_max * JOURNAL_RECORDS_PER_BLOCK;
        let ready = self.ops.iter().take(records_max).take_while(|op| op.ready).count();
        if ready == 0 || !self.device_has_room() {
            return;
        }
        let mut buf = self.journal_buf.take().expect("the journal buffer is home when idle");
        let blocks = ready.div_ceil(JOURNAL_RECORDS_PER_BLOCK);
        buf.set_len((blocks * BLOCK) as u32);
        let window = buf.as_mut_slice();
        window.fill(0);
        let group_first_sequence = self.next_block_sequence;
        for (b, block) in window.chunks_exact_mut(BLOCK).enumerate() {
            let first = b * JOURNAL_RECORDS_PER_BLOCK;
            let count = (ready - first).min(JOURNAL_RECORDS_PER_BLOCK);
            let first_record_sequence = self.next_record_sequence + first as u64;
            for i in 0..count {
                let at = JOURNAL_HEADER_SIZE_BYTES + i * RECORD_SIZE_BYTES;
                let sequence = first_record_sequence + i as u64;
                self.ops[first + i].record.encode(sequence, &mut block[at..]);
            }
            let header = JournalHeader {
                record_count: count as u16,
                block_sequence: group_first_sequence + b as u64,
                group_first_sequence,
                first_record_sequence,
            };
            header.seal(&self.superblock.ids.device_id, block);
        }
        let offset = layout.journal_block_offset_bytes(group_first_sequence);
        let request = Request { tag: tag(TAG_JOURNAL_WRITE, 0), op: Op::Write { offset, buf } };
        match self.device.push(request) {
            Ok(()) => {
                self.commit = Commit::Writing { ops: ready, blocks: blocks as u32 };
                self.next_block_sequence += blocks as u64;
                self.next_record_sequence += ready as u64;
            }
            Err(rejected) => {
                let kind = rejected.error.op_kind_or(OpKind::Write);
                self.journal_buf = rejected.request.op.into_buf();
                self.fail(kind, acks);
            }
        }
    }

    /// Starts a checkpoint when the journal is filled past the trigger, and pushes its next
    /// piece or its flush.
    fn start_checkpoint(&mut self, acks: &mut Vec<Ack>) {
        if self.checkpoint_write.is_none() {
            let journal_blocks = u64::from(self.superblock.layout.journal_blocks);
            let used = self.next_block_sequence - self.checkpoint_block_sequence;
            let worth = self.applied_block_sequence > self.checkpoint_block_sequence;
            if !worth || used * 100 < journal_blocks * CHECKPOINT_TRIGGER_PERCENT {
                return;
            }
            self.snapshot_checkpoint();
        }
        let write = self.checkpoint_write.as_mut().expect("checkpoint in progress");
        if write.in_flight || write.flushing || !device_has_room(&self.device) {
            return;
        }
        let slot = write.slot as usize;
        let total = self.checkpoint_bytes.len();
        if write.written_bytes == total {
            let request = Request { tag: tag(TAG_CHECKPOINT_FLUSH, 0), op: Op::Flush };
            match self.device.push(request) {
                Ok(()) => write.flushing = true,
                Err(rejected) => self.fail(rejected.error.op_kind_or(OpKind::Flush), acks),
            }
            return;
        }
        let Some(mut buf) = self.device.acquire_buffer() else { return };
        let len = (total - write.written_bytes).min(buf.capacity() as usize);
        buf.set_len(len as u32);
        let piece = &self.checkpoint_bytes[write.written_bytes..write.written_bytes + len];
        buf.as_mut_slice().copy_from_slice(piece);
        let layout = self.superblock.layout;
        let offset = layout.checkpoint_offset_bytes(slot) + write.written_bytes as u64;
        let request = Request { tag: tag(TAG_CHECKPOINT_WRITE, 0), op: Op::Write { offset, buf } };
        match self.device.push(request) {
            Ok(()) => {
                write.in_flight = true;
                write.written_bytes += len;
            }
            Err(rejected) => {
                let kind = rejected.error.op_kind_or(OpKind::Write);
                if let Some(buf) = rejected.request.op.into_buf() {
                    self.device.release_buffer(buf);
                }
                self.fail(kind, acks);
            }
        }
    }

    /// Serializes the applied state (entries with durable references and their extents)
    /// as of `applied_block_sequence` into the checkpoint scratch, for the older slot.
    fn snapshot_checkpoint(&mut self) {
        self.checkpoint_bitmap.fill(0);
        let durable = self.index.entries.iter().filter(|e| e.in_use && e.durable_refs > 0);
        for entry in durable.clone() {
            let e = entry.extent;
            for block in e.block..e.block + u64::from(e.blocks) {
                self.checkpoint_bitmap[(block / 64) as usize] |= 1 << (block % 64);
            }
        }
        let slot = 1 - self.checkpoint_slot;
        let header = CheckpointHeader {
            slot,
            checkpoint_sequence: self.checkpoint_sequence + 1,
            journal_block_sequence: self.applied_block_sequence,
            journal_record_sequence: self.applied_record_sequence,
            entry_count: self.index.durable_chunks,
            data_blocks: self.superblock.layout.data_blocks,
        };
        let entries = durable.map(|e| CheckpointEntry {
            chunk_id: e.chunk_id,
            extent: e.extent,
            payload_len_bytes: e.payload_len_bytes,
            payload_crc32c: e.payload_crc32c,
            refcount: e.durable_refs,
        });
        let device_id = self.superblock.ids.device_id;
        let bitmap = &self.checkpoint_bitmap;
        encode_checkpoint(&header, &device_id, entries, bitmap, &mut self.checkpoint_bytes);
        assert!(self.checkpoint_bytes.len() as u64 <= self.superblock.layout.checkpoint_bytes());
        self.checkpoint_write = Some(CheckpointWrite {
            slot,
            sequence: header.checkpoint_sequence,
            block_sequence: header.journal_block_sequence,
            written_bytes: 0,
            in_flight: false,
            flushing: false,
        });
    }

    fn complete(&mut self, completion: Completion, acks: &mut Vec<Ack>) {
        let kind = completion.tag >> TAG_KIND_SHIFT;
        let value = completion.tag & ((1 << TAG_KIND_SHIFT) - 1);
        let ok = completion.result.is_ok();
        match kind {
            TAG_DATA_WRITE => {
                self.give_back(completion.buf);
                if !ok {
                    return self.fail(OpKind::Write, acks);
                }
                // Ops failed earlier are gone from the queue; their number falls outside.
                if let Some(index) = value.checked_sub(self.first_op_number)
                    && let Some(op) = self.ops.get_mut(index as usize)
                {
                    op.ready = true;
                }
            }
            TAG_JOURNAL_WRITE => {
                self.journal_buf = completion.buf;
                if !ok {
                    return self.fail(OpKind::Write, acks);
                }
                if let Commit::Writing { ops, blocks } = self.commit {
                    self.commit = Commit::NeedFlush { ops, blocks };
                }
            }
            TAG_JOURNAL_FLUSH => {
                if !ok {
                    return self.fail(OpKind::Flush, acks);
                }
                if let Commit::Flushing { ops, blocks } = self.commit {
                    self.apply_group(ops, blocks, acks);
                    self.commit = Commit::Idle;
                }
            }
            TAG_CHECKPOINT_WRITE => {
                self.give_back(completion.buf);
                if !ok {
                    return self.fail(OpKind::Write, acks);
                }
                if let Some(write) = self.checkpoint_write.as_mut() {
                    write.in_flight = false;
                }
            }
            TAG_CHECKPOINT_FLUSH => {
                if !ok {
                    return self.fail(OpKind::Flush, acks);
                }
                if let Some(write) = self.checkpoint_write.take() {
                    self.checkpoint_slot = write.slot;
                    self.checkpoint_sequence = write.sequence;
                    self.checkpoint_block_sequence = write.block_sequence;
                    self.checkpoints_written += 1;
                }
            }
            TAG_READ => self.complete_read(value as usize, completion, acks),
            _ => panic!("completion with unknown tag {:#x}", completion.tag),
        }
    }

    /// The group's flush completed: its records are durable. Applies them in order and
    /// acknowledges their ops.
    fn apply_group(&mut self, ops: usize, blocks: u32, acks: &mut Vec<Ack>) {
        for _ in 0..ops {
            let op = self.ops.pop_front().expect("a committed op is queued");
            self.first_op_number += 1;
            self.apply(&op);
            let outcome = outcome_of(op.record.kind, Ok(()));
            acks.push(Ack { ticket: op.ticket, chunk_id: op.record.chunk_id, outcome });
        }
        self.applied_block_sequence += u64::from(blocks);
        self.applied_record_sequence += ops as u64;
        assert_eq!(self.applied_block_sequence, self.next_block_sequence);
        assert_eq!(self.applied_record_sequence, self.next_record_sequence);
    }

    fn apply(&mut self, op: &PendingOp) {
        let entry = &mut self.index.entries[op.slot as usize];
        assert!(entry.in_use && entry.chunk_id == op.record.chunk_id, "op names its entry");
        entry.queued_ops -= 1;
        match op.record.kind {
            RecordKind::Put => {
                assert_eq!(entry.durable_refs, 0, "a put applies to a chunk not stored");
                entry.durable_refs = 1;
                self.index.durable_chunks += 1;
            }
            RecordKind::Incref => {
                assert!(entry.durable_refs > 0, "an incref applies to a stored chunk");
                entry.durable_refs += 1;
            }
            RecordKind::Release => {
                assert!(entry.durable_refs > 0, "a release applies to a stored chunk");
                entry.durable_refs -= 1;
                if entry.durable_refs == 0 {
                    self.index.durable_chunks -= 1;
                    self.remove_if_unused(op.slot);
                }
            }
            RecordKind::Replace => {
                assert!(entry.durable_refs > 0, "a replace applies to a stored chunk");
                let old = entry.extent;
                assert_ne!(old, op.record.extent, "a replace moves to a new extent");
                entry.extent = op.record.extent;
                entry.payload_len_bytes = op.record.payload_len_bytes;
                entry.payload_crc32c = op.record.payload_crc32c;
                self.free_when_unread(old);
            }
        }
    }

    /// Frees an extent no entry names any more, now or once the reads of it in flight are
    /// done.
    fn free_when_unread(&mut self, extent: Extent) {
        let read = self.reads.iter().flatten().any(|read| read.extent == extent);
        if read {
            assert!(self.deferred_frees.len() < READS_IN_FLIGHT_MAX, "one per read at most");
            self.deferred_frees.push(extent);
        } else {
            self.allocator.free(extent);
        }
    }

    /// Frees the deferred extents that no read in flight names any more.
    fn free_deferred(&mut self) {
        let mut index = 0;
        while index < self.deferred_frees.len() {
            let extent = self.deferred_frees[index];
            if self.reads.iter().flatten().any(|read| read.extent == extent) {
                index += 1;
            } else {
                self.deferred_frees.swap_remove(index);
                self.allocator.free(extent);
            }
        }
    }

    /// Removes an entry nobody refers to, waits for, or reads, and frees its extent.
    fn remove_if_unused(&mut self, slot: u32) {
        let entry = &self.index.entries[slot as usize];
        let unused = entry.durable_refs == 0 && entry.live_refs == 0;
        if unused && entry.queued_ops == 0 && entry.reads_in_flight == 0 {
            let extent = entry.extent;
            self.index.remove(slot);
            self.allocator.free(extent);
        }
    }

    /// A write or flush failed: the device refuses changes until reopened, so does the
    /// shard. Every queued op's outcome is now unknown (recovery decides).
    fn fail(&mut self, kind: OpKind, acks: &mut Vec<Ack>) {
        self.failed.get_or_insert(kind);
        self.states.change_if_allowed(DeviceState::Failed, &format!("a {kind} failed"));
        let failed = self.failed.expect("just set");
        while let Some(op) = self.ops.pop_front() {
            self.first_op_number += 1;
            let outcome = outcome_of(op.record.kind, Err(EngineError::Interrupted { failed }));
            acks.push(Ack { ticket: op.ticket, chunk_id: op.record.chunk_id, outcome });
        }
        self.commit = Commit::Idle;
        self.checkpoint_write = None;
    }

    fn start_read(&mut self, ticket: Option<Ticket>, slot: u32) -> Result<(), EngineError> {
        let entry = self.index.entries[slot as usize];
        if !self.device_slot_free() {
            return Err(EngineError::Busy { queue: "device queue" });
        }
        let Some(&read_slot) = self.free_reads.last() else {
            return Err(EngineError::Busy { queue: "read slots" });
        };
        let Some(mut buf) = self.device.acquire_buffer() else {
            return Err(EngineError::Busy { queue: "buffer pool" });
        };
        buf.set_len(entry.extent.blocks * BLOCK_SIZE_BYTES);
        let offset = self.superblock.layout.data_block_offset_bytes(entry.extent.block);
        let request =
            Request { tag: tag(TAG_READ, u64::from(read_slot)), op: Op::Read { offset, buf } };
        if let Err(rejected) = self.device.push(request) {
            return Err(self.rejected("pushing a read", rejected));
        }
        self.free_reads.pop();
        self.index.entries[slot as usize].reads_in_flight += 1;
        self.reads[read_slot as usize] = Some(ReadSlot {
            ticket,
            entry_slot: slot,
            extent: entry.extent,
            chunk_id: entry.chunk_id,
            payload_len_bytes: entry.payload_len_bytes,
            payload_crc32c: entry.payload_crc32c,
        });
        Ok(())
    }

    fn complete_read(&mut self, read_slot: usize, completion: Completion, acks: &mut Vec<Ack>) {
        let slot = self.reads[read_slot].take().expect("a read completes its own slot");
        self.free_reads.push(read_slot as u32);
        self.index.entries[slot.entry_slot as usize].reads_in_flight -= 1;
        self.remove_if_unused(slot.entry_slot);
        if !self.deferred_frees.is_empty() {
            self.free_deferred();
        }
        let buf = completion.buf.expect("a read gives its buffer back");
        let result = match completion.result {
            Ok(_) => {
                let payload = &buf.as_slice()[..slot.payload_len_bytes as usize];
                let actual_crc32c = crc32c(payload);
                if actual_crc32c == slot.payload_crc32c {
                    Ok(slot.ticket.map(|_| payload.to_vec()).unwrap_or_default())
                } else {
                    self.integrity_errors += 1;
                    let reason = "an extent failed its checksum on read";
                    if self.states.state() == DeviceState::Healthy {
                        self.states.change_if_allowed(DeviceState::Degraded, reason);
                    }
                    Err(EngineError::Integrity {
                        chunk_id: slot.chunk_id,
                        expected_crc32c: slot.payload_crc32c,
                        actual_crc32c,
                    })
                }
            }
            Err(source) => Err(EngineError::Device { context: "reading an extent", source }),
        };
        self.device.release_buffer(buf);
        if let Some(ticket) = slot.ticket {
            acks.push(Ack { ticket, chunk_id: slot.chunk_id, outcome: Outcome::Get(result) });
        }
    }

    // -----------------------------------------------------------------------------------
    // Recovery
    // -----------------------------------------------------------------------------------

    fn load_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), EngineError> {
        for e in &checkpoint.entries {
            let marked = self.allocator.mark(e.extent);
            assert!(marked, "decode_checkpoint checked the extents");
            self.index.insert(Entry {
                chunk_id: e.chunk_id,
                extent: e.extent,
                payload_len_bytes: e.payload_len_bytes,
                payload_crc32c: e.payload_crc32c,
                durable_refs: e.refcount,
                live_refs: e.refcount,
                queued_ops: 0,
                reads_in_flight: 0,
                in_use: true,
                latest: Placement {
                    extent: e.extent,
                    payload_len_bytes: e.payload_len_bytes,
                    payload_crc32c: e.payload_crc32c,
                },
            });
            self.index.durable_chunks += 1;
        }
        let h = checkpoint.header;
        self.checkpoint_slot = h.slot;
        self.checkpoint_sequence = h.checkpoint_sequence;
        self.checkpoint_block_sequence = h.journal_block_sequence;
        self.next_block_sequence = h.journal_block_sequence;
        self.next_record_sequence = h.journal_record_sequence;
        Ok(())
    }

    /// Replays the journal from the checkpoint (see `open`).
    fn replay(&mut self) -> Result<(), EngineError> {
        let layout = self.superblock.layout;
        let device_id = self.superblock.ids.device_id;
        let start = self.next_block_sequence;
        let journal_blocks = u64::from(layout.journal_blocks);
        // Pass 1: find the valid blocks; keep them (at most the whole journal, once, at open).
        let mut blocks: Vec<u8> = Vec::new();
        let mut block = vec![0u8; BLOCK];
        let mut record_sequence = self.next_record_sequence;
        let mut last_group_first = start;
        let mut sequence = start;
        while sequence - start < journal_blocks {
            sync_read(&mut self.device, layout.journal_block_offset_bytes(sequence), &mut block)?;
            let Ok((header, _)) =
                JournalHeader::decode(&block, &device_id, sequence, record_sequence)
            else {
                break;
            };
            record_sequence += u64::from(header.record_count);
            last_group_first = header.group_first_sequence.max(start);
            blocks.extend_from_slice(&block);
            sequence += 1;
        }
        let mut end = sequence;
        // Pass 2: the last group may not have been flushed; if any of its puts' data fails
        // its checksum, the group was never acknowledged and is dropped whole.
        if end > start && !self.group_data_intact(&blocks, start, last_group_first, end)? {
            end = last_group_first;
        }
        // Pass 3: apply.
        let mut record_sequence = self.next_record_sequence;
        for b in 0..(end - start) as usize {
            let bytes = &blocks[b * BLOCK..(b + 1) * BLOCK];
            let (header, records) =
                JournalHeader::decode(bytes, &device_id, start + b as u64, record_sequence)
                    .expect("checked in pass 1");
            for r in records.chunks_exact(RECORD_SIZE_BYTES) {
                let record = Record::decode(r, record_sequence).map_err(|source| {
                    EngineError::Decode { structure: "journal record", source }
                })?;
                self.replay_record(&record, record_sequence)?;
                record_sequence += 1;
            }
            debug_assert_eq!(header.block_sequence, start + b as u64);
        }
        self.next_block_sequence = end;
        self.next_record_sequence = record_sequence;
        self.applied_block_sequence = end;
        self.applied_record_sequence = record_sequence;
        if end > start {
            // The last group was checked against its data now; a later recovery must not
            // check it again (its extents may be freed and reused by then), so the replayed
            // state becomes a checkpoint before anything new is written.
            self.write_checkpoint_now()?;
        }
        self.erase_tail()
    }

    /// Writes a checkpoint of the applied state and flushes it, waiting for the device
    /// (recovery only).
    fn write_checkpoint_now(&mut self) -> Result<(), EngineError> {
        self.snapshot_checkpoint();
        let write = self.checkpoint_write.take().expect("a snapshot was just taken");
        let offset = self.superblock.layout.checkpoint_offset_bytes(write.slot as usize);
        sync_write(&mut self.device, offset, &self.checkpoint_bytes)?;
        // Durable before `erase_tail` trims blocks the previous checkpoint may still need.
        sync_op(&mut self.device, Op::Flush)?;
        self.checkpoint_slot = write.slot;
        self.checkpoint_sequence = write.sequence;
        self.checkpoint_block_sequence = write.block_sequence;
        self.checkpoints_written += 1;
        Ok(())
    }

    fn group_data_intact(
        &mut self,
        blocks: &[u8],
        start: u64,
        group_first: u64,
        end: u64,
    ) -> Result<bool, EngineError> {
        let layout = self.superblock.layout;
        let mut data = Vec::new();
        for b in (group_first - start)..(end - start) {
            let bytes = &blocks[b as usize * BLOCK..(b as usize + 1) * BLOCK];
            let count = u16::from_le_bytes([bytes[6], bytes[7]]) as usize;
            let records = &bytes[JOURNAL_HEADER_SIZE_BYTES..][..count * RECORD_SIZE_BYTES];
            for r in records.chunks_exact(RECORD_SIZE_BYTES) {
                let sequence = u64::from_le_bytes(r[56..64].try_into().expect("eight bytes"));
                let Ok(record) = Record::decode(r, sequence) else { return Ok(false) };
                if !record.kind.places_bytes() {
                    continue;
                }
                let e = record.extent;
                if e.block.checked_add(u64::from(e.blocks)).is_none_or(|x| x > layout.data_blocks) {
                    return Ok(false);
                }
                data.resize(e.blocks as usize * BLOCK, 0);
                sync_read(&mut self.device, layout.data_block_offset_bytes(e.block), &mut data)?;
                let payload = &data[..record.payload_len_bytes as usize];
                if crc32c(payload) != record.payload_crc32c {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    fn replay_record(&mut self, record: &Record, sequence: u64) -> Result<(), EngineError> {
        let inconsistent =
            |reason| Err(EngineError::JournalInconsistent { record_sequence: sequence, reason });
        let slot = self.index.by_id.get(&record.chunk_id).copied();
        match (record.kind, slot) {
            (RecordKind::Put, Some(_)) => return inconsistent("put of a stored chunk"),
            (RecordKind::Put, None) => {
                if !self.allocator.mark(record.extent) {
                    return inconsistent("put on a used or out-of-range extent");
                }
                self.index.insert(Entry {
                    chunk_id: record.chunk_id,
                    extent: record.extent,
                    payload_len_bytes: record.payload_len_bytes,
                    payload_crc32c: record.payload_crc32c,
                    durable_refs: 1,
                    live_refs: 1,
                    queued_ops: 0,
                    reads_in_flight: 0,
                    in_use: true,
                    latest: placement_of(record),
                });
                self.index.durable_chunks += 1;
            }
            (RecordKind::Incref | RecordKind::Release, None) => {
                return inconsistent("reference change of a chunk not stored");
            }
            (RecordKind::Replace, None) => return inconsistent("replace of a chunk not stored"),
            (RecordKind::Replace, Some(slot)) => {
                if !self.allocator.mark(record.extent) {
                    return inconsistent("replace onto a used or out-of-range extent");
                }
                let entry = &mut self.index.entries[slot as usize];
                let old = entry.extent;
                entry.extent = record.extent;
                entry.payload_len_bytes = record.payload_len_bytes;
                entry.payload_crc32c = record.payload_crc32c;
                entry.latest = placement_of(record);
                self.allocator.free(old);
            }
            (RecordKind::Incref, Some(slot)) => {
                let entry = &mut self.index.entries[slot as usize];
                entry.durable_refs += 1;
                entry.live_refs += 1;
            }
            (RecordKind::Release, Some(slot)) => {
                let entry = &mut self.index.entries[slot as usize];
                entry.durable_refs -= 1;
                entry.live_refs -= 1;
                if entry.durable_refs == 0 {
                    let extent = entry.extent;
                    self.index.remove(slot);
                    self.index.durable_chunks -= 1;
                    self.allocator.free(extent);
                }
            }
        }
        Ok(())
    }

    /// Trims the journal blocks after the end that the crashed run may have written (at
    /// most one group, inside the free part of the ring), so that a later replay cannot
    /// mistake them for a continuation of the blocks this run writes.
    fn erase_tail(&mut self) -> Result<(), EngineError> {
        let layout = self.superblock.layout;
        let journal_blocks = u64::from(layout.journal_blocks);
        let free = journal_blocks - (self.next_block_sequence - self.checkpoint_block_sequence);
        let mut count = u64::from(layout.journal_group_blocks).min(free);
        let mut sequence = self.next_block_sequence;
        while count > 0 {
            let run = count.min(journal_blocks - sequence % journal_blocks);
            let offset = layout.journal_block_offset_bytes(sequence);
            let len_bytes = run * u64::from(BLOCK_SIZE_BYTES);
            sync_op(&mut self.device, Op::Trim { offset, len_bytes })?;
            sequence += run;
            count -= run;
        }
        sync_op(&mut self.device, Op::Flush)
    }

    // -----------------------------------------------------------------------------------
    // Helpers
    // -----------------------------------------------------------------------------------

    fn queue(&mut self, record: Record, slot: u32, ready: bool) -> Ticket {
        assert!(self.ops.len() < PENDING_OPS_MAX, "op queue bound checked by the caller");
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        self.index.entries[slot as usize].queued_ops += 1;
        self.ops.push_back(PendingOp { ticket, record, slot, ready });
        ticket
    }

    fn durable_entry(&self, chunk_id: &ChunkId) -> Option<Entry> {
        self.durable_slot(chunk_id).map(|slot| self.index.entries[slot as usize])
    }

    fn durable_slot(&self, chunk_id: &ChunkId) -> Option<u32> {
        let slot = *self.index.by_id.get(chunk_id)?;
        (self.index.entries[slot as usize].durable_refs > 0).then_some(slot)
    }

    fn fill_percent(&self) -> u8 {
        let used = self.allocator.used_blocks();
        (used * 100 / self.allocator.blocks().max(1)) as u8
    }

    /// Room for a put's or get's request, leaving the reserved slots for commits.
    fn device_slot_free(&self) -> bool {
        let depth = self.device.queue_depth() as usize;
        self.device.in_flight() + (DEVICE_SLOTS_RESERVED as usize) < depth
    }

    fn device_has_room(&self) -> bool {
        device_has_room(&self.device)
    }

    fn give_back(&mut self, buf: Option<DmaBuf>) {
        if let Some(buf) = buf {
            self.device.release_buffer(buf);
        }
    }

    fn rejected(&mut self, context: &'static str, rejected: Rejected) -> EngineError {
        if let Some(buf) = rejected.request.op.into_buf() {
            self.device.release_buffer(buf);
        }
        EngineError::Device { context, source: rejected.error }
    }
}

fn device_has_room<D: BlockDevice>(device: &D) -> bool {
    device.in_flight() < device.queue_depth() as usize
}

/// The put record that (re)stores an entry where its bytes will be once every queued op is
/// applied.
fn put_record(entry: &Entry) -> Record {
    placement_record(RecordKind::Put, entry.chunk_id, entry.latest)
}

fn placement_of(record: &Record) -> Placement {
    Placement {
        extent: record.extent,
        payload_len_bytes: record.payload_len_bytes,
        payload_crc32c: record.payload_crc32c,
    }
}

/// A finished op's outcome, by the kind of its record.
fn outcome_of(kind: RecordKind, result: Result<(), EngineError>) -> Outcome {
    match kind {
        RecordKind::Put | RecordKind::Incref => Outcome::Put(result),
        RecordKind::Release => Outcome::Release(result),
        RecordKind::Replace => Outcome::Replace(result),
    }
}

fn placement_record(kind: RecordKind, chunk_id: ChunkId, placement: Placement) -> Record {
    Record {
        kind,
        chunk_id,
        extent: placement.extent,
        payload_len_bytes: placement.payload_len_bytes,
        payload_crc32c: placement.payload_crc32c,
    }
}

fn capacity_level(fill_percent: u8) -> CapacityLevel {
    match fill_percent {
        p if p >= CAPACITY_FULL_PERCENT => CapacityLevel::Full,
        p if p >= CAPACITY_CRITICAL_PERCENT => CapacityLevel::Critical,
        p if p >= CAPACITY_WARNING_PERCENT => CapacityLevel::Warning,
        _ => CapacityLevel::Normal,
    }
}

impl Index {
    fn insert(&mut self, entry: Entry) -> u32 {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.entries[slot as usize] = entry;
                slot
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
        };
        let previous = self.by_id.insert(entry.chunk_id, slot);
        assert!(previous.is_none(), "a chunk id has one entry");
        slot
    }

    fn remove(&mut self, slot: u32) {
        let entry = &mut self.entries[slot as usize];
        assert!(entry.in_use, "removing a free slot");
        entry.in_use = false;
        let removed = self.by_id.remove(&entry.chunk_id);
        assert_eq!(removed, Some(slot));
        self.free.push(slot);
    }
}

/// Checks the device's geometry and queue; returns the pool's buffer size.
fn check_device<D: BlockDevice>(device: &mut D) -> Result<u32, EngineError> {
    let geometry = device.geometry();
    if !BLOCK_SIZE_BYTES.is_multiple_of(geometry.block_size_bytes) {
        return Err(EngineError::Geometry {
            reason: format!(
                "device block size {} does not divide the engine's {BLOCK_SIZE_BYTES}",
                geometry.block_size_bytes
            ),
        });
    }
    if device.queue_depth() < DEVICE_QUEUE_DEPTH_MIN {
        return Err(EngineError::Geometry {
            reason: format!(
                "queue depth {} below the shard's minimum {DEVICE_QUEUE_DEPTH_MIN}",
                device.queue_depth()
            ),
        });
    }
    let buf = device.acquire_buffer().ok_or(EngineError::Busy { queue: "buffer pool" })?;
    let capacity = buf.capacity();
    device.release_buffer(buf);
    if capacity < BLOCK_SIZE_BYTES {
        return Err(EngineError::Geometry { reason: format!("buffers of {capacity} bytes") });
    }
    Ok(capacity)
}

fn read_superblock<D: BlockDevice>(
    device: &mut D,
    options: &OpenOptions,
) -> Result<Superblock, EngineError> {
    let mut block = vec![0u8; BLOCK];
    sync_read(device, options.region_offset_bytes, &mut block)?;
    let superblock = Superblock::decode(&block).map_err(|source| match source {
        DecodeError::BadVersion { found } => {
            EngineError::FormatVersion { found, supported: FORMAT_VERSION }
        }
        source => EngineError::Decode { structure: "superblock", source },
    })?;
    if superblock.layout.region_offset_bytes != options.region_offset_bytes {
        let source = DecodeError::Mismatch { field: "superblock region_offset_bytes" };
        return Err(EngineError::Decode { structure: "superblock", source });
    }
    let end = superblock.layout.region_offset_bytes + superblock.layout.region_size_bytes;
    if end > device.geometry().size_bytes {
        return Err(EngineError::Geometry {
            reason: format!("the superblock's region ends at {end}, past the device"),
        });
    }
    if let Some(expected) = options.expected_cluster_id
        && expected != superblock.ids.cluster_id
    {
        return Err(EngineError::WrongCluster { expected, found: superblock.ids.cluster_id });
    }
    Ok(superblock)
}

// ---------------------------------------------------------------------------------------
// Waiting I/O, for format and recovery only
// ---------------------------------------------------------------------------------------

/// Pushes one request and waits for it. Nothing else may be in flight.
fn sync_request<D: BlockDevice>(device: &mut D, op: Op) -> Result<Option<DmaBuf>, EngineError> {
    assert_eq!(device.in_flight(), 0, "waiting I/O runs alone");
    let context = match op.kind() {
        OpKind::Read => "recovery read",
        OpKind::Write => "format write",
        OpKind::Flush => "flush",
        OpKind::Trim => "trim",
    };
    if let Err(rejected) = device.push(Request { tag: tag(TAG_SYNC, 0), op }) {
        if let Some(buf) = rejected.request.op.into_buf() {
            device.release_buffer(buf);
        }
        return Err(EngineError::Device { context, source: rejected.error });
    }
    let mut completions = Vec::with_capacity(1);
    while completions.is_empty() {
        device
            .submit_and_reap(1, &mut completions)
            .map_err(|source| EngineError::Device { context, source })?;
    }
    let completion = completions.pop().expect("one completion");
    match completion.result {
        Ok(_) => Ok(completion.buf),
        Err(source) => {
            if let Some(buf) = completion.buf {
                device.release_buffer(buf);
            }
            Err(EngineError::Device { context, source })
        }
    }
}

fn sync_op<D: BlockDevice>(device: &mut D, op: Op) -> Result<(), EngineError> {
    let buf = sync_request(device, op)?;
    assert!(buf.is_none(), "flush and trim carry no buffer");
    Ok(())
}

fn sync_read<D: BlockDevice>(
    device: &mut D,
    offset: u64,
    out: &mut [u8],
) -> Result<(), EngineError> {
    let mut done = 0;
    while done < out.len() {
        let mut buf = device.acquire_buffer().ok_or(EngineError::Busy { queue: "buffer pool" })?;
        let len = (out.len() - done).min(buf.capacity() as usize);
        buf.set_len(len as u32);
        let offset = offset + done as u64;
        let buf = sync_request(device, Op::Read { offset, buf })?.expect("a read's buffer");
        out[done..done + len].copy_from_slice(buf.as_slice());
        device.release_buffer(buf);
        done += len;
    }
    Ok(())
}

fn sync_write<D: BlockDevice>(
    device: &mut D,
    offset: u64,
    bytes: &[u8],
) -> Result<(), EngineError> {
    let mut done = 0;
    while done < bytes.len() {
        let mut buf = device.acquire_buffer().ok_or(EngineError::Busy { queue: "buffer pool" })?;
        let len = (bytes.len() - done).min(buf.capacity() as usize);
        buf.set_len(len as u32);
        buf.as_mut_slice().copy_from_slice(&bytes[done..done + len]);
        let offset = offset + done as u64;
        let buf = sync_request(device, Op::Write { offset, buf })?.expect("a write's buffer");
        device.release_buffer(buf);
        done += len;
    }
    Ok(())
}

/// Which op a refusal concerns, for the failed state.
trait OpKindOr {
    fn op_kind_or(&self, default: OpKind) -> OpKind;
}

impl OpKindOr for kiseki_devices::DeviceError {
    fn op_kind_or(&self, default: OpKind) -> OpKind {
        match self {
            kiseki_devices::DeviceError::Poisoned { failed } => *failed,
            _ => default,
        }
    }
}
