//! A metadata group on one node: the Raft instance of one shard, its proposal batcher, its
//! inline-data guard and its reads.
//!
//! A proposal goes through, in order: the command's version, shape and size; its shard;
//! leadership (a follower answers `NotLeader` with the leader it knows); a check against
//! the leader's applied state; the inline guard. Only then does it join a batch: the batcher
//! takes whatever proposals are queued (up to `BATCH_COMMANDS_MAX` commands and
//! `BATCH_BYTES_MAX` bytes) into one log entry, with at most `BATCHES_IN_FLIGHT_MAX`
//! entries awaiting their quorum at once. Every node checks each command again when it
//! applies the entry, so a command the state no longer admits is refused there, unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, RaftNetworkFactory, SnapshotPolicy};
use redb::{Database, ReadableDatabase};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::command::{Command, VersionedCommand};
use crate::constants::{
    APPEND_ENTRIES_MAX, BATCH_BYTES_MAX, BATCH_COMMANDS_MAX, BATCHES_IN_FLIGHT_MAX,
    ELECTION_TIMEOUT_MAX, ELECTION_TIMEOUT_MIN, HEARTBEAT_INTERVAL,
    LOG_KEPT_BEHIND_SNAPSHOT_DEFAULT, PROPOSAL_QUEUE_MAX, PROPOSAL_TIMEOUT, SNAPSHOT_CHUNK_BYTES,
    SNAPSHOT_LOGS_SINCE_LAST_DEFAULT,
};
use crate::error::{ConsensusError, Rejection};
use crate::guard::{GuardLimits, InlineGuard};
use crate::shards::ShardMap;
use crate::state::Tables;
use crate::store::GroupStore;
use crate::types::{Applied, Batch, NodeId, Raft, ShardId, TypeConfig};
use crate::view::StateView;

/// How a group's Raft instance is tuned.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    pub node_id: NodeId,
    pub shard: ShardId,
    pub shards: ShardMap,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// A snapshot is built after this many entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind a snapshot.
    pub log_kept_behind_snapshot: u64,
    /// Bytes of snapshot per install-snapshot RPC: must leave room for the RPC's header
    /// and meta under the RPC size limit.
    pub snapshot_chunk_bytes: u64,
    /// A proposal or a read that has not finished after this long fails.
    pub request_timeout: Duration,
    pub inline_limits: GuardLimits,
}

impl GroupConfig {
    /// The defaults of `constants.rs` for node `node_id`'s member of `shard`.
    pub fn new(node_id: NodeId, shard: ShardId, shards: ShardMap) -> GroupConfig {
        GroupConfig {
            node_id,
            shard,
            shards,
            heartbeat_interval: HEARTBEAT_INTERVAL,
            election_timeout_min: ELECTION_TIMEOUT_MIN,
            election_timeout_max: ELECTION_TIMEOUT_MAX,
            snapshot_logs_since_last: SNAPSHOT_LOGS_SINCE_LAST_DEFAULT,
            log_kept_behind_snapshot: LOG_KEPT_BEHIND_SNAPSHOT_DEFAULT,
            snapshot_chunk_bytes: SNAPSHOT_CHUNK_BYTES,
            request_timeout: PROPOSAL_TIMEOUT,
            inline_limits: GuardLimits::default(),
        }
    }

    fn raft_config(&self) -> Result<openraft::Config, ConsensusError> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = openraft::Config {
            cluster_name: format!("kiseki-{}", self.shard),
            heartbeat_interval: millis(self.heartbeat_interval),
            election_timeout_min: millis(self.election_timeout_min),
            election_timeout_max: millis(self.election_timeout_max),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.log_kept_behind_snapshot,
            max_payload_entries: APPEND_ENTRIES_MAX,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes,
            ..Default::default()
        };
        config.validate().map_err(|e| ConsensusError::Config(e.to_string()))
    }
}

struct Proposal {
    command: VersionedCommand,
    encoded_bytes: usize,
    reply: oneshot::Sender<Result<Applied, ConsensusError>>,
}

