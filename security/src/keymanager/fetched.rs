//! A storage node's copy of the system master keys, fetched from the key service over mTLS
//! (`/v1/key/fetch/master`, the server role only): each epoch on a locked page of its own
//! ([`LockedKey`]), the process made non-dumpable when asked, and a [`MasterKey`] made from
//! a page only for the seal or open at hand.
//!
//! What it does not do: fetch (the gateway's gRPC client does) or refresh by itself (the
//! node fetches again when it meets an epoch it does not hold).

use std::collections::BTreeMap;
use std::fmt;

use zeroize::Zeroizing;

use crate::constants::KEY_LEN;
use crate::keymanager::error::KeyManagerError;
use crate::keymanager::locked::{LockedKey, MemoryLocking, make_process_non_dumpable};
use crate::keys::MasterKey;

/// The master-key epochs a node holds; see the module's notes.
pub struct FetchedMasterKeys {
    locking: MemoryLocking,
    keys: BTreeMap<u32, LockedKey>,
    current: Option<u32>,
}

impl FetchedMasterKeys {
    /// An empty holder; with `non_dumpable`, the process can no longer be dumped or traced
    /// (done once, before any key arrives).
    pub fn new(
        locking: MemoryLocking,
        non_dumpable: bool,
    ) -> Result<FetchedMasterKeys, KeyManagerError> {
        if non_dumpable {
            make_process_non_dumpable()?;
        }
        Ok(FetchedMasterKeys { locking, keys: BTreeMap::new(), current: None })
    }

    /// Keeps `key` as `epoch`; `current` is the service's current epoch when it answered.
    /// The caller's buffer is zeroed when it drops.
    pub fn insert(
        &mut self,
        epoch: u32,
        current: u32,
        key: Zeroizing<[u8; KEY_LEN]>,
    ) -> Result<(), KeyManagerError> {
        let page = LockedKey::from_bytes(&key, self.locking)?;
        self.keys.insert(epoch, page);
        self.current = Some(self.current.map_or(current, |known| known.max(current)));
        Ok(())
    }

    /// The key of `epoch`, if this node holds it.
    pub fn get(&self, epoch: u32) -> Option<MasterKey> {
        let page = self.keys.get(&epoch)?;
        Some(MasterKey::from_bytes(epoch, Zeroizing::new(*page.expose())))
    }

    /// The current epoch's key, if this node holds it.
    pub fn current(&self) -> Option<MasterKey> {
        self.get(self.current?)
    }

    pub fn epochs(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// True if every page the node holds is locked in memory.
    pub fn all_locked(&self) -> bool {
        self.keys.values().all(LockedKey::is_locked)
    }
}

impl fmt::Debug for FetchedMasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchedMasterKeys")
            .field("epochs", &self.epochs())
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_back_by_epoch_and_the_newest_current_wins() {
        let mut held = FetchedMasterKeys::new(MemoryLocking::BestEffort, false).unwrap();
        assert!(held.current().is_none());
        held.insert(1, 1, Zeroizing::new([1; KEY_LEN])).unwrap();
        held.insert(2, 2, Zeroizing::new([2; KEY_LEN])).unwrap();
        // An older answer (current 1) does not move the current epoch back.
        held.insert(1, 1, Zeroizing::new([1; KEY_LEN])).unwrap();
        assert_eq!(held.epochs(), vec![1, 2]);
        let current = held.current().unwrap();
        assert_eq!((current.epoch(), *current.expose()), (2, [2; KEY_LEN]));
        assert_eq!(*held.get(1).unwrap().expose(), [1; KEY_LEN]);
        assert!(held.get(3).is_none());
        assert!(!format!("{held:?}").contains("[1, 1"), "no key bytes in Debug");
    }
}
