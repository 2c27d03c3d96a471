//! Where the object layer keeps its sealed chunks: this node's engine, or the chunk
//! services of R nodes through the fabric.
//!
//! [`Chunks::Local`] is the single-node path (`kiseki-server dev`): each call is the
//! engine's own call, nothing in between (no copy of an envelope, no allocation or boxing
//! per chunk), so it costs what the engine costs.
//!
//! [`Chunks::Replicated`] stores through [`ReplicatedChunks`]: a [`Replicator`] over a fixed
//! list of chunk-service nodes taken from configuration (no membership service yet: a node
//! that is down stays in the list, its chunks are not placed elsewhere, and the selector's
//! breaker answers for it, so a write whose placement names it needs W of the others):
//! - put: the envelope goes to its R nodes (rendezvous placement) and returns once W of
//!   them acknowledged it durable, so a manifest naming the chunk is committed only after
//!   that. A put that missed its quorum has heard from every replica; it gives back the
//!   references some did take (a release to every replica, best effort) and is
//!   [`ObjectError::QuorumNotReached`].
//! - get: the replicas in placement order, healthy ones first, falling back on any error:
//!   a node down, or a copy that fails its checksum there or does not parse as the
//!   envelope of the chunk asked for here.
//! - release: to every replica of the chunk; a replica that fails keeps its reference
//!   (logged: space, not data, is lost until a sweep exists).
//!
//! Requests name no tenant. The gateway stores as a node (its server-role certificate),
//! for tenants it authorized itself (SigV4 keys, gRPC roles) and knows by `TenantId`, not
//! by the org a workload's certificate names; the chunk service's per-org reference index
//! is for those workloads, and would only fill with entries none of them can use (and
//! refuse puts once full). A shared chunk's envelope names no tenant, an isolated tenant's
//! names its `TenantId`, exactly as on the local path.
//!
//! What it does not do: repair a replica a get fell back past, wait for the replicas a put
//! left behind (they finish in the background), order a release after such a straggling
//! put (a release reaching that node first answers `NotFound`, and the put then leaves a
//! reference behind), or try another replica when an envelope that parsed fails to open.
//!
//! Invariants: a put returns `Ok` only with the chunk durable on one engine (local) or on
//! W nodes (replicated); errors name chunk ids and nodes at most, never buckets or keys.

use std::sync::Arc;

use kiseki_engine::{EngineError, EngineHandle};
use kiseki_fabric::constants::ENDPOINTS_MAX;
use kiseki_fabric::{ClientError, Endpoint, ReplicationError, Replicator};
use kiseki_security::{ChunkId, Envelope};

use crate::objects::ObjectError;

/// Where an object store keeps its chunks; see the module's notes.
#[derive(Debug, Clone)]
pub enum Chunks {
    /// This node's engine.
    Local(EngineHandle),
    /// R nodes' chunk services, over the fabric.
    Replicated(ReplicatedChunks),
}

/// Chunks replicated over a fixed list of nodes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReplicatedChunks {
    replicator: Replicator,
    nodes: Arc<[Endpoint]>,
}

impl Chunks {
    /// Stores `envelope` under its chunk id (a second put of a stored id adds a reference);
    /// resolves once durable on one engine, or on the write quorum of its replicas.
    pub async fn put(&self, envelope: Envelope) -> Result<(), ObjectError> {
        match self {
            Chunks::Local(engine) => engine.put(envelope).await.map_err(engine_error),
            Chunks::Replicated(replicated) => replicated.put(envelope).await,
        }
    }

    /// The stored envelope of `chunk_id`, checked to name it (opening it is the caller's).
    pub async fn get(&self, chunk_id: [u8; 32]) -> Result<Envelope, ObjectError> {
        match self {
            Chunks::Local(engine) => engine.get(chunk_id).await.map_err(engine_error),
            Chunks::Replicated(replicated) => replicated.get(chunk_id).await,
        }
    }

    /// Drops one reference to `chunk_id` (on every replica, when replicated).
    pub async fn release(&self, chunk_id: [u8; 32]) -> Result<(), ObjectError> {
        match self {
            Chunks::Local(engine) => engine.release(chunk_id).await.map_err(engine_error),
            Chunks::Replicated(replicated) => replicated.release(chunk_id).await,
        }
    }
}

impl ReplicatedChunks {
    /// Chunks placed by `replicator` (its client's certificate must have the server role)
    /// over `nodes`, the chunk-service nodes from configuration: 1 to `ENDPOINTS_MAX`.
    pub fn new(
        replicator: Replicator,
        nodes: Vec<Endpoint>,
    ) -> Result<ReplicatedChunks, ReplicationError> {
        if nodes.is_empty() {
            return Err(ReplicationError::NoLiveNodes);
        }
        if nodes.len() > ENDPOINTS_MAX {
            return Err(ReplicationError::BadConfig { reason: "more nodes than ENDPOINTS_MAX" });
        }
        Ok(ReplicatedChunks { replicator, nodes: nodes.into() })
    }

    pub fn replicator(&self) -> &Replicator {
        &self.replicator
    }

    /// The nodes chunks are placed on.
    pub fn nodes(&self) -> &[Endpoint] {
        &self.nodes
    }