/// One shard's Raft group member on this node.
pub struct MetadataGroup {
    config: GroupConfig,
    raft: Raft,
    db: Arc<Database>,
    proposals: mpsc::Sender<Proposal>,
    guard: Mutex<InlineGuard>,
    batcher: tokio::task::JoinHandle<()>,
    election_watch: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for MetadataGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataGroup")
            .field("node_id", &self.config.node_id)
            .field("shard", &self.config.shard)
            .finish()
    }
}

impl std::fmt::Debug for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposal").field("encoded_bytes", &self.encoded_bytes).finish()
    }
}

impl MetadataGroup {
    /// Starts this node's member of a group on its store. A store that held the group
    /// before resumes where it was (vote, log, state machine, snapshot).
    pub async fn start<N>(
        config: GroupConfig,
        store: GroupStore,
        network: N,
    ) -> Result<MetadataGroup, ConsensusError>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        let raft_config = Arc::new(config.raft_config()?);
        let GroupStore { db, log, state_machine } = store;
        tracing::debug!(node = config.node_id, shard = %config.shard, store = ?Arc::as_ptr(&db), "group starting");
        let raft = Raft::new(config.node_id, raft_config, network, log, state_machine)
            .await
            .map_err(|e| ConsensusError::Storage(e.to_string()))?;
        let (proposals, queue) = mpsc::channel(PROPOSAL_QUEUE_MAX);
        let batcher =
            tokio::spawn(run_batcher(raft.clone(), config.shard, config.request_timeout, queue));
        let guard = Mutex::new(InlineGuard::new(config.inline_limits, Instant::now()));
        let election_watch = tokio::spawn(break_election_ties(
            raft.clone(),
            config.node_id,
            config.election_timeout_min,
            config.election_timeout_max,
        ));
        Ok(MetadataGroup { config, raft, db, proposals, guard, batcher, election_watch })
    }

    pub fn shard(&self) -> ShardId {
        self.config.shard
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// The Raft instance, for the RPC server that feeds it and for metrics.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Makes `members` the group's first voters. Call it on one node of a new group; on
    /// a group that already has a membership it does nothing.
    pub async fn initialize(
        &self,
        members: BTreeMap<NodeId, BasicNode>,
    ) -> Result<(), ConsensusError> {
        // Asked first: openraft logs a refused initialization as an error, and a restart
        // of an initialized group is no error.
        if self.raft.is_initialized().await.map_err(fatal)? {
            return Ok(());
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(RaftError::APIError(error)) => Err(ConsensusError::Config(error.to_string())),
            Err(RaftError::Fatal(error)) => Err(fatal(error)),
        }
    }

    /// Adds a learner and waits until it has caught up with the leader's log.
    pub async fn add_learner(&self, id: NodeId, node: BasicNode) -> Result<(), ConsensusError> {
        let result = self.raft.add_learner(id, node, true).await;
        self.map_write(result).map(|_| ())
    }

    /// Makes learners voters (joint consensus, then the new configuration).
    pub async fn promote(&self, ids: BTreeSet<NodeId>) -> Result<(), ConsensusError> {
        let result = self.raft.change_membership(ChangeMembers::AddVoterIds(ids), false).await;
        self.map_write(result).map(|_| ())
    }

    /// Removes voters (and forgets them as learners).
    pub async fn remove(&self, ids: BTreeSet<NodeId>) -> Result<(), ConsensusError> {
        let voters =
            self.raft.change_membership(ChangeMembers::RemoveVoters(ids.clone()), false).await;
        self.map_write(voters)?;
        let nodes = self.raft.change_membership(ChangeMembers::RemoveNodes(ids), false).await;
        self.map_write(nodes).map(|_| ())
    }

    /// Proposes a command and waits for its outcome once committed and applied here.
    pub async fn propose(&self, command: Command) -> Result<Applied, ConsensusError> {
        let command = VersionedCommand::current(command);
        let encoded_bytes = command.check()?;
        if self.config.shards.shard_of(command.command.shard_key()) != self.config.shard {
            return Err(Rejection::WrongShard.into());
        }
        let leader = self.raft.metrics().borrow().current_leader;
        if leader != Some(self.config.node_id) {
            return Err(ConsensusError::NotLeader { leader });
        }
        // The state check first: a command the state refuses spends no inline budget.
        self.check_against_state(&command.command)?;
        if let Some((tenant, bytes)) = command.command.inline_bytes() {
            let mut guard = self.guard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            guard
                .admit(tenant, bytes, Instant::now())
                .map_err(|retry_after| ConsensusError::Throttled { retry_after })?;
        }
        let (reply, outcome) = oneshot::channel();
        self.proposals.try_send(Proposal { command, encoded_bytes, reply }).map_err(|error| {
            match error {
                mpsc::error::TrySendError::Full(_) => ConsensusError::Busy,
                mpsc::error::TrySendError::Closed(_) => ConsensusError::Stopped,
            }
        })?;
        match tokio::time::timeout(self.config.request_timeout, outcome).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ConsensusError::Stopped),
            Err(_) => Err(ConsensusError::OutcomeUnknown("no quorum before the timeout".into())),
        }
    }

    /// The state as of a linearizable point: the leader confirms its leadership with a
    /// quorum and this node has applied everything committed before the call.
    pub async fn read(&self) -> Result<StateView, ConsensusError> {
        let confirmed =
            tokio::time::timeout(self.config.request_timeout, self.raft.ensure_linearizable());
        match confirmed.await {
            Ok(Ok(_)) => self.local_view(),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
                Err(ConsensusError::NotLeader { leader: forward.leader_id })
            }
            Ok(Err(RaftError::APIError(error))) => {
                Err(ConsensusError::Unavailable(error.to_string()))
            }
            Ok(Err(RaftError::Fatal(error))) => Err(fatal(error)),
            Err(_) => Err(ConsensusError::Unavailable("no quorum before the timeout".into())),
        }
    }

    /// This node's applied state, without asking the leader: possibly stale.
    pub fn local_view(&self) -> Result<StateView, ConsensusError> {
        let txn = self.db.begin_read().map_err(|e| ConsensusError::Storage(e.to_string()))?;
        Ok(StateView::new(Tables::open_read(txn)))
    }

    /// Stops the group's Raft instance and its batcher; the store stays as it is on disk.
    pub async fn shutdown(&self) -> Result<(), ConsensusError> {
        self.batcher.abort();
        self.election_watch.abort();
        self.raft.shutdown().await.map_err(|e| ConsensusError::Storage(e.to_string()))
    }

    fn check_against_state(&self, command: &Command) -> Result<(), ConsensusError> {
        let view = self.local_view()?;
        view.check(command)
    }

    fn map_write<T>(
        &self,
        result: Result<T, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>,
    ) -> Result<T, ConsensusError> {
        match result {
            Ok(value) => Ok(value),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(ConsensusError::NotLeader { leader: forward.leader_id })
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(error))) => {
                Err(ConsensusError::Config(error.to_string()))
            }
            Err(RaftError::Fatal(error)) => Err(fatal(error)),
        }
    }
}

