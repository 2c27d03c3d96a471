//! The Raft log and vote on redb: every append, vote, truncation and purge is committed
//! with `Durability::Immediate` (fsync'd) before it is acknowledged to openraft.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogId};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::SnapshotMark;
use crate::constants::PURGE_WAITS_FOR_SNAPSHOT_MAX;
use crate::state::{decode, encode};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Log entries by index.
pub(crate) const LOG: TableDefinition<'static, u64, &'static [u8]> =
    TableDefinition::new("raft_log");
/// The vote, the last purged log id and the last known committed log id.
pub(crate) const LOG_META: TableDefinition<'static, &'static [u8], &'static [u8]> =
    TableDefinition::new("raft_log_meta");

const META_VOTE: &[u8] = b"vote";
pub(super) const META_PURGED: &[u8] = b"last_purged";
const META_COMMITTED: &[u8] = b"committed";

/// A group's log on its node. Clones share the database (the reader openraft asks for is
/// a clone).
#[derive(Clone, Debug)]
pub struct LogStore {
    db: Arc<Database>,
    /// How far the durable snapshot reaches, and whether one is incoming: a purge waits
    /// for an incoming one.
    snapshot: SnapshotMark,
    /// Set on the readers handed to replication streams: a read whose start was purged
    /// answers nothing (see `try_get_log_entries`).
    replication_reader: bool,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Database>, snapshot: SnapshotMark) -> LogStore {
        LogStore { db, snapshot, replication_reader: false }
    }

    /// Runs `change` in one write transaction and commits it durably.
    pub(super) fn write_durably(
        &self,
        change: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        change(&txn)?;
        txn.commit()?;
        Ok(())
    }

    pub(super) fn append_durably(&self, entries: &[Entry]) -> Result<(), redb::Error> {
        tracing::debug!(
            store = ?Arc::as_ptr(&self.db),
            first = ?entries.first().map(|e| e.get_log_id().index),
            last = ?entries.last().map(|e| e.get_log_id().index),
            "log append"
        );
        self.write_durably(|txn| {
            let mut log = txn.open_table(LOG)?;
            for entry in entries {
                log.insert(entry.get_log_id().index, encode(entry).as_slice())?;
            }
            Ok(())
        })
    }
}

fn read_meta<T: serde::de::DeserializeOwned>(
    db: &Database,
    key: &[u8],
) -> Result<Option<T>, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let table = txn.open_table(LOG_META).map_err(|e| e.to_string())?;
    let value = table.get(key).map_err(|e| e.to_string())?;
    match value {
        None => Ok(None),
        Some(bytes) => decode(bytes.value()).map(Some).map_err(|e| format!("{e:?}")),
    }
}

/// The last purged log id on disk.
pub(super) fn stored_purged(db: &Database) -> Result<Option<LogId>, String> {
    read_meta(db, META_PURGED)
}

fn io_error(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(error.to_string())
}