    async fn put(&self, envelope: Envelope) -> Result<(), ObjectError> {
        let chunk_id = envelope.chunk_id();
        // Shared by every replica's request: the envelope is moved, never copied.
        let envelope = Arc::new(envelope);
        let error = match self.replicator.put(&self.nodes, None, &envelope).await {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
        if let ReplicationError::TooFewAcks { acked, failures, .. } = &error {
            let may_hold = |(_, failure): &(String, ClientError)| matches!(failure, ClientError::Fabric(error) if error.may_have_reached_peer());
            // Nothing will name the chunk: give back what the replicas that took it hold
            // (every replica has answered; one that never took it answers NotFound).
            if (!acked.is_empty() || failures.iter().any(may_hold))
                && let Err(released) = self.release(*chunk_id.as_bytes()).await
            {
                tracing::warn!(
                    error = %released,
                    "a chunk put below its quorum left references behind"
                );
            }
        }
        Err(replication_error(error))
    }

    async fn get(&self, chunk_id: [u8; 32]) -> Result<Envelope, ObjectError> {
        let chunk_id = ChunkId::from_bytes(chunk_id);
        self.replicator.get(&self.nodes, None, &chunk_id).await.map_err(replication_error)
    }

    async fn release(&self, chunk_id: [u8; 32]) -> Result<(), ObjectError> {
        let chunk_id = ChunkId::from_bytes(chunk_id);
        let released = self
            .replicator
            .release(&self.nodes, None, &chunk_id)
            .await
            .map_err(replication_error)?;
        for (node, error) in &released.failures {
            tracing::warn!(
                %node,
                chunk = %chunk_id,
                %error,
                "a replica kept a chunk reference; its space stays in use"
            );
        }
        Ok(())
    }
}

/// An engine refusal as the object layer reports it: full queues or devices are
/// Unavailable (retry), a missing or corrupt chunk an integrity error.
fn engine_error(error: EngineError) -> ObjectError {
    match error {
        EngineError::Integrity { .. } => ObjectError::Integrity(error.to_string()),
        EngineError::Busy { .. }
        | EngineError::CapacityCritical { .. }
        | EngineError::NoSpace { .. }
        | EngineError::IndexFull { .. }
        | EngineError::DeviceNotWritable { .. }
        | EngineError::Stopped => ObjectError::Unavailable(error.to_string()),
        EngineError::NotFound { .. } => {
            ObjectError::Integrity(format!("a chunk of the object is missing: {error}"))
        }
        other => ObjectError::Internal(other.to_string()),
    }
}

/// A replicated operation's failure as the object layer reports it: a missed write quorum
/// is [`ObjectError::QuorumNotReached`]; a chunk no replica holds, or that every replica
/// holds corrupt, an integrity error; no replica answering, Unavailable (retry).
fn replication_error(error: ReplicationError) -> ObjectError {
    match &error {
        ReplicationError::TooFewAcks { acked, required, .. } => {
            tracing::warn!(%error, "a chunk put missed its write quorum");
            ObjectError::QuorumNotReached { acked: acked.len(), required: *required }
        }
        ReplicationError::NotFound { .. } => {
            ObjectError::Integrity(format!("a chunk of the object is missing: {error}"))
        }
        ReplicationError::AllReplicasFailed { failures, .. } => {
            let lost = |(_, failure): &(String, ClientError)| {
                matches!(failure, ClientError::NotFound { .. } | ClientError::Integrity { .. })
            };
            if failures.iter().all(lost) {
                ObjectError::Integrity(error.to_string())
            } else {
                ObjectError::Unavailable(error.to_string())
            }
        }
        ReplicationError::NoLiveNodes | ReplicationError::ReleaseFailed { .. } => {
            ObjectError::Unavailable(error.to_string())
        }
        _ => ObjectError::Internal(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failures(errors: &[ClientError]) -> Vec<(String, ClientError)> {
        errors.iter().map(|error| ("n".to_owned(), error.clone())).collect()
    }

    #[test]
    fn replication_errors_map_to_what_a_client_may_do() {
        let chunk_id = ChunkId::from_bytes([3; 32]);
        let peer = || "n".to_owned();
        let missed = ReplicationError::TooFewAcks {
            chunk_id,
            targets: 3,
            required: 2,
            acked: vec!["a".to_owned()],
            failures: Vec::new(),
        };
        assert!(matches!(
            replication_error(missed),
            ObjectError::QuorumNotReached { acked: 1, required: 2 }
        ));
        let absent = ReplicationError::NotFound { chunk_id };
        assert!(matches!(replication_error(absent), ObjectError::Integrity(_)));
        let corrupt = failures(&[
            ClientError::Integrity { peer: peer(), reason: "crc".to_owned() },
            ClientError::NotFound { peer: peer() },
        ]);
        let corrupt = ReplicationError::AllReplicasFailed { chunk_id, failures: corrupt };
        assert!(matches!(replication_error(corrupt), ObjectError::Integrity(_)));
        let down = failures(&[
            ClientError::Integrity { peer: peer(), reason: "crc".to_owned() },
            ClientError::Busy { peer: peer() },
        ]);
        let down = ReplicationError::AllReplicasFailed { chunk_id, failures: down };
        assert!(matches!(replication_error(down), ObjectError::Unavailable(_)), "retry later");
        let none = ReplicationError::NoLiveNodes;
        assert!(matches!(replication_error(none), ObjectError::Unavailable(_)));
        let bad = ReplicationError::BadConfig { reason: "x" };
        assert!(matches!(replication_error(bad), ObjectError::Internal(_)));
    }

    #[test]
    fn a_quorum_error_names_no_bucket_key_or_node() {
        let error = ObjectError::QuorumNotReached { acked: 1, required: 2 };
        assert_eq!(error.to_string(), "1 of the 2 replicas a write needs acknowledged it");
    }
}
