//! The on-device format: superblock, journal blocks and records, checkpoints, and the layout
//! of a shard's region. Encoding is explicit little-endian at fixed offsets; every decoder
//! takes any bytes and returns a value or a [`DecodeError`], never panics.
//!
//! A shard's region (block = 4096 bytes):
//!
//! ```text
//! block 0                      superblock (written once, by format)
//! 1 .. 1+J                     journal: a ring of J journal blocks
//! 1+J .. 1+J+C                 checkpoint slot A (C blocks)
//! 1+J+C .. 1+J+2C              checkpoint slot B
//! 1+J+2C .. end                data area: D blocks handed out by the allocator
//! ```

use kiseki_devices::{crc32c, crc32c_parts};

use crate::constants::{
    BLOCK_SIZE_BYTES, FORMAT_VERSION, INDEX_ENTRIES_MAX, JOURNAL_BLOCKS_MAX, JOURNAL_BLOCKS_MIN,
    JOURNAL_GROUP_BLOCKS_MAX, JOURNAL_RECORDS_PER_BLOCK, JOURNAL_SHARE_DIVISOR, REGION_BLOCKS_MIN,
};
use crate::error::DecodeError;
use crate::{ChunkId, EngineError};

const BLOCK: usize = BLOCK_SIZE_BYTES as usize;

/// The ids that name a device: which cluster and node it belongs to, and which device it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceIds {
    pub cluster_id: [u8; 16],
    pub node_id: [u8; 16],
    pub device_id: [u8; 16],
}

// ---------------------------------------------------------------------------------------
// Superblock
// ---------------------------------------------------------------------------------------

/// The superblock, at the first block of the shard's region.
///
/// ```text
/// offset size field
///      0    8 magic "KISEKISB"
///      8    4 format_version (u32 LE)
///     12    4 block_size_bytes
///     16   16 cluster_id
///     32   16 node_id
///     48   16 device_id
///     64    8 region_offset_bytes (absolute on the device)
///     72    8 region_size_bytes
///     80    4 journal_blocks (J; the journal starts at the region's block 1)
///     84    4 journal_group_blocks (most blocks one group commit writes)
///     88    4 checkpoint_blocks (C, each slot)
///     92    4 reserved, zero
///     96    8 data_blocks (D)
///    104    8 index_capacity (most chunks a checkpoint describes)
///    112  140 reserved, zero
///    252    4 crc32c of bytes 0..252
/// ```
/// The rest of the block is zero. Region offsets of the journal, checkpoints and data area
/// follow from J and C (see [`Layout`]), so they cannot disagree with each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    pub ids: DeviceIds,
    pub layout: Layout,
}

pub const SUPERBLOCK_SIZE_BYTES: usize = 256;
const SUPERBLOCK_MAGIC: [u8; 8] = *b"KISEKISB";
const SUPERBLOCK_CRC_AT: usize = 252;
const _: () = assert!(SUPERBLOCK_CRC_AT + 4 == SUPERBLOCK_SIZE_BYTES);
const _: () = assert!(SUPERBLOCK_SIZE_BYTES <= BLOCK);

impl Superblock {
    pub fn encode(&self, out: &mut [u8; SUPERBLOCK_SIZE_BYTES]) {
        out.fill(0);
        let l = &self.layout;
        out[0..8].copy_from_slice(&SUPERBLOCK_MAGIC);
        put_u32(out, 8, FORMAT_VERSION);
        put_u32(out, 12, BLOCK_SIZE_BYTES);
        out[16..32].copy_from_slice(&self.ids.cluster_id);
        out[32..48].copy_from_slice(&self.ids.node_id);
        out[48..64].copy_from_slice(&self.ids.device_id);
        put_u64(out, 64, l.region_offset_bytes);
        put_u64(out, 72, l.region_size_bytes);
        put_u32(out, 80, l.journal_blocks);
        put_u32(out, 84, l.journal_group_blocks);
        put_u32(out, 88, l.checkpoint_blocks);
        put_u64(out, 96, l.data_blocks);
        put_u64(out, 104, l.index_capacity);
        let crc = crc32c(&out[..SUPERBLOCK_CRC_AT]);
        put_u32(out, SUPERBLOCK_CRC_AT, crc);
    }

    /// Decodes and checks a superblock. The version is checked before the checksum only when
    /// the checksum fails, so that another version's superblock (whose checksum may sit
    /// elsewhere) is reported as such.
    pub fn decode(bytes: &[u8]) -> Result<Superblock, DecodeError> {
        let bytes = need(bytes, SUPERBLOCK_SIZE_BYTES)?;
        if bytes[0..8] != SUPERBLOCK_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = u32_at(bytes, 8);
        let stored = u32_at(bytes, SUPERBLOCK_CRC_AT);
        let computed = crc32c(&bytes[..SUPERBLOCK_CRC_AT]);
        if version != FORMAT_VERSION {
            return Err(DecodeError::BadVersion { found: version });
        }
        if stored != computed {
            return Err(DecodeError::BadChecksum { stored, computed });
        }
        if u32_at(bytes, 12) != BLOCK_SIZE_BYTES {
            return Err(DecodeError::Invalid { field: "block_size_bytes" });
        }
        let ids = DeviceIds {
            cluster_id: array16(bytes, 16),
            node_id: array16(bytes, 32),
            device_id: array16(bytes, 48),
        };
        let layout = Layout {
            region_offset_bytes: u64_at(bytes, 64),
            region_size_bytes: u64_at(bytes, 72),
            journal_blocks: u32_at(bytes, 80),
            journal_group_blocks: u32_at(bytes, 84),
            checkpoint_blocks: u32_at(bytes, 88),
            data_blocks: u64_at(bytes, 96),
            index_capacity: u64_at(bytes, 104),
        };
        layout.check().map_err(|field| DecodeError::Invalid { field })?;
        Ok(Superblock { ids, layout })
    }
}

