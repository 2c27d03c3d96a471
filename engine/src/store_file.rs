//! An engine on one file (or block device): the device cut into equal regions, one shard
//! and one pinned reactor per region. This is the wiring `kiseki-server dev` and
//! `kiseki-bench` (`engine`, `fabric --listen`) share, so that a store laid out by one is
//! found by the other the same way.
//!
//! What it does: creates a missing store file with every block written once with zeros
//! ([`create_zeroed`]), decides per region whether to format it ([`FormatPolicy`]), and
//! starts an [`Engine`] whose reactor `i` opens region `i` on its own thread
//! ([`FileStore::start`]).
//!
//! Why zeros rather than a bare `fallocate`: a preallocated but never-written file has
//! unwritten extents, and on ext4 the first write to each converts it in the file system's
//! journal, so every flush of a fresh store would also commit a journal transaction. A
//! real device has no such cost; writing every block once up front removes it.
//!
//! What it does not do: choose the ids the shards carry (the caller's cluster and node),
//! size the device's queues and buffers (the caller knows its chunk sizes), or remember
//! which files belong to which node (the server's data dir does). Unlike the rest of the
//! crate it does real I/O: the io_uring device is its boundary, not the `BlockDevice`
//! trait.
//!
//! Invariants: regions are equal shares of whole MiB laid out from offset 0 in reactor
//! order, so a store reopened with the same size and region count finds every shard where
//! it was formatted; a region is formatted only when the policy says so, never because
//! opening it failed (a foreign or damaged store is an error, not a blank one).

use std::fmt;
use std::fs;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiseki_devices::{
    BlockDevice, Completion, DeviceError, IoUringDevice, Op, OpenOptions as DeviceOptions, Request,
};

use crate::constants::BLOCK_SIZE_BYTES;
use crate::{DeviceIds, Engine, EngineError, FormatOptions, OpenOptions, Shard};

/// Size of each write while zeroing a new store file: large enough that the fill runs at
/// the device's sequential speed.
const FILL_IO_BYTES: u32 = 1 << 20;

/// Zeroing writes in flight: 8 MiB of registered buffers, within the 8 MiB
/// `RLIMIT_MEMLOCK` that non-root users often have.
const FILL_DEPTH: u32 = 8;

/// Regions are whole MiB, so every region starts on any alignment a device may ask.
const REGION_ALIGN_BYTES: u64 = 1 << 20;

/// A store on one file: where, how it is cut, which ids its shards carry.
#[derive(Debug, Clone)]
pub struct FileStore {
    pub path: PathBuf,
    /// Regions, shards and reactors: one each per index.
    pub regions: usize,
    /// Bytes of each region ([`region_bytes`] of the file's size).
    pub region_bytes: u64,
    /// Written into each superblock when formatting; the cluster id is checked on open.
    pub ids: DeviceIds,
    /// Each reactor opens its own device on the file with these options.
    pub device: DeviceOptions,
}

/// Which regions [`FileStore::start`] formats before opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatPolicy {
    /// Every region: a store just created.
    All,
    /// None: a store that was formatted before; a region without a valid superblock is an
    /// error.
    None,
    /// Regions whose first block is all zeros (never formatted): benchmark stores, which
    /// keep no record of their own.
    Blank,
}

/// Why a store file could not be created or inspected.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreFileError {
    /// The device layer refused the file (missing directory, no space, no O_DIRECT, ...).
    Device { path: PathBuf, source: DeviceError },
    /// Reading the file's first block failed.
    Io { path: PathBuf, source: io::Error },
}

/// Each of `regions` equal regions of a device of `size_bytes`: whole MiB, so the last
/// partial MiB is left unused.
pub fn region_bytes(size_bytes: u64, regions: usize) -> u64 {
    assert!(regions > 0, "a store has at least one region");
    (size_bytes / regions as u64) & !(REGION_ALIGN_BYTES - 1)
}

