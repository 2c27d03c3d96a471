//! Every limit of the fabric, with the reason it has its value.

use std::time::Duration;

pub use kiseki_proto::constants::FRAME_PAYLOAD_MAX_BYTES_DEFAULT;

/// Requests in flight on one connection: 64 keep a 4 MiB-chunk stream busy over a
/// 100 Gbit/s link's bandwidth-delay product with room to spare, and bound what one peer can
/// make a server hold (64 x 4 MiB = 256 MiB at most).
pub const IN_FLIGHT_PER_CONNECTION_MAX: usize = 64;

// ---- connections, the TCP transport and server, the chunk service ----
// (frame.rs, connection.rs, tcp.rs, service.rs)

/// Read and write buffer of a connection's stream: 64 KiB gathers many small frames (has,
/// ping, headers) into one TLS record run and one system call, while a 4 MiB payload
/// bypasses it.
pub const STREAM_BUFFER_BYTES: usize = 64 << 10;

/// How long a closing connection waits for its TLS close_notify to go out: a peer that
/// stopped reading must not hold the task longer.
pub const CLOSE_NOTIFY_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections a client keeps to one endpoint when not configured: four streams are enough
/// to fill a loopback or 100 Gbit/s link with 4 MiB chunks on a few cores, and four TLS
/// sessions per peer stay cheap.
pub const MAX_PER_ENDPOINT_DEFAULT: usize = 4;

/// Most connections a client may keep to one endpoint: bounds the sockets and tasks one
/// peer can cost.
pub const MAX_PER_ENDPOINT_MAX: usize = 64;

/// Most endpoints a TCP transport keeps pools for: more nodes than any cluster this engine
/// targets; past it a call to a new endpoint is refused as busy.
pub const ENDPOINTS_MAX: usize = 4096;

/// A pooled connection with nothing in flight for this long is closed: 60 s keeps a
/// connection across a pause in a workload, and drops those to departed peers.
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);

/// TCP connect, TLS handshake and the first round trip together: 10 s is far past any
/// healthy peer and short enough for the selector to fall back.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// A request without a response for this long fails with `Timeout`: a 4 MiB chunk needs
/// milliseconds; 30 s covers a node under heavy load without hiding a dead one for long.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// A server's TLS handshake must finish within this: a peer that connects and stalls holds
/// a connection slot for no longer.
pub const HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Connections a server serves at once: with 64 requests in flight each that bounds what
/// the server holds; more wait in the listen backlog.
pub const SERVER_CONNECTIONS_MAX_DEFAULT: usize = 1024;

/// How long a graceful server shutdown waits for requests already read to finish before it
/// drops the connections that still have some.
pub const SHUTDOWN_GRACE_DEFAULT: Duration = Duration::from_secs(10);

/// Entries of a node's tenant reference index ((tenant, chunk) pairs) when not configured:
/// about 100 bytes each, so 1 Mi entries cost about 100 MiB, enough for the chunks a node
/// of this stand-in (until consensus keeps references) serves.
pub const TENANT_REFS_MAX_DEFAULT: usize = 1 << 20;

// ---- circuit breakers, selector, replication (breaker.rs, selector.rs, replication.rs) ----

/// Failures within the window that open a (peer, transport) breaker: five in a row is past
/// a lost packet or a restarting peer, and costs at most five requests' worth of delay
/// before the selector stops trying (idempotent ones are retried on the fallback anyway).
pub const BREAKER_FAILURES_DEFAULT: u32 = 5;

/// Most failure times a breaker keeps (the largest `failures_to_open` accepted): bounds
/// its state at 64 instants per (peer, transport).
pub const BREAKER_FAILURES_MAX: u32 = 64;

/// The window those failures must fall in: 10 s separates a failing link from sporadic
/// errors spread over a long run.
pub const BREAKER_WINDOW_DEFAULT: Duration = Duration::from_secs(10);

/// First back-off of an open breaker: 1 s lets a restarting peer or a flapping link settle
/// without leaving the faster transport unused for long.
pub const BREAKER_BACKOFF_INITIAL_DEFAULT: Duration = Duration::from_secs(1);

/// Longest back-off: a transport that keeps failing is probed once a minute, no more.
pub const BREAKER_BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(60);

/// How long a half-open probe may stay unanswered before another may go: a 4 MiB chunk
/// needs well under a second on any link the fabric runs on; 10 s covers a slow peer.
pub const BREAKER_PROBE_LEASE_DEFAULT: Duration = Duration::from_secs(10);

/// Most peers a selector keeps state for (capabilities, breakers): more than the nodes of
/// any cluster this engine targets; past it the least recently used peer is forgotten (it
/// then starts over closed and TCP-only until its capabilities are set again).
pub const SELECTOR_PEERS_MAX: usize = 4096;

/// Replicas per chunk when the configuration says nothing: three, as the fabric issue asks
/// (capped by the live nodes).
pub const REPLICAS_DEFAULT: usize = 3;

/// Most replicas per chunk: bounds the concurrent puts of one replicated write.
pub const REPLICAS_MAX: usize = 16;

// ---- RDMA (rdma.rs) ----

/// Largest frame (header and payload) one RDMA SEND carries: a 4 MiB chunk's envelope with
/// room for its header, wrapped parameters and the frame header. Each queue pair registers
/// a send and a receive buffer this large (8.1 MiB of pinned memory per peer); anything
/// larger (a Raft snapshot) goes over TCP.
pub const RDMA_MESSAGE_MAX_BYTES: u32 = (4 << 20) + (64 << 10);

/// A request over RDMA without its response for this long fails: as over TCP.
pub const RDMA_REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Queue pairs a node serves at once: each pins two registered buffers (8.1 MiB), so 256
/// bound that at about 2 GiB of pinned memory, and each has one serving task.
pub const RDMA_RESPONDERS_MAX: usize = 256;
