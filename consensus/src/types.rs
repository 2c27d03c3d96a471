//! The types openraft is instantiated with, and what a log entry and its result carry.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::command::VersionedCommand;
use crate::error::Rejection;

/// A node of the cluster, the same id in every group it belongs to.
pub type NodeId = u64;

/// A metadata shard: one Raft group per shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardId(pub u32);

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard-{}", self.0)
    }
}

openraft::declare_raft_types!(
    /// Kiseki's metadata groups: a log entry carries a batch of commands, its result one
    /// outcome per command; snapshots are byte images held in memory (metadata, bounded by
    /// `SNAPSHOT_MAX_BYTES`).
    pub TypeConfig:
        D = Batch,
        R = BatchOutcome,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The application data of one log entry: commands proposed together, applied in order,
/// each on its own (one refused command does not undo the others).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub shard: ShardId,
    pub commands: Vec<VersionedCommand>,
}

/// What applying one command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// The command took effect.
    Done,
    /// An audit record was appended with this sequence number.
    AuditSequence(u64),
    /// A put replaced, or a delete removed, this manifest: the caller releases the chunks
    /// it named (exactly once, since only the command that unlinked it gets it back).
    Replaced(Box<crate::command::Manifest>),
    /// The command unlinked these chunks (a replaced part, an aborted upload's parts, a
    /// completed upload's unused parts and the object it replaced): the caller releases
    /// each once, as for `Replaced`.
    Released(Vec<crate::command::ChunkRef>),
}

/// One outcome per command of a batch, in the batch's order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome {
    pub outcomes: Vec<Result<Applied, Rejection>>,
}

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;
