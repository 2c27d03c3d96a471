//! Kiseki's fabric: chunks between nodes, and between nodes and HPC clients, as framed,
//! multiplexed requests over TCP+mTLS or RDMA.
//!
//! Layers, bottom up:
//! - [`Transport`]: sends a request to a peer and resolves with its response; many requests
//!   in flight per connection, bounded; frames as `kiseki_proto` defines them, with a hard
//!   payload limit (a larger frame closes the connection, counted and logged).
//! - the TCP transport (always present): TLS 1.3, mutual authentication with the cluster
//!   CA through `kiseki_security`'s one TLS builder, pooled persistent connections,
//!   TCP_NODELAY. The RDMA transport (feature `rdma`): verbs, set up over the TCP+mTLS
//!   channel so RDMA peers are authenticated by the same certificates; without a device it
//!   says so and is not offered.
//! - the FabricSelector: per peer, RDMA when both ends have it and it is healthy, else TCP;
//!   a circuit breaker per (peer, transport).
//! - the chunk service: a node serves `put_chunk`/`get_chunk`/`has_chunks`/`release_chunk`
//!   from its `EngineHandle`, checking the caller's role and tenant; clients (gateway,
//!   bench, HPC clients) use the same library API; replicated writes over R nodes, and
//!   releases to them.
//!
//! What it does not do: encryption of chunks (they arrive sealed and leave sealed; the
//! fabric never holds a chunk key), or placement decisions beyond rendezvous hashing over
//! the live nodes it is given.
//!
//! Invariants:
//! - nothing but a verified mTLS peer ever gets a byte of a response;
//! - every queue and every in-flight table is bounded (`constants.rs`);
//! - an unreferenced chunk answers exactly like an absent one.

// RDMA verbs are a C API: `rdma.rs` needs `unsafe` (each block says why it holds) when the
// `rdma` feature builds it; every other build forbids it.
#![cfg_attr(not(feature = "rdma"), forbid(unsafe_code))]

pub mod breaker;
pub mod constants;
pub mod metrics;
pub mod rdma;
pub mod replication;

mod client;
mod connection;
mod frame;
mod selector;
mod service;
mod tcp;
mod transport;

#[cfg(test)]
mod testing;

pub use breaker::{BreakerConfig, BreakerState};
pub use client::{ChunkClient, ClientError};
pub use connection::{
    ClientConnection, ConnectionCounters, ConnectionLimits, ConnectionStats, Handler, Peer,
    PendingResponse, TryCallError, serve_connection,
};
pub use kiseki_security::clock::{Clock, ManualClock, SystemClock};
pub use metrics::{FabricMetricsSnapshot, TransportMetricsSnapshot};
pub use replication::{
    Released, Replicated, ReplicationConfig, ReplicationError, Replicator, placement,
};
pub use selector::{FabricSelector, PeerHealth, SelectorError};
pub use service::{ChunkService, TenantRefs, engine_status};
pub use tcp::{ServerStartError, TcpConfig, TcpServer, TcpServerConfig, TcpTransport};

pub use transport::{
    BoxFuture, Endpoint, FabricRequest, FabricResponse, SharedBytes, Transport, TransportError,
    TransportKind,
};
