//! A simulated disk for redb: bytes in memory, with the writes since the last sync kept
//! apart so a simulated power cut can lose them.
//!
//! Each write and length change since the last `sync_data` is recorded with the bytes it
//! replaced and the bytes it wrote. A crash decides, change by change, which of them reached
//! the platter (any subset, as a disk that reorders its cache may persist), takes every
//! unsynced change back, newest first, and replays the kept ones in order. A crash also
//! bumps the disk's generation: handles opened before it fail every call afterwards, so a
//! database left over from the crashed node can never write into its successor's file.
//!
//! A power cut can also be scheduled: after a given number of further writes the disk
//! crashes on its own, in the middle of whatever commit is under way, and the write that
//! found the power gone fails.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

/// A disk shared by the incarnations of one node's group.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
}

/// Decides, for the n-th unsynced change (oldest is 0), whether it reached the disk.
pub type KeepChange = Box<dyn FnMut(usize) -> bool + Send>;

#[derive(Default)]
struct DiskState {
    bytes: Vec<u8>,
    /// Unsynced changes, oldest first.
    unsynced: Vec<Change>,
    generation: u64,
    syncs: u64,
    /// Writes left before a scheduled power cut, and which changes that cut keeps.
    power_cut: Option<(u64, KeepChange)>,
}

impl std::fmt::Debug for DiskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskState")
            .field("len", &self.bytes.len())
            .field("unsynced", &self.unsynced.len())
            .field("generation", &self.generation)
            .finish()
    }
}

/// One unsynced change: before it, the disk was `old_len` long and held `old` at `offset`
/// (every byte the change touched that existed then). It either wrote `new` at `offset`
/// (growing the disk if needed) or set the length to `new_len`.
#[derive(Debug)]
struct Change {
    offset: usize,
    old: Vec<u8>,
    old_len: usize,
    new: Vec<u8>,
    new_len: Option<usize>,
}

impl DiskState {
    fn crash(&mut self, mut keep: impl FnMut(usize) -> bool) -> usize {
        self.generation += 1;
        self.power_cut = None;
        let changes = std::mem::take(&mut self.unsynced);
        for change in changes.iter().rev() {
            Self::put(&mut self.bytes, change.offset, &change.old);
            self.bytes.resize(change.old_len, 0);
        }
        let mut lost = 0;
        for (n, change) in changes.iter().enumerate() {
            if keep(n) {
                Self::redo(&mut self.bytes, change);
            } else {
                lost += 1;
            }
        }
        lost
    }

    /// Writes `data` at `offset`, growing the disk if needed.
    fn put(bytes: &mut Vec<u8>, offset: usize, data: &[u8]) {
        let end = offset + data.len();
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[offset..end].copy_from_slice(data);
    }

    fn redo(bytes: &mut Vec<u8>, change: &Change) {
        match change.new_len {
            Some(len) => bytes.resize(len, 0),
            None => Self::put(bytes, change.offset, &change.new),
        }
    }

    fn record_write(&mut self, offset: usize, data: &[u8]) {
        let old_len = self.bytes.len();
        let old_end = (offset + data.len()).min(old_len);
        let old = self.bytes.get(offset..old_end).map(<[u8]>::to_vec).unwrap_or_default();
        let change = Change { offset, old, old_len, new: data.to_vec(), new_len: None };
        Self::redo(&mut self.bytes, &change);
        self.unsynced.push(change);
    }

    fn record_set_len(&mut self, new_len: usize) {
        let old_len = self.bytes.len();
        let offset = new_len.min(old_len);
        let old = self.bytes[offset..].to_vec();
        let change = Change { offset, old, old_len, new: Vec::new(), new_len: Some(new_len) };
        Self::redo(&mut self.bytes, &change);
        self.unsynced.push(change);
    }

    /// Counts a write towards a scheduled power cut; true if the power is gone now.
    fn power_fails(&mut self) -> bool {
        let Some((left, _)) = self.power_cut.as_mut() else { return false };
        if *left > 0 {
            *left -= 1;
            return false;
        }
        let (_, keep) = self.power_cut.take().expect("checked above");
        self.crash(keep);
        true
    }
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// A backend for a database opened now; it stops working at the next crash.
    pub fn backend(&self) -> SimBackend {
        let generation = self.lock().generation;
        SimBackend { disk: self.clone(), generation }
    }

    /// Cuts power: each unsynced change reaches the disk if `keep` says so for its
    /// number (oldest 0), the others are lost. Returns how many were lost.
    pub fn crash(&self, keep: impl FnMut(usize) -> bool) -> usize {
        self.lock().crash(keep)
    }

