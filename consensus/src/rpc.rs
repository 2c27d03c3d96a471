//! Raft RPCs as bytes: the wire format, the node's dispatcher that feeds them to its groups,
//! and an openraft network over any transport that carries request bytes to a peer and
//! brings response bytes back.
//!
//! The transport is a small trait ([`RpcTransport`]) so the same code runs over the fabric's
//! TCP+mTLS connections (pooled, persistent; the fabric checks the peer's server role before
//! a request reaches [`RpcServer::handle`]) and over in-process loopback in tests.
//!
//! Request, little-endian:
//!
//! ```text
//! offset size field
//!      0    2 format version   1
//!      2    1 kind             1 vote, 2 append entries, 3 install snapshot (chunk),
//!                              4 client request (`client.rs`; the shard field is 0)
//!      3    1 reserved         0
//!      4    4 shard id
//!      8    . the openraft request in postcard
//! ```
//!
//! Response:
//!
//! ```text
//!      0    2 format version   1
//!      2    1 kind             the request's
//!      3    1 outcome          0 ok (body: the openraft response), 1 the group refused
//!                              (body: its RaftError), 2 this node refused the RPC (body:
//!                              a `Refusal` code byte)
//!      4    . body in postcard (or the refusal byte)
//! ```
//!
//! Every RPC is bounded by `RpcLimits::max_bytes` (`RAFT_RPC_MAX_BYTES` by default) on both
//! sides: a sender does not send a larger one (an append is split by openraft on our
//! `PayloadTooLarge` hint), and a receiver refuses one before decoding it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::constants::RAFT_RPC_MAX_BYTES;
use crate::types::{NodeId, Raft, ShardId, TypeConfig};

const RPC_FORMAT_VERSION: u16 = 1;
/// Bytes of a request's or a response's fixed header.
pub const RPC_HEADER_BYTES: usize = 8;
const RESPONSE_HEADER_BYTES: usize = 4;
const _: () = assert!(RPC_HEADER_BYTES == size_of::<u16>() + 1 + 1 + size_of::<u32>());
const _: () = assert!(RESPONSE_HEADER_BYTES == size_of::<u16>() + 1 + 1);

/// Which Raft RPC a message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RpcKind {
    Vote,
    Append,
    Snapshot,
    /// A proposal, read or membership change from another process (`client.rs`).
    Client,
}

impl RpcKind {
    fn code(self) -> u8 {
        match self {
            RpcKind::Vote => 1,
            RpcKind::Append => 2,
            RpcKind::Snapshot => 3,
            RpcKind::Client => 4,
        }
    }

    fn from_code(code: u8) -> Option<RpcKind> {
        [RpcKind::Vote, RpcKind::Append, RpcKind::Snapshot, RpcKind::Client]
            .into_iter()
            .find(|k| k.code() == code)
    }
}

/// Why a node refused an RPC without handing it to a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Larger than the receiver's limit.
    TooLarge,
    /// Not a request this node can read (header, version, kind or body).
    Malformed,
    /// No group of that shard runs on this node.
    NoSuchShard,
    /// This endpoint does not take client requests (only a node's full handler does).
    NotServed,
}

impl Refusal {
    fn code(self) -> u8 {
        match self {
            Refusal::TooLarge => 1,
            Refusal::Malformed => 2,
            Refusal::NoSuchShard => 3,
            Refusal::NotServed => 4,
        }
    }

    fn from_code(code: u8) -> Refusal {
        match code {
            1 => Refusal::TooLarge,
            3 => Refusal::NoSuchShard,
            4 => Refusal::NotServed,
            _ => Refusal::Malformed,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::TooLarge => "raft RPC larger than the limit",
            Refusal::Malformed => "malformed raft RPC",
            Refusal::NoSuchShard => "no group of that shard on this node",
            Refusal::NotServed => "this endpoint takes no client requests",
        })
    }
}

impl std::error::Error for Refusal {}

/// The size bound of RPCs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcLimits {
    pub max_bytes: usize,
}

