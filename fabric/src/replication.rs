//! Replicated chunks: placement by rendezvous hashing, writes acknowledged after W of R
//! durable puts, reads that fall back from replica to replica, releases sent to every
//! replica.
//!
//! What it does:
//! - [`placement`]: the R nodes of a chunk are the R live nodes with the highest weight
//!   `w(chunk_id, node)` (highest random weight hashing). Every caller with the same live
//!   set computes the same nodes, with no table to share, and a node leaving or joining
//!   moves only the chunks it held or now gets.
//! - [`Replicator::put`]: sends the envelope to the R nodes concurrently and returns once W
//!   acknowledged it (default: a majority of R); puts still running at that point finish
//!   in the background, their failures logged. A put that cannot reach W fails only after
//!   every replica answered (the transport's request timeout bounds the wait), naming the
//!   nodes that did store it, so that its caller can give those references back before
//!   a straggler lands.
//! - [`Replicator::get`]: tries the R nodes in placement order, healthy ones (breakers
//!   closed) first, and falls back to the next on any error, an integrity failure
//!   included.
//! - [`Replicator::release`]: drops one reference on each of the R nodes concurrently and
//!   waits for all of them. A node that answers `NotFound` holds no reference (its put
//!   never landed, or a release already went through) and counts as released; the call
//!   fails only if no node released. A node that failed keeps its reference: space, not
//!   data, is lost until a sweep collects it.
//!
//! What it does not do: repair (a get that fell back past a bad replica does not rewrite
//! it; the scrubber and repair service will), rebalancing after the live set changes, or
//! look for a chunk beyond its R current nodes. Nor does it order a release after a put
//! still running in the background on a straggling replica: a release that reaches that
//! node first answers `NotFound` and the put then lands, leaving a reference behind.
//!
//! Invariants:
//! - the weight function is part of the cluster's format: changing it moves every chunk;
//! - a placement lists R distinct nodes, 1 <= R <= `REPLICAS_MAX`;
//! - `put` returns `Ok` only with at least W acknowledgements in hand; a put that failed
//!   with an unknown outcome counts as not acknowledged;
//! - `release` sends each replica one release at most (a release is not idempotent).

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use kiseki_security::{ChunkId, Envelope, OrgId};
use tokio::sync::mpsc;

use crate::client::{ChunkClient, ClientError, put_request};
use crate::constants::{REPLICAS_DEFAULT, REPLICAS_MAX};
use crate::transport::Endpoint;

/// How many replicas a chunk gets and how many must acknowledge a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicationConfig {
    /// R; `None` = min(`REPLICAS_DEFAULT`, live nodes).
    pub replicas: Option<usize>,
    /// W; `None` = a majority of R. A configured W larger than the live nodes allow makes
    /// writes fail rather than be acknowledged with fewer copies than asked.
    pub write_quorum: Option<usize>,
}

/// Writes and reads replicated chunks through a [`ChunkClient`].
#[derive(Debug, Clone)]
pub struct Replicator {
    client: ChunkClient,
    config: ReplicationConfig,
}

/// A write that reached its quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replicated {
    pub chunk_id: ChunkId,
    /// The nodes chosen, in placement order.
    pub targets: Vec<String>,
    /// The nodes that had acknowledged when the write returned (at least W).
    pub acked: Vec<String>,
}

/// A release that reached at least one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub chunk_id: ChunkId,
    /// The nodes that dropped a reference or held none (`NotFound`), in placement order.
    pub released: Vec<String>,
    /// The nodes that failed otherwise, each with its error: they keep their reference.
    pub failures: Vec<(String, ClientError)>,
}

