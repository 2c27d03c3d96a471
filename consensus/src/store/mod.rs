//! A group's persistent state on one node: one redb database holding the log, the vote,
//! the state machine and the newest snapshot.
//!
//! One database per group keeps a group's writes in one commit order: an fsync'd log
//! append also carries every state machine commit before it to disk, which is what lets
//! `apply` skip an fsync of its own (see `state_machine.rs`).

mod log;
mod snapshot_mark;
mod state_machine;

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, StorageBackend};

pub use log::LogStore;
pub use state_machine::StateMachineStore;

use snapshot_mark::SnapshotMark;

use crate::error::ConsensusError;
use crate::shards::ShardMap;
use crate::state::SNAPSHOT_TABLES;
use crate::types::ShardId;

/// A group's log store and state machine over one database.
#[derive(Debug)]
pub struct GroupStore {
    pub(crate) db: Arc<Database>,
    pub(crate) log: LogStore,
    pub(crate) state_machine: StateMachineStore,
}

impl GroupStore {
    /// Opens (or creates) the group's database file at `path`.
    pub fn open_file(
        path: &Path,
        shard: ShardId,
        shards: ShardMap,
    ) -> Result<GroupStore, ConsensusError> {
        let db = Database::create(path)
            .map_err(|e| ConsensusError::Storage(format!("{}: {e}", path.display())))?;
        GroupStore::from_database(db, shard, shards)
    }

    /// Opens (or creates) the group's database on any redb backend (the simulated disk in
    /// tests).
    pub fn open_backend(
        backend: impl StorageBackend,
        shard: ShardId,
        shards: ShardMap,
    ) -> Result<GroupStore, ConsensusError> {
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|e| ConsensusError::Storage(e.to_string()))?;
        GroupStore::from_database(db, shard, shards)
    }

    /// The log store and the state machine, for a caller that drives openraft itself.
    pub fn into_parts(self) -> (LogStore, StateMachineStore) {
        (self.log, self.state_machine)
    }

    fn from_database(
        db: Database,
        shard: ShardId,
        shards: ShardMap,
    ) -> Result<GroupStore, ConsensusError> {
        create_tables(&db).map_err(|e| ConsensusError::Storage(e.to_string()))?;
        let snapshot = state_machine::stored_snapshot_last(&db).map_err(ConsensusError::Storage)?;
        let purged = log::stored_purged(&db).map_err(ConsensusError::Storage)?;
        // openraft would refuse this store with a panic; say what is wrong instead.
        if purged > snapshot {
            return Err(ConsensusError::Storage(format!(
                "the log is purged to {} but the newest snapshot ends at {}: entries between \
                 them are gone; rebuild this member from its peers",
                purged.map_or("nothing".into(), |id| id.to_string()),
                snapshot.map_or("nothing".into(), |id| id.to_string()),
            )));
        }
        let mark = SnapshotMark::new(snapshot);
        let db = Arc::new(db);
        Ok(GroupStore {
            log: LogStore::new(db.clone(), mark.clone()),
            state_machine: StateMachineStore::new(db.clone(), shard, shards, mark),
            db,
        })
    }
}

/// Creates every table once, so read transactions can open them on a fresh database.
fn create_tables(db: &Database) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    for definition in SNAPSHOT_TABLES {
        txn.open_table(definition)?;
    }
    txn.open_table(log::LOG)?;
    txn.open_table(log::LOG_META)?;
    txn.open_table(state_machine::SNAPSHOT)?;
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    use openraft::{CommittedLeaderId, EntryPayload, RaftLogId};

    use super::*;
    use crate::sim::SimDisk;
    use crate::types::{Entry, LogId, SnapshotMeta};

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(7, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    /// The order openraft 0.9 gets wrong after a follower receives a snapshot: it purges
    /// the log up to the snapshot while the state machine is still installing it.
    #[tokio::test]
    async fn a_purge_past_the_snapshot_waits_for_its_install_and_a_store_past_it_is_refused() {
        let shards = ShardMap::new(1).expect("one shard");
        let disk = SimDisk::new();
        let store = GroupStore::open_backend(disk.backend(), ShardId(0), shards).expect("store");
        let db = store.db.clone();
        let (log, mut state_machine) = store.into_parts();
        let entries: Vec<Entry> = (1..=10).map(entry).collect();
        log.append_durably(&entries).expect("append");
        let image = state_machine.get_current_snapshot().await.expect("read");
        assert!(image.is_none(), "a fresh store has no snapshot");

        // The leader's snapshot begins to arrive, then openraft purges before installing it.
        let mut receiving = state_machine.begin_receiving_snapshot().await.expect("receive");
        let upto = *entry(8).get_log_id();
        let purge = tokio::spawn({
            let mut log = log.clone();
            async move { log.purge(upto).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!purge.is_finished(), "the purge went past a snapshot not yet on disk");
        assert_eq!(log::stored_purged(&db), Ok(None), "nothing purged on disk");

        // The leader's snapshot lands: the purge follows it.
        let mut builder = state_machine.clone();
        let built = openraft::storage::RaftSnapshotBuilder::build_snapshot(&mut builder)
            .await
            .expect("an image of the empty state");
        let meta = SnapshotMeta {
            last_log_id: Some(upto),
            last_membership: built.meta.last_membership.clone(),
            snapshot_id: "from-the-leader".into(),
        };
        receiving.get_mut().extend_from_slice(built.snapshot.get_ref());
        state_machine.install_snapshot(&meta, receiving).await.expect("install");
        purge.await.expect("the purge task").expect("the purge");
        assert_eq!(log::stored_purged(&db), Ok(Some(upto)));
        assert_eq!(state_machine::stored_snapshot_last(&db), Ok(Some(upto)));

        // A store whose log was purged past its snapshot (as the unordered writes could
        // leave one) is refused with the reason, not handed to openraft.
        let past = *entry(9).get_log_id();
        log.write_durably(|txn| {
            txn.open_table(log::LOG_META)?
                .insert(log::META_PURGED, crate::state::encode(&past).as_slice())?;
            Ok(())
        })
        .expect("write a purge mark past the snapshot");
        disk.crash(|_| true);
        drop((log, state_machine, db));
        let error = GroupStore::open_backend(disk.backend(), ShardId(0), shards)
            .expect_err("a store purged past its snapshot");
        let message = error.to_string();
        assert!(message.contains("purged to") && message.contains("snapshot ends at"), "{message}");
    }
}