impl Default for RpcLimits {
    fn default() -> RpcLimits {
        RpcLimits { max_bytes: RAFT_RPC_MAX_BYTES }
    }
}

/// Why a transport brought no response back.
#[derive(Debug)]
#[non_exhaustive]
pub enum RpcTransportError {
    /// The request never left (no connection, handshake refused): safe to retry.
    Unreachable(String),
    /// The request may have reached the peer; no response came.
    Lost(String),
}

impl std::fmt::Display for RpcTransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcTransportError::Unreachable(why) => write!(f, "peer unreachable: {why}"),
            RpcTransportError::Lost(why) => write!(f, "no response: {why}"),
        }
    }
}

impl std::error::Error for RpcTransportError {}

/// Carries one request's bytes to node `target` and brings its response's bytes back.
pub trait RpcTransport: Send + Sync + 'static {
    fn call(
        &self,
        target: NodeId,
        node: &BasicNode,
        request: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, RpcTransportError>> + Send;
}

// ---- the receiving side ----

/// A node's Raft RPC endpoint: routes each request to its shard's group.
#[derive(Clone, Default)]
pub struct RpcServer {
    groups: Arc<RwLock<HashMap<ShardId, Served>>>,
    limits: RpcLimits,
}

/// The receiving side of one node's group: hands each RPC to openraft, noting when a
/// leader's append last landed and ending elections a candidate cannot win (see
/// [`outrun_a_losing_candidate`]). The fabric dispatcher and the seeded simulator's network
/// both deliver through it.
#[derive(Clone)]
pub(crate) struct Served {
    raft: Raft,
    leader_heard: Arc<Mutex<Option<Instant>>>,
}

impl Served {
    pub(crate) fn new(raft: Raft) -> Served {
        Served { raft, leader_heard: Arc::default() }
    }

    pub(crate) async fn vote(
        &self,
        request: VoteRequest<NodeId>,
    ) -> Result<VoteResponse<NodeId>, RaftError<NodeId>> {
        let response = self.raft.vote(request.clone()).await;
        if let Ok(refused) = &response {
            let heard = *self.leader_heard.lock().unwrap_or_else(|p| p.into_inner());
            outrun_a_losing_candidate(&self.raft, heard, &request, refused);
        }
        response
    }

    pub(crate) async fn append_entries(
        &self,
        request: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        let response = self.raft.append_entries(request).await;
        if matches!(response, Ok(AppendEntriesResponse::Success | AppendEntriesResponse::Conflict))
        {
            *self.leader_heard.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        response
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.raft
    }
}

impl std::fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcServer").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl RpcServer {
    pub fn new(limits: RpcLimits) -> RpcServer {
        RpcServer { groups: Arc::default(), limits }
    }

    /// Serves RPCs of `shard` with `raft` (replacing a group that stopped).
    pub fn register(&self, shard: ShardId, raft: Raft) {
        self.groups.write().unwrap_or_else(|p| p.into_inner()).insert(shard, Served::new(raft));
    }

    pub fn unregister(&self, shard: ShardId) {
        self.groups.write().unwrap_or_else(|p| p.into_inner()).remove(&shard);
    }

    /// Answers one request. The caller (the transport) has authenticated the peer as a
    /// cluster server; everything about the bytes is checked here.
    pub async fn handle(&self, request: &[u8]) -> Vec<u8> {
        if request.len() > self.limits.max_bytes {
            return refusal(RpcKind::Append, Refusal::TooLarge);
        }
        let Some((kind, shard, body)) = parse_request(request) else {
            return refusal(RpcKind::Append, Refusal::Malformed);
        };
        let served = self.groups.read().unwrap_or_else(|p| p.into_inner()).get(&shard).cloned();
        let Some(served) = served else { return refusal(kind, Refusal::NoSuchShard) };
        match kind {
            RpcKind::Vote => match postcard::from_bytes::<VoteRequest<NodeId>>(body) {
                Ok(vote) => answer(kind, served.vote(vote).await),
                Err(_) => refusal(kind, Refusal::Malformed),
            },
            RpcKind::Append => match postcard::from_bytes::<AppendEntriesRequest<TypeConfig>>(body)
            {
                Ok(append) => answer(kind, served.append_entries(append).await),
                Err(_) => refusal(kind, Refusal::Malformed),
            },
            RpcKind::Snapshot => {
                match postcard::from_bytes::<InstallSnapshotRequest<TypeConfig>>(body) {
                    Ok(chunk) => answer(kind, served.raft().install_snapshot(chunk).await),
                    Err(_) => refusal(kind, Refusal::Malformed),
                }
            }
            RpcKind::Client => refusal(kind, Refusal::NotServed),
        }
    }
}