/// Why a replicated operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplicationError {
    /// The live node list is empty.
    NoLiveNodes,
    /// R or W is out of bounds.
    BadConfig { reason: &'static str },
    /// Fewer than `required` of the `targets` nodes acknowledged the write. Every target
    /// had answered: `acked` names each node that stored the chunk, `failures` the others
    /// (an unknown outcome among them may have stored it too).
    TooFewAcks {
        chunk_id: ChunkId,
        targets: usize,
        required: usize,
        acked: Vec<String>,
        failures: Vec<(String, ClientError)>,
    },
    /// Every replica answered that it does not hold the chunk (or not for this caller).
    NotFound { chunk_id: ChunkId },
    /// No replica returned the chunk; each one's error, in the order tried.
    AllReplicasFailed { chunk_id: ChunkId, failures: Vec<(String, ClientError)> },
    /// No replica released the chunk; each one's error, in placement order.
    ReleaseFailed { chunk_id: ChunkId, failures: Vec<(String, ClientError)> },
}

/// The nodes of `chunk_id` among `live`: the `replicas` distinct nodes with the highest
/// rendezvous weight, highest first (ties, which need a 64-bit collision, go to the smaller
/// name). Nodes are told apart by `Endpoint::node`; duplicates count once.
pub fn placement<'a>(
    chunk_id: &ChunkId,
    live: &'a [Endpoint],
    replicas: usize,
) -> Vec<&'a Endpoint> {
    let mut seen = HashSet::with_capacity(live.len());
    let mut weighted: Vec<(u64, &Endpoint)> = live
        .iter()
        .filter(|endpoint| seen.insert(endpoint.node.as_str()))
        .map(|endpoint| (rendezvous_weight(chunk_id, &endpoint.node), endpoint))
        .collect();
    weighted.sort_by(|(wa, a), (wb, b)| wb.cmp(wa).then_with(|| a.node.cmp(&b.node)));
    weighted.into_iter().take(replicas).map(|(_, endpoint)| endpoint).collect()
}

/// The weight of `node` for `chunk_id`: SplitMix64's finalizer over the chunk id's first
/// 128 bits and an FNV-1a hash of the node name. Chunk ids are SHA-256 or HMAC-SHA256
/// outputs, uniform already; the mixing spreads nodes whose names differ by one byte.
pub fn rendezvous_weight(chunk_id: &ChunkId, node: &str) -> u64 {
    let bytes = chunk_id.as_bytes();
    let word = |at: usize| {
        let mut le = [0u8; 8];
        le.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(le)
    };
    mix64(mix64(word(0) ^ node_hash(node)) ^ word(8))
}

impl Replicator {
    pub fn new(
        client: ChunkClient,
        config: ReplicationConfig,
    ) -> Result<Replicator, ReplicationError> {
        let bad = |reason| Err(ReplicationError::BadConfig { reason });
        if config.replicas.is_some_and(|r| r == 0 || r > REPLICAS_MAX) {
            return bad("replicas must be 1 to REPLICAS_MAX");
        }
        if config.write_quorum == Some(0) {
            return bad("the write quorum must be at least 1");
        }
        if let (Some(r), Some(w)) = (config.replicas, config.write_quorum)
            && w > r
        {
            return bad("the write quorum cannot exceed the replica count");
        }
        Ok(Replicator { client, config })
    }

    pub fn client(&self) -> &ChunkClient {
        &self.client
    }

    /// R for `live_nodes` live nodes.
    pub fn replica_count(&self, live_nodes: usize) -> usize {
        self.config.replicas.unwrap_or(REPLICAS_DEFAULT).min(live_nodes)
    }

    /// W for R = `replicas`.
    pub fn write_quorum(&self, replicas: usize) -> usize {
        self.config.write_quorum.unwrap_or(replicas / 2 + 1)
    }

