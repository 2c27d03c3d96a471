//! The crate's errors: why a command was refused ([`Rejection`]) and why a group could not
//! do what it was asked ([`ConsensusError`]).

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::types::NodeId;

/// Why a command was refused. A refused command changed nothing, on any node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Rejection {
    /// The command is malformed (a name, a count, a size that cannot be right).
    Invalid(Cow<'static, str>),
    /// A field or the whole command is larger than its limit.
    TooLarge { size_bytes: usize, max_bytes: usize },
    /// The command was written in a format version this build does not speak.
    UnknownVersion(u16),
    /// The command belongs to another shard's group.
    WrongShard,
    /// What the command names does not exist (or is not the caller's: the same answer).
    NotFound(Cow<'static, str>),
    /// What the command would create exists already.
    AlreadyExists(Cow<'static, str>),
    /// The state forbids it now: a bucket that is not empty, a refcount that would go
    /// negative, a key epoch that is not the next one, a part whose ETag differs.
    Conflict(Cow<'static, str>),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Invalid(what) => write!(f, "invalid command: {what}"),
            Rejection::TooLarge { size_bytes, max_bytes } => {
                write!(f, "too large: {size_bytes} where at most {max_bytes} are allowed")
            }
            Rejection::UnknownVersion(version) => write!(f, "unknown command version {version}"),
            Rejection::WrongShard => write!(f, "command sent to the wrong metadata shard"),
            Rejection::NotFound(what) => write!(f, "{what} not found"),
            Rejection::AlreadyExists(what) => write!(f, "{what} already exists"),
            Rejection::Conflict(what) => write!(f, "conflict: {what}"),
        }
    }
}

impl std::error::Error for Rejection {}

impl Rejection {
    pub(crate) fn invalid(what: &'static str) -> Rejection {
        Rejection::Invalid(Cow::Borrowed(what))
    }

    pub(crate) fn not_found(what: &'static str) -> Rejection {
        Rejection::NotFound(Cow::Borrowed(what))
    }

    pub(crate) fn already_exists(what: &'static str) -> Rejection {
        Rejection::AlreadyExists(Cow::Borrowed(what))
    }

    pub(crate) fn conflict(what: &'static str) -> Rejection {
        Rejection::Conflict(Cow::Borrowed(what))
    }
}

/// Why a metadata group could not do what it was asked.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConsensusError {
    /// The command was refused; nothing changed.
    Rejected(Rejection),
    /// This node does not lead the group; `leader` is the one it knows of, if any.
    NotLeader { leader: Option<NodeId> },
    /// The tenant (or the shard) spent its inline-data budget; retry after the delay.
    Throttled { retry_after: Duration },
    /// The proposal queue is full; retry later.
    Busy,
    /// The group is shutting down or has stopped after a fatal error.
    Stopped,
    /// A quorum could not be reached before the group gave up on the request; the command
    /// may or may not have been committed.
    OutcomeUnknown(String),
    /// The group cannot answer now (no quorum reachable); nothing was changed.
    Unavailable(String),
    /// The local store failed; the group stops rather than diverge.
    Storage(String),
    /// A configuration that cannot work (shard count, membership).
    Config(String),
}

impl fmt::Display for ConsensusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsensusError::Rejected(rejection) => write!(f, "rejected: {rejection}"),
            ConsensusError::NotLeader { leader: Some(leader) } => {
                write!(f, "not the leader; node {leader} is")
            }
            ConsensusError::NotLeader { leader: None } => write!(f, "not the leader; none known"),
            ConsensusError::Throttled { retry_after } => {
                write!(f, "inline data budget spent; retry in {} ms", retry_after.as_millis())
            }
            ConsensusError::Busy => write!(f, "proposal queue full"),
            ConsensusError::Stopped => write!(f, "metadata group stopped"),
            ConsensusError::OutcomeUnknown(why) => write!(f, "outcome unknown: {why}"),
            ConsensusError::Unavailable(why) => write!(f, "metadata group unavailable: {why}"),
            ConsensusError::Storage(why) => write!(f, "metadata storage failed: {why}"),
            ConsensusError::Config(why) => write!(f, "bad consensus configuration: {why}"),
        }
    }
}

impl std::error::Error for ConsensusError {}

impl From<Rejection> for ConsensusError {
    fn from(rejection: Rejection) -> ConsensusError {
        ConsensusError::Rejected(rejection)
    }
}
