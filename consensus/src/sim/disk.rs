//! A simulated disk for redb: bytes in memory, with the writes since the last sync kept
//! apart so a simulated power cut can lose them.
//!
//! Each write and length change since the last `sync_data` is recorded with the bytes it
//! replaced. A crash undoes the newest `lose` of them, newest first (the others reached the
//! platter, in order), which leaves exactly the state a disk that persisted a prefix of the
//! unsynced writes would hold. A crash also bumps the disk's generation: handles opened
//! before it fail every call afterwards, so a database left over from the crashed node can
//! never write into its successor's file.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

/// A disk shared by the incarnations of one node's group.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
}

#[derive(Debug, Default)]
struct DiskState {
    bytes: Vec<u8>,
    /// Unsynced changes, oldest first.
    unsynced: Vec<Undo>,
    generation: u64,
    syncs: u64,
}

/// How to take back one change: put `old` back at `offset`, then set the length to
/// `old_len`.
#[derive(Debug)]
struct Undo {
    offset: u64,
    old: Vec<u8>,
    old_len: u64,
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

    /// Cuts power: the newest `lose` unsynced changes (at most all of them) are lost, the
    /// rest are kept. Returns how many were lost.
    pub fn crash(&self, lose: usize) -> usize {
        let mut state = self.lock();
        state.generation += 1;
        let lost = lose.min(state.unsynced.len());
        for _ in 0..lost {
            let undo = state.unsynced.pop().expect("counted above");
            let end =
                usize::try_from(undo.offset).expect("simulated disks fit memory") + undo.old.len();
            if state.bytes.len() < end {
                state.bytes.resize(end, 0);
            }
            let start = end - undo.old.len();
            state.bytes[start..end].copy_from_slice(&undo.old);
            state
                .bytes
                .resize(usize::try_from(undo.old_len).expect("simulated disks fit memory"), 0);
        }
        state.unsynced.clear();
        lost
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
        let old_len = state.bytes.len() as u64;
        let (new_len, _) = range(len, 0)?;
        let old = state.bytes.get(new_len..).map(<[u8]>::to_vec).unwrap_or_default();
        state.unsynced.push(Undo { offset: len.min(old_len), old, old_len });
        state.bytes.resize(new_len, 0);
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
        let (start, end) = range(offset, data.len())?;
        let old_len = state.bytes.len() as u64;
        let old_end = end.min(state.bytes.len());
        let old = state.bytes.get(start..old_end).map(<[u8]>::to_vec).unwrap_or_default();
        state.unsynced.push(Undo { offset, old, old_len });
        if state.bytes.len() < end {
            state.bytes.resize(end, 0);
        }
        state.bytes[start..end].copy_from_slice(data);
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
    fn a_crash_loses_only_unsynced_writes_newest_first() {
        let disk = SimDisk::new();
        let backend = disk.backend();
        backend.write(0, b"aaaa").expect("write");
        backend.sync_data().expect("sync");
        backend.write(2, b"bbbb").expect("write");
        backend.write(0, b"c").expect("write");
        assert_eq!(disk.unsynced_changes(), 2);
        assert_eq!(disk.crash(1), 1, "one write lost");
        assert_eq!(contents(&disk), b"aabbbb", "the older unsynced write reached the disk");
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
        assert_eq!(disk.crash(usize::MAX), 3);
        assert_eq!(contents(&disk), b"hello");
        assert_eq!(disk.syncs(), 1);
    }
}