// ---------------------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------------------

/// Where a shard's structures lie, derived from the region's size at format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub region_offset_bytes: u64,
    pub region_size_bytes: u64,
    pub journal_blocks: u32,
    pub journal_group_blocks: u32,
    pub checkpoint_blocks: u32,
    pub data_blocks: u64,
    pub index_capacity: u64,
}

impl Layout {
    /// Lays out a region: the journal takes 1/64 (bounded), each checkpoint slot what a full
    /// index and bitmap need, the data area the rest.
    pub fn compute(
        region_offset_bytes: u64,
        region_size_bytes: u64,
        journal_group_blocks: u32,
    ) -> Result<Layout, EngineError> {
        let block = u64::from(BLOCK_SIZE_BYTES);
        let too_small = || EngineError::Geometry {
            reason: format!(
                "a shard region needs at least {} bytes, got {region_size_bytes}",
                REGION_BLOCKS_MIN * block
            ),
        };
        if !region_offset_bytes.is_multiple_of(block) || !region_size_bytes.is_multiple_of(block) {
            return Err(EngineError::Geometry {
                reason: format!("region offset and size must be multiples of {block} bytes"),
            });
        }
        let total = region_size_bytes / block;
        if total < REGION_BLOCKS_MIN {
            return Err(too_small());
        }
        let journal = (total / JOURNAL_SHARE_DIVISOR)
            .clamp(u64::from(JOURNAL_BLOCKS_MIN), u64::from(JOURNAL_BLOCKS_MAX));
        let journal = journal as u32;
        let after_journal = total - 1 - u64::from(journal);
        // A checkpoint sized for a data area as large as everything after the journal is an
        // upper bound; the data area then shrinks by the two slots.
        let checkpoint = checkpoint_blocks_for(after_journal);
        let data = after_journal.checked_sub(2 * checkpoint).ok_or_else(too_small)?;
        if data < 16 {
            return Err(too_small());
        }
        let layout = Layout {
            region_offset_bytes,
            region_size_bytes,
            journal_blocks: journal,
            journal_group_blocks: journal_group_blocks.clamp(1, JOURNAL_GROUP_BLOCKS_MAX),
            checkpoint_blocks: checkpoint as u32,
            data_blocks: data,
            index_capacity: data.min(INDEX_ENTRIES_MAX),
        };
        layout.check().map_err(|field| EngineError::Geometry { reason: field.to_owned() })?;
        Ok(layout)
    }

    /// Checks that the fields describe a region that fits together; names the bad field.
    fn check(&self) -> Result<(), &'static str> {
        let block = u64::from(BLOCK_SIZE_BYTES);
        if !self.region_offset_bytes.is_multiple_of(block) {
            return Err("region_offset_bytes");
        }
        if !(JOURNAL_BLOCKS_MIN..=JOURNAL_BLOCKS_MAX).contains(&self.journal_blocks) {
            return Err("journal_blocks");
        }
        if !(1..=JOURNAL_GROUP_BLOCKS_MAX).contains(&self.journal_group_blocks) {
            return Err("journal_group_blocks");
        }
        if self.index_capacity > self.data_blocks.min(INDEX_ENTRIES_MAX) {
            return Err("index_capacity");
        }
        if u64::from(self.checkpoint_blocks) < checkpoint_blocks_for(self.data_blocks) {
            return Err("checkpoint_blocks");
        }
        let used = 1
            + u64::from(self.journal_blocks)
            + 2 * u64::from(self.checkpoint_blocks)
            + self.data_blocks;
        if used.checked_mul(block).is_none_or(|bytes| bytes > self.region_size_bytes) {
            return Err("region_size_bytes");
        }
        Ok(())
    }

    pub fn journal_offset_bytes(&self) -> u64 {
        self.region_offset_bytes + u64::from(BLOCK_SIZE_BYTES)
    }

    /// Device offset of journal block `sequence` (the ring wraps).
    pub fn journal_block_offset_bytes(&self, sequence: u64) -> u64 {
        let position = sequence % u64::from(self.journal_blocks);
        self.journal_offset_bytes() + position * u64::from(BLOCK_SIZE_BYTES)
    }

    pub fn checkpoint_offset_bytes(&self, slot: usize) -> u64 {
        assert!(slot < 2, "two checkpoint slots");
        let first =
            1 + u64::from(self.journal_blocks) + slot as u64 * u64::from(self.checkpoint_blocks);
        self.region_offset_bytes + first * u64::from(BLOCK_SIZE_BYTES)
    }

    pub fn checkpoint_bytes(&self) -> u64 {
        u64::from(self.checkpoint_blocks) * u64::from(BLOCK_SIZE_BYTES)
    }

    pub fn data_offset_bytes(&self) -> u64 {
        self.checkpoint_offset_bytes(0) + 2 * self.checkpoint_bytes()
    }

    /// Device offset of data block `block`.
    pub fn data_block_offset_bytes(&self, block: u64) -> u64 {
        self.data_offset_bytes() + block * u64::from(BLOCK_SIZE_BYTES)
    }
}

