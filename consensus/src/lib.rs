//! Kiseki's metadata: one openraft group per metadata shard, each with a persistent log and
//! state machine on redb.
//!
//! What a group replicates: tenants (and their dedup mode), buckets, object manifests
//! (ordered chunk ids and sizes, sealed user metadata, ETag), multipart uploads and their
//! parts, inline small objects (sealed), S3 credentials (secret sealed), chunk refcounts,
//! key epochs (and crypto-shred tombstones) and audit records; `keystore.rs` is the key
//! manager's store over them. Commands are typed and versioned (`command.rs`), checked
//! for shape and against the state before they are proposed, and checked again when
//! applied (`state.rs`): a refused command changes nothing on any node.
//!
//! What it does not do: open sealed blobs (the key manager seals them; this crate keeps
//! bytes), move chunks (the engine and the fabric do), or pick who may ask (the gateway
//! checks roles before it proposes).
//!
//! I/O boundaries: the store (`store/`) talks to redb, on a file or on any redb
//! `StorageBackend` (the simulated disk of `sim`); the group talks to its peers through an
//! openraft `RaftNetworkFactory` (the simulated network of `sim` in tests).
//!
//! openraft runs in standard Raft mode (feature `single-term-leader`): at most one leader is
//! ever elected per term. openraft's default "advanced" mode may elect several leaders in
//! one term (the last one wins, which its log ids make safe); our simulation's check "no two
//! leaders in one term" caught that on a seed, and standard mode is what the cluster's
//! operators and our invariants assume.
//!
//! Invariants:
//! - a log append or a vote is fsync'd before openraft is told it happened;
//! - the state machine is never ahead of the durable log, and the log is only purged
//!   behind a durable snapshot;
//! - every queue is bounded (`constants.rs`): a full proposal queue answers `Busy`;
//! - one tenant's inline data cannot take more than its share of a shard's log (`guard.rs`).

#![forbid(unsafe_code)]

pub mod client;
pub mod command;
pub mod constants;
pub mod error;
pub mod fabric;
pub mod guard;
pub mod keystore;
pub mod node;
pub mod rpc;
pub mod shards;
pub mod sim;
pub mod store;
pub mod types;

pub mod view;

mod group;
mod state;

pub use client::{ClientError, MetadataClient};
pub use command::{Command, ShardKey, VersionedCommand};
pub use error::{ConsensusError, Rejection};
pub use group::{GroupConfig, MetadataGroup};
pub use node::MetadataNode;
pub use shards::ShardMap;
pub use state::{
    AUDIT_SEQUENCE_NOT_NEXT, AuditRecord, CredentialRecord, KEY_EPOCH_NOT_NEXT, PART_ETAG_DIFFERS,
    PRECONDITION_FAILED, TENANT_KEYS_DESTROYED, TOO_MANY_UPLOADS, TenantRecord, UploadRecord,
};
pub use store::GroupStore;
pub use types::{Applied, Batch, BatchOutcome, NodeId, Raft, ShardId, TypeConfig};
pub use view::StateView;