    /// The nodes `chunk_id` lives on among `live`.
    pub fn placement<'a>(&self, chunk_id: &ChunkId, live: &'a [Endpoint]) -> Vec<&'a Endpoint> {
        placement(chunk_id, live, self.replica_count(live.len()))
    }

    /// Stores `envelope` on its R nodes among `live`; returns once W acknowledged it, or,
    /// failing, once every replica answered. Must run inside a tokio runtime (each
    /// replica's put is a task, so the ones still running when the quorum is reached
    /// finish in the background). Every replica's request shares the one envelope.
    pub async fn put(
        &self,
        live: &[Endpoint],
        tenant: Option<&OrgId>,
        envelope: &Arc<Envelope>,
    ) -> Result<Replicated, ReplicationError> {
        let chunk_id = envelope.chunk_id();
        let targets: Vec<Endpoint> = self.placement(&chunk_id, live).into_iter().cloned().collect();
        if targets.is_empty() {
            return Err(ReplicationError::NoLiveNodes);
        }
        let required = self.write_quorum(targets.len());
        let (results_tx, mut results_rx) = mpsc::channel(targets.len());
        for target in &targets {
            let client = self.client.clone();
            let request = put_request(tenant, envelope);
            let target = target.clone();
            let results_tx = results_tx.clone();
            tokio::spawn(async move {
                let result = client.put_request(&target, request).await;
                if let Err(error) = &result {
                    let node = &target.node;
                    tracing::warn!(%node, chunk = %chunk_id, %error, "replica put failed");
                }
                // The receiver is gone once the write returned; a straggler's result is
                // then only logged.
                let _ = results_tx.send((target.node, result)).await;
            });
        }
        drop(results_tx);
        let mut acked = Vec::with_capacity(targets.len());
        let mut failures = Vec::new();
        while let Some((node, result)) = results_rx.recv().await {
            match result {
                Ok(()) => acked.push(node),
                Err(error) => failures.push((node, error)),
            }
            if acked.len() >= required {
                let targets = targets.into_iter().map(|target| target.node).collect();
                return Ok(Replicated { chunk_id, targets, acked });
            }
        }
        Err(ReplicationError::TooFewAcks {
            chunk_id,
            targets: targets.len(),
            required,
            acked,
            failures,
        })
    }

    /// Reads `chunk_id` from the first of its R nodes among `live` that returns it:
    /// healthy nodes first, then placement order.
    pub async fn get(
        &self,
        live: &[Endpoint],
        tenant: Option<&OrgId>,
        chunk_id: &ChunkId,
    ) -> Result<Envelope, ReplicationError> {
        let mut replicas = self.placement(chunk_id, live);
        if replicas.is_empty() {
            return Err(ReplicationError::NoLiveNodes);
        }
        let selector = self.client.selector();
        // Stable: among equally healthy nodes the placement order stays.
        replicas.sort_by_key(|replica| selector.peer_health(&replica.node));
        let mut failures = Vec::with_capacity(replicas.len());
        for replica in replicas {
            match self.client.get_chunk(replica, tenant, chunk_id).await {
                Ok(envelope) => return Ok(envelope),
                Err(error) => failures.push((replica.node.clone(), error)),
            }
        }
        let all_absent =
            failures.iter().all(|(_, error)| matches!(error, ClientError::NotFound { .. }));
        if all_absent {
            return Err(ReplicationError::NotFound { chunk_id: *chunk_id });
        }
        Err(ReplicationError::AllReplicasFailed { chunk_id: *chunk_id, failures })
    }

    /// Drops one reference to `chunk_id` on each of its R nodes among `live`, on behalf of
    /// `tenant` as the put named it, and waits for every answer. Must run inside a tokio
    /// runtime: each replica's release is a task, so a caller that stops waiting does not
    /// stop a release already sent.
    pub async fn release(
        &self,
        live: &[Endpoint],
        tenant: Option<&OrgId>,
        chunk_id: &ChunkId,
    ) -> Result<Released, ReplicationError> {
        let targets = self.placement(chunk_id, live);
        if targets.is_empty() {
            return Err(ReplicationError::NoLiveNodes);
        }
        let tasks: Vec<_> = targets
            .iter()
            .map(|target| {
                let (client, target) = (self.client.clone(), (*target).clone());
                let (tenant, chunk_id) = (tenant.cloned(), *chunk_id);
                tokio::spawn(async move {
                    let result = client.release_chunk(&target, tenant.as_ref(), &chunk_id).await;
                    (target.node, result)
                })
            })
            .collect();
        let mut released = Vec::with_capacity(tasks.len());
        let mut failures = Vec::new();
        for (task, target) in tasks.into_iter().zip(&targets) {
            match task.await {
                Ok((node, Ok(()) | Err(ClientError::NotFound { .. }))) => released.push(node),
                Ok((node, Err(error))) => {
                    tracing::warn!(%node, chunk = %chunk_id, %error, "replica release failed");
                    failures.push((node, error));
                }
                // The task panicked: a bug, which the runtime has reported; the reference
                // on that node is as unknown as after a lost connection.
                Err(_) => {
                    let node = target.node.clone();
                    let error = ClientError::Internal {
                        peer: node.clone(),
                        message: "the release task failed".to_owned(),
                    };
                    failures.push((node, error));
                }
            }
        }
        if released.is_empty() {
            return Err(ReplicationError::ReleaseFailed { chunk_id: *chunk_id, failures });
        }
        Ok(Released { chunk_id: *chunk_id, released, failures })
    }
}

