//! The `Transport` trait: what the selector and the chunk client need from TCP or RDMA.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use kiseki_proto::{Op, Status};

/// A boxed future, so transports can sit behind `dyn Transport`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which kind of transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TransportKind {
    Tcp,
    Rdma,
}

/// A peer: where to connect, and the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// A stable name for the peer (its node name); keys pools, breakers and placement.
    pub node: String,
    pub addr: SocketAddr,
    /// The DNS name or IP the peer's certificate is checked against.
    pub server_name: String,
}

/// One request: an op and its payload (encoded by `kiseki_proto`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FabricRequest {
    pub op: Op,
    pub payload: Vec<u8>,
}

/// One response: its status and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FabricResponse {
    pub status: Status,
    pub payload: Vec<u8>,
}

/// Why a request got no response. Whether a retry is safe depends on the op (see
/// `Op::is_idempotent`) and on [`TransportError::may_have_reached_peer`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportError {
    /// No connection could be made (refused, unreachable, timed out).
    Connect { peer: String, reason: String },
    /// The TLS handshake failed: the peer's certificate or ours was refused.
    Handshake { peer: String, reason: String },
    /// The connection failed with the request sent: its outcome is unknown.
    ConnectionLost { peer: String, reason: String },
    /// No response within the deadline; the outcome is unknown.
    Timeout { peer: String },
    /// The request is larger than the frame limit; nothing was sent.
    Oversized { len_bytes: usize, max_bytes: u32 },
    /// The peer sent something that is not a valid frame; the connection was closed.
    Protocol { peer: String, reason: String },
    /// The connection's in-flight bound is reached and the pool is at `max_per_endpoint`.
    Busy { peer: String },
    /// This transport is not available on this node (no RDMA device, no peer support).
    Unavailable { reason: String },
    /// The transport was shut down.
    Closed,
}

impl TransportError {
    /// Whether the peer may have acted on the request (so a non-idempotent one must not be
    /// retried blindly).
    pub fn may_have_reached_peer(&self) -> bool {
        matches!(self, TransportError::ConnectionLost { .. } | TransportError::Timeout { .. })
    }
}

/// Moves requests to peers. Implementations multiplex many requests per connection and
/// bound them; `call` resolves when the response arrives or the request fails.
pub trait Transport: Send + Sync + fmt::Debug {
    fn kind(&self) -> TransportKind;

    /// Sends `request` to `peer` and waits for its response.
    fn call<'a>(
        &'a self,
        peer: &'a Endpoint,
        request: FabricRequest,
    ) -> BoxFuture<'a, Result<FabricResponse, TransportError>>;
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Rdma => "rdma",
        })
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Connect { peer, reason } => write!(f, "{peer}: connect: {reason}"),
            TransportError::Handshake { peer, reason } => {
                write!(f, "{peer}: TLS handshake failed: {reason}")
            }
            TransportError::ConnectionLost { peer, reason } => {
                write!(f, "{peer}: connection lost with the request in flight: {reason}")
            }
            TransportError::Timeout { peer } => write!(f, "{peer}: no response in time"),
            TransportError::Oversized { len_bytes, max_bytes } => {
                write!(f, "request of {len_bytes} bytes is over the {max_bytes}-byte frame limit")
            }
            TransportError::Protocol { peer, reason } => {
                write!(f, "{peer}: protocol error, connection closed: {reason}")
            }
            TransportError::Busy { peer } => write!(f, "{peer}: every connection is busy"),
            TransportError::Unavailable { reason } => write!(f, "transport unavailable: {reason}"),
            TransportError::Closed => f.write_str("the transport is shut down"),
        }
    }
}

impl std::error::Error for TransportError {}