/// Blocks one checkpoint slot needs for an index and bitmap over `data_blocks`.
fn checkpoint_blocks_for(data_blocks: u64) -> u64 {
    let entries = data_blocks.min(INDEX_ENTRIES_MAX);
    let bytes = CHECKPOINT_HEADER_SIZE_BYTES as u64
        + entries * CHECKPOINT_ENTRY_SIZE_BYTES as u64
        + bitmap_words(data_blocks) * 8;
    bytes.div_ceil(u64::from(BLOCK_SIZE_BYTES))
}

pub fn bitmap_words(data_blocks: u64) -> u64 {
    data_blocks.div_ceil(64)
}

/// Blocks an extent of `len_bytes` takes.
pub fn blocks_for(len_bytes: u32) -> u32 {
    len_bytes.div_ceil(BLOCK_SIZE_BYTES)
}

// ---------------------------------------------------------------------------------------
// Journal
// ---------------------------------------------------------------------------------------

/// What a journal record does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A new chunk: its extent holds `payload_len_bytes` with `payload_crc32c`; refcount 1.
    Put = 1,
    /// One more reference to a stored chunk.
    Incref = 2,
    /// One reference fewer; at zero the chunk goes and its extent is free.
    Release = 3,
    /// A stored chunk's bytes move to a new extent holding `payload_len_bytes` with
    /// `payload_crc32c` (the same chunk id: a re-sealed envelope); its references stay, its
    /// old extent is free. Written only after the new extent's data is complete, so a crash
    /// before the record is durable leaves the old bytes in force. A build older than this
    /// kind refuses such a journal at replay ("record kind out of range"), never misreads it.
    Replace = 4,
}

impl RecordKind {
    /// Whether the record names an extent holding the chunk's bytes (put, replace).
    pub fn places_bytes(self) -> bool {
        matches!(self, RecordKind::Put | RecordKind::Replace)
    }
}

/// One journal record.
///
/// ```text
/// offset size field
///      0    1 kind (1 put, 2 incref, 3 release, 4 replace)
///      1    3 reserved, zero
///      4    4 payload_crc32c (put, replace; zero otherwise)
///      8   32 chunk_id
///     40    8 extent_block (data-area block; put, replace; zero otherwise)
///     48    4 extent_blocks (put, replace; zero otherwise)
///     52    4 payload_len_bytes (put, replace; zero otherwise)
///     56    8 sequence (every record's, one more than the one before)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub chunk_id: ChunkId,
    pub extent: Extent,
    pub payload_len_bytes: u32,
    pub payload_crc32c: u32,
}

/// A run of data-area blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extent {
    pub block: u64,
    pub blocks: u32,
}

pub const RECORD_SIZE_BYTES: usize = 64;
const _: () = assert!(RECORD_SIZE_BYTES == 8 + 32 + 8 + 4 + 4 + 8);

impl Record {
    pub fn reference(kind: RecordKind, chunk_id: ChunkId) -> Record {
        assert!(!kind.places_bytes(), "a put or replace record needs its extent");
        let extent = Extent::default();
        Record { kind, chunk_id, extent, payload_len_bytes: 0, payload_crc32c: 0 }
    }

    pub fn encode(&self, sequence: u64, out: &mut [u8]) {
        let out = &mut out[..RECORD_SIZE_BYTES];
        out.fill(0);
        out[0] = self.kind as u8;
        put_u32(out, 4, self.payload_crc32c);
        out[8..40].copy_from_slice(&self.chunk_id);
        put_u64(out, 40, self.extent.block);
        put_u32(out, 48, self.extent.blocks);
        put_u32(out, 52, self.payload_len_bytes);
        put_u64(out, 56, sequence);
    }

    /// Decodes a record that must carry `sequence`.
    pub fn decode(bytes: &[u8], sequence: u64) -> Result<Record, DecodeError> {
        let bytes = need(bytes, RECORD_SIZE_BYTES)?;
        if u64_at(bytes, 56) != sequence {
            return Err(DecodeError::Mismatch { field: "record sequence" });
        }
        if bytes[1..4] != [0; 3] {
            return Err(DecodeError::Invalid { field: "record reserved bytes" });
        }
        let kind = match bytes[0] {
            1 => RecordKind::Put,
            2 => RecordKind::Incref,
            3 => RecordKind::Release,
            4 => RecordKind::Replace,
            _ => return Err(DecodeError::Invalid { field: "record kind" }),
        };
        let record = Record {
            kind,
            chunk_id: array32(bytes, 8),
            extent: Extent { block: u64_at(bytes, 40), blocks: u32_at(bytes, 48) },
            payload_len_bytes: u32_at(bytes, 52),
            payload_crc32c: u32_at(bytes, 4),
        };
        let valid = match kind {
            RecordKind::Put | RecordKind::Replace => {
                record.payload_len_bytes > 0
                    && record.extent.blocks == blocks_for(record.payload_len_bytes)
            }
            RecordKind::Incref | RecordKind::Release => {
                record.extent == Extent::default()
                    && record.payload_len_bytes == 0
                    && record.payload_crc32c == 0
            }
        };
        if !valid {
            return Err(DecodeError::Invalid { field: "record extent" });
        }
        Ok(record)
    }
}

/// A journal block's header; the block holds up to 63 records after it.
///
/// ```text
/// offset size field
///      0    4 magic "KSJB"
///      4    2 version (1)
///      6    2 record_count (1..=63)
///      8    8 block_sequence (the ring position is block_sequence mod J)
///     16    8 group_first_sequence (first block of the group commit that wrote this one)
///     24    8 first_record_sequence
///     32   16 device_id
///     48   12 reserved, zero
///     60    4 crc32c of bytes 0..60 and 64..4096
///     64 4032 records, 64 bytes each; unused ones zero
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalHeader {
    pub record_count: u16,
    pub block_sequence: u64,
    pub group_first_sequence: u64,
    pub first_record_sequence: u64,
}