/// Elections a candidate cannot win, ended early, so a dead leader's group has a new one
/// within an election timeout. Two cases, both seen in the real-process test:
///
/// - A stale candidate. The survivor whose timer fires first may hold a shorter log than
///   another: the others refuse it their vote, but openraft 0.9 leaves their term alone
///   when it refuses for the log, so the survivor with the longer log later campaigns in
///   the candidate's own term and loses to the candidate's vote for itself (0.9 s to a new
///   leader instead of 0.5 s). Raft's rule is that a higher term seen in any request moves
///   a node to it; this follows it for that case.
/// - A split vote. Two survivors campaign within a round trip of each other and each votes
///   for itself; nobody wins the term and both wait out another timeout (0.7 to 0.8 s).
///   Of two candidates that refused each other, only the better one (longer log, or the
///   same log and the higher node id) campaigns again at once.
///
/// Either way the refusing node, if it heard no leader for a lease, campaigns in a term above
/// the candidate's at once. Starting an election is always safe in Raft; the lease check
/// keeps a node with a live leader from disturbing it.
fn outrun_a_losing_candidate(
    raft: &Raft,
    leader_heard: Option<Instant>,
    request: &VoteRequest<NodeId>,
    response: &VoteResponse<NodeId>,
) {
    let lease = Duration::from_millis(raft.config().election_timeout_max);
    let leader_silent = leader_heard.is_none_or(|heard| heard.elapsed() >= lease);
    let us = raft.metrics().borrow().id;
    let campaigns = campaigns_to_outrun(us, leader_silent, request, response);
    if campaigns == 0 {
        return;
    }
    let trigger = raft.clone();
    tokio::spawn(async move {
        // Each campaign moves this node's term up by one; openraft runs them in order and
        // ignores them if this node has become a leader or a learner meanwhile.
        for _ in 0..campaigns {
            if trigger.trigger().elect().await.is_err() {
                return;
            }
        }
    });
}

/// How many campaigns node `us` starts at once after answering `request` with `response`
/// (each moves its term up by one), per [`outrun_a_losing_candidate`]; 0 for none.
fn campaigns_to_outrun(
    us: NodeId,
    leader_silent: bool,
    request: &VoteRequest<NodeId>,
    response: &VoteResponse<NodeId>,
) -> u64 {
    /// Campaigns started for one refused request at most; a candidate further ahead than
    /// this is left to the ordinary timers.
    const TERMS_SKIPPED_MAX: u64 = 4;
    if response.vote_granted || !leader_silent {
        return 0;
    }
    let (ours, theirs) = (response.vote.leader_id().term, request.vote.leader_id().term);
    let ours_is_longer = response.last_log_id > request.last_log_id;
    let stale_candidate = theirs > ours && ours_is_longer;
    let split_vote = theirs == ours && !response.vote.is_committed() && {
        let candidate = request.vote.leader_id().voted_for();
        let same_log = response.last_log_id == request.last_log_id;
        response.vote.leader_id().voted_for() == Some(us)
            && candidate != Some(us)
            && (ours_is_longer || (same_log && candidate.is_some_and(|them| us > them)))
    };
    if stale_candidate || split_vote { (theirs - ours + 1).min(TERMS_SKIPPED_MAX) } else { 0 }
}

/// Whether `request` is a client request (kind 4), which a node's handler routes to
/// `client::serve` instead of the Raft dispatcher.
pub fn is_client_request(request: &[u8]) -> bool {
    request.get(2) == Some(&RpcKind::Client.code())
}