fn fatal(error: openraft::error::Fatal<NodeId>) -> ConsensusError {
    match error {
        openraft::error::Fatal::Stopped => ConsensusError::Stopped,
        other => ConsensusError::Storage(other.to_string()),
    }
}

/// Breaks election ties openraft 0.9 cannot break by itself. It draws each node's election
/// timeout once, at start, and checks it on a tick of 1.5 heartbeats, so two candidates whose
/// timeouts fall in the same tick time out together in every term after: with standard
/// Raft's one vote per term, each votes for itself and the group has no leader for as long
/// as that lasts (the seeded simulation found a group stuck for 170 terms). This watch looks
/// at random intervals, not aligned with any tick; a node it finds a candidate with no
/// leader twice in a row starts the next election at once, ahead of the others, which then
/// see a higher term and vote for it.
async fn break_election_ties(raft: Raft, node_id: NodeId, min: Duration, max: Duration) {
    let mut rng = crate::sim::SimRng::new(election_seed(node_id));
    let span_us = u64::try_from((max.saturating_sub(min)).as_micros()).unwrap_or(u64::MAX).max(1);
    let mut stuck_in_term = None;
    loop {
        tokio::time::sleep(min + Duration::from_micros(rng.below(span_us))).await;
        let (state, term, leader) = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            (metrics.state, metrics.current_term, metrics.current_leader)
        };
        if state != openraft::ServerState::Candidate || leader.is_some() {
            stuck_in_term = None;
            continue;
        }
        // Seen campaigning in an earlier term and still no leader: a tie.
        if stuck_in_term.is_some_and(|earlier| earlier < term) {
            stuck_in_term = None;
            if raft.trigger().elect().await.is_err() {
                return;
            }
        } else if stuck_in_term.is_none() {
            stuck_in_term = Some(term);
        }
    }
}