pub const JOURNAL_HEADER_SIZE_BYTES: usize = 64;
const JOURNAL_MAGIC: [u8; 4] = *b"KSJB";
const JOURNAL_VERSION: u16 = 1;
const JOURNAL_CRC_AT: usize = 60;
const _: () =
    assert!(JOURNAL_HEADER_SIZE_BYTES + JOURNAL_RECORDS_PER_BLOCK * RECORD_SIZE_BYTES == BLOCK);

impl JournalHeader {
    /// Writes the header into `block` (whose records are already encoded) and seals the block
    /// with its checksum.
    pub fn seal(&self, device_id: &[u8; 16], block: &mut [u8]) {
        let block = &mut block[..BLOCK];
        assert!((1..=JOURNAL_RECORDS_PER_BLOCK).contains(&usize::from(self.record_count)));
        block[..JOURNAL_HEADER_SIZE_BYTES].fill(0);
        block[0..4].copy_from_slice(&JOURNAL_MAGIC);
        put_u16(block, 4, JOURNAL_VERSION);
        put_u16(block, 6, self.record_count);
        put_u64(block, 8, self.block_sequence);
        put_u64(block, 16, self.group_first_sequence);
        put_u64(block, 24, self.first_record_sequence);
        block[32..48].copy_from_slice(device_id);
        let crc = journal_crc(block);
        put_u32(block, JOURNAL_CRC_AT, crc);
    }

    /// Decodes a journal block that must be block `sequence` of this device, with its first
    /// record numbered `record_sequence`; returns the header and the records' bytes.
    pub fn decode<'a>(
        bytes: &'a [u8],
        device_id: &[u8; 16],
        sequence: u64,
        record_sequence: u64,
    ) -> Result<(JournalHeader, &'a [u8]), DecodeError> {
        let bytes = need(bytes, BLOCK)?;
        if bytes[0..4] != JOURNAL_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let stored = u32_at(bytes, JOURNAL_CRC_AT);
        let computed = journal_crc(bytes);
        if stored != computed {
            return Err(DecodeError::BadChecksum { stored, computed });
        }
        let version = u16_at(bytes, 4);
        if version != JOURNAL_VERSION {
            return Err(DecodeError::BadVersion { found: u32::from(version) });
        }
        if bytes[32..48] != device_id[..] {
            return Err(DecodeError::Mismatch { field: "journal device_id" });
        }
        let header = JournalHeader {
            record_count: u16_at(bytes, 6),
            block_sequence: u64_at(bytes, 8),
            group_first_sequence: u64_at(bytes, 16),
            first_record_sequence: u64_at(bytes, 24),
        };
        if header.block_sequence != sequence {
            return Err(DecodeError::Mismatch { field: "journal block_sequence" });
        }
        if header.first_record_sequence != record_sequence {
            return Err(DecodeError::Mismatch { field: "journal first_record_sequence" });
        }
        if header.group_first_sequence > sequence
            || sequence - header.group_first_sequence >= u64::from(JOURNAL_GROUP_BLOCKS_MAX)
        {
            return Err(DecodeError::Invalid { field: "journal group_first_sequence" });
        }
        let count = usize::from(header.record_count);
        if !(1..=JOURNAL_RECORDS_PER_BLOCK).contains(&count) {
            return Err(DecodeError::Invalid { field: "journal record_count" });
        }
        let records = &bytes[JOURNAL_HEADER_SIZE_BYTES..][..count * RECORD_SIZE_BYTES];
        Ok((header, records))
    }
}

fn journal_crc(block: &[u8]) -> u32 {
    crc32c_parts(&[&block[..JOURNAL_CRC_AT], &block[JOURNAL_HEADER_SIZE_BYTES..BLOCK]])
}

// ---------------------------------------------------------------------------------------
// Checkpoint
// ---------------------------------------------------------------------------------------

/// A checkpoint slot's header, at the start of the slot; the body follows it.
///
/// ```text
/// offset size field
///      0    8 magic "KISEKICP"
///      8    4 version (1)
///     12    4 slot (0 = A, 1 = B)
///     16    8 checkpoint_sequence (the newest valid checkpoint wins)
///     24    8 journal_block_sequence (first journal block not covered: replay starts here)
///     32    8 journal_record_sequence (first record not covered)
///     40    8 entry_count
///     48    8 data_blocks (bits in the allocator bitmap)
///     56    8 body_bytes
///     64    4 body_crc32c
///     68   16 device_id
///     84   40 reserved, zero
///    124    4 crc32c of bytes 0..124
///    128      body: entry_count entries of 56 bytes, then the allocator bitmap as
///             ceil(data_blocks / 64) u64 LE words (bit b of word w = data block 64w + b)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointHeader {
    pub slot: u32,
    pub checkpoint_sequence: u64,
    pub journal_block_sequence: u64,
    pub journal_record_sequence: u64,
    pub entry_count: u64,
    pub data_blocks: u64,
}

/// One index entry in a checkpoint.
///
/// ```text
/// offset size field
///      0   32 chunk_id
///     32    8 extent_block
///     40    4 extent_blocks
///     44    4 payload_len_bytes
///     48    4 payload_crc32c
///     52    4 refcount (>= 1)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointEntry {
    pub chunk_id: ChunkId,
    pub extent: Extent,
    pub payload_len_bytes: u32,
    pub payload_crc32c: u32,
    pub refcount: u32,
}

