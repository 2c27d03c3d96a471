//! Proposals, reads and membership changes from other processes: a gateway, an admin tool,
//! the bench. They travel as client requests (kind 4 of the Raft RPC header, `rpc.rs`) in
//! `Op::Raft` frames over the fabric's TCP+mTLS, so the same rule holds as for Raft RPCs:
//! only peers with the server role reach a node's groups; anyone else is answered `Denied`
//! and audited by the handler (`fabric.rs`) before a byte is decoded.
//!
//! - [`serve`]: a node's side. A request over `CLIENT_REQUEST_MAX_BYTES` is refused
//!   (`Refusal::TooLarge`) before it is decoded; a proposal goes through the same checks and
//!   batcher as a local one (`MetadataNode::propose`); a follower answers `NotLeader` with
//!   the leader's id and address, so the client can go there.
//! - [`MetadataClient`]: the caller's side. It keeps the leader it last saw per shard,
//!   follows `NotLeader` hints, tries the next node when one is unreachable or knows no
//!   leader, and gives up after `CLIENT_ATTEMPTS_MAX` attempts or `CLIENT_RETRY_DEADLINE`,
//!   whichever comes first, with the last reason. A proposal whose request may have reached
//!   a node that then failed is never retried: it is reported `OutcomeUnknown` (it may have
//!   committed); reads and status requests are retried.
//!
//! Request body: postcard of [`ClientRequest`]; response: the RPC response header, outcome 0
//! and postcard of [`ClientResponse`], or outcome 2 and a `Refusal` byte.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiseki_fabric::{Endpoint, FabricRequest, Transport, TransportError};
use kiseki_proto::{Op, Status};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::command::{AuditScope, Command, Manifest, ShardKey, TenantId, VersionedCommand};
use crate::constants::{
    CLIENT_ATTEMPTS_MAX, CLIENT_BACKOFF_MAX, CLIENT_BACKOFF_MIN, CLIENT_REQUEST_MAX_BYTES,
    CLIENT_RESPONSE_MAX_BYTES, CLIENT_RETRY_DEADLINE, COMMAND_FORMAT_VERSION,
};
use crate::error::{ConsensusError, Rejection};
use crate::group::MetadataGroup;
use crate::node::MetadataNode;
use crate::rpc::{
    Decoded, Refusal, RpcKind, RpcLimits, decode_response, encode_request, parse_request, refusal,
    response_header,
};
use crate::shards::ShardMap;
use crate::state::{AuditRecord, TenantRecord};
use crate::types::{Applied, NodeId, ShardId};

/// What a client asks of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Propose a command in its shard's group (at the leader).
    Propose(VersionedCommand),
    /// Read the state: `linearizable` asks the leader to confirm its leadership with a
    /// quorum first; otherwise the node answers from what it has applied (maybe stale).
    Read { query: Query, linearizable: bool },
    /// Change a group's membership (at the leader).
    Membership { shard: ShardId, change: MembershipChange },
}

/// What a read asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    Object {
        tenant: TenantId,
        bucket: String,
        key: Vec<u8>,
    },
    Tenant {
        tenant: TenantId,
    },
    BucketExists {
        tenant: TenantId,
        bucket: String,
    },
    AuditRecord {
        scope: AuditScope,
        sequence: u64,
    },
    /// The answering node's view of a group: leader, term, applied index, membership and a
    /// digest of its state (for comparing replicas).
    Status {
        shard: ShardId,
    },
}

/// A change to a group's membership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a learner at `addr` (IP:port of its fabric listener) and wait for it to catch up.
    AddLearner { node: NodeId, addr: String },
    /// Make learners voters.
    Promote { nodes: Vec<NodeId> },
    /// Remove voters (and forget them).
    Remove { nodes: Vec<NodeId> },
}

/// A read's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Object(Option<Manifest>),
    Tenant(Option<TenantRecord>),
    BucketExists(bool),
    AuditRecord(Option<AuditRecord>),
    Status(GroupStatus),
}

/// One node's view of one group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub node: NodeId,
    pub shard: ShardId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_applied_index: Option<u64>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Rows of the state machine's tables and their FNV-1a digest: two nodes that applied
    /// the same log have equal ones.
    pub rows: u64,
    pub digest: u64,
}

/// What a request did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Applied(Applied),
    Answer(Answer),
    Done,
}