/// A seed that differs between the nodes of a group and between runs.
fn election_seed(node_id: NodeId) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    nanos ^ node_id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Gathers queued proposals into batches and proposes each, at most
/// `BATCHES_IN_FLIGHT_MAX` at once. A batch that has not committed within `timeout` gives
/// its permit back: openraft may never answer for an entry a deposed leader appended, and
/// without the bound such batches would hold every permit and stall the group's proposals
/// for good (the seeded simulation found this).
async fn run_batcher(
    raft: Raft,
    shard: ShardId,
    timeout: Duration,
    mut queue: mpsc::Receiver<Proposal>,
) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
    let mut carried: Option<Proposal> = None;
    loop {
        let first = match carried.take() {
            Some(proposal) => proposal,
            None => match queue.recv().await {
                Some(proposal) => proposal,
                None => return,
            },
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        // Whatever queued up while the previous batches held the permits joins this one.
        let mut bytes = first.encoded_bytes;
        let mut batch = vec![first];
        while batch.len() < BATCH_COMMANDS_MAX {
            match queue.try_recv() {
                Ok(next) if bytes + next.encoded_bytes <= BATCH_BYTES_MAX => {
                    bytes += next.encoded_bytes;
                    batch.push(next);
                }
                Ok(next) => {
                    carried = Some(next);
                    break;
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose_batch(&raft, shard, timeout, batch).await;
            drop(permit);
        });
    }
}

async fn propose_batch(raft: &Raft, shard: ShardId, timeout: Duration, batch: Vec<Proposal>) {
    let (commands, replies): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|proposal| (proposal.command, proposal.reply)).unzip();
    let count = commands.len();
    let written = tokio::time::timeout(timeout, raft.client_write(Batch { shard, commands }));
    let Ok(written) = written.await else {
        for reply in replies {
            let why = "not committed before the timeout".to_string();
            let _ = reply.send(Err(ConsensusError::OutcomeUnknown(why)));
        }
        return;
    };
    match written {
        Ok(response) => {
            let outcomes = response.data.outcomes;
            if outcomes.len() != count {
                // Our own state machine answers one outcome per command; anything else is
                // a bug, and the callers must not be told their commands were applied.
                for reply in replies {
                    let _ =
                        reply.send(Err(ConsensusError::Storage("outcome count mismatch".into())));
                }
                return;
            }
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome.map_err(ConsensusError::Rejected));
            }
        }
        Err(error) => {
            // The entry may have been appended before leadership moved, and a later leader
            // may still commit it: the callers cannot be told it failed.
            let why = error.to_string();
            for reply in replies {
                let _ = reply.send(Err(match &error {
                    RaftError::Fatal(openraft::error::Fatal::Stopped) => ConsensusError::Stopped,
                    _ => ConsensusError::OutcomeUnknown(why.clone()),
                }));
            }
        }
    }
}