fn any(error: impl std::fmt::Display) -> AnyError {
    AnyError::error(error.to_string())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let read = || -> Result<Vec<Entry>, String> {
            let txn = self.db.begin_read().map_err(|e| e.to_string())?;
            let log = txn.open_table(LOG).map_err(|e| e.to_string())?;
            let bounds: (Bound<u64>, Bound<u64>) =
                (range.start_bound().cloned(), range.end_bound().cloned());
            let mut entries: Vec<Entry> = Vec::new();
            for row in log.range::<u64>(bounds).map_err(|e| e.to_string())? {
                let (index, value) = row.map_err(|e| e.to_string())?;
                let entry: Entry = decode(value.value()).map_err(|e| format!("{e:?}"))?;
                // The log has no holes and each row holds the entry of its index: checked
                // on every read, so a damaged store stops the group instead of feeding
                // openraft a log it would misread.
                if entry.get_log_id().index != index.value() {
                    return Err(format!(
                        "log row {} holds entry {}",
                        index.value(),
                        entry.get_log_id()
                    ));
                }
                if let Some(previous) = entries.last()
                    && previous.get_log_id().index + 1 != index.value()
                {
                    return Err(format!(
                        "log hole between {} and {}",
                        previous.get_log_id().index,
                        index.value()
                    ));
                }
                entries.push(entry);
            }
            // openraft's replication takes what its reader returns as the entries from the
            // range's start on. A purge running beside it can remove that start; answering
            // with the entries after it would send a follower a log with a hole (the
            // simulation found that on seed 1424). For a replication reader nothing is the
            // answer then: openraft retries and sends a snapshot instead. (Other readers get
            // what is left, as openraft's storage contract says.) The purge mark is read in
            // the same transaction as the entries, so the two agree.
            let start = match range.start_bound() {
                Bound::Included(start) => *start,
                Bound::Excluded(start) => start + 1,
                Bound::Unbounded => 0,
            };
            let meta = txn.open_table(LOG_META).map_err(|e| e.to_string())?;
            let purged: Option<LogId> = match meta.get(META_PURGED).map_err(|e| e.to_string())? {
                None => None,
                Some(bytes) => Some(decode(bytes.value()).map_err(|e| format!("{e:?}"))?),
            };
            let start_purged = purged.is_some_and(|purged| start <= purged.index);
            if self.replication_reader && start_purged && !entries.is_empty() {
                tracing::debug!(start, ?purged, "log start purged under a read");
                entries.clear();
            }
            Ok(entries)
        };
        read().map_err(|e| StorageError::from(openraft::StorageIOError::read_logs(any(e))))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let read = || -> Result<LogState<TypeConfig>, String> {
            let last_purged_log_id: Option<LogId> = read_meta(&self.db, META_PURGED)?;
            let txn = self.db.begin_read().map_err(|e| e.to_string())?;
            let log = txn.open_table(LOG).map_err(|e| e.to_string())?;
            let last = match log.last().map_err(|e| e.to_string())? {
                None => None,
                Some((_, value)) => {
                    let entry: Entry = decode(value.value()).map_err(|e| format!("{e:?}"))?;
                    Some(*entry.get_log_id())
                }
            };
            tracing::debug!(store = ?Arc::as_ptr(&self.db), ?last_purged_log_id, ?last, "log state");
            Ok(LogState { last_purged_log_id, last_log_id: last.or(last_purged_log_id) })
        };
        read().map_err(|e| StorageError::from(openraft::StorageIOError::read_logs(any(e))))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogStore { db: self.db.clone(), snapshot: self.snapshot.clone(), replication_reader: true }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_durably(|txn| {
            txn.open_table(LOG_META)?.insert(META_VOTE, encode(vote).as_slice())?;
            Ok(())
        })
        .map_err(|e| StorageError::from(openraft::StorageIOError::write_vote(any(e))))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        read_meta(&self.db, META_VOTE)
            .map_err(|e| StorageError::from(openraft::StorageIOError::read_vote(any(e))))
    }

    /// The committed log id is a hint that lets a restarted node re-apply its log before it
    /// hears from a leader; losing the newest one in a crash only delays that, so it is
    /// written without its own fsync (the next durable append carries it to disk).
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        tracing::debug!(store = ?Arc::as_ptr(&self.db), ?committed, "log save committed");
        let write = || -> Result<(), redb::Error> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::None)?;
            {
                let mut meta = txn.open_table(LOG_META)?;
                match committed {
                    Some(log_id) => meta.insert(META_COMMITTED, encode(&log_id).as_slice())?,
                    None => meta.remove(META_COMMITTED)?,
                };
            }
            txn.commit()?;
            Ok(())
        };
        write().map_err(|e| StorageError::from(openraft::StorageIOError::write(any(e))))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Result<Option<LogId>, String> = read_meta(&self.db, META_COMMITTED);
        tracing::debug!(store = ?Arc::as_ptr(&self.db), ?committed, "log read committed");
        committed.map_err(|e| StorageError::from(openraft::StorageIOError::read(any(e))))
    }

    /// Appends and fsyncs before acknowledging: the callback runs after the durable commit,
    /// so a follower never tells a leader it holds an entry a crash could take back.
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        match self.append_durably(&entries) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                let message = error.to_string();
                callback.log_io_completed(Err(io_error(&message)));
                Err(StorageError::from(openraft::StorageIOError::write_logs(any(message))))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(store = ?Arc::as_ptr(&self.db), since = log_id.index, "log truncate");
        self.write_durably(|txn| {
            let mut log = txn.open_table(LOG)?;
            log.retain_in::<u64, _>(log_id.index.., |_, _| false)?;
            Ok(())
        })
        .map_err(|e| StorageError::from(openraft::StorageIOError::write_logs(any(e))))
    }

    /// Purges durably; past the durable snapshot only once no snapshot is incoming (see
    /// `snapshot_mark.rs`: after an install openraft asks before the snapshot is written).
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(store = ?Arc::as_ptr(&self.db), upto = log_id.index, "log purge");
        self.snapshot
            .settled(log_id, PURGE_WAITS_FOR_SNAPSHOT_MAX)
            .await
            .map_err(|e| StorageError::from(openraft::StorageIOError::write_logs(any(e))))?;
        self.write_durably(|txn| {
            txn.open_table(LOG_META)?.insert(META_PURGED, encode(&log_id).as_slice())?;
            let mut log = txn.open_table(LOG)?;
            log.retain_in::<u64, _>(..=log_id.index, |_, _| false)?;
            Ok(())
        })
        .map_err(|e| StorageError::from(openraft::StorageIOError::write_logs(any(e))))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::shards::ShardMap;
    use crate::sim::SimDisk;
    use crate::store::GroupStore;
    use crate::types::ShardId;

    fn entry(index: u64) -> Entry {
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), index);
        Entry { log_id, payload: EntryPayload::Blank }
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.get_log_id().index).collect()
    }

    #[tokio::test]
    async fn a_replication_reader_never_answers_from_past_a_purge() {
        let shards = ShardMap::new(1).expect("one shard");
        let store =
            GroupStore::open_backend(SimDisk::new().backend(), ShardId(0), shards).expect("store");
        let (mut log, _) = store.into_parts();
        log.append_durably(&(1..=10).map(entry).collect::<Vec<_>>()).expect("append");
        let mut reader = log.get_log_reader().await;
        assert_eq!(
            indexes(&reader.try_get_log_entries(3..8).await.expect("read")),
            [3, 4, 5, 6, 7]
        );
        log.purge(*entry(5).get_log_id()).await.expect("purge");
        // The storage contract: what is left of the range.
        assert_eq!(indexes(&log.try_get_log_entries(3..8).await.expect("read")), [6, 7]);
        // A replication stream asking from 3 would take 6 for 3: it gets nothing instead.
        assert!(reader.try_get_log_entries(3..8).await.expect("read").is_empty());
        assert_eq!(indexes(&reader.try_get_log_entries(6..8).await.expect("read")), [6, 7]);
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(5));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(10));
    }
}
