//! The FabricSelector: which transport carries a request to a peer, and what happens when
//! that transport fails.
//!
//! What it does: per peer, RDMA when this node has an RDMA transport, the peer offers RDMA
//! and the (peer, RDMA) breaker admits the request; else TCP. A request whose transport
//! fails is retried once on the other transport when that is safe: the op is idempotent
//! (`Op::is_idempotent`), or the error proves the request never reached the peer
//! (`!TransportError::may_have_reached_peer`). A put that may have reached the peer is
//! never retried: it fails with [`SelectorError::OutcomeUnknown`], which says so. Breakers
//! recover by themselves: once a back-off passes, the next idempotent request to that peer
//! is the probe (a put never probes, so a put never lands on a transport that just failed;
//! a health loop sends pings to make recovery independent of the traffic mix).
//!
//! What it does not do: connect, pool or frame (the transports do), or interpret payloads
//! (the chunk client does). A response with any status, `NotFound` or `Internal` included,
//! is a success of the transport; only a [`TransportError`] counts against a breaker, and
//! not all of them: `Busy` (our own pool is full) and `Oversized` (the request is over that
//! transport's message limit) say nothing about the link. Both are retried on the other
//! transport, which has its own pool and, for RDMA, a smaller message limit than TCP.
//!
//! Invariants:
//! - no acknowledged request is lost: a response, once a transport returns it, is the
//!   result of `call`; no retry happens after one;
//! - a request is sent at most once per transport, and a non-idempotent one is sent a
//!   second time only when the first attempt's error proves it never reached the peer;
//! - per-peer state is bounded by [`SELECTOR_PEERS_MAX`]; the lock over it is never held
//!   across an await.
//!
//! Cost to know: a request that may need a fallback (RDMA first, TCP after) is copied once
//! before its first attempt, because `Transport::call` takes the request by value.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use kiseki_proto::{FRAME_HEADER_BYTES, Op};

use kiseki_security::clock::{Clock, SystemClock};

use crate::breaker::{Admission, Breaker, BreakerConfig, BreakerState};
use crate::constants::SELECTOR_PEERS_MAX;
use crate::metrics::{FabricMetricsSnapshot, TransportMetrics};
use crate::transport::{
    Endpoint, FabricRequest, FabricResponse, Transport, TransportError, TransportKind,
};

/// Picks a transport per peer and request; see the module documentation.
#[derive(Debug)]
pub struct FabricSelector {
    tcp: Arc<dyn Transport>,
    rdma: Option<Arc<dyn Transport>>,
    clock: Arc<dyn Clock>,
    breaker_config: BreakerConfig,
    peers: Mutex<PeerTable>,
    tcp_metrics: TransportMetrics,
    rdma_metrics: TransportMetrics,
}