pub const CHECKPOINT_HEADER_SIZE_BYTES: usize = 128;
pub const CHECKPOINT_ENTRY_SIZE_BYTES: usize = 56;
const CHECKPOINT_MAGIC: [u8; 8] = *b"KISEKICP";
const CHECKPOINT_VERSION: u32 = 1;
const CHECKPOINT_CRC_AT: usize = 124;
const _: () = assert!(CHECKPOINT_CRC_AT + 4 == CHECKPOINT_HEADER_SIZE_BYTES);
const _: () = assert!(CHECKPOINT_ENTRY_SIZE_BYTES == 32 + 8 + 4 + 4 + 4 + 4);

/// A decoded, checked checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub header: CheckpointHeader,
    pub entries: Vec<CheckpointEntry>,
}

/// Encodes a checkpoint into `out` (cleared first, padded to whole blocks): header, entries,
/// bitmap. The caller builds the bitmap from the same entries; `decode` checks they agree.
pub fn encode_checkpoint(
    header: &CheckpointHeader,
    device_id: &[u8; 16],
    entries: impl Iterator<Item = CheckpointEntry>,
    bitmap: &[u64],
    out: &mut Vec<u8>,
) {
    out.clear();
    out.resize(CHECKPOINT_HEADER_SIZE_BYTES, 0);
    let mut count = 0u64;
    for entry in entries {
        let at = out.len();
        out.resize(at + CHECKPOINT_ENTRY_SIZE_BYTES, 0);
        let e = &mut out[at..];
        e[0..32].copy_from_slice(&entry.chunk_id);
        put_u64(e, 32, entry.extent.block);
        put_u32(e, 40, entry.extent.blocks);
        put_u32(e, 44, entry.payload_len_bytes);
        put_u32(e, 48, entry.payload_crc32c);
        put_u32(e, 52, entry.refcount);
        count += 1;
    }
    assert_eq!(count, header.entry_count, "entry count disagrees with the entries");
    assert_eq!(bitmap.len() as u64, bitmap_words(header.data_blocks));
    for word in bitmap {
        out.extend_from_slice(&word.to_le_bytes());
    }
    let body_bytes = (out.len() - CHECKPOINT_HEADER_SIZE_BYTES) as u64;
    let body_crc = crc32c(&out[CHECKPOINT_HEADER_SIZE_BYTES..]);
    let h = &mut out[..CHECKPOINT_HEADER_SIZE_BYTES];
    h[0..8].copy_from_slice(&CHECKPOINT_MAGIC);
    put_u32(h, 8, CHECKPOINT_VERSION);
    put_u32(h, 12, header.slot);
    put_u64(h, 16, header.checkpoint_sequence);
    put_u64(h, 24, header.journal_block_sequence);
    put_u64(h, 32, header.journal_record_sequence);
    put_u64(h, 40, header.entry_count);
    put_u64(h, 48, header.data_blocks);
    put_u64(h, 56, body_bytes);
    put_u32(h, 64, body_crc);
    h[68..84].copy_from_slice(device_id);
    let crc = crc32c(&h[..CHECKPOINT_CRC_AT]);
    put_u32(h, CHECKPOINT_CRC_AT, crc);
    out.resize(out.len().next_multiple_of(BLOCK), 0);
}

/// Decodes and checks a checkpoint slot's bytes: header, checksums, that it belongs to this
/// device and slot, that every extent lies in the data area without overlapping another,
/// that no chunk appears twice, and that the stored bitmap is exactly the entries' extents.
pub fn decode_checkpoint(
    bytes: &[u8],
    device_id: &[u8; 16],
    slot: u32,
    data_blocks: u64,
) -> Result<Checkpoint, DecodeError> {
    let h = need(bytes, CHECKPOINT_HEADER_SIZE_BYTES)?;
    if h[0..8] != CHECKPOINT_MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let (stored, computed) = (u32_at(h, CHECKPOINT_CRC_AT), crc32c(&h[..CHECKPOINT_CRC_AT]));
    if stored != computed {
        return Err(DecodeError::BadChecksum { stored, computed });
    }
    let version = u32_at(h, 8);
    if version != CHECKPOINT_VERSION {
        return Err(DecodeError::BadVersion { found: version });
    }
    if h[68..84] != device_id[..] {
        return Err(DecodeError::Mismatch { field: "checkpoint device_id" });
    }
    let header = CheckpointHeader {
        slot: u32_at(h, 12),
        checkpoint_sequence: u64_at(h, 16),
        journal_block_sequence: u64_at(h, 24),
        journal_record_sequence: u64_at(h, 32),
        entry_count: u64_at(h, 40),
        data_blocks: u64_at(h, 48),
    };
    if header.slot != slot {
        return Err(DecodeError::Mismatch { field: "checkpoint slot" });
    }
    if header.data_blocks != data_blocks {
        return Err(DecodeError::Mismatch { field: "checkpoint data_blocks" });
    }
    let words = bitmap_words(data_blocks);
    let expected_body = header
        .entry_count
        .checked_mul(CHECKPOINT_ENTRY_SIZE_BYTES as u64)
        .and_then(|entries| entries.checked_add(words * 8));
    let body_bytes = u64_at(h, 56);
    if expected_body != Some(body_bytes) {
        return Err(DecodeError::Invalid { field: "checkpoint body_bytes" });
    }
    let body_len = usize::try_from(body_bytes)
        .map_err(|_| DecodeError::Truncated { len_bytes: bytes.len(), needed_bytes: usize::MAX })?;
    let total = CHECKPOINT_HEADER_SIZE_BYTES.saturating_add(body_len);
    let body = &need(bytes, total)?[CHECKPOINT_HEADER_SIZE_BYTES..];
    let (stored, computed) = (u32_at(h, 64), crc32c(body));
    if stored != computed {
        return Err(DecodeError::BadChecksum { stored, computed });
    }
    let entry_bytes = header.entry_count as usize * CHECKPOINT_ENTRY_SIZE_BYTES;
    let mut entries = Vec::with_capacity(header.entry_count as usize);
    let mut derived = vec![0u64; words as usize];
    let mut ids = std::collections::HashSet::with_capacity(entries.capacity());
    for e in body[..entry_bytes].chunks_exact(CHECKPOINT_ENTRY_SIZE_BYTES) {
        let entry = CheckpointEntry {
            chunk_id: array32(e, 0),
            extent: Extent { block: u64_at(e, 32), blocks: u32_at(e, 40) },
            payload_len_bytes: u32_at(e, 44),
            payload_crc32c: u32_at(e, 48),
            refcount: u32_at(e, 52),
        };
        check_entry(&entry, data_blocks)?;
        if !ids.insert(entry.chunk_id) {
            return Err(DecodeError::Invalid { field: "checkpoint entry chunk_id (twice)" });
        }
        if !mark_blocks(&mut derived, entry.extent) {
            return Err(DecodeError::Invalid { field: "checkpoint entry extent (overlaps)" });
        }
        entries.push(entry);
    }
    let stored_bitmap = body[entry_bytes..].chunks_exact(8).map(|w| u64_at(w, 0));
    if !stored_bitmap.eq(derived.iter().copied()) {
        return Err(DecodeError::Mismatch { field: "checkpoint allocator bitmap" });
    }
    Ok(Checkpoint { header, entries })
}