fn node_hash(node: &str) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let fnv = node
        .bytes()
        .fold(FNV_OFFSET, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME));
    mix64(fnv)
}

/// SplitMix64's output function: a bijection on u64 with full avalanche.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl fmt::Display for ReplicationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicationError::NoLiveNodes => f.write_str("no live nodes to place the chunk on"),
            ReplicationError::BadConfig { reason } => {
                write!(f, "replication configuration: {reason}")
            }
            ReplicationError::TooFewAcks { chunk_id, targets, required, acked, failures } => {
                write!(
                    f,
                    "chunk {chunk_id}: {} of {targets} replicas acknowledged the write, \
                     {required} required",
                    acked.len()
                )?;
                if !acked.is_empty() {
                    write!(f, " (acknowledged by {})", acked.join(", "))?;
                }
                write_failures(f, failures)
            }
            ReplicationError::NotFound { chunk_id } => {
                write!(f, "chunk {chunk_id}: not found on any replica")
            }
            ReplicationError::AllReplicasFailed { chunk_id, failures } => {
                write!(f, "chunk {chunk_id}: no replica returned it")?;
                write_failures(f, failures)
            }
            ReplicationError::ReleaseFailed { chunk_id, failures } => {
                write!(f, "chunk {chunk_id}: no replica released it")?;
                write_failures(f, failures)
            }
        }
    }
}

fn write_failures(f: &mut fmt::Formatter<'_>, failures: &[(String, ClientError)]) -> fmt::Result {
    for (node, error) in failures {
        write!(f, "; {node}: {error}")?;
    }
    Ok(())
}