/// How healthy a peer looks from here, best first (replicated reads try the best first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerHealth {
    /// Every breaker towards the peer is closed (or it is not known yet).
    Healthy,
    /// TCP works but the peer's RDMA breaker is not closed.
    Degraded,
    /// The TCP breaker is not closed.
    Failing,
}

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SelectorError {
    /// Every transport to the peer has an open breaker: nothing was sent.
    CircuitOpen { peer: String },
    /// A request that is not idempotent failed after it may have reached the peer. It was
    /// not retried (that could apply it twice); whether it took effect is unknown.
    OutcomeUnknown { peer: String, op: Op, kind: TransportKind, error: TransportError },
    /// Every transport tried failed; each attempt's error, in the order tried (at most one
    /// per transport).
    Failed { peer: String, attempts: Vec<(TransportKind, TransportError)> },
    /// The selector's configuration is out of bounds.
    BadConfig { reason: &'static str },
}

impl FabricSelector {
    /// A selector over `tcp` alone (RDMA is added by [`FabricSelector::with_rdma`] when a
    /// device was found), on the system clock.
    pub fn new(
        tcp: Arc<dyn Transport>,
        breaker_config: BreakerConfig,
    ) -> Result<FabricSelector, SelectorError> {
        assert_eq!(tcp.kind(), TransportKind::Tcp, "the fallback transport must be TCP");
        breaker_config.validate().map_err(|reason| SelectorError::BadConfig { reason })?;
        Ok(FabricSelector {
            tcp,
            rdma: None,
            clock: Arc::new(SystemClock),
            breaker_config,
            peers: Mutex::new(PeerTable::default()),
            tcp_metrics: TransportMetrics::default(),
            rdma_metrics: TransportMetrics::default(),
        })
    }

    /// Offers RDMA: only a transport that really is RDMA (see `rdma.rs`) belongs here.
    pub fn with_rdma(mut self, rdma: Arc<dyn Transport>) -> FabricSelector {
        assert_eq!(rdma.kind(), TransportKind::Rdma, "only an RDMA transport is offered as one");
        self.rdma = Some(rdma);
        self
    }

    /// Reads time from `clock` (tests drive breakers with a `ManualClock`).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> FabricSelector {
        self.clock = clock;
        self
    }

    /// Whether this node has an RDMA transport to offer.
    pub fn offers_rdma(&self) -> bool {
        self.rdma.is_some()
    }

    /// Records whether `node` offers RDMA (learned from its connection setup or the cluster
    /// map). Peers not recorded are TCP-only.
    pub fn set_peer_rdma(&self, node: &str, offers_rdma: bool) {
        let mut peers = self.peers.lock().expect("peer table lock");
        let peer = peers.entry(node, &self.breaker_config, |kind, state| {
            self.metrics_of(kind).breaker_forgotten(state)
        });
        peer.offers_rdma = offers_rdma;
    }

    /// Whether `node` is recorded as offering RDMA (by [`FabricSelector::set_peer_rdma`]);
    /// RDMA is tried towards it only if this node offers RDMA too.
    pub fn peer_offers_rdma(&self, node: &str) -> bool {
        let peers = self.peers.lock().expect("peer table lock");
        peers.peers.get(node).is_some_and(|peer| peer.offers_rdma)
    }

    /// Sends `request` to `peer` over the best transport that admits it, falling back as
    /// the module documentation says.
    pub async fn call(
        &self,
        peer: &Endpoint,
        request: FabricRequest,
    ) -> Result<FabricResponse, SelectorError> {
        let op = request.op;
        let kinds = self.candidates(&peer.node);
        let mut request = Some(request);
        let mut attempts: Vec<(TransportKind, TransportError)> = Vec::with_capacity(2);
        for (index, &kind) in kinds.iter().enumerate() {
            if !self.admit(&peer.node, kind, op.is_idempotent()) {
                continue;
            }
            if let Some((failed, _)) = attempts.last() {
                self.metrics_of(*failed).fallback();
            }
            let later = index + 1 < kinds.len();
            let this_request = match (later, request.as_ref()) {
                (true, Some(request)) => request.clone(),
                _ => request.take().expect("the request is kept until its last attempt"),
            };
            let metrics = self.metrics_of(kind);
            metrics.request_sent(frame_bytes(this_request.len_bytes()));
            let error = match self.transport(kind).call(peer, this_request).await {
                Ok(response) => {
                    metrics.response_received(frame_bytes(response.len_bytes()));
                    self.record(&peer.node, kind, None);
                    return Ok(response);
                }
                Err(error) => error,
            };
            self.record(&peer.node, kind, Some(&error));
            if !op.is_idempotent() && error.may_have_reached_peer() {
                return Err(SelectorError::OutcomeUnknown {
                    peer: peer.node.clone(),
                    op,
                    kind,
                    error,
                });
            }
            attempts.push((kind, error));
        }
        if attempts.is_empty() {
            return Err(SelectorError::CircuitOpen { peer: peer.node.clone() });
        }
        Err(SelectorError::Failed { peer: peer.node.clone(), attempts })
    }

    /// How healthy `node` looks from its breakers.
    pub fn peer_health(&self, node: &str) -> PeerHealth {
        let peers = self.peers.lock().expect("peer table lock");
        let Some(peer) = peers.peers.get(node) else {
            return PeerHealth::Healthy;
        };
        if peer.tcp.state() != BreakerState::Closed {
            return PeerHealth::Failing;
        }
        let rdma_used = self.rdma.is_some() && peer.offers_rdma;
        if rdma_used && peer.rdma.state() != BreakerState::Closed {
            return PeerHealth::Degraded;
        }
        PeerHealth::Healthy
    }

    /// The state of the (`node`, `kind`) breaker; closed for a peer not known yet.
    pub fn breaker_state(&self, node: &str, kind: TransportKind) -> BreakerState {
        let peers = self.peers.lock().expect("peer table lock");
        peers.peers.get(node).map_or(BreakerState::Closed, |peer| peer.breaker(kind).state())
    }

    pub fn metrics(&self) -> FabricMetricsSnapshot {
        FabricMetricsSnapshot {
            tcp: self.tcp_metrics.snapshot(TransportKind::Tcp),
            rdma: self.rdma.as_ref().map(|_| self.rdma_metrics.snapshot(TransportKind::Rdma)),
        }
    }

    /// The transports to try for `node`, in order.
    fn candidates(&self, node: &str) -> Vec<TransportKind> {
        let mut kinds = Vec::with_capacity(2);
        if self.rdma.is_some() {
            let peers = self.peers.lock().expect("peer table lock");
            if peers.peers.get(node).is_some_and(|peer| peer.offers_rdma) {
                kinds.push(TransportKind::Rdma);
            }
        }
        kinds.push(TransportKind::Tcp);
        kinds
    }

    /// Asks the (`node`, `kind`) breaker; counts a refusal.
    fn admit(&self, node: &str, kind: TransportKind, probe_wanted: bool) -> bool {
        let now = self.clock.now();
        let mut peers = self.peers.lock().expect("peer table lock");
        let peer = peers.entry(node, &self.breaker_config, |kind, state| {
            self.metrics_of(kind).breaker_forgotten(state)
        });
        let (admission, transition) = peer.breaker_mut(kind).admit(now, probe_wanted);
        if let Some(transition) = transition {
            self.metrics_of(kind).breaker_moved(transition);
        }
        if admission == Admission::Refused {
            self.metrics_of(kind).refused_by_breaker();
            return false;
        }
        true
    }

    /// Records an attempt's outcome: `None` = a response came.
    fn record(&self, node: &str, kind: TransportKind, error: Option<&TransportError>) {
        let metrics = self.metrics_of(kind);
        if error.is_some() {
            metrics.failure();
        }
        if error.is_some_and(|error| !counts_against_breaker(error)) {
            return;
        }
        let now = self.clock.now();
        let mut peers = self.peers.lock().expect("peer table lock");
        let peer = peers.entry(node, &self.breaker_config, |kind, state| {
            self.metrics_of(kind).breaker_forgotten(state)
        });
        let breaker = peer.breaker_mut(kind);
        let transition = match error {
            None => breaker.record_success(now),
            Some(_) => breaker.record_failure(now),
        };
        if let Some(transition) = transition {
            metrics.breaker_moved(transition);
        }
    }

    fn transport(&self, kind: TransportKind) -> &dyn Transport {
        match kind {
            TransportKind::Tcp => self.tcp.as_ref(),
            TransportKind::Rdma => {
                self.rdma.as_deref().expect("RDMA is a candidate only if offered")
            }
        }
    }

    fn metrics_of(&self, kind: TransportKind) -> &TransportMetrics {
        match kind {
            TransportKind::Tcp => &self.tcp_metrics,
            TransportKind::Rdma => &self.rdma_metrics,
        }
    }
}