fn check_entry(entry: &CheckpointEntry, data_blocks: u64) -> Result<(), DecodeError> {
    if entry.refcount == 0 {
        return Err(DecodeError::Invalid { field: "checkpoint entry refcount" });
    }
    let blocks = entry.extent.blocks;
    if entry.payload_len_bytes == 0 || blocks != blocks_for(entry.payload_len_bytes) {
        return Err(DecodeError::Invalid { field: "checkpoint entry payload_len_bytes" });
    }
    let end = entry.extent.block.checked_add(u64::from(blocks));
    if end.is_none_or(|end| end > data_blocks) {
        return Err(DecodeError::Invalid { field: "checkpoint entry extent" });
    }
    Ok(())
}

/// Sets the extent's bits; false when one was already set.
fn mark_blocks(bitmap: &mut [u64], extent: Extent) -> bool {
    for block in extent.block..extent.block + u64::from(extent.blocks) {
        let (word, bit) = ((block / 64) as usize, block % 64);
        if bitmap[word] & (1 << bit) != 0 {
            return false;
        }
        bitmap[word] |= 1 << bit;
    }
    true
}

// ---------------------------------------------------------------------------------------
// Little-endian helpers
// ---------------------------------------------------------------------------------------

fn need(bytes: &[u8], needed_bytes: usize) -> Result<&[u8], DecodeError> {
    bytes.get(..needed_bytes).ok_or(DecodeError::Truncated { len_bytes: bytes.len(), needed_bytes })
}

