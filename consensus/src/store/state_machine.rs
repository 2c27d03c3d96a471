//! The metadata state machine on redb, and its snapshots.
//!
//! `apply` commits its transaction without an fsync of its own: the log holds every applied
//! entry durably, and the state machine shares the log's database, so the next durable log
//! write carries the applied state to disk in order. After a crash the state machine is at
//! some earlier applied log id, never ahead of the log, and openraft re-applies the rest
//! from the log (entries are only purged behind a snapshot, which is written durably).

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, OptionalSend, RaftLogId, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::SnapshotMark;
use crate::command::VersionedCommand;
use crate::constants::SNAPSHOT_MAX_BYTES;
use crate::error::Rejection;
use crate::shards::ShardMap;
use crate::state::{
    META_APPLIED, META_MEMBERSHIP, SNAPSHOT_TABLES, StateError, Tables, decode, encode,
};
use crate::types::{
    Applied, BatchOutcome, Entry, LogId, ShardId, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};

/// The newest snapshot this node built or installed: its meta and its image.
pub(crate) const SNAPSHOT: TableDefinition<'static, &'static [u8], &'static [u8]> =
    TableDefinition::new("raft_snapshot");
const SNAPSHOT_META: &[u8] = b"meta";
const SNAPSHOT_DATA: &[u8] = b"data";

/// A snapshot image begins with this header (little-endian):
///
/// ```text
/// 0..4   magic "KSNP"
/// 4..6   format version (u16)
/// 6..10  shard id (u32)
/// 10..   postcard: one list of (key, value) rows per table of `SNAPSHOT_TABLES`, in order
/// ```
const SNAPSHOT_MAGIC: [u8; 4] = *b"KSNP";
const SNAPSHOT_FORMAT_VERSION: u16 = 1;
const SNAPSHOT_HEADER_BYTES: usize = 10;
const _: () =
    assert!(SNAPSHOT_MAGIC.len() + size_of::<u16>() + size_of::<u32>() == SNAPSHOT_HEADER_BYTES);

type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// A group's state machine on its node. Clones share the database (the snapshot builder
/// is a clone).
#[derive(Clone, Debug)]
pub struct StateMachineStore {
    db: Arc<Database>,
    shard: ShardId,
    shards: ShardMap,
    /// Distinguishes snapshots built at the same log id (after a restart, say).
    snapshots_built: Arc<AtomicU64>,
    /// Moved after each durable snapshot write; the log's purge waits for it.
    snapshot_mark: SnapshotMark,
}

#[derive(Serialize, Deserialize)]
struct SnapshotImage {
    tables: Vec<Rows>,
}

fn storage(error: impl std::fmt::Display) -> AnyError {
    AnyError::error(error.to_string())
}

fn state_error(error: StateError) -> String {
    match error {
        StateError::Rejected(rejection) => format!("unexpected rejection: {rejection}"),
        StateError::Store(why) => why,
    }
}

impl StateMachineStore {
    pub(crate) fn new(
        db: Arc<Database>,
        shard: ShardId,
        shards: ShardMap,
        snapshot_mark: SnapshotMark,
    ) -> StateMachineStore {
        let snapshots_built = Arc::new(AtomicU64::new(0));
        StateMachineStore { db, shard, shards, snapshots_built, snapshot_mark }
    }

    /// Applies one command of a batch: its version, shape and shard, then the state. The
    /// same checks run on every node in the same order, so every node gives the same
    /// outcome.
    fn apply_command(
        &self,
        tables: &mut Tables<redb::Table<'_, &'static [u8], &'static [u8]>>,
        command: &VersionedCommand,
    ) -> Result<Result<Applied, Rejection>, String> {
        if let Err(rejection) = command.check() {
            return Ok(Err(rejection));
        }
        if self.shards.shard_of(command.command.shard_key()) != self.shard {
            return Ok(Err(Rejection::WrongShard));
        }
        match tables.apply(&command.command) {
            Ok(applied) => Ok(Ok(applied)),
            Err(StateError::Rejected(rejection)) => Ok(Err(rejection)),
            Err(StateError::Store(why)) => Err(why),
        }
    }

