//! The `Transport` trait: what the selector and the chunk client need from TCP or RDMA.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

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

/// One request: an op and its payload (encoded by `kiseki_proto`). The payload on the wire
/// is `payload` followed by `shared`, when there is one: bytes the sender keeps sharing (an
/// envelope sent to several replicas, or retried on a fallback transport), written from
/// where they lie instead of being copied into the request. A received request has its whole
/// payload in `payload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FabricRequest {
    pub op: Op,
    pub payload: Vec<u8>,
    pub shared: Option<SharedBytes>,
}

/// One response: its status and payload, laid out as a request's (`payload`, then
/// `shared`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FabricResponse {
    pub status: Status,
    pub payload: Vec<u8>,
    pub shared: Option<SharedBytes>,
}

/// Immutable bytes shared between frames without copying: a sealed envelope, typically.
#[derive(Clone)]
pub struct SharedBytes(Arc<dyn AsRef<[u8]> + Send + Sync>);

impl FabricRequest {
    /// A request whose payload is all in `payload`.
    pub fn new(op: Op, payload: Vec<u8>) -> FabricRequest {
        FabricRequest { op, payload, shared: None }
    }

    /// The payload's length on the wire.
    pub fn len_bytes(&self) -> usize {
        wire_len(&self.payload, &self.shared)
    }

    /// The whole payload in one buffer (copying `shared` in), for transports that send one
    /// buffer.
    pub fn into_contiguous(self) -> FabricRequest {
        FabricRequest { op: self.op, payload: contiguous(self.payload, self.shared), shared: None }
    }
}

impl FabricResponse {
    /// A response whose payload is all in `payload`.
    pub fn new(status: Status, payload: Vec<u8>) -> FabricResponse {
        FabricResponse { status, payload, shared: None }
    }

    /// The payload's length on the wire.
    pub fn len_bytes(&self) -> usize {
        wire_len(&self.payload, &self.shared)
    }

    /// The whole payload in one buffer (copying `shared` in).
    pub fn into_contiguous(self) -> FabricResponse {
        let payload = contiguous(self.payload, self.shared);
        FabricResponse { status: self.status, payload, shared: None }
    }
}

fn wire_len(payload: &[u8], shared: &Option<SharedBytes>) -> usize {
    payload.len() + shared.as_ref().map_or(0, SharedBytes::len)
}

fn contiguous(mut payload: Vec<u8>, shared: Option<SharedBytes>) -> Vec<u8> {
    if let Some(shared) = shared {
        payload.extend_from_slice(shared.as_bytes());
    }
    payload
}

impl SharedBytes {
    pub fn new<T: AsRef<[u8]> + Send + Sync + 'static>(bytes: Arc<T>) -> SharedBytes {
        SharedBytes(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        (*self.0).as_ref()
    }

    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }
}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedBytes({} bytes)", self.len())
    }
}

impl PartialEq for SharedBytes {
    fn eq(&self, other: &SharedBytes) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for SharedBytes {}

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