fn put_u16(out: &mut [u8], at: usize, value: u16) {
    out[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn put_u32(out: &mut [u8], at: usize, value: u32) {
    out[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut [u8], at: usize, value: u64) {
    out[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("two bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

fn array16(bytes: &[u8], at: usize) -> [u8; 16] {
    bytes[at..at + 16].try_into().expect("sixteen bytes")
}

fn array32(bytes: &[u8], at: usize) -> [u8; 32] {
    bytes[at..at + 32].try_into().expect("thirty-two bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> DeviceIds {
        DeviceIds { cluster_id: [1; 16], node_id: [2; 16], device_id: [3; 16] }
    }

    fn superblock() -> Superblock {
        let layout = Layout::compute(0, 64 << 20, 16).unwrap();
        Superblock { ids: ids(), layout }
    }

    #[test]
    fn layout_regions_are_ordered_and_fit() {
        for size_mib in [1u64, 8, 64, 1024, 64 * 1024] {
            let l = Layout::compute(4096, size_mib << 20, 16).unwrap();
            assert!(l.journal_offset_bytes() == 8192);
            assert!(l.checkpoint_offset_bytes(0) >= l.journal_offset_bytes() + 4096 * 64);
            assert_eq!(
                l.checkpoint_offset_bytes(1),
                l.checkpoint_offset_bytes(0) + l.checkpoint_bytes()
            );
            let end = l.data_block_offset_bytes(l.data_blocks);
            assert!(end <= 4096 + (size_mib << 20), "{size_mib} MiB");
            if size_mib >= 64 {
                assert!(l.data_blocks * 100 / ((size_mib << 20) / 4096) >= 95, "{size_mib} MiB");
            }
        }
        assert!(matches!(Layout::compute(0, 64 * 4096, 16), Err(EngineError::Geometry { .. })));
        assert!(matches!(Layout::compute(1, 8 << 20, 16), Err(EngineError::Geometry { .. })));
    }

    #[test]
    fn superblock_round_trips() {
        let sb = superblock();
        let mut bytes = [0u8; SUPERBLOCK_SIZE_BYTES];
        sb.encode(&mut bytes);
        assert_eq!(Superblock::decode(&bytes), Ok(sb));
    }

    #[test]
    fn superblock_rejects_every_damage() {
        let mut good = [0u8; SUPERBLOCK_SIZE_BYTES];
        superblock().encode(&mut good);
        let truncated = Superblock::decode(&good[..100]);
        assert_eq!(truncated, Err(DecodeError::Truncated { len_bytes: 100, needed_bytes: 256 }));
        let mut bad = good;
        bad[0] ^= 1;
        assert_eq!(Superblock::decode(&bad), Err(DecodeError::BadMagic));
        let mut bad = good;
        bad[8] = 2;
        assert_eq!(Superblock::decode(&bad), Err(DecodeError::BadVersion { found: 2 }));
        let mut bad = good;
        bad[40] ^= 0x10;
        assert!(matches!(Superblock::decode(&bad), Err(DecodeError::BadChecksum { .. })));
        // A checksum-valid superblock whose layout does not fit its region.
        let mut sb = superblock();
        sb.layout.data_blocks *= 2;
        let mut bad = [0u8; SUPERBLOCK_SIZE_BYTES];
        sb.encode(&mut bad);
        assert!(matches!(Superblock::decode(&bad), Err(DecodeError::Invalid { .. })));
        // Every single-byte flip is refused, never a panic.
        for at in 0..SUPERBLOCK_SIZE_BYTES {
            let mut bad = good;
            bad[at] ^= 0x80;
            assert!(Superblock::decode(&bad).is_err(), "flip at {at}");
        }
    }

    fn put(n: u8) -> Record {
        Record {
            kind: RecordKind::Put,
            chunk_id: [n; 32],
            extent: Extent { block: u64::from(n) * 10, blocks: 2 },
            payload_len_bytes: 5000,
            payload_crc32c: 0xDEAD_BEEF,
        }
    }

    fn journal_block(records: &[Record], sequence: u64, record_sequence: u64) -> Vec<u8> {
        let mut block = vec![0u8; BLOCK];
        for (i, r) in records.iter().enumerate() {
            let at = JOURNAL_HEADER_SIZE_BYTES + i * RECORD_SIZE_BYTES;
            r.encode(record_sequence + i as u64, &mut block[at..]);
        }
        let header = JournalHeader {
            record_count: records.len() as u16,
            block_sequence: sequence,
            group_first_sequence: sequence,
            first_record_sequence: record_sequence,
        };
        header.seal(&[3; 16], &mut block);
        block
    }

    #[test]
    fn journal_block_and_records_round_trip() {
        let records = [
            put(1),
            Record::reference(RecordKind::Incref, [1; 32]),
            Record::reference(RecordKind::Release, [9; 32]),
            Record { kind: RecordKind::Replace, ..put(2) },
        ];
        let block = journal_block(&records, 7, 100);
        let (header, bytes) = JournalHeader::decode(&block, &[3; 16], 7, 100).unwrap();
        assert_eq!(header.record_count, 4);
        assert_eq!(header.group_first_sequence, 7);
        for (i, r) in bytes.chunks_exact(RECORD_SIZE_BYTES).enumerate() {
            assert_eq!(Record::decode(r, 100 + i as u64), Ok(records[i]));
        }
    }

    #[test]
    fn journal_block_rejects_every_damage() {
        let block = journal_block(&[put(1)], 7, 100);
        let device = [3; 16];
        let decode = |b: &[u8], seq, rec| JournalHeader::decode(b, &device, seq, rec).map(|x| x.0);
        assert!(matches!(decode(&block[..4095], 7, 100), Err(DecodeError::Truncated { .. })));
        assert_eq!(decode(&vec![0u8; BLOCK], 7, 100), Err(DecodeError::BadMagic));
        let mut torn = block.clone();
        torn[64..128].fill(0);
        assert!(matches!(decode(&torn, 7, 100), Err(DecodeError::BadChecksum { .. })));
        let wrong_sequence = decode(&block, 8, 100);
        assert_eq!(wrong_sequence, Err(DecodeError::Mismatch { field: "journal block_sequence" }));
        let wrong_record = decode(&block, 7, 101);
        let field = "journal first_record_sequence";
        assert_eq!(wrong_record, Err(DecodeError::Mismatch { field }));
        let other_device = JournalHeader::decode(&block, &[4; 16], 7, 100).map(|x| x.0);
        assert_eq!(other_device, Err(DecodeError::Mismatch { field: "journal device_id" }));
        for at in (0..BLOCK).step_by(7) {
            let mut bad = block.clone();
            bad[at] ^= 0x01;
            assert!(decode(&bad, 7, 100).is_err(), "flip at {at}");
        }
    }

    #[test]
    fn record_rejects_bad_kind_sequence_and_extent() {
        let mut bytes = [0u8; RECORD_SIZE_BYTES];
        put(1).encode(5, &mut bytes);
        assert!(matches!(Record::decode(&bytes[..63], 5), Err(DecodeError::Truncated { .. })));
        assert_eq!(
            Record::decode(&bytes, 6),
            Err(DecodeError::Mismatch { field: "record sequence" })
        );
        let mut bad = bytes;
        bad[0] = 9;
        assert_eq!(Record::decode(&bad, 5), Err(DecodeError::Invalid { field: "record kind" }));
        let mut bad = bytes;
        bad[48] = 7; // extent_blocks no longer fits the payload length
        assert_eq!(Record::decode(&bad, 5), Err(DecodeError::Invalid { field: "record extent" }));
        let mut replace = [0u8; RECORD_SIZE_BYTES];
        Record { kind: RecordKind::Replace, ..put(1) }.encode(5, &mut replace);
        replace[48] = 7; // a replace whose extent does not fit its payload
        let field = "record extent";
        assert_eq!(Record::decode(&replace, 5), Err(DecodeError::Invalid { field }));
        let mut release = [0u8; RECORD_SIZE_BYTES];
        Record::reference(RecordKind::Release, [1; 32]).encode(5, &mut release);
        release[40] = 1; // a release naming an extent
        assert_eq!(
            Record::decode(&release, 5),
            Err(DecodeError::Invalid { field: "record extent" })
        );
    }

    fn checkpoint(entries: &[CheckpointEntry], data_blocks: u64) -> Vec<u8> {
        let mut bitmap = vec![0u64; bitmap_words(data_blocks) as usize];
        for e in entries {
            assert!(mark_blocks(&mut bitmap, e.extent));
        }
        let header = CheckpointHeader {
            slot: 1,
            checkpoint_sequence: 4,
            journal_block_sequence: 70,
            journal_record_sequence: 700,
            entry_count: entries.len() as u64,
            data_blocks,
        };
        let mut out = Vec::new();
        encode_checkpoint(&header, &[3; 16], entries.iter().copied(), &bitmap, &mut out);
        out
    }

    fn entry(n: u8, block: u64, len: u32) -> CheckpointEntry {
        CheckpointEntry {
            chunk_id: [n; 32],
            extent: Extent { block, blocks: blocks_for(len) },
            payload_len_bytes: len,
            payload_crc32c: u32::from(n),
            refcount: u32::from(n),
        }
    }

    #[test]
    fn checkpoint_round_trips() {
        let entries = [entry(1, 0, 1), entry(2, 1, 4097), entry(3, 90, 4096)];
        let bytes = checkpoint(&entries, 100);
        assert_eq!(bytes.len() % BLOCK, 0);
        let decoded = decode_checkpoint(&bytes, &[3; 16], 1, 100).unwrap();
        assert_eq!(decoded.entries, entries);
        assert_eq!(decoded.header.journal_block_sequence, 70);
        assert_eq!(decoded.header.journal_record_sequence, 700);
        assert_eq!(decoded.header.checkpoint_sequence, 4);
    }

    #[test]
    fn checkpoint_rejects_every_damage() {
        let entries = [entry(1, 0, 1), entry(2, 1, 4097)];
        let good = checkpoint(&entries, 100);
        let decode = |b: &[u8]| decode_checkpoint(b, &[3; 16], 1, 100);
        assert!(matches!(decode(&good[..100]), Err(DecodeError::Truncated { .. })));
        let body_end = CHECKPOINT_HEADER_SIZE_BYTES + 2 * CHECKPOINT_ENTRY_SIZE_BYTES + 16;
        assert!(matches!(decode(&good[..body_end - 1]), Err(DecodeError::Truncated { .. })));
        assert_eq!(decode(&vec![0u8; BLOCK]), Err(DecodeError::BadMagic));
        let mut bad = good.clone();
        bad[20] ^= 1;
        assert!(matches!(decode(&bad), Err(DecodeError::BadChecksum { .. })));
        let mut bad = good.clone();
        bad[CHECKPOINT_HEADER_SIZE_BYTES + 3] ^= 1;
        assert!(matches!(decode(&bad), Err(DecodeError::BadChecksum { .. })));
        assert_eq!(
            decode_checkpoint(&good, &[3; 16], 0, 100),
            Err(DecodeError::Mismatch { field: "checkpoint slot" })
        );
        assert_eq!(
            decode_checkpoint(&good, &[4; 16], 1, 100),
            Err(DecodeError::Mismatch { field: "checkpoint device_id" })
        );
        // Checksum-valid but overlapping extents, a duplicate id, an extent past the area.
        let overlap = checkpoint_unchecked(&[entry(1, 0, 8192), entry(2, 1, 1)], 100);
        assert!(matches!(decode(&overlap), Err(DecodeError::Invalid { .. })));
        let twice = checkpoint_unchecked(&[entry(1, 0, 1), entry(1, 5, 1)], 100);
        assert!(matches!(decode(&twice), Err(DecodeError::Invalid { .. })));
        let past = checkpoint_unchecked(&[entry(1, 99, 8192)], 100);
        assert!(matches!(decode(&past), Err(DecodeError::Invalid { .. })));
        // A bitmap that disagrees with the entries.
        let header = CheckpointHeader {
            slot: 1,
            checkpoint_sequence: 1,
            journal_block_sequence: 0,
            journal_record_sequence: 0,
            entry_count: 0,
            data_blocks: 100,
        };
        let mut leaked = Vec::new();
        encode_checkpoint(&header, &[3; 16], std::iter::empty(), &[1, 0], &mut leaked);
        let field = "checkpoint allocator bitmap";
        assert_eq!(decode(&leaked), Err(DecodeError::Mismatch { field }));
    }

    /// Encodes entries with a bitmap of their union, without checking they are disjoint.
    fn checkpoint_unchecked(entries: &[CheckpointEntry], data_blocks: u64) -> Vec<u8> {
        let mut bitmap = vec![0u64; bitmap_words(data_blocks) as usize];
        for e in entries {
            mark_blocks(&mut bitmap, Extent { block: e.extent.block, blocks: 1 });
        }
        let header = CheckpointHeader {
            slot: 1,
            checkpoint_sequence: 4,
            journal_block_sequence: 0,
            journal_record_sequence: 0,
            entry_count: entries.len() as u64,
            data_blocks,
        };
        let mut out = Vec::new();
        encode_checkpoint(&header, &[3; 16], entries.iter().copied(), &bitmap, &mut out);
        out
    }
}