impl FileStore {
    /// Starts one reactor per region; reactor `i` formats region `i` if `policy` says so
    /// and opens it, refusing a shard of another cluster. Returns once every shard is open
    /// (recovered), or the first error (typed: `WrongCluster`, `Decode`, `Device`, ...).
    pub fn start(&self, policy: FormatPolicy) -> Result<Engine, EngineError> {
        let store = self.clone();
        let open = move |index: usize| {
            let offset = store.region_bytes * index as u64;
            let fresh = match policy {
                FormatPolicy::All => true,
                FormatPolicy::None => false,
                FormatPolicy::Blank => region_is_blank(&store.path, offset)
                    .map_err(|error| EngineError::Reactor { index, reason: error.to_string() })?,
            };
            let device = IoUringDevice::open(&store.path, &store.device)
                .map_err(|source| EngineError::Device { context: "opening the store", source })?;
            format_and_open(device, &store.ids, offset, store.region_bytes, fresh)
        };
        Engine::start(self.regions, Arc::new(open))
    }
}

/// Formats a shard on `region` bytes at `offset` when `fresh`, then opens (recovers) it,
/// refusing a superblock of another cluster than `ids.cluster_id`.
pub fn format_and_open<D: BlockDevice>(
    mut device: D,
    ids: &DeviceIds,
    offset: u64,
    region: u64,
    fresh: bool,
) -> Result<Shard<D>, EngineError> {
    if fresh {
        let format = FormatOptions {
            ids: *ids,
            region_offset_bytes: offset,
            region_size_bytes: Some(region),
        };
        Shard::format(&mut device, &format)?;
    }
    let open =
        OpenOptions { region_offset_bytes: offset, expected_cluster_id: Some(ids.cluster_id) };
    Shard::open(device, &open)
}

/// Whether the region at `offset` starts with a zeroed block: a store never formatted
/// there (a format writes the superblock in that block).
pub fn region_is_blank(path: &Path, offset: u64) -> Result<bool, StoreFileError> {
    let failed = |source| StoreFileError::Io { path: path.to_owned(), source };
    let mut file = fs::File::open(path).map_err(failed)?;
    let mut block = vec![0u8; BLOCK_SIZE_BYTES as usize];
    file.seek(io::SeekFrom::Start(offset)).map_err(failed)?;
    file.read_exact(&mut block).map_err(failed)?;
    Ok(block.iter().all(|&b| b == 0))
}