impl SelectorError {
    /// Whether the peer may have acted on the request.
    pub fn may_have_reached_peer(&self) -> bool {
        match self {
            SelectorError::OutcomeUnknown { .. } => true,
            SelectorError::Failed { attempts, .. } => {
                attempts.iter().any(|(_, error)| error.may_have_reached_peer())
            }
            SelectorError::CircuitOpen { .. } | SelectorError::BadConfig { .. } => false,
        }
    }
}

/// Whether a transport error says something about the link to the peer.
fn counts_against_breaker(error: &TransportError) -> bool {
    match error {
        TransportError::Connect { .. }
        | TransportError::Handshake { .. }
        | TransportError::ConnectionLost { .. }
        | TransportError::Timeout { .. }
        | TransportError::Protocol { .. }
        | TransportError::Unavailable { .. }
        | TransportError::Closed => true,
        TransportError::Busy { .. } | TransportError::Oversized { .. } => false,
    }
}

fn frame_bytes(payload_len_bytes: usize) -> u64 {
    (FRAME_HEADER_BYTES + payload_len_bytes) as u64
}

/// Per-peer state, at most [`SELECTOR_PEERS_MAX`] peers, least recently used evicted.
#[derive(Debug, Default)]
struct PeerTable {
    peers: HashMap<String, PeerState>,
    /// Bumped on every use; orders the peers for eviction.
    tick: u64,
}

