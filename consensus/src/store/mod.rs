//! A group's persistent state on one node: one redb database holding the log, the vote,
//! the state machine and the newest snapshot.
//!
//! One database per group keeps a group's writes in one commit order: an fsync'd log
//! append also carries every state machine commit before it to disk, which is what lets
//! `apply` skip an fsync of its own (see `state_machine.rs`).

mod log;
mod state_machine;

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, StorageBackend};

pub use log::LogStore;
pub use state_machine::StateMachineStore;

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
        let db = Arc::new(db);
        Ok(GroupStore {
            log: LogStore::new(db.clone()),
            state_machine: StateMachineStore::new(db.clone(), shard, shards),
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