    /// Schedules a power cut after `writes` more writes (as `crash` with `keep`).
    pub fn cut_power_after(&self, writes: u64, keep: KeepChange) {
        self.lock().power_cut = Some((writes, keep));
    }

    /// Calls off a scheduled power cut.
    pub fn cancel_power_cut(&self) {
        self.lock().power_cut = None;
    }

    /// Whether a power cut is scheduled.
    pub fn power_cut_pending(&self) -> bool {
        self.lock().power_cut.is_some()
    }

    /// Increments at every crash; a node whose disk moved on since it opened it is down.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Unsynced changes right now.
    pub fn unsynced_changes(&self) -> usize {
        self.lock().unsynced.len()
    }

    /// Syncs so far (each one an fsync a real disk would have done).
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        // A panic while holding this lock is a test failure already; the bytes are still
        // the best evidence, so keep using them.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One database's handle on a [`SimDisk`].
#[derive(Debug)]
pub struct SimBackend {
    disk: SimDisk,
    generation: u64,
}

impl SimBackend {
    fn live(&self) -> io::Result<MutexGuard<'_, DiskState>> {
        let state = self.disk.lock();
        if state.generation != self.generation {
            return Err(io::Error::other("simulated power cut: this handle is gone"));
        }
        Ok(state)
    }
}

fn range(offset: u64, length: usize) -> io::Result<(usize, usize)> {
    let start = usize::try_from(offset).map_err(|_| io::Error::other("offset past memory"))?;
    let end = start.checked_add(length).ok_or_else(|| io::Error::other("range overflows"))?;
    Ok((start, end))
}

impl StorageBackend for SimBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.live()?.bytes.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let state = self.live()?;
        let (start, end) = range(offset, out.len())?;
        let Some(bytes) = state.bytes.get(start..end) else {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"));
        };
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.live()?;
        if state.power_fails() {
            return Err(io::Error::other("simulated power cut"));
        }
        let (new_len, _) = range(len, 0)?;
        state.record_set_len(new_len);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.live()?;
        state.unsynced.clear();
        state.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.live()?;
        if state.power_fails() {
            return Err(io::Error::other("simulated power cut"));
        }
        let (start, _) = range(offset, data.len())?;
        state.record_write(start, data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(disk: &SimDisk) -> Vec<u8> {
        let backend = disk.backend();
        let mut out = vec![0; backend.len().expect("len") as usize];
        backend.read(0, &mut out).expect("read");
        out
    }

    #[test]
    fn a_crash_keeps_any_subset_of_unsynced_writes() {
        let disk = SimDisk::new();
        let backend = disk.backend();
        backend.write(0, b"aaaa").expect("write");
        backend.sync_data().expect("sync");
        backend.write(2, b"bbbb").expect("write");
        backend.write(0, b"c").expect("write");
        assert_eq!(disk.unsynced_changes(), 2);
        // The newer write reached the disk, the older one did not.
        assert_eq!(disk.crash(|n| n == 1), 1, "one write lost");
        assert_eq!(contents(&disk), b"caaa");
        assert!(backend.write(0, b"x").is_err(), "the crashed handle is dead");
    }

    #[test]
    fn losing_everything_restores_the_synced_state() {
        let disk = SimDisk::new();
        let backend = disk.backend();
        backend.write(0, b"hello").expect("write");
        backend.sync_data().expect("sync");
        backend.write(3, b"p me").expect("write");
        backend.set_len(2).expect("shrink");
        backend.set_len(10).expect("grow");
        assert_eq!(disk.crash(|_| false), 3);
        assert_eq!(contents(&disk), b"hello");
        assert_eq!(disk.syncs(), 1);
    }

    #[test]
    fn keeping_everything_is_the_live_state() {
        let disk = SimDisk::new();
        let backend = disk.backend();
        backend.write(0, b"hello").expect("write");
        backend.set_len(3).expect("shrink");
        backend.write(5, b"!").expect("write past the end");
        assert_eq!(disk.crash(|_| true), 0);
        assert_eq!(contents(&disk), b"hel\0\0!");
    }

    #[test]
    fn a_scheduled_power_cut_fails_the_write_that_finds_it() {
        let disk = SimDisk::new();
        let backend = disk.backend();
        disk.cut_power_after(1, Box::new(|_| true));
        backend.write(0, b"one").expect("before the cut");
        assert!(backend.write(3, b"two").is_err(), "the power is gone");
        assert_eq!(disk.generation(), 1);
        assert_eq!(
            contents(&disk),
            b"one",
            "the kept write survived, the failed one never happened"
        );
    }
}