    fn apply_entries(&self, entries: Vec<Entry>) -> Result<Vec<BatchOutcome>, String> {
        let mut txn = self.db.begin_write().map_err(|e| e.to_string())?;
        txn.set_durability(Durability::None).map_err(|e| e.to_string())?;
        let mut outcomes = Vec::with_capacity(entries.len());
        {
            let mut tables = Tables::open_write(&txn).map_err(|e| e.to_string())?;
            for entry in entries {
                let log_id = *entry.get_log_id();
                let outcome = match entry.payload {
                    EntryPayload::Blank => BatchOutcome::default(),
                    EntryPayload::Normal(batch) => {
                        let mut outcome = BatchOutcome::default();
                        for command in &batch.commands {
                            let result = if batch.shard == self.shard {
                                self.apply_command(&mut tables, command)?
                            } else {
                                Err(Rejection::WrongShard)
                            };
                            outcome.outcomes.push(result);
                        }
                        outcome
                    }
                    EntryPayload::Membership(membership) => {
                        let stored = StoredMembership::new(Some(log_id), membership);
                        tables
                            .meta
                            .insert(META_MEMBERSHIP, encode(&stored).as_slice())
                            .map_err(|e| e.to_string())?;
                        BatchOutcome::default()
                    }
                };
                tables
                    .meta
                    .insert(META_APPLIED, encode(&log_id).as_slice())
                    .map_err(|e| e.to_string())?;
                outcomes.push(outcome);
            }
        }
        txn.commit().map_err(|e| e.to_string())?;
        Ok(outcomes)
    }