pub(crate) fn parse_request(request: &[u8]) -> Option<(RpcKind, ShardId, &[u8])> {
    let header = request.get(..RPC_HEADER_BYTES)?;
    if u16::from_le_bytes([header[0], header[1]]) != RPC_FORMAT_VERSION || header[3] != 0 {
        return None;
    }
    let kind = RpcKind::from_code(header[2])?;
    let shard = ShardId(u32::from_le_bytes([header[4], header[5], header[6], header[7]]));
    Some((kind, shard, &request[RPC_HEADER_BYTES..]))
}

pub(crate) fn response_header(kind: RpcKind, outcome: u8) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(&RPC_FORMAT_VERSION.to_le_bytes());
    bytes.push(kind.code());
    bytes.push(outcome);
    bytes
}

pub(crate) fn refusal(kind: RpcKind, why: Refusal) -> Vec<u8> {
    let mut bytes = response_header(kind, 2);
    bytes.push(why.code());
    bytes
}

fn answer<R: Serialize, E: Serialize>(kind: RpcKind, result: Result<R, E>) -> Vec<u8> {
    let (outcome, body) = match &result {
        Ok(response) => (0, postcard::to_allocvec(response)),
        Err(error) => (1, postcard::to_allocvec(error)),
    };
    match body {
        Ok(body) => {
            let mut bytes = response_header(kind, outcome);
            bytes.extend_from_slice(&body);
            bytes
        }
        // openraft's messages always encode; a failure here is refused, not a panic.
        Err(_) => refusal(kind, Refusal::Malformed),
    }
}

// ---- the sending side ----

/// Encodes a request, or says it is over the limit.
pub fn encode_request<T: Serialize>(
    kind: RpcKind,
    shard: ShardId,
    request: &T,
    limits: RpcLimits,
) -> Result<Vec<u8>, Refusal> {
    let body_bytes =
        postcard::experimental::serialized_size(request).map_err(|_| Refusal::Malformed)?;
    if RPC_HEADER_BYTES + body_bytes > limits.max_bytes {
        return Err(Refusal::TooLarge);
    }
    let mut bytes = Vec::with_capacity(RPC_HEADER_BYTES + body_bytes);
    bytes.extend_from_slice(&RPC_FORMAT_VERSION.to_le_bytes());
    bytes.push(kind.code());
    bytes.push(0);
    bytes.extend_from_slice(&shard.0.to_le_bytes());
    let body = postcard::to_allocvec(request).map_err(|_| Refusal::Malformed)?;
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// What a response said.
pub(crate) enum Decoded<R, E> {
    Ok(R),
    Remote(E),
    Refused(Refusal),
}

pub(crate) fn decode_response<R: DeserializeOwned, E: DeserializeOwned>(
    kind: RpcKind,
    response: &[u8],
) -> Result<Decoded<R, E>, Refusal> {
    let header = response.get(..RESPONSE_HEADER_BYTES).ok_or(Refusal::Malformed)?;
    if u16::from_le_bytes([header[0], header[1]]) != RPC_FORMAT_VERSION || header[2] != kind.code()
    {
        return Err(Refusal::Malformed);
    }
    let body = &response[RESPONSE_HEADER_BYTES..];
    match header[3] {
        0 => postcard::from_bytes(body).map(Decoded::Ok).map_err(|_| Refusal::Malformed),
        1 => postcard::from_bytes(body).map(Decoded::Remote).map_err(|_| Refusal::Malformed),
        2 => Ok(Decoded::Refused(Refusal::from_code(body.first().copied().unwrap_or(0)))),
        _ => Err(Refusal::Malformed),
    }
}

/// The openraft network of one group on one node, over an [`RpcTransport`].
#[derive(Debug)]
pub struct RpcNetworkFactory<T> {
    transport: Arc<T>,
    shard: ShardId,
    limits: RpcLimits,
}

impl<T> RpcNetworkFactory<T> {
    pub fn new(transport: Arc<T>, shard: ShardId, limits: RpcLimits) -> RpcNetworkFactory<T> {
        RpcNetworkFactory { transport, shard, limits }
    }
}

/// One group's connection to one peer (the transport pools the real connections).
#[derive(Debug)]
pub struct RpcConnection<T> {
    transport: Arc<T>,
    shard: ShardId,
    limits: RpcLimits,
    target: NodeId,
    node: BasicNode,
}

impl<T: RpcTransport> RaftNetworkFactory<TypeConfig> for RpcNetworkFactory<T> {
    type Network = RpcConnection<T>;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> RpcConnection<T> {
        RpcConnection {
            transport: self.transport.clone(),
            shard: self.shard,
            limits: self.limits,
            target,
            node: node.clone(),
        }
    }
}

type RpcResult<R, E> = Result<R, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl<T: RpcTransport> RpcConnection<T> {
    async fn send<Q, R, E>(
        &self,
        kind: RpcKind,
        request: &Q,
        entries: Option<usize>,
    ) -> RpcResult<R, E>
    where
        Q: Serialize,
        R: DeserializeOwned,
        E: DeserializeOwned + std::error::Error,
    {
        let bytes = match encode_request(kind, self.shard, request, self.limits) {
            Ok(bytes) => bytes,
            // Ask openraft to send half as many entries; a single entry over the limit
            // cannot be split and is refused outright.
            Err(Refusal::TooLarge) if entries.is_some_and(|n| n > 1) => {
                let hint = entries.map_or(1, |n| n / 2) as u64;
                return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(hint)));
            }
            Err(refused) => return Err(RPCError::Unreachable(Unreachable::new(&refused))),
        };
        let response = match self.transport.call(self.target, &self.node, bytes).await {
            Ok(response) => response,
            Err(error @ RpcTransportError::Unreachable(_)) => {
                return Err(RPCError::Unreachable(Unreachable::new(&error)));
            }
            Err(error) => return Err(RPCError::Network(NetworkError::new(&error))),
        };
        match decode_response::<R, RaftError<NodeId, E>>(kind, &response) {
            Ok(Decoded::Ok(answer)) => Ok(answer),
            Ok(Decoded::Remote(error)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, error)))
            }
            Ok(Decoded::Refused(refusal)) | Err(refusal) => {
                Err(RPCError::Network(NetworkError::new(&refusal)))
            }
        }
    }
}

