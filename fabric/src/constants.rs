//! Every limit of the fabric, with the reason it has its value.

use std::time::Duration;

pub use kiseki_proto::constants::FRAME_PAYLOAD_MAX_BYTES_DEFAULT;

/// Requests in flight on one connection: 64 keep a 4 MiB-chunk stream busy over a
/// 100 Gbit/s link's bandwidth-delay product with room to spare, and bound what one peer can
/// make a server hold (64 x 4 MiB = 256 MiB at most).
pub const IN_FLIGHT_PER_CONNECTION_MAX: usize = 64;

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