/// Why a node did not do what a client asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Failure {
    Rejected(Rejection),
    /// This node does not lead the group; the leader it knows, with its address.
    NotLeader {
        leader: Option<NodeId>,
        addr: Option<String>,
    },
    Throttled {
        retry_after_ms: u64,
    },
    Busy,
    Stopped,
    OutcomeUnknown(String),
    Unavailable(String),
    Storage(String),
    Config(String),
}

/// A node's answer to a client request.
pub type ClientResponse = Result<Reply, Failure>;

/// Encodes a request, or refuses one over `max_bytes` (`CLIENT_REQUEST_MAX_BYTES` for a
/// well-behaved client).
pub fn encode_client_request(
    request: &ClientRequest,
    max_bytes: usize,
) -> Result<Vec<u8>, Refusal> {
    encode_request(RpcKind::Client, ShardId(0), request, RpcLimits { max_bytes })
}

/// Decodes a node's answer (a response over `CLIENT_RESPONSE_MAX_BYTES` is refused).
pub fn decode_client_response(response: &[u8]) -> Result<ClientResponse, Refusal> {
    if response.len() > CLIENT_RESPONSE_MAX_BYTES {
        return Err(Refusal::TooLarge);
    }
    match decode_response::<ClientResponse, ()>(RpcKind::Client, response)? {
        Decoded::Ok(response) => Ok(response),
        Decoded::Remote(()) => Err(Refusal::Malformed),
        Decoded::Refused(refusal) => Err(refusal),
    }
}

// ---- the node's side ----

/// Answers one client request on `node`. The handler has checked the peer's server role.
pub async fn serve(node: &MetadataNode, request: &[u8]) -> Vec<u8> {
    if request.len() > CLIENT_REQUEST_MAX_BYTES {
        tracing::warn!(
            target: "kiseki::audit",
            size_bytes = request.len(),
            max_bytes = CLIENT_REQUEST_MAX_BYTES,
            "metadata client request refused: larger than the limit"
        );
        return refusal(RpcKind::Client, Refusal::TooLarge);
    }
    let decoded = parse_request(request)
        .filter(|(kind, _, _)| *kind == RpcKind::Client)
        .and_then(|(_, _, body)| postcard::from_bytes::<ClientRequest>(body).ok());
    let Some(request) = decoded else { return refusal(RpcKind::Client, Refusal::Malformed) };
    let response = answer(node, request).await;
    match postcard::to_allocvec(&response) {
        Ok(body) if body.len() + 4 <= CLIENT_RESPONSE_MAX_BYTES => {
            let mut bytes = response_header(RpcKind::Client, 0);
            bytes.extend_from_slice(&body);
            bytes
        }
        _ => refusal(RpcKind::Client, Refusal::TooLarge),
    }
}

async fn answer(node: &MetadataNode, request: ClientRequest) -> ClientResponse {
    match request {
        ClientRequest::Propose(command) => {
            if command.version != COMMAND_FORMAT_VERSION {
                return Err(Failure::Rejected(Rejection::UnknownVersion(command.version)));
            }
            let group = node.group_for(&command.command);
            let result = group.propose(command.command).await;
            result.map(Reply::Applied).map_err(|error| failure(group, error))
        }
        ClientRequest::Read { query, linearizable } => {
            let shard = query_shard(&query, node.shards());
            let Some(group) = node.group(shard) else {
                return Err(Failure::Config(format!("no group of {shard} on this node")));
            };
            read(group, &query, linearizable)
                .await
                .map(Reply::Answer)
                .map_err(|error| failure(group, error))
        }
        ClientRequest::Membership { shard, change } => {
            let Some(group) = node.group(shard) else {
                return Err(Failure::Config(format!("no group of {shard} on this node")));
            };
            let result = match change {
                MembershipChange::AddLearner { node, addr } => {
                    group.add_learner(node, openraft::BasicNode::new(addr)).await
                }
                MembershipChange::Promote { nodes } => {
                    group.promote(nodes.into_iter().collect()).await
                }
                MembershipChange::Remove { nodes } => {
                    group.remove(nodes.into_iter().collect()).await
                }
            };
            result.map(|()| Reply::Done).map_err(|error| failure(group, error))
        }
    }
}

fn query_shard(query: &Query, shards: ShardMap) -> ShardId {
    match query {
        Query::Object { tenant, .. }
        | Query::Tenant { tenant }
        | Query::BucketExists { tenant, .. }
        | Query::AuditRecord { scope: AuditScope::Tenant(tenant), .. } => {
            shards.shard_of(ShardKey::Tenant(*tenant))
        }
        Query::AuditRecord { scope: AuditScope::System, .. } => ShardId(0),
        Query::Status { shard } => *shard,
    }
}