#[derive(Debug)]
struct PeerState {
    offers_rdma: bool,
    tcp: Breaker,
    rdma: Breaker,
    last_used_tick: u64,
}

impl PeerTable {
    /// The state of `node`, created if missing; a full table first forgets its least
    /// recently used peer, reporting that peer's breaker states to `forgotten_callback`.
    fn entry(
        &mut self,
        node: &str,
        config: &BreakerConfig,
        forgotten_callback: impl Fn(TransportKind, BreakerState),
    ) -> &mut PeerState {
        self.tick += 1;
        let tick = self.tick;
        if !self.peers.contains_key(node) {
            if self.peers.len() >= SELECTOR_PEERS_MAX {
                self.evict_least_recent(&forgotten_callback);
            }
            let state = PeerState {
                offers_rdma: false,
                tcp: Breaker::new(*config),
                rdma: Breaker::new(*config),
                last_used_tick: tick,
            };
            self.peers.insert(node.to_owned(), state);
        }
        let peer = self.peers.get_mut(node).expect("inserted above");
        peer.last_used_tick = tick;
        peer
    }

    fn evict_least_recent(&mut self, forgotten_callback: &impl Fn(TransportKind, BreakerState)) {
        let oldest = self.peers.iter().min_by_key(|(_, peer)| peer.last_used_tick);
        let Some(oldest) = oldest.map(|(node, _)| node.clone()) else {
            return;
        };
        let peer = self.peers.remove(&oldest).expect("found above");
        forgotten_callback(TransportKind::Tcp, peer.tcp.state());
        forgotten_callback(TransportKind::Rdma, peer.rdma.state());
    }
}

impl PeerState {
    fn breaker(&self, kind: TransportKind) -> &Breaker {
        match kind {
            TransportKind::Tcp => &self.tcp,
            TransportKind::Rdma => &self.rdma,
        }
    }

    fn breaker_mut(&mut self, kind: TransportKind) -> &mut Breaker {
        match kind {
            TransportKind::Tcp => &mut self.tcp,
            TransportKind::Rdma => &mut self.rdma,
        }
    }
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelectorError::CircuitOpen { peer } => {
                write!(f, "{peer}: every transport's circuit breaker is open; nothing was sent")
            }
            SelectorError::OutcomeUnknown { peer, op, kind, error } => write!(
                f,
                "{peer}: {op:?} over {kind} failed after it may have reached the peer ({error}); \
                 not retried because it is not idempotent, so whether it took effect is unknown"
            ),
            SelectorError::Failed { peer, attempts } => {
                write!(f, "{peer}: request failed")?;
                for (kind, error) in attempts {
                    write!(f, "; over {kind}: {error}")?;
                }
                Ok(())
            }
            SelectorError::BadConfig { reason } => write!(f, "selector configuration: {reason}"),
        }
    }
}