/// Creates `path` (mode 0600, preallocated) with `size_bytes` (a multiple of 4 KiB)
/// written with zeros and flushed; `progress` is called with the bytes written so far
/// after each batch of completions. Refuses an existing path (it never zeroes a store);
/// on failure the partial file is removed.
pub fn create_zeroed(
    path: &Path,
    size_bytes: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<(), StoreFileError> {
    let failed = |source| StoreFileError::Device { path: path.to_owned(), source };
    if path.exists() {
        let source = io::Error::from(io::ErrorKind::AlreadyExists);
        return Err(StoreFileError::Io { path: path.to_owned(), source });
    }
    let options = DeviceOptions {
        create: true,
        size_bytes: Some(size_bytes),
        queue_depth: FILL_DEPTH,
        buffer_count: FILL_DEPTH,
        buffer_size_bytes: FILL_IO_BYTES,
        ..DeviceOptions::default()
    };
    let device = match IoUringDevice::open(path, &options) {
        Ok(device) => device,
        Err(source) => {
            // The file may exist by now (created before the ring or buffers failed).
            let _ = fs::remove_file(path);
            return Err(failed(source));
        }
    };
    zero_fill(device, size_bytes, progress).map_err(failed).inspect_err(|_| {
        let _ = fs::remove_file(path);
    })
}

/// Writes zeros over `0..size_bytes` of `device`, then flushes.
fn zero_fill(
    mut device: IoUringDevice,
    size_bytes: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<(), DeviceError> {
    let mut buffers = Vec::with_capacity(FILL_DEPTH as usize);
    while let Some(mut buf) = device.acquire_buffer() {
        buf.as_mut_slice().fill(0);
        buffers.push(buf);
    }
    let mut completions: Vec<Completion> = Vec::with_capacity(FILL_DEPTH as usize);
    let (mut offset, mut written) = (0u64, 0u64);
    while offset < size_bytes || device.in_flight() > 0 {
        while offset < size_bytes {
            let Some(mut buf) = buffers.pop() else { break };
            let len = (size_bytes - offset).min(u64::from(FILL_IO_BYTES)) as u32;
            buf.set_len(len);
            device
                .push(Request { tag: 0, op: Op::Write { offset, buf } })
                .map_err(|rejected| rejected.error)?;
            offset += u64::from(len);
        }
        device.submit_and_reap(1, &mut completions)?;
        for completion in completions.drain(..) {
            written += u64::from(completion.result?);
            buffers.extend(completion.buf);
        }
        progress(written);
    }
    device.push(Request { tag: 0, op: Op::Flush }).map_err(|rejected| rejected.error)?;
    device.submit_and_reap(1, &mut completions)?;
    for completion in completions.drain(..) {
        completion.result?;
    }
    Ok(())
}

impl fmt::Display for StoreFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreFileError::Device { path, source } => write!(f, "{}: {source}", path.display()),
            StoreFileError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for StoreFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreFileError::Device { source, .. } => Some(source),
            StoreFileError::Io { source, .. } => Some(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use kiseki_security::{ChunkId, Dek, Envelope, MasterKey, SealParams};

    use super::*;

    const IDS: DeviceIds = DeviceIds { cluster_id: [7; 16], node_id: [8; 16], device_id: [9; 16] };

    fn store(path: &Path, regions: usize, size_bytes: u64) -> FileStore {
        FileStore {
            path: path.to_owned(),
            regions,
            region_bytes: region_bytes(size_bytes, regions),
            ids: IDS,
            device: DeviceOptions {
                queue_depth: 16,
                buffer_count: 4,
                buffer_size_bytes: 64 << 10,
                ..DeviceOptions::default()
            },
        }
    }

    fn envelope(text: &[u8]) -> Envelope {
        let key = MasterKey::from_bytes(1, zeroize::Zeroizing::new([3u8; 32]));
        let dek = Dek::derive(&key, &ChunkId::of_plaintext(text), None);
        Envelope::seal(text, &SealParams::new(&dek)).unwrap()
    }

    #[test]
    fn regions_are_whole_mib() {
        assert_eq!(region_bytes(64 << 20, 1), 64 << 20);
        assert_eq!(region_bytes(64 << 20, 3), 21 << 20);
        assert_eq!(region_bytes((1 << 20) - 1, 1), 0);
    }

    #[test]
    fn a_created_store_is_zeroed_formatted_and_found_again() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("store");
        let mut seen = Vec::new();
        create_zeroed(&path, 24 << 20, &mut |written| seen.push(written)).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 24 << 20);
        assert_eq!(seen.last(), Some(&(24 << 20)), "progress reaches the size");
        assert!(region_is_blank(&path, 0).unwrap() && region_is_blank(&path, 12 << 20).unwrap());
        assert!(matches!(
            create_zeroed(&path, 4096, &mut |_| {}),
            Err(StoreFileError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists
        ));

        let store = store(&path, 2, 24 << 20);
        let engine = store.start(FormatPolicy::All).unwrap();
        let chunk = envelope(b"kept across a restart");
        engine.handle().put_blocking(chunk.clone()).unwrap();
        engine.shutdown().unwrap();
        assert!(!region_is_blank(&path, 0).unwrap() && !region_is_blank(&path, 12 << 20).unwrap());

        let engine = store.start(FormatPolicy::None).unwrap();
        let id = *chunk.chunk_id().as_bytes();
        assert_eq!(engine.handle().get_blocking(id).unwrap().as_bytes(), chunk.as_bytes());
        engine.shutdown().unwrap();
        // Blank formats nothing here: every region has a superblock.
        let engine = store.start(FormatPolicy::Blank).unwrap();
        assert!(engine.handle().contains_blocking(id).unwrap());
        engine.shutdown().unwrap();
    }

    #[test]
    fn a_store_of_another_cluster_or_never_formatted_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("store");
        create_zeroed(&path, 16 << 20, &mut |_| {}).unwrap();
        let mut store = store(&path, 1, 16 << 20);
        assert!(matches!(store.start(FormatPolicy::None), Err(EngineError::Decode { .. })));
        store.start(FormatPolicy::All).unwrap().shutdown().unwrap();
        store.ids.cluster_id = [1; 16];
        assert!(matches!(
            store.start(FormatPolicy::None),
            Err(EngineError::WrongCluster { expected: [1, ..], found: [7, ..] })
        ));
    }

    #[test]
    fn creating_in_a_missing_directory_fails_and_leaves_nothing() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("absent").join("store");
        assert!(matches!(
            create_zeroed(&path, 1 << 20, &mut |_| {}),
            Err(StoreFileError::Device { .. })
        ));
        assert!(!path.exists());
    }
}