    fn read_applied(&self) -> Result<(Option<LogId>, StoredMembership), String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let tables = Tables::open_read(txn);
        let applied = match tables.meta.get(META_APPLIED).map_err(|e| e.to_string())? {
            None => None,
            Some(bytes) => Some(decode(bytes.value()).map_err(state_error)?),
        };
        let membership = match tables.meta.get(META_MEMBERSHIP).map_err(|e| e.to_string())? {
            None => StoredMembership::default(),
            Some(bytes) => decode(bytes.value()).map_err(state_error)?,
        };
        Ok((applied, membership))
    }

    /// Reads every state machine table in one read transaction into a snapshot image.
    fn build_image(&self) -> Result<(Option<LogId>, StoredMembership, Vec<u8>), String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let mut tables = Vec::with_capacity(SNAPSHOT_TABLES.len());
        let mut applied = None;
        let mut membership = StoredMembership::default();
        for definition in SNAPSHOT_TABLES {
            let table = txn.open_table(definition).map_err(|e| e.to_string())?;
            let mut rows = Rows::new();
            for row in table.iter().map_err(|e| e.to_string())? {
                let (key, value) = row.map_err(|e| e.to_string())?;
                if key.value() == META_APPLIED {
                    applied = Some(decode(value.value()).map_err(state_error)?);
                }
                if key.value() == META_MEMBERSHIP {
                    membership = decode(value.value()).map_err(state_error)?;
                }
                rows.push((key.value().to_vec(), value.value().to_vec()));
            }
            tables.push(rows);
        }
        let mut image = Vec::with_capacity(SNAPSHOT_HEADER_BYTES);
        image.extend_from_slice(&SNAPSHOT_MAGIC);
        image.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
        image.extend_from_slice(&self.shard.0.to_le_bytes());
        let body = postcard::to_allocvec(&SnapshotImage { tables }).map_err(|e| e.to_string())?;
        image.extend_from_slice(&body);
        if image.len() as u64 > SNAPSHOT_MAX_BYTES {
            return Err(format!("snapshot of {} bytes exceeds the limit", image.len()));
        }
        Ok((applied, membership, image))
    }

    /// Parses and checks an image (from a leader, or from our own store).
    fn parse_image(&self, image: &[u8]) -> Result<SnapshotImage, String> {
        if image.len() as u64 > SNAPSHOT_MAX_BYTES {
            return Err(format!("snapshot of {} bytes exceeds the limit", image.len()));
        }
        if image.len() < SNAPSHOT_HEADER_BYTES || image[0..4] != SNAPSHOT_MAGIC {
            return Err("not a snapshot image".into());
        }
        let version = u16::from_le_bytes([image[4], image[5]]);
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(format!("snapshot format version {version}"));
        }
        let shard = u32::from_le_bytes([image[6], image[7], image[8], image[9]]);
        if shard != self.shard.0 {
            return Err(format!("snapshot of shard {shard} offered to {}", self.shard));
        }
        let parsed: SnapshotImage =
            postcard::from_bytes(&image[SNAPSHOT_HEADER_BYTES..]).map_err(|e| e.to_string())?;
        if parsed.tables.len() != SNAPSHOT_TABLES.len() {
            return Err(format!("snapshot with {} tables", parsed.tables.len()));
        }
        Ok(parsed)
    }

    fn store_snapshot(
        txn: &redb::WriteTransaction,
        meta: &SnapshotMeta,
        image: &[u8],
    ) -> Result<(), redb::Error> {
        let mut table = txn.open_table(SNAPSHOT)?;
        table.insert(SNAPSHOT_META, encode(meta).as_slice())?;
        table.insert(SNAPSHOT_DATA, image)?;
        Ok(())
    }

    fn build(&self) -> Result<Snapshot<TypeConfig>, String> {
        let (applied, membership, image) = self.build_image()?;
        let built = self.snapshots_built.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match applied {
            Some(log_id) => {
                format!("{}-{}-{}-{built}", log_id.leader_id.term, log_id.index, self.shard.0)
            }
            None => format!("empty-{}-{built}", self.shard.0),
        };
        let meta = SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id };
        // The snapshot is durable before openraft may purge the log behind it.
        let mut txn = self.db.begin_write().map_err(|e| e.to_string())?;
        txn.set_durability(Durability::Immediate).map_err(|e| e.to_string())?;
        Self::store_snapshot(&txn, &meta, &image).map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())?;
        self.snapshot_mark.durable(meta.last_log_id);
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(image)) })
    }

    /// Replaces the whole state with the image, and records it as the current snapshot,
    /// in one durable transaction; then lets a purge the snapshot covers go ahead.
    fn install(&self, meta: &SnapshotMeta, image: Vec<u8>) -> Result<(), String> {
        match self.write_installed(meta, image) {
            Ok(()) => {
                self.snapshot_mark.durable(meta.last_log_id);
                Ok(())
            }
            Err(error) => {
                self.snapshot_mark.install_failed();
                Err(error)
            }
        }
    }

    fn write_installed(&self, meta: &SnapshotMeta, image: Vec<u8>) -> Result<(), String> {
        let parsed = self.parse_image(&image)?;
        let mut txn = self.db.begin_write().map_err(|e| e.to_string())?;
        txn.set_durability(Durability::Immediate).map_err(|e| e.to_string())?;
        for (definition, rows) in SNAPSHOT_TABLES.into_iter().zip(parsed.tables) {
            let mut table = txn.open_table(definition).map_err(|e| e.to_string())?;
            table.retain(|_, _| false).map_err(|e| e.to_string())?;
            for (key, value) in rows {
                table.insert(key.as_slice(), value.as_slice()).map_err(|e| e.to_string())?;
            }
        }
        {
            let mut table = txn.open_table(crate::state::SM_META).map_err(|e| e.to_string())?;
            match &meta.last_log_id {
                Some(log_id) => table.insert(META_APPLIED, encode(log_id).as_slice()),
                None => table.remove(META_APPLIED),
            }
            .map_err(|e| e.to_string())?;
            table
                .insert(META_MEMBERSHIP, encode(&meta.last_membership).as_slice())
                .map_err(|e| e.to_string())?;
        }
        Self::store_snapshot(&txn, meta, &image).map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())?;
        Ok(())
    }

    fn current(&self) -> Result<Option<Snapshot<TypeConfig>>, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let table = txn.open_table(SNAPSHOT).map_err(|e| e.to_string())?;
        let Some(meta) = table.get(SNAPSHOT_META).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let meta: SnapshotMeta = decode(meta.value()).map_err(state_error)?;
        let image = table
            .get(SNAPSHOT_DATA)
            .map_err(|e| e.to_string())?
            .ok_or("snapshot meta without its image")?
            .value()
            .to_vec();
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(image)) }))
    }
}

/// The last log id of the newest snapshot on disk.
pub(super) fn stored_snapshot_last(db: &Database) -> Result<Option<LogId>, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let table = txn.open_table(SNAPSHOT).map_err(|e| e.to_string())?;
    let Some(meta) = table.get(SNAPSHOT_META).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let meta: SnapshotMeta = decode(meta.value()).map_err(state_error)?;
    Ok(meta.last_log_id)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.build()
            .map_err(|e| StorageError::from(StorageIOError::write_snapshot(None, storage(e))))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.read_applied()
            .map_err(|e| StorageError::from(StorageIOError::read_state_machine(storage(e))))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_entries(entries.into_iter().collect())
            .map_err(|e| StorageError::from(StorageIOError::write_state_machine(storage(e))))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        self.snapshot_mark.incoming();
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        self.install(meta, snapshot.into_inner()).map_err(|e| {
            StorageError::from(StorageIOError::write_snapshot(Some(meta.signature()), storage(e)))
        })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.current()
            .map_err(|e| StorageError::from(StorageIOError::read_snapshot(None, storage(e))))
    }
}
