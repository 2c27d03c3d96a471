//! Every limit of the engine, with the reason it has its value.

/// The engine's block: the unit of the allocator, of journal blocks and of every on-device
/// structure. The device layer's minimum block size; a device with a larger logical block is
/// refused for now (its superblock would need another layout).
pub const BLOCK_SIZE_BYTES: u32 = 4096;

/// Version of the on-device format written by this code. Any other version is refused at
/// open: there is no migration yet, and guessing at an unknown layout loses data.
pub const FORMAT_VERSION: u32 = 1;

/// Largest chunk a shard stores. A chunk is written and read with one device request, so the
/// device's pool buffers must be at least this large or the smaller buffer size applies.
/// 4 MiB is four times the 1 MiB chunks the gateway cuts objects into, with room for an
/// envelope's header and tag.
pub const CHUNK_SIZE_MAX_BYTES: u32 = 4 << 20;

/// Records in one journal block: (4096 - 64 header bytes) / 64 bytes per record.
pub const JOURNAL_RECORDS_PER_BLOCK: usize = 63;

/// Most journal blocks one group commit writes (one device write, so also capped by the
/// buffer size). 16 blocks hold 1008 records: more puts than a queue of 1 MiB chunks fills
/// during one flush on NVMe, and recovery verifies at most this many blocks of data.
pub const JOURNAL_GROUP_BLOCKS_MAX: u32 = 16;

/// Journal size bounds. The journal takes 1/64 of the shard (1.5 %) between these limits:
/// at least four full groups so that a checkpoint can run while groups continue, at most
/// 16 MiB, which replays in well under a second and holds 64 k records between checkpoints.
pub const JOURNAL_BLOCKS_MIN: u32 = 4 * JOURNAL_GROUP_BLOCKS_MAX;
pub const JOURNAL_BLOCKS_MAX: u32 = 4096;
pub const JOURNAL_SHARE_DIVISOR: u64 = 64;

/// A checkpoint starts when this share of the journal is in use; the rest is the room new
/// groups have while the checkpoint is written. Half keeps both sides equally long.
pub const CHECKPOINT_TRIGGER_PERCENT: u64 = 50;

/// Most index entries (stored chunks) per shard, whatever the device size. 16 M entries of
/// 56 bytes make a 896 MiB checkpoint: above that a shard must be split, not grown.
pub const INDEX_ENTRIES_MAX: u64 = 16 << 20;

/// Operations (puts, releases) queued between their call and their acknowledgement. Bounds
/// the op queue; a full queue answers `Busy`. 4096 is four full group commits of records.
pub const PENDING_OPS_MAX: usize = 4096;

/// Reads (gets and scrub reads) in flight at once; more answer `Busy`.
pub const READS_IN_FLIGHT_MAX: usize = 256;

/// Device request slots kept free for the shard's own work (a journal write or flush and a
/// checkpoint write or flush), so that puts and gets can never starve a commit.
pub const DEVICE_SLOTS_RESERVED: u32 = 2;

/// Smallest device queue depth a shard accepts: the reserved slots plus two for data.
pub const DEVICE_QUEUE_DEPTH_MIN: u32 = DEVICE_SLOTS_RESERVED + 2;

/// Capacity thresholds, in percent of the data area (defaults for SSDs, DESIGN.md). From
/// Warning on, `stats()` says so; from Critical on, puts are refused (reads go on) so that
/// there is room left to evacuate and to checkpoint; Full is reported when even that room
/// is nearly gone.
pub const CAPACITY_WARNING_PERCENT: u8 = 75;
pub const CAPACITY_CRITICAL_PERCENT: u8 = 85;
pub const CAPACITY_FULL_PERCENT: u8 = 97;

/// Smallest shard region: superblock, minimum journal, two checkpoints and a few data
/// blocks. Anything smaller cannot hold a useful store.
pub const REGION_BLOCKS_MIN: u64 = 1 + JOURNAL_BLOCKS_MIN as u64 + 2 + 16;

/// Requests waiting in one reactor's queue. Bounded so that a flood from the front ends
/// answers `Busy` instead of growing memory; 1024 covers a burst from many tokio tasks while
/// the reactor finishes one loop turn.
pub const REACTOR_QUEUE_CAPACITY: usize = 1024;

/// Requests a reactor takes from its queue per loop turn before it polls its device again,
/// so that a full queue cannot delay completions (and the acks behind them) indefinitely.
pub const REACTOR_COMMAND_BATCH: usize = 64;

/// Most chunk ids one listing (`EngineHandle::chunk_ids_after`) returns, per shard and in
/// all: 1024 ids are 32 KiB, and walking them (a re-seal reads and rewrites each) takes far
/// longer than the listing, which holds its reactor for one ordered walk of the index.
pub const LIST_CHUNK_IDS_MAX: usize = 1024;

/// State changes a shard remembers for the audit log. Changes are rare (a device degrades or
/// fails a few times in its life); 64 keeps every one between two audit exports.
pub const DEVICE_STATE_HISTORY_MAX: usize = 64;