impl std::error::Error for ReplicationError {}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::breaker::BreakerConfig;
    use crate::selector::{FabricSelector, SelectorError};
    use crate::testing::{
        Fault, Nodes, ScriptedTransport, connect_refused, connection_lost, endpoint, envelope,
        nodes,
    };
    use crate::transport::TransportKind;

    fn ids(count: u32) -> Vec<ChunkId> {
        (0..count).map(|i| ChunkId::of_plaintext(&i.to_le_bytes())).collect()
    }

    fn endpoints(names: &[&str]) -> Vec<Endpoint> {
        names.iter().map(|name| endpoint(name)).collect()
    }

    fn names(placed: &[&Endpoint]) -> Vec<String> {
        placed.iter().map(|endpoint| endpoint.node.clone()).collect()
    }

    #[test]
    fn placement_is_stable_and_ignores_list_order() {
        let live = endpoints(&["a", "b", "c", "d", "e"]);
        let mut reversed = live.clone();
        reversed.reverse();
        for id in ids(200) {
            let first = names(&placement(&id, &live, 3));
            assert_eq!(first, names(&placement(&id, &live, 3)));
            assert_eq!(first, names(&placement(&id, &reversed, 3)));
            assert_eq!(first[..2], names(&placement(&id, &live, 2))[..], "a prefix of R");
        }
        // Pinned: the weight function is part of the cluster's format.
        let id = ChunkId::of_plaintext(b"pinned");
        assert_eq!(rendezvous_weight(&id, "a"), rendezvous_weight(&id, "a"));
        assert_ne!(rendezvous_weight(&id, "a"), rendezvous_weight(&id, "b"));
    }

    #[test]
    fn placement_lists_r_distinct_nodes() {
        let live = endpoints(&["a", "b", "c", "a", "d", "b"]);
        for id in ids(100) {
            let placed = names(&placement(&id, &live, 3));
            assert_eq!(placed.len(), 3);
            let distinct: HashSet<&String> = placed.iter().collect();
            assert_eq!(distinct.len(), 3, "{placed:?}");
        }
        let id = ids(1)[0];
        assert_eq!(placement(&id, &live, 10).len(), 4, "capped by the distinct nodes");
        assert!(placement(&id, &[], 3).is_empty());
    }

    #[test]
    fn a_leaving_node_moves_only_its_own_chunks() {
        let all = endpoints(&["a", "b", "c", "d", "e", "f"]);
        let without_c: Vec<Endpoint> = all.iter().filter(|e| e.node != "c").cloned().collect();
        let mut moved = 0;
        for id in ids(1000) {
            let before = names(&placement(&id, &all, 3));
            let after = names(&placement(&id, &without_c, 3));
            if !before.contains(&"c".to_string()) {
                assert_eq!(before, after, "a chunk c did not hold moved");
                continue;
            }
            moved += 1;
            let kept: Vec<&String> = before.iter().filter(|node| *node != "c").collect();
            assert!(kept.iter().all(|node| after.contains(node)), "{before:?} -> {after:?}");
        }
        // c held about half of the chunks (3 of 6 nodes).
        assert!((400..=600).contains(&moved), "{moved}");
    }

    #[test]
    fn placement_spreads_chunks_evenly() {
        let live = endpoints(&["node-1", "node-2", "node-3", "node-4", "node-5"]);
        let mut first: HashMap<String, u32> = HashMap::new();
        for id in ids(5000) {
            *first.entry(placement(&id, &live, 1)[0].node.clone()).or_default() += 1;
        }
        for (node, count) in &first {
            assert!((800..=1200).contains(count), "{node} got {count} of 5000");
        }
    }

    fn replicator(
        nodes: &Nodes,
        config: ReplicationConfig,
    ) -> (Replicator, Arc<ScriptedTransport>) {
        let tcp = ScriptedTransport::new(TransportKind::Tcp, nodes.clone());
        let selector = FabricSelector::new(tcp.clone(), BreakerConfig::default()).unwrap();
        let client = ChunkClient::new(Arc::new(selector));
        (Replicator::new(client, config).unwrap(), tcp)
    }

    fn held_by(nodes: &Nodes, id: &ChunkId) -> usize {
        nodes.values().filter(|node| node.references(id) > 0).count()
    }

    #[tokio::test]
    async fn writes_reach_r_nodes_and_read_back() {
        let nodes = nodes(&["a", "b", "c", "d", "e"]);
        let (replicator, _) = replicator(&nodes, ReplicationConfig::default());
        let live = endpoints(&["a", "b", "c", "d", "e"]);
        assert_eq!((replicator.replica_count(5), replicator.write_quorum(3)), (3, 2));
        let chunk = envelope(b"three copies");
        let written = replicator.put(&live, None, &Arc::new(chunk.clone())).await.unwrap();
        assert_eq!(written.targets, names(&replicator.placement(&chunk.chunk_id(), &live)));
        assert!(written.acked.len() >= 2);
        tokio::task::yield_now().await;
        assert_eq!(held_by(&nodes, &chunk.chunk_id()), 3);
        let read = replicator.get(&live, None, &chunk.chunk_id()).await.unwrap();
        assert_eq!(read, chunk);
    }

    #[tokio::test]
    async fn a_write_returns_after_w_acks_without_waiting_for_a_hung_replica() {
        let nodes = nodes(&["a", "b", "c"]);
        let (replicator, tcp) = replicator(&nodes, ReplicationConfig::default());
        let live = endpoints(&["a", "b", "c"]);
        tcp.fail("b", Fault::Hang);
        let chunk = envelope(b"two of three");
        let written = replicator.put(&live, None, &Arc::new(chunk.clone())).await.unwrap();
        let mut acked = written.acked.clone();
        acked.sort();
        assert_eq!(acked, ["a", "c"]);
    }

    #[tokio::test]
    async fn with_one_node_dead_writes_and_reads_still_work() {
        let nodes = nodes(&["a", "b", "c"]);
        let config = ReplicationConfig { replicas: Some(3), write_quorum: Some(2) };
        let (replicator, tcp) = replicator(&nodes, config);
        let live = endpoints(&["a", "b", "c"]);
        let before = envelope(b"written before the failure");
        replicator.put(&live, None, &Arc::new(before.clone())).await.unwrap();
        tcp.fail("a", Fault::Refuse(connect_refused("a")));
        for i in 0..10u32 {
            let chunk = envelope(&i.to_le_bytes());
            let written = replicator.put(&live, None, &Arc::new(chunk.clone())).await.unwrap();
            assert!(!written.acked.contains(&"a".to_string()));
            assert_eq!(replicator.get(&live, None, &chunk.chunk_id()).await.unwrap(), chunk);
        }
        assert_eq!(replicator.get(&live, None, &before.chunk_id()).await.unwrap(), before);
    }

    #[tokio::test]
    async fn too_few_acks_is_an_error_that_says_how_many() {
        let nodes = nodes(&["a", "b", "c"]);
        let (replicator, tcp) = replicator(&nodes, ReplicationConfig::default());
        let live = endpoints(&["a", "b", "c"]);
        tcp.fail("a", Fault::Refuse(connect_refused("a")));
        tcp.fail("b", Fault::Refuse(connect_refused("b")));
        let chunk = envelope(b"one copy is not enough");
        let error = replicator.put(&live, None, &Arc::new(chunk.clone())).await.unwrap_err();
        let ReplicationError::TooFewAcks { acked, required, targets, failures, .. } = &error else {
            panic!("{error:?}")
        };
        assert_eq!((acked.as_slice(), *required, *targets), (&["c".to_string()][..], 2, 3));
        assert_eq!(failures.len(), 2);
        let message = error.to_string();
        assert!(message.contains("1 of 3 replicas acknowledged"), "{message}");
        assert!(message.contains("2 required") && message.contains("a: "), "{message}");
    }

    #[tokio::test]
    async fn a_write_quorum_larger_than_the_live_nodes_fails() {
        let nodes = nodes(&["a"]);
        let config = ReplicationConfig { replicas: Some(3), write_quorum: Some(2) };
        let (replicator, _) = replicator(&nodes, config);
        let error =
            replicator.put(&endpoints(&["a"]), None, &Arc::new(envelope(b"x"))).await.unwrap_err();
        assert!(matches!(error, ReplicationError::TooFewAcks { required: 2, .. }), "{error:?}");
        let error = replicator.put(&[], None, &Arc::new(envelope(b"x"))).await.unwrap_err();
        assert_eq!(error, ReplicationError::NoLiveNodes);
    }

    #[tokio::test]
    async fn a_read_falls_back_past_a_replica_that_fails_integrity() {
        let nodes = nodes(&["a", "b", "c"]);
        let (replicator, _) = replicator(&nodes, ReplicationConfig::default());
        let live = endpoints(&["a", "b", "c"]);
        let chunk = envelope(b"good copy");
        let id = chunk.chunk_id();
        let order = names(&replicator.placement(&id, &live));
        nodes[&order[0]].insert_raw(&id, envelope(b"poisoned").into_bytes());
        nodes[&order[1]].insert_raw(&id, chunk.as_bytes().to_vec());
        assert_eq!(replicator.get(&live, None, &id).await.unwrap(), chunk);
    }

    #[tokio::test]
    async fn a_read_tries_healthy_replicas_first() {
        let nodes = nodes(&["a", "b", "c"]);
        let (replicator, tcp) = replicator(&nodes, ReplicationConfig::default());
        let live = endpoints(&["a", "b", "c"]);
        let chunk = envelope(b"healthy first");
        replicator.put(&live, None, &Arc::new(chunk.clone())).await.unwrap();
        let first = names(&replicator.placement(&chunk.chunk_id(), &live))[0].clone();
        // Open the first replica's TCP breaker (5 failures by default), then heal it.
        tcp.fail(&first, Fault::Refuse(connect_refused(&first)));
        for _ in 0..5 {
            let _ = replicator.client().ping(&endpoint(&first)).await;
        }
        tcp.heal(&first);
        let calls = tcp.calls();
        assert_eq!(replicator.get(&live, None, &chunk.chunk_id()).await.unwrap(), chunk);
        assert_eq!(tcp.calls(), calls + 1, "one get, to a healthy replica");
    }

    #[tokio::test]
    async fn a_chunk_on_no_replica_is_not_found() {
        let nodes = nodes(&["a", "b", "c"]);
        let (replicator, tcp) = replicator(&nodes, ReplicationConfig::default());
        let live = endpoints(&["a", "b", "c"]);
        let id = envelope(b"nowhere").chunk_id();
        let error = replicator.get(&live, None, &id).await.unwrap_err();
        assert_eq!(error, ReplicationError::NotFound { chunk_id: id });
        tcp.fail("a", Fault::Refuse(connect_refused("a")));
        let error = replicator.get(&live, None, &id).await.unwrap_err();
        assert!(matches!(error, ReplicationError::AllReplicasFailed { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn a_release_reaches_every_replica_and_counts_absent_ones_as_released() {
        let nodes = nodes(&["a", "b", "c", "d"]);
        let (replicator, _) = replicator(&nodes, ReplicationConfig::default());
        let live = endpoints(&["a", "b", "c", "d"]);
        let chunk = envelope(b"released everywhere");
        let id = chunk.chunk_id();
        let order = names(&replicator.placement(&id, &live));
        // Two of its three replicas hold it; the third never got the put.
        nodes[&order[0]].insert_raw(&id, chunk.as_bytes().to_vec());
        nodes[&order[1]].insert_raw(&id, chunk.as_bytes().to_vec());
        let outsider = live.iter().find(|e| !order.contains(&e.node)).unwrap();
        nodes[&outsider.node].insert_raw(&id, chunk.as_bytes().to_vec());

        let released = replicator.release(&live, None, &id).await.unwrap();
        assert_eq!(released.released, order, "all three, in placement order");
        assert!(released.failures.is_empty());
        assert_eq!(held_by(&nodes, &id), 1, "only the node outside the placement keeps it");
        assert_eq!(nodes[&outsider.node].references(&id), 1);
    }

    #[tokio::test]
    async fn a_release_with_a_replica_down_releases_the_others_and_says_which_failed() {
        let nodes = nodes(&["a", "b", "c"]);
        let (replicator, tcp) = replicator(&nodes, ReplicationConfig::default());
        let live = endpoints(&["a", "b", "c"]);
        let chunk = envelope(b"one replica down");
        let id = chunk.chunk_id();
        replicator.put(&live, None, &Arc::new(chunk)).await.unwrap();
        tokio::task::yield_now().await;
        tcp.fail("b", Fault::Refuse(connect_refused("b")));
        let released = replicator.release(&live, None, &id).await.unwrap();
        assert_eq!(released.released.len(), 2, "{released:?}");
        assert_eq!(released.failures.len(), 1);
        assert_eq!(released.failures[0].0, "b");
        assert_eq!(nodes["b"].references(&id), 1, "the node that failed keeps its reference");

        // With every replica down, the release fails and says so.
        tcp.fail("a", Fault::Refuse(connect_refused("a")));
        tcp.fail("c", Fault::Refuse(connect_refused("c")));
        let error = replicator.release(&live, None, &id).await.unwrap_err();
        let ReplicationError::ReleaseFailed { failures, .. } = &error else { panic!("{error:?}") };
        assert_eq!(failures.len(), 3);
        assert!(error.to_string().contains("no replica released it"), "{error}");
        let error = replicator.release(&[], None, &id).await.unwrap_err();
        assert_eq!(error, ReplicationError::NoLiveNodes);
    }

    #[tokio::test]
    async fn a_release_that_may_have_landed_is_not_sent_again_over_tcp() {
        let nodes = nodes(&["a"]);
        let tcp = ScriptedTransport::new(TransportKind::Tcp, nodes.clone());
        let rdma = ScriptedTransport::new(TransportKind::Rdma, nodes.clone());
        let selector = FabricSelector::new(tcp.clone(), BreakerConfig::default())
            .unwrap()
            .with_rdma(rdma.clone());
        selector.set_peer_rdma("a", true);
        let client = ChunkClient::new(Arc::new(selector));
        let replicator = Replicator::new(client, ReplicationConfig::default()).unwrap();
        let live = endpoints(&["a"]);
        let chunk = Arc::new(envelope(b"twice referenced"));
        let id = chunk.chunk_id();
        replicator.put(&live, None, &chunk).await.unwrap();
        replicator.put(&live, None, &chunk).await.unwrap();
        assert_eq!(nodes["a"].references(&id), 2);

        rdma.fail("a", Fault::LoseAfterDelivery(connection_lost("a")));
        let error = replicator.release(&live, None, &id).await.unwrap_err();
        let ReplicationError::ReleaseFailed { failures, .. } = &error else { panic!("{error:?}") };
        let unknown = |error: &ClientError| {
            matches!(
                error,
                ClientError::Fabric(SelectorError::OutcomeUnknown {
                    op: kiseki_proto::Op::ReleaseChunk,
                    kind: TransportKind::Rdma,
                    ..
                })
            )
        };
        assert!(unknown(&failures[0].1), "{failures:?}");
        assert_eq!((rdma.calls(), tcp.calls()), (3, 0), "a release is never sent twice");
        assert_eq!(nodes["a"].references(&id), 1, "the one delivery dropped one reference");
    }

    #[test]
    fn bad_configs_are_refused() {
        let nodes = nodes(&[]);
        let tcp = ScriptedTransport::new(TransportKind::Tcp, nodes);
        let selector = FabricSelector::new(tcp, BreakerConfig::default()).unwrap();
        let client = ChunkClient::new(Arc::new(selector));
        let bad = [
            ReplicationConfig { replicas: Some(0), write_quorum: None },
            ReplicationConfig { replicas: Some(REPLICAS_MAX + 1), write_quorum: None },
            ReplicationConfig { replicas: None, write_quorum: Some(0) },
            ReplicationConfig { replicas: Some(2), write_quorum: Some(3) },
        ];
        for config in bad {
            let error = Replicator::new(client.clone(), config).unwrap_err();
            assert!(matches!(error, ReplicationError::BadConfig { .. }), "{config:?}");
        }
    }
}