impl<T: RpcTransport> RaftNetwork<TypeConfig> for RpcConnection<T> {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        let entries = request.entries.len();
        self.send(RpcKind::Append, &request, Some(entries)).await
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.send(RpcKind::Snapshot, &request, None).await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.send(RpcKind::Vote, &request, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(term: u64, index: u64) -> Option<openraft::LogId<NodeId>> {
        Some(openraft::LogId::new(openraft::CommittedLeaderId::new(term, 1), index))
    }

    /// Candidate 2 asks node 3 (`us`) for its vote.
    fn ask(term: u64, last: u64) -> VoteRequest<NodeId> {
        VoteRequest::new(openraft::Vote::new(term, 2), log_id(1, last))
    }

    fn refused(vote: openraft::Vote<NodeId>, last: u64) -> VoteResponse<NodeId> {
        VoteResponse::new(vote, log_id(1, last), false)
    }

    #[test]
    fn only_a_voter_that_would_win_campaigns_after_refusing() {
        let committed = |term, leader| {
            let mut vote = openraft::Vote::new(term, leader);
            vote.commit();
            vote
        };
        // A stale candidate (shorter log, higher term) and no leader heard: campaign past
        // its term, from 3 to 5 (two campaigns).
        assert_eq!(campaigns_to_outrun(3, true, &ask(4, 10), &refused(committed(3, 1), 12)), 2);
        // The same with a leader heard within the lease: leave it alone.
        assert_eq!(campaigns_to_outrun(3, false, &ask(4, 10), &refused(committed(3, 1), 12)), 0);
        // Refused for something else than the log (ours is no longer): nothing.
        assert_eq!(campaigns_to_outrun(3, true, &ask(4, 12), &refused(committed(3, 1), 12)), 0);
        // Granted: nothing.
        let granted = VoteResponse::new(openraft::Vote::new(4, 2), log_id(1, 12), true);
        assert_eq!(campaigns_to_outrun(3, true, &ask(4, 10), &granted), 0);
        // A split vote, both candidates in term 4 with the same log: the higher id goes once.
        let ours = openraft::Vote::new(4, 3);
        assert_eq!(campaigns_to_outrun(3, true, &ask(4, 12), &refused(ours, 12)), 1);
        let theirs = VoteRequest::new(openraft::Vote::new(4, 3), log_id(1, 12));
        let lower = VoteResponse::new(openraft::Vote::new(4, 2), log_id(1, 12), false);
        assert_eq!(campaigns_to_outrun(2, true, &theirs, &lower), 0);
        // A split vote where ours is the longer log: we go, whatever the ids.
        let longer = VoteResponse::new(openraft::Vote::new(4, 2), log_id(1, 13), false);
        assert_eq!(campaigns_to_outrun(2, true, &theirs, &longer), 1);
        // Refused because we voted for a third node in that term: not our election to take.
        assert_eq!(
            campaigns_to_outrun(3, true, &ask(4, 12), &refused(openraft::Vote::new(4, 1), 12)),
            0
        );
        // A candidate far ahead: at most four campaigns.
        assert_eq!(campaigns_to_outrun(3, true, &ask(40, 10), &refused(committed(3, 1), 12)), 4);
    }

    #[test]
    fn requests_round_trip_and_bad_headers_are_refused() {
        let vote = VoteRequest::new(openraft::Vote::new(3, 1), None);
        let bytes =
            encode_request(RpcKind::Vote, ShardId(7), &vote, RpcLimits::default()).expect("encode");
        let (kind, shard, body) = parse_request(&bytes).expect("parse");
        assert_eq!((kind, shard), (RpcKind::Vote, ShardId(7)));
        assert_eq!(postcard::from_bytes::<VoteRequest<NodeId>>(body).ok(), Some(vote));
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 9;
        assert!(parse_request(&wrong_version).is_none());
        let mut wrong_kind = bytes.clone();
        wrong_kind[2] = 0;
        assert!(parse_request(&wrong_kind).is_none());
        assert!(parse_request(&bytes[..RPC_HEADER_BYTES - 1]).is_none());
    }

    #[test]
    fn the_sender_refuses_an_rpc_over_the_limit() {
        let request = InstallSnapshotRequest::<TypeConfig> {
            vote: openraft::Vote::new(1, 1),
            meta: Default::default(),
            offset: 0,
            data: vec![0; 1000],
            done: true,
        };
        let small = RpcLimits { max_bytes: 512 };
        assert_eq!(
            encode_request(RpcKind::Snapshot, ShardId(0), &request, small),
            Err(Refusal::TooLarge)
        );
        assert!(
            encode_request(RpcKind::Snapshot, ShardId(0), &request, RpcLimits::default()).is_ok()
        );
    }

    /// The refusal a response carries, whatever its kind.
    fn refusal_of(response: &[u8]) -> Option<Refusal> {
        match response {
            [_, _, _, 2, code] => Some(Refusal::from_code(*code)),
            _ => None,
        }
    }

    #[tokio::test]
    async fn the_receiver_refuses_oversized_malformed_and_unknown_shard_rpcs() {
        let server = RpcServer::new(RpcLimits { max_bytes: 64 });
        assert_eq!(refusal_of(&server.handle(&[0; 65]).await), Some(Refusal::TooLarge));
        let vote = VoteRequest::new(openraft::Vote::new(3, 1), None);
        let request =
            encode_request(RpcKind::Vote, ShardId(2), &vote, RpcLimits::default()).expect("encode");
        assert_eq!(refusal_of(&server.handle(&request).await), Some(Refusal::NoSuchShard));
        let mut wrong_version = request.clone();
        wrong_version[1] = 1;
        assert_eq!(refusal_of(&server.handle(&wrong_version).await), Some(Refusal::Malformed));
        assert_eq!(refusal_of(&server.handle(&request[..3]).await), Some(Refusal::Malformed));
    }
}