async fn read(
    group: &MetadataGroup,
    query: &Query,
    linearizable: bool,
) -> Result<Answer, ConsensusError> {
    if let Query::Status { .. } = query {
        return status(group);
    }
    let view = if linearizable { group.read().await? } else { group.local_view()? };
    Ok(match query {
        Query::Object { tenant, bucket, key } => Answer::Object(view.object(tenant, bucket, key)?),
        Query::Tenant { tenant } => Answer::Tenant(view.tenant(tenant)?),
        Query::BucketExists { tenant, bucket } => {
            Answer::BucketExists(view.bucket_exists(tenant, bucket)?)
        }
        Query::AuditRecord { sequence, .. } => Answer::AuditRecord(view.audit_record(*sequence)?),
        Query::Status { .. } => unreachable!("answered above"),
    })
}

fn status(group: &MetadataGroup) -> Result<Answer, ConsensusError> {
    let (leader, term, last_applied_index, voters, learners) = {
        let metrics = group.raft().metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        (
            metrics.current_leader,
            metrics.current_term,
            metrics.last_applied.map(|log_id| log_id.index),
            membership.voter_ids().collect(),
            membership.learner_ids().collect(),
        )
    };
    let rows = group.local_view()?.rows()?;
    let mut digest = Fnv::default();
    for (position, key, value) in &rows {
        digest.write(&(*position as u64).to_le_bytes());
        digest.write(&(key.len() as u64).to_le_bytes());
        digest.write(key);
        digest.write(&(value.len() as u64).to_le_bytes());
        digest.write(value);
    }
    Ok(Answer::Status(GroupStatus {
        node: group.node_id(),
        shard: group.shard(),
        leader,
        term,
        last_applied_index,
        voters,
        learners,
        rows: rows.len() as u64,
        digest: digest.0,
    }))
}

/// FNV-1a, 64 bits: stable across builds and processes, which `std`'s hasher is not
/// promised to be.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn failure(group: &MetadataGroup, error: ConsensusError) -> Failure {
    match error {
        ConsensusError::Rejected(rejection) => Failure::Rejected(rejection),
        ConsensusError::NotLeader { leader } => {
            let addr = leader.and_then(|id| {
                let metrics = group.raft().metrics();
                let metrics = metrics.borrow();
                metrics.membership_config.membership().get_node(&id).map(|node| node.addr.clone())
            });
            Failure::NotLeader { leader, addr }
        }
        ConsensusError::Throttled { retry_after } => Failure::Throttled {
            retry_after_ms: u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX),
        },
        ConsensusError::Busy => Failure::Busy,
        ConsensusError::Stopped => Failure::Stopped,
        ConsensusError::OutcomeUnknown(why) => Failure::OutcomeUnknown(why),
        ConsensusError::Unavailable(why) => Failure::Unavailable(why),
        ConsensusError::Storage(why) => Failure::Storage(why),
        ConsensusError::Config(why) => Failure::Config(why),
    }
}

// ---- the client's side ----

