//! How far the newest durable snapshot reaches, shared by a group's state machine and log.
//!
//! openraft requires that a node's log is never purged past its snapshot: on start it checks
//! `purge_upto <= snapshot_last_log_id` and refuses to run otherwise. openraft 0.9 does not
//! order the two writes when a follower installs a snapshot from its leader: the state
//! machine worker installs the snapshot while the Raft core purges the log up to the
//! snapshot's last entry, each in its own task, with no wait between them. A crash after
//! the purge and before the install left a node that could never start again (the seeded
//! simulation found it on seed 1 in CI: purged to 19, snapshot at 10).
//!
//! The state machine marks a snapshot from a leader as incoming when it begins to receive
//! it (openraft asks for the buffer on the first chunk, always before the install), and
//! moves the mark after each durable snapshot write. A purge past the durable snapshot
//! waits while one is incoming: the install is already queued when openraft issues the
//! purge, and runs in another task, so the wait ends as soon as that write lands. With no
//! snapshot incoming a purge goes ahead as openraft asks (its own storage suite purges with
//! no snapshot at all; openraft itself purges only behind one it built, which is durable
//! before openraft hears of it).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::types::LogId;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Snapshots {
    /// The last log id the newest durable snapshot covers.
    durable: Option<LogId>,
    /// A leader's snapshot is being received or installed.
    incoming: bool,
    /// The last install failed.
    failed: bool,
}

/// A clone per store half; all clones see one mark.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotMark(Arc<watch::Sender<Snapshots>>);

impl SnapshotMark {
    /// The mark of a store whose newest snapshot covers up to `last` (None: no snapshot).
    pub(crate) fn new(last: Option<LogId>) -> SnapshotMark {
        let snapshots = Snapshots { durable: last, ..Snapshots::default() };
        SnapshotMark(Arc::new(watch::Sender::new(snapshots)))
    }

    /// A leader's snapshot begins to arrive.
    pub(crate) fn incoming(&self) {
        self.0.send_modify(|s| {
            s.incoming = true;
            s.failed = false;
        });
    }

    /// A snapshot covering up to `last` was committed durably.
    pub(crate) fn durable(&self, last: Option<LogId>) {
        self.0.send_modify(|s| {
            s.durable = s.durable.max(last);
            s.incoming = false;
            s.failed = false;
        });
    }

    /// An install failed: a purge waiting for it would wait forever.
    pub(crate) fn install_failed(&self) {
        self.0.send_modify(|s| {
            s.incoming = false;
            s.failed = true;
        });
    }

    /// Before a purge to `upto`: waits, at most `limit`, while a snapshot that may cover it
    /// is incoming.
    pub(crate) async fn settled(&self, upto: LogId, limit: Duration) -> Result<(), String> {
        let mut marks = self.0.subscribe();
        let covered = |s: &Snapshots| s.durable >= Some(upto);
        let settled = marks.wait_for(|s| covered(s) || !s.incoming);
        match tokio::time::timeout(limit, settled).await {
            Ok(Ok(s)) if covered(&s) || !s.failed => Ok(()),
            Ok(_) => Err(format!("no purge to {upto}: the snapshot covering it failed to install")),
            Err(_) => Err(format!(
                "no purge to {upto}: the incoming snapshot did not reach the disk within {limit:?}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn purge(mark: &SnapshotMark, upto: LogId) -> tokio::task::JoinHandle<Result<(), String>> {
        let mark = mark.clone();
        tokio::spawn(async move { mark.settled(upto, LIMIT).await })
    }

    #[tokio::test(start_paused = true)]
    async fn a_purge_waits_for_the_incoming_snapshot_that_covers_it() {
        let mark = SnapshotMark::new(Some(log_id(1, 10)));
        mark.incoming();
        assert_eq!(mark.settled(log_id(1, 10), LIMIT).await, Ok(()), "covered already");
        let waiting = purge(&mark, log_id(7, 19));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "a purge went past a snapshot not yet on disk");
        mark.durable(Some(log_id(7, 19)));
        assert_eq!(waiting.await.expect("the waiter"), Ok(()));
        // An older snapshot never moves the mark back.
        mark.durable(Some(log_id(1, 10)));
        mark.incoming();
        assert_eq!(mark.settled(log_id(7, 19), LIMIT).await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_snapshot_incoming_a_purge_goes_ahead() {
        let mark = SnapshotMark::new(None);
        assert_eq!(mark.settled(log_id(1, 5), LIMIT).await, Ok(()));
        // Nor does a snapshot short of it hold it up once it is on disk.
        mark.incoming();
        mark.durable(Some(log_id(1, 3)));
        assert_eq!(mark.settled(log_id(1, 5), LIMIT).await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_install_or_the_time_limit_ends_the_wait_with_an_error() {
        let mark = SnapshotMark::new(None);
        mark.incoming();
        let late = mark.settled(log_id(1, 5), LIMIT).await.expect_err("no snapshot came");
        assert!(late.contains("within 30s"), "{late}");
        let waiting = purge(&mark, log_id(1, 5));
        tokio::task::yield_now().await;
        mark.install_failed();
        let failed = waiting.await.expect("the waiter").expect_err("the install failed");
        assert!(failed.contains("failed to install"), "{failed}");
    }
}