impl std::error::Error for SelectorError {}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kiseki_proto::{ChunkRequest, Status, TenantRef};

    use super::*;
    use crate::testing::{
        Fault, Nodes, ScriptedTransport, connect_refused, connection_lost, endpoint, envelope,
        nodes,
    };
    use kiseki_security::clock::ManualClock;

    const SECOND: Duration = Duration::from_secs(1);

    struct Fixture {
        nodes: Nodes,
        tcp: Arc<ScriptedTransport>,
        rdma: Arc<ScriptedTransport>,
        clock: Arc<ManualClock>,
        selector: FabricSelector,
    }

    /// Nodes "a" (offers RDMA) and "b" (TCP only); breakers open after 2 failures, back off
    /// 1 s doubling to 4 s.
    fn fixture() -> Fixture {
        let nodes = nodes(&["a", "b"]);
        let tcp = ScriptedTransport::new(TransportKind::Tcp, nodes.clone());
        let rdma = ScriptedTransport::new(TransportKind::Rdma, nodes.clone());
        let clock = Arc::new(ManualClock::new());
        let config = BreakerConfig {
            failures_to_open: 2,
            window: 10 * SECOND,
            backoff_initial: SECOND,
            backoff_max: 4 * SECOND,
            probe_lease: 10 * SECOND,
        };
        let selector = FabricSelector::new(tcp.clone(), config)
            .unwrap()
            .with_rdma(rdma.clone())
            .with_clock(clock.clone());
        selector.set_peer_rdma("a", true);
        Fixture { nodes, tcp, rdma, clock, selector }
    }

    fn get(id: &kiseki_security::ChunkId) -> FabricRequest {
        encode(ChunkRequest::Get { tenant: TenantRef::NONE, chunk_id: *id.as_bytes() })
    }

    fn put(envelope: &kiseki_security::Envelope) -> FabricRequest {
        encode(ChunkRequest::Put { tenant: TenantRef::NONE, envelope: envelope.as_bytes() })
    }

    fn ping() -> FabricRequest {
        FabricRequest::new(Op::Ping, Vec::new())
    }

    fn encode(request: ChunkRequest<'_>) -> FabricRequest {
        let mut payload = Vec::new();
        request.encode_into(&mut payload);
        FabricRequest::new(request.op(), payload)
    }

    #[tokio::test]
    async fn rdma_is_preferred_only_when_both_ends_have_it() {
        let f = fixture();
        let stored = envelope(b"rdma first");
        f.nodes["a"].insert_raw(&stored.chunk_id(), stored.as_bytes().to_vec());
        let response = f.selector.call(&endpoint("a"), get(&stored.chunk_id())).await.unwrap();
        assert_eq!(response.payload, stored.as_bytes());
        assert_eq!((f.rdma.calls(), f.tcp.calls()), (1, 0));
        f.selector.call(&endpoint("b"), ping()).await.unwrap();
        assert_eq!((f.rdma.calls(), f.tcp.calls()), (1, 1), "b offers no RDMA");

        let tcp_only = FabricSelector::new(f.tcp.clone(), BreakerConfig::default()).unwrap();
        tcp_only.set_peer_rdma("a", true);
        assert!(!tcp_only.offers_rdma());
        tcp_only.call(&endpoint("a"), ping()).await.unwrap();
        assert_eq!((f.rdma.calls(), f.tcp.calls()), (1, 2), "this node offers no RDMA");
        assert_eq!(tcp_only.metrics().rdma, None);
    }

    #[tokio::test]
    async fn an_idempotent_request_in_flight_on_failing_rdma_is_retried_on_tcp() {
        let f = fixture();
        let stored = envelope(b"retried");
        f.nodes["a"].insert_raw(&stored.chunk_id(), stored.as_bytes().to_vec());
        f.rdma.fail("a", Fault::LoseAfterDelivery(connection_lost("a")));
        let response = f.selector.call(&endpoint("a"), get(&stored.chunk_id())).await.unwrap();
        assert_eq!(response.status, Status::Ok);
        assert_eq!(response.payload, stored.as_bytes());
        assert_eq!((f.rdma.calls(), f.tcp.calls()), (1, 1));
        let metrics = f.selector.metrics();
        let rdma = metrics.rdma.unwrap();
        assert_eq!((rdma.requests, rdma.failures, rdma.fallbacks), (1, 1, 1));
        assert_eq!((metrics.tcp.requests, metrics.tcp.failures), (1, 0));
    }

    #[tokio::test]
    async fn a_put_that_may_have_reached_the_peer_is_failed_not_retried() {
        let f = fixture();
        let chunk = envelope(b"put once");
        f.rdma.fail("a", Fault::LoseAfterDelivery(connection_lost("a")));
        let error = f.selector.call(&endpoint("a"), put(&chunk)).await.unwrap_err();
        assert!(
            matches!(
                &error,
                SelectorError::OutcomeUnknown { op: Op::PutChunk, kind: TransportKind::Rdma, .. }
            ),
            "{error:?}"
        );
        assert!(error.may_have_reached_peer());
        let message = error.to_string();
        assert!(message.contains("not retried") && message.contains("unknown"), "{message}");
        assert_eq!(f.tcp.calls(), 0, "a put is never sent twice");
        assert_eq!(f.nodes["a"].references(&chunk.chunk_id()), 1, "applied exactly once");

        // A timeout is just as unknown.
        let other = envelope(b"timed out");
        f.rdma.fail("a", Fault::LoseAfterDelivery(TransportError::Timeout { peer: "a".into() }));
        let error = f.selector.call(&endpoint("a"), put(&other)).await.unwrap_err();
        assert!(matches!(error, SelectorError::OutcomeUnknown { .. }), "{error:?}");
        assert_eq!(f.tcp.calls(), 0);
    }

    #[tokio::test]
    async fn a_put_that_never_reached_the_peer_falls_back_to_tcp() {
        let f = fixture();
        let chunk = envelope(b"never reached");
        f.rdma.fail("a", Fault::Refuse(connect_refused("a")));
        let response = f.selector.call(&endpoint("a"), put(&chunk)).await.unwrap();
        assert_eq!(response.status, Status::Ok);
        assert_eq!((f.rdma.calls(), f.tcp.calls()), (1, 1));
        assert_eq!(f.nodes["a"].references(&chunk.chunk_id()), 1);
    }

    #[tokio::test]
    async fn the_breaker_opens_half_opens_closes_and_rdma_recovers() {
        let f = fixture();
        let a = endpoint("a");
        f.rdma.fail("a", Fault::Refuse(connect_refused("a")));
        for _ in 0..2 {
            f.selector.call(&a, ping()).await.unwrap();
        }
        assert_eq!(f.selector.breaker_state("a", TransportKind::Rdma), BreakerState::Open);
        assert_eq!(f.selector.peer_health("a"), PeerHealth::Degraded);
        let open = f.selector.metrics().rdma.unwrap();
        assert_eq!((open.breakers_open, open.breaker_opens, open.failures), (1, 1, 2));

        // Open: straight to TCP, RDMA not touched.
        f.selector.call(&a, ping()).await.unwrap();
        assert_eq!((f.rdma.calls(), f.tcp.calls()), (2, 3));
        assert_eq!(f.selector.metrics().rdma.unwrap().refused_by_breaker, 1);

        // Back-off over, still failing: the probe fails, the back-off doubles.
        f.clock.advance(SECOND);
        f.selector.call(&a, ping()).await.unwrap();
        assert_eq!(f.rdma.calls(), 3, "one probe");
        assert_eq!(f.selector.breaker_state("a", TransportKind::Rdma), BreakerState::Open);
        f.clock.advance(SECOND);
        f.selector.call(&a, ping()).await.unwrap();
        assert_eq!(f.rdma.calls(), 3, "2 s back-off not over after 1 s");

        // Healed: the next probe closes the breaker, and RDMA carries traffic again.
        f.rdma.heal("a");
        f.clock.advance(SECOND);
        f.selector.call(&a, ping()).await.unwrap();
        assert_eq!(f.selector.breaker_state("a", TransportKind::Rdma), BreakerState::Closed);
        assert_eq!(f.selector.peer_health("a"), PeerHealth::Healthy);
        let tcp_calls = f.tcp.calls();
        f.selector.call(&a, ping()).await.unwrap();
        assert_eq!((f.rdma.calls(), f.tcp.calls()), (5, tcp_calls));
        let closed = f.selector.metrics().rdma.unwrap();
        assert_eq!((closed.breakers_open, closed.breakers_half_open), (0, 0));
        assert_eq!(closed.breaker_opens, 2);
    }

    #[tokio::test]
    async fn a_put_never_probes_a_transport_that_just_failed() {
        let f = fixture();
        let a = endpoint("a");
        f.rdma.fail("a", Fault::Refuse(connect_refused("a")));
        for _ in 0..2 {
            f.selector.call(&a, ping()).await.unwrap();
        }
        f.rdma.heal("a");
        f.clock.advance(10 * SECOND);
        let chunk = envelope(b"not a probe");
        f.selector.call(&a, put(&chunk)).await.unwrap();
        assert_eq!(f.rdma.calls(), 2, "the put went over TCP");
        assert_eq!(f.selector.breaker_state("a", TransportKind::Rdma), BreakerState::Open);
        f.selector.call(&a, ping()).await.unwrap();
        assert_eq!(f.rdma.calls(), 3, "a ping probes");
        assert_eq!(f.selector.breaker_state("a", TransportKind::Rdma), BreakerState::Closed);
    }

    #[tokio::test]
    async fn an_open_tcp_breaker_without_rdma_fails_fast() {
        let f = fixture();
        let b = endpoint("b");
        f.tcp.fail("b", Fault::Refuse(connect_refused("b")));
        for _ in 0..2 {
            let error = f.selector.call(&b, ping()).await.unwrap_err();
            assert!(
                matches!(&error, SelectorError::Failed { attempts, .. } if attempts.len() == 1)
            );
            assert!(!error.may_have_reached_peer());
        }
        assert_eq!(f.selector.peer_health("b"), PeerHealth::Failing);
        let error = f.selector.call(&b, ping()).await.unwrap_err();
        assert_eq!(error, SelectorError::CircuitOpen { peer: "b".into() });
        assert_eq!(f.tcp.calls(), 2, "nothing sent while open");
    }

    #[tokio::test]
    async fn both_transports_failing_reports_both() {
        let f = fixture();
        f.rdma.fail("a", Fault::Refuse(connect_refused("a")));
        f.tcp.fail("a", Fault::Refuse(connection_lost("a")));
        let error = f.selector.call(&endpoint("a"), ping()).await.unwrap_err();
        let SelectorError::Failed { attempts, .. } = &error else { panic!("{error:?}") };
        let kinds: Vec<TransportKind> = attempts.iter().map(|(kind, _)| *kind).collect();
        assert_eq!(kinds, [TransportKind::Rdma, TransportKind::Tcp]);
        assert!(error.to_string().contains("over rdma") && error.to_string().contains("over tcp"));
    }

    #[tokio::test]
    async fn a_fallback_is_counted_only_when_the_other_transport_is_tried() {
        let f = fixture();
        let a = endpoint("a");
        f.rdma.fail("a", Fault::Refuse(TransportError::Busy { peer: "a".into() }));
        f.tcp.fail("a", Fault::Refuse(connect_refused("a")));
        for _ in 0..2 {
            f.selector.call(&a, ping()).await.unwrap_err();
        }
        assert_eq!(f.selector.breaker_state("a", TransportKind::Tcp), BreakerState::Open);
        let error = f.selector.call(&a, ping()).await.unwrap_err();
        let SelectorError::Failed { attempts, .. } = &error else { panic!("{error:?}") };
        assert_eq!(attempts.len(), 1, "TCP refused by its breaker: {error}");
        let metrics = f.selector.metrics();
        assert_eq!(metrics.rdma.unwrap().fallbacks, 2);
        assert_eq!((metrics.tcp.requests, metrics.tcp.refused_by_breaker), (2, 1));
    }

    #[tokio::test]
    async fn busy_and_oversized_do_not_count_against_the_breaker() {
        let f = fixture();
        let a = endpoint("a");
        f.rdma.fail("a", Fault::Refuse(TransportError::Busy { peer: "a".into() }));
        for _ in 0..5 {
            f.selector.call(&a, ping()).await.unwrap();
        }
        assert_eq!(f.selector.breaker_state("a", TransportKind::Rdma), BreakerState::Closed);
        assert_eq!(f.selector.metrics().rdma.unwrap().fallbacks, 5);

        // Over RDMA's message limit: TCP, with its larger frame limit, carries it.
        let oversized = TransportError::Oversized { len_bytes: 10, max_bytes: 1 };
        f.rdma.fail("a", Fault::Refuse(oversized.clone()));
        for _ in 0..5 {
            f.selector.call(&a, ping()).await.unwrap();
        }
        assert_eq!(f.tcp.calls(), 10);
        assert_eq!(f.selector.breaker_state("a", TransportKind::Rdma), BreakerState::Closed);

        // Over every transport's limit: the error says so, nothing opens.
        f.tcp.fail("a", Fault::Refuse(oversized.clone()));
        let error = f.selector.call(&a, ping()).await.unwrap_err();
        let both = vec![(TransportKind::Rdma, oversized.clone()), (TransportKind::Tcp, oversized)];
        assert_eq!(error, SelectorError::Failed { peer: "a".into(), attempts: both });
        assert_eq!(f.selector.breaker_state("a", TransportKind::Tcp), BreakerState::Closed);
    }

    #[tokio::test]
    async fn metrics_count_frame_bytes_and_requests() {
        let f = fixture();
        let chunk = envelope(b"counted");
        let request = put(&chunk);
        let request_len = request.payload.len() as u64;
        f.selector.call(&endpoint("a"), request).await.unwrap();
        let response = f.selector.call(&endpoint("a"), get(&chunk.chunk_id())).await.unwrap();
        let rdma = f.selector.metrics().rdma.unwrap();
        assert_eq!(rdma.requests, 2);
        assert_eq!(rdma.bytes_out, 24 + request_len + 24 + 1 + 32);
        assert_eq!(rdma.bytes_in, 24 + 24 + response.payload.len() as u64);
        assert_eq!((rdma.failures, rdma.fallbacks, rdma.breakers_open), (0, 0, 0));
        assert_eq!(f.selector.metrics().tcp.requests, 0);
    }

    /// Puts under a deterministic mix of faults on both transports, with time moving so the
    /// breakers cycle: every acknowledged put is stored, none is stored twice, and a put
    /// reported as never delivered is not stored.
    #[tokio::test]
    async fn no_acknowledged_request_is_lost_and_none_applied_twice() {
        let f = fixture();
        let a = endpoint("a");
        let mut seed: u64 = 0x5eed;
        let mut outcomes = [0u32; 3];
        for i in 0..300u32 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let roll = (seed >> 33) % 8;
            match roll {
                0 => f.rdma.fail("a", Fault::Refuse(connect_refused("a"))),
                1 => f.rdma.fail("a", Fault::LoseAfterDelivery(connection_lost("a"))),
                2 => f.tcp.fail("a", Fault::Refuse(connect_refused("a"))),
                3 => f.tcp.fail("a", Fault::LoseAfterDelivery(connection_lost("a"))),
                _ => {
                    f.rdma.heal("a");
                    f.tcp.heal("a");
                }
            }
            f.clock.advance(SECOND / 2);
            let chunk = envelope(&i.to_le_bytes());
            let references = || f.nodes["a"].references(&chunk.chunk_id());
            match f.selector.call(&a, put(&chunk)).await {
                Ok(response) => {
                    assert_eq!(response.status, Status::Ok);
                    assert_eq!(references(), 1, "put {i}: acknowledged, stored once");
                    outcomes[0] += 1;
                }
                Err(error) if error.may_have_reached_peer() => {
                    assert!(references() <= 1, "put {i}: at most once");
                    outcomes[1] += 1;
                }
                Err(error) => {
                    assert_eq!(references(), 0, "put {i}: {error} yet stored");
                    outcomes[2] += 1;
                }
            }
        }
        assert!(outcomes.iter().all(|&count| count > 0), "every outcome exercised: {outcomes:?}");
    }

    #[tokio::test]
    async fn the_peer_table_is_bounded() {
        let f = fixture();
        for i in 0..SELECTOR_PEERS_MAX {
            f.selector.set_peer_rdma(&format!("peer-{i}"), true);
        }
        assert_eq!(f.selector.peers.lock().unwrap().peers.len(), SELECTOR_PEERS_MAX);
        assert!(!f.selector.peers.lock().unwrap().peers.contains_key("a"), "oldest forgotten");
        f.selector.call(&endpoint("a"), ping()).await.unwrap();
        assert_eq!(f.tcp.calls(), 1, "a forgotten peer is TCP-only until told otherwise");
    }

    #[test]
    fn a_bad_breaker_config_is_refused() {
        let tcp = ScriptedTransport::new(TransportKind::Tcp, nodes(&[]));
        let config = BreakerConfig { failures_to_open: 0, ..BreakerConfig::default() };
        let error = FabricSelector::new(tcp, config).unwrap_err();
        assert!(matches!(error, SelectorError::BadConfig { .. }), "{error:?}");
    }
}