/// Why a client request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// The command was refused; nothing changed.
    Rejected(Rejection),
    /// The request may or may not have taken effect (a proposal whose node failed or timed
    /// out after receiving it); it was not retried.
    OutcomeUnknown(String),
    /// No node led the group within the retry bound; `last` says what the last attempt met.
    Unavailable { attempts: u32, last: String },
    /// The node refused our identity (not a server certificate).
    Denied,
    /// The request was refused unread (too large, malformed) by us or by the node.
    Refused(Refusal),
    /// The node failed in a way a retry does not help (stopped, storage, configuration).
    Failed(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Rejected(rejection) => write!(f, "rejected: {rejection}"),
            ClientError::OutcomeUnknown(why) => write!(f, "outcome unknown: {why}"),
            ClientError::Unavailable { attempts, last } => {
                write!(f, "no leader answered after {attempts} attempt(s); last: {last}")
            }
            ClientError::Denied => f.write_str("access denied"),
            ClientError::Refused(refusal) => write!(f, "refused: {refusal}"),
            ClientError::Failed(why) => write!(f, "metadata node failed: {why}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// What one attempt at one node met.
enum Attempt {
    Answered(ClientResponse),
    /// Nothing was delivered (no connection, handshake): safe to try elsewhere.
    Unreachable(String),
    /// Delivered, no answer: retry only what is idempotent.
    Lost(String),
    Denied,
    Refused(Refusal),
}

/// A client of a metadata cluster over the fabric; see the module's notes. Cheap to share.
#[derive(Debug)]
pub struct MetadataClient {
    transport: Arc<dyn Transport>,
    shards: ShardMap,
    nodes: Vec<SocketAddr>,
    leaders: Mutex<HashMap<ShardId, SocketAddr>>,
    next_node: AtomicUsize,
}

impl MetadataClient {
    /// A client of the cluster whose nodes listen at `nodes` (any of them will do to start;
    /// leader hints may name others), with `shards` as the cluster's shard count.
    /// `transport` must present a server-role certificate of the cluster CA.
    pub fn new(
        transport: Arc<dyn Transport>,
        nodes: Vec<SocketAddr>,
        shards: ShardMap,
    ) -> Result<MetadataClient, ClientError> {
        if nodes.is_empty() {
            return Err(ClientError::Failed("a metadata client needs at least one node".into()));
        }
        Ok(MetadataClient {
            transport,
            shards,
            nodes,
            leaders: Mutex::new(HashMap::new()),
            next_node: AtomicUsize::new(0),
        })
    }

    /// Proposes `command` at its shard's leader; the outcome once committed and applied.
    pub async fn propose(&self, command: Command) -> Result<Applied, ClientError> {
        let shard = self.shards.shard_of(command.shard_key());
        let request = ClientRequest::Propose(VersionedCommand::current(command));
        match self.call(shard, &request, false).await? {
            Reply::Applied(applied) => Ok(applied),
            other => Err(unexpected(&other)),
        }
    }

    /// A linearizable read at its shard's leader.
    pub async fn read(&self, query: Query) -> Result<Answer, ClientError> {
        let shard = query_shard(&query, self.shards);
        let request = ClientRequest::Read { query, linearizable: true };
        match self.call(shard, &request, true).await? {
            Reply::Answer(answer) => Ok(answer),
            other => Err(unexpected(&other)),
        }
    }

    /// Changes `shard`'s membership at its leader.
    pub async fn change_membership(
        &self,
        shard: ShardId,
        change: MembershipChange,
    ) -> Result<(), ClientError> {
        let request = ClientRequest::Membership { shard, change };
        match self.call(shard, &request, false).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// The view of `shard` of the node at `addr` itself (one attempt, no leader needed).
    pub async fn status_at(
        &self,
        addr: SocketAddr,
        shard: ShardId,
    ) -> Result<GroupStatus, ClientError> {
        let request = ClientRequest::Read { query: Query::Status { shard }, linearizable: false };
        let bytes = encode_client_request(&request, CLIENT_REQUEST_MAX_BYTES)
            .map_err(ClientError::Refused)?;
        match self.attempt(addr, bytes).await {
            Attempt::Answered(Ok(Reply::Answer(Answer::Status(status)))) => Ok(status),
            Attempt::Answered(Ok(other)) => Err(unexpected(&other)),
            Attempt::Answered(Err(failure)) => Err(ClientError::Failed(format!("{failure:?}"))),
            Attempt::Unreachable(why) | Attempt::Lost(why) => {
                Err(ClientError::Unavailable { attempts: 1, last: why })
            }
            Attempt::Denied => Err(ClientError::Denied),
            Attempt::Refused(refusal) => Err(ClientError::Refused(refusal)),
        }
    }

    /// Sends `request` to `shard`'s leader, following hints; see the module's notes.
    async fn call(
        &self,
        shard: ShardId,
        request: &ClientRequest,
        idempotent: bool,
    ) -> Result<Reply, ClientError> {
        let bytes = encode_client_request(request, CLIENT_REQUEST_MAX_BYTES)
            .map_err(ClientError::Refused)?;
        let deadline = Instant::now() + CLIENT_RETRY_DEADLINE;
        let mut target = self.leader(shard).unwrap_or_else(|| self.next());
        let mut backoff = CLIENT_BACKOFF_MIN;
        let mut last = String::new();
        for attempt in 1..=CLIENT_ATTEMPTS_MAX {
            let pause = match self.attempt(target, bytes.clone()).await {
                Attempt::Answered(Ok(reply)) => {
                    self.set_leader(shard, Some(target));
                    return Ok(reply);
                }
                Attempt::Answered(Err(Failure::NotLeader { leader, addr })) => {
                    last = format!("{target} is not the leader (it knows {leader:?})");
                    let hint = addr.and_then(|addr| addr.parse::<SocketAddr>().ok());
                    self.set_leader(shard, hint);
                    match hint {
                        Some(hint) if hint != target => {
                            target = hint;
                            Duration::ZERO
                        }
                        _ => {
                            target = self.next();
                            backoff
                        }
                    }
                }
                Attempt::Answered(Err(Failure::Busy)) => {
                    last = format!("{target}: proposal queue full");
                    backoff
                }
                Attempt::Answered(Err(Failure::Throttled { retry_after_ms })) => {
                    last = format!("{target}: inline budget spent");
                    Duration::from_millis(retry_after_ms).min(CLIENT_BACKOFF_MAX)
                }
                Attempt::Answered(Err(Failure::Unavailable(why))) => {
                    last = format!("{target}: {why}");
                    self.set_leader(shard, None);
                    target = self.next();
                    backoff
                }
                Attempt::Answered(Err(Failure::Rejected(rejection))) => {
                    return Err(ClientError::Rejected(rejection));
                }
                Attempt::Answered(Err(Failure::OutcomeUnknown(why))) => {
                    return Err(ClientError::OutcomeUnknown(why));
                }
                Attempt::Answered(Err(other)) => {
                    return Err(ClientError::Failed(format!("{target}: {other:?}")));
                }
                Attempt::Unreachable(why) => {
                    last = why;
                    self.set_leader(shard, None);
                    target = self.next();
                    backoff
                }
                Attempt::Lost(why) if idempotent => {
                    last = why;
                    self.set_leader(shard, None);
                    target = self.next();
                    backoff
                }
                Attempt::Lost(why) => return Err(ClientError::OutcomeUnknown(why)),
                Attempt::Denied => return Err(ClientError::Denied),
                Attempt::Refused(refusal) => return Err(ClientError::Refused(refusal)),
            };
            if Instant::now() + pause > deadline {
                return Err(ClientError::Unavailable { attempts: attempt, last });
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(CLIENT_BACKOFF_MAX);
            }
        }
        Err(ClientError::Unavailable { attempts: CLIENT_ATTEMPTS_MAX, last })
    }

    async fn attempt(&self, addr: SocketAddr, bytes: Vec<u8>) -> Attempt {
        let endpoint =
            Endpoint { node: format!("meta-{addr}"), addr, server_name: addr.ip().to_string() };
        let response =
            match self.transport.call(&endpoint, FabricRequest::new(Op::Raft, bytes)).await {
                Ok(response) => response,
                Err(TransportError::Oversized { .. }) => {
                    return Attempt::Refused(Refusal::TooLarge);
                }
                // Our own connections to it are full: wait, as for a busy node.
                Err(TransportError::Busy { .. }) => return Attempt::Answered(Err(Failure::Busy)),
                Err(error) if error.may_have_reached_peer() => {
                    return Attempt::Lost(format!("{addr}: {error}"));
                }
                Err(error) => return Attempt::Unreachable(format!("{addr}: {error}")),
            };
        match response.status {
            Status::Ok => {}
            Status::Denied => return Attempt::Denied,
            Status::Busy => return Attempt::Answered(Err(Failure::Busy)),
            other => return Attempt::Unreachable(format!("{addr} answered {other:?}")),
        }
        match decode_client_response(&response.into_contiguous().payload) {
            Ok(answer) => Attempt::Answered(answer),
            Err(refusal) => Attempt::Refused(refusal),
        }
    }

    fn leader(&self, shard: ShardId) -> Option<SocketAddr> {
        self.leaders.lock().unwrap_or_else(|p| p.into_inner()).get(&shard).copied()
    }

    fn set_leader(&self, shard: ShardId, leader: Option<SocketAddr>) {
        let mut leaders = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
        match leader {
            Some(addr) => leaders.insert(shard, addr),
            None => leaders.remove(&shard),
        };
    }

    /// The next node in turn.
    fn next(&self) -> SocketAddr {
        let turn = self.next_node.fetch_add(1, Ordering::Relaxed);
        self.nodes[turn % self.nodes.len()]
    }
}

fn unexpected(reply: &Reply) -> ClientError {
    ClientError::Failed(format!("an answer of the wrong kind: {reply:?}"))
}
