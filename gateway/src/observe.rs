//! What an operator watches: Prometheus metrics and health probes on the admin address.
//!
//! - [`Metrics`]: the node's registry. Request counters, latency histograms and byte counts
//!   per fabric operation come from [`MeteredHandler`], which wraps the chunk service;
//!   engine, device and connection figures are read from their sources at each scrape.
//! - [`AdminServer`]: plain HTTP/1.1 (hyper) serving `GET /metrics` (the OpenMetrics text
//!   format), `GET /healthz` (the process answers) and `GET /readyz` (every shard's device
//!   is usable, the metadata group has a leader and the node is not stopping; 503 and the
//!   failing check otherwise). Any
//!   other path is 404, any other method 405. At most [`ADMIN_CONNECTIONS_MAX`]
//!   connections are served at once; a client must send its headers within
//!   [`ADMIN_HEADER_TIMEOUT`].
//!
//! Labels name operations, statuses, shards and devices, never a tenant, a bucket, an
//! object or a peer's identity: an operator of a shared appliance sees load, not whose.
//! Nothing here reads a key or a payload byte.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use kiseki_engine::{CapacityLevel, DeviceState, EngineHandle};
use kiseki_fabric::{BoxFuture, ConnectionCounters, FabricRequest, FabricResponse, Handler, Peer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

/// Connections the admin server serves at once; more wait in the kernel's backlog.
pub const ADMIN_CONNECTIONS_MAX: usize = 16;

/// How long a client may take to send a request's headers.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `/readyz` and `/metrics` wait for the engine's figures.
const ENGINE_STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// Latency buckets: 50 µs to ~1.6 s, doubling.
const LATENCY_BUCKET_FIRST_S: f64 = 50e-6;
const LATENCY_BUCKETS: u16 = 16;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

/// An S3 operation (s3s's name; `none` for a request answered before one was known: by
/// the front's bounds or the signature check) and the HTTP status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct S3RequestLabels {
    op: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct S3OpLabels {
    op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    op: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    event: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(LATENCY_BUCKET_FIRST_S, 2.0, LATENCY_BUCKETS))
}

/// Where scrape-time figures come from.
#[derive(Clone)]
pub struct Sources {
    pub engine: EngineHandle,
    /// The fabric server's connection counters, once it serves.
    pub connections: Option<Arc<ConnectionCounters>>,
    /// The node's metadata group, if it has one: `/readyz` needs it to know a leader.
    pub metadata: Option<Arc<kiseki_consensus::MetadataGroup>>,
    /// The background re-seal's progress, if the node runs one.
    pub reseal: Option<Arc<crate::reseal::ResealCounters>>,
}

/// The node's metrics; see the module's notes.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<OpLabels, Histogram, fn() -> Histogram>,
    bytes_in: Family<OpLabels, Counter>,
    bytes_out: Family<OpLabels, Counter>,
    shard_chunks: Family<ShardLabels, Gauge>,
    shard_bytes_used: Family<ShardLabels, Gauge>,
    shard_bytes_total: Family<ShardLabels, Gauge>,
    shard_fill: Family<ShardLabels, Gauge>,
    shard_capacity_level: Family<ShardLabels, Gauge>,
    shard_device_state: Family<ShardLabels, Gauge>,
    shard_integrity_errors: Family<ShardLabels, Gauge>,
    shard_journal_fill: Family<ShardLabels, Gauge>,
    shard_pending_ops: Family<ShardLabels, Gauge>,
    connections: Family<ConnectionLabels, Gauge>,
    raft: RaftGauges,
    reseal: Family<ResealLabels, Gauge>,
    s3: S3Families,
    scrapes: Counter,
}

/// The S3 front end's requests, counted as they are answered.
struct S3Families {
    requests: Family<S3RequestLabels, Counter>,
    latency: Family<S3OpLabels, Histogram, fn() -> Histogram>,
    bytes_in: Family<S3OpLabels, Counter>,
    bytes_out: Family<S3OpLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResealLabels {
    figure: &'static str,
}

/// The metadata group as this node sees it, read at each scrape.
#[derive(Default)]
struct RaftGauges {
    term: Gauge,
    leader_known: Gauge,
    is_leader: Gauge,
    last_log_index: Gauge,
    applied_index: Gauge,
    voters: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kiseki");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: Family<OpLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let bytes_in = Family::<OpLabels, Counter>::default();
        let bytes_out = Family::<OpLabels, Counter>::default();
        let fabric = registry.sub_registry_with_prefix("fabric");
        fabric.register(
            "requests",
            "Fabric requests answered, by operation and status",
            requests.clone(),
        );
        fabric.register(
            "request_seconds",
            "Time from a request read to its response made, by operation",
            latency.clone(),
        );
        fabric.register("request_bytes", "Request bytes read, by operation", bytes_in.clone());
        fabric.register("response_bytes", "Response bytes made, by operation", bytes_out.clone());
        let connections = Family::<ConnectionLabels, Gauge>::default();
        fabric.register(
            "connection_events",
            "Fabric server connection events since start (opened, closed, closed_idle, \
             handshake_failed, frame_oversized, frame_malformed)",
            connections.clone(),
        );
        let engine = registry.sub_registry_with_prefix("engine");
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<ShardLabels, Gauge>::default();
            registry.register(name, help, family.clone());
            family
        };
        let shard_chunks = gauge(engine, "chunks", "Chunks stored, by shard");
        let shard_bytes_used = gauge(engine, "data_bytes_used", "Data area bytes in use, by shard");
        let shard_bytes_total = gauge(engine, "data_bytes_total", "Data area bytes, by shard");
        let shard_fill = gauge(engine, "fill_percent", "Data area fill level in percent, by shard");
        let shard_capacity_level = gauge(
            engine,
            "capacity_level",
            "Capacity level by shard: 0 normal, 1 warning, 2 critical (puts refused), 3 full",
        );
        let shard_device_state = gauge(
            engine,
            "device_state",
            "Device state by shard: 0 healthy, 1 degraded, 2 evacuating, 3 failed, 4 removed",
        );
        let shard_integrity_errors = gauge(
            engine,
            "integrity_errors",
            "Reads and scrubs whose CRC32C did not match, by shard, since start",
        );
        let shard_journal_fill =
            gauge(engine, "journal_fill_percent", "Journal fill level, by shard");
        let shard_pending_ops =
            gauge(engine, "pending_ops", "Puts and releases not yet durable, by shard");
        let reseal = Family::<ResealLabels, Gauge>::default();
        registry.register(
            "reseal",
            "The background re-seal: target_epoch, chunks examined, resealed, unreadable \
             (shredded tenants) and failed in the current pass, batches since start, and phase \
             (0 idle, 1 running, 2 paused, 3 done)",
            reseal.clone(),
        );
        let scrapes = Counter::default();
        registry.register("metrics_scrapes", "Scrapes of this endpoint", scrapes.clone());
        let s3 = S3Families {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
        };
        let s3_registry = registry.sub_registry_with_prefix("s3");
        s3_registry.register(
            "requests",
            "S3 requests answered, by operation and HTTP status",
            s3.requests.clone(),
        );
        s3_registry.register(
            "request_seconds",
            "Time from a request's headers to its response's, by operation",
            s3.latency.clone(),
        );
        s3_registry.register(
            "request_bytes",
            "Request body bytes declared, by operation",
            s3.bytes_in.clone(),
        );
        s3_registry.register(
            "response_bytes",
            "Response body bytes of known length, by operation",
            s3.bytes_out.clone(),
        );
        let raft = RaftGauges::default();
        let metadata = registry.sub_registry_with_prefix("raft");
        for (name, help, gauge) in [
            ("term", "The metadata group's current term", &raft.term),
            ("leader_known", "1 when this node knows the group's leader", &raft.leader_known),
            ("is_leader", "1 when this node is the group's leader", &raft.is_leader),
            ("last_log_index", "The last index in this node's log", &raft.last_log_index),
            ("applied_index", "The last index applied to the state machine", &raft.applied_index),
            ("voters", "Voters in the group's membership", &raft.voters),
        ] {
            metadata.register(name, help, gauge.clone());
        }
        Metrics {
            registry,
            requests,
            latency,
            bytes_in,
            bytes_out,
            shard_chunks,
            shard_bytes_used,
            shard_bytes_total,
            shard_fill,
            shard_capacity_level,
            shard_device_state,
            shard_integrity_errors,
            shard_journal_fill,
            shard_pending_ops,
            connections,
            raft,
            reseal,
            s3,
            scrapes,
        }
    }

    /// Counts one answered fabric request.
    fn record(
        &self,
        op: &'static str,
        status: &'static str,
        seconds: f64,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        self.requests.get_or_create(&RequestLabels { op, status }).inc();
        let op = OpLabels { op };
        self.latency.get_or_create(&op).observe(seconds);
        self.bytes_in.get_or_create(&op).inc_by(bytes_in);
        self.bytes_out.get_or_create(&op).inc_by(bytes_out);
    }

    /// Counts one answered S3 request (`crate::s3_front::Bounded` calls it).
    pub fn record_s3(&self, op: &str, status: u16, seconds: f64, bytes_in: u64, bytes_out: u64) {
        let labels = S3RequestLabels { op: op.to_owned(), status: status.to_string() };
        self.s3.requests.get_or_create(&labels).inc();
        let op = S3OpLabels { op: labels.op };
        self.s3.latency.get_or_create(&op).observe(seconds);
        self.s3.bytes_in.get_or_create(&op).inc_by(bytes_in);
        self.s3.bytes_out.get_or_create(&op).inc_by(bytes_out);
    }

    /// Reads the sources and renders the whole registry in the OpenMetrics text format.
    async fn render(&self, sources: &Sources) -> Result<String, String> {
        self.scrapes.inc();
        let stats = engine_stats(&sources.engine).await?;
        for (index, shard) in stats.iter().enumerate() {
            let labels = ShardLabels { shard: index.to_string() };
            let set = |family: &Family<ShardLabels, Gauge>, value: u64| {
                family.get_or_create(&labels).set(i64::try_from(value).unwrap_or(i64::MAX));
            };
            set(&self.shard_chunks, shard.chunks);
            set(&self.shard_bytes_used, shard.data_bytes_used);
            set(&self.shard_bytes_total, shard.data_bytes_total);
            set(&self.shard_fill, u64::from(shard.fill_percent));
            set(&self.shard_capacity_level, capacity_code(shard.capacity));
            set(&self.shard_device_state, device_state_code(shard.device_state));
            set(&self.shard_integrity_errors, shard.integrity_errors);
            set(&self.shard_journal_fill, u64::from(shard.journal_fill_percent));
            set(&self.shard_pending_ops, shard.pending_ops as u64);
        }
        if let Some(counters) = &sources.connections {
            let c = counters.stats();
            for (event, value) in [
                ("opened", c.connections_opened),
                ("closed", c.connections_closed),
                ("closed_idle", c.connections_closed_idle),
                ("handshake_failed", c.handshakes_failed),
                ("frame_oversized", c.frames_oversized),
                ("frame_malformed", c.frames_malformed),
            ] {
                let labels = ConnectionLabels { event: event.to_owned() };
                self.connections
                    .get_or_create(&labels)
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
        if let Some(group) = &sources.metadata {
            let metrics = group.raft().metrics().borrow().clone();
            let gauge = |gauge: &Gauge, value: u64| {
                gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
            };
            gauge(&self.raft.term, metrics.current_term);
            gauge(&self.raft.leader_known, u64::from(metrics.current_leader.is_some()));
            gauge(&self.raft.is_leader, u64::from(metrics.current_leader == Some(metrics.id)));
            gauge(&self.raft.last_log_index, metrics.last_log_index.unwrap_or(0));
            gauge(&self.raft.applied_index, metrics.last_applied.map_or(0, |id| id.index));
            let voters = metrics.membership_config.membership().voter_ids().count();
            gauge(&self.raft.voters, voters as u64);
        }
        if let Some(counters) = &sources.reseal {
            use std::sync::atomic::Ordering::Relaxed;
            for (figure, value) in [
                ("target_epoch", &counters.target_epoch),
                ("examined", &counters.examined),
                ("resealed", &counters.resealed),
                ("unreadable", &counters.unreadable),
                ("failed", &counters.failed),
                ("batches", &counters.batches),
                ("phase", &counters.phase),
            ] {
                let value = i64::try_from(value.load(Relaxed)).unwrap_or(i64::MAX);
                self.reseal.get_or_create(&ResealLabels { figure }).set(value);
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .map_err(|_| "encoding the metrics failed".to_owned())?;
        Ok(text)
    }
}

async fn engine_stats(engine: &EngineHandle) -> Result<Vec<kiseki_engine::Stats>, String> {
    match tokio::time::timeout(ENGINE_STATS_TIMEOUT, engine.stats()).await {
        Ok(Ok(stats)) => Ok(stats),
        Ok(Err(error)) => Err(format!("engine: {error}")),
        Err(_) => Err(format!("engine: no answer within {} s", ENGINE_STATS_TIMEOUT.as_secs())),
    }
}

fn capacity_code(level: CapacityLevel) -> u64 {
    match level {
        CapacityLevel::Normal => 0,
        CapacityLevel::Warning => 1,
        CapacityLevel::Critical => 2,
        CapacityLevel::Full => 3,
    }
}

fn device_state_code(state: DeviceState) -> u64 {
    match state {
        DeviceState::Healthy => 0,
        DeviceState::Degraded => 1,
        DeviceState::Evacuating => 2,
        DeviceState::Failed => 3,
        DeviceState::Removed => 4,
    }
}

/// A fabric [`Handler`] that counts and times every request it passes to `inner`.
pub struct MeteredHandler<H: ?Sized> {
    metrics: Arc<Metrics>,
    inner: Arc<H>,
}

impl<H: Handler + ?Sized> MeteredHandler<H> {
    pub fn new(metrics: Arc<Metrics>, inner: Arc<H>) -> MeteredHandler<H> {
        MeteredHandler { metrics, inner }
    }
}

impl<H: Handler + ?Sized> Handler for MeteredHandler<H> {
    fn handle<'a>(
        &'a self,
        peer: &'a Peer,
        request: FabricRequest,
    ) -> BoxFuture<'a, FabricResponse> {
        Box::pin(async move {
            let started = Instant::now();
            let op = request.op.name();
            let bytes_in = request.len_bytes() as u64;
            let response = self.inner.handle(peer, request).await;
            let bytes_out = response.len_bytes() as u64;
            let seconds = started.elapsed().as_secs_f64();
            self.metrics.record(op, response.status.name(), seconds, bytes_in, bytes_out);
            response
        })
    }
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("connections", &self.connections.is_some())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl<H: ?Sized> std::fmt::Debug for MeteredHandler<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredHandler").finish_non_exhaustive()
    }
}

/// The admin HTTP server; see the module's notes.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    shutdown: watch::Sender<bool>,
    accept_loop: JoinHandle<()>,
    served: Arc<AtomicU64>,
}

struct AdminContext {
    metrics: Arc<Metrics>,
    sources: Sources,
    stopping: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
}

impl AdminServer {
    /// Serves `listener` on the current tokio runtime until [`Self::shutdown`].
    pub fn start(
        listener: TcpListener,
        metrics: Arc<Metrics>,
        sources: Sources,
    ) -> std::io::Result<AdminServer> {
        let local_addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (shutdown, watch_shutdown) = watch::channel(false);
        let context = Arc::new(AdminContext {
            metrics,
            sources,
            stopping: Arc::clone(&stopping),
            served: Arc::clone(&served),
        });
        let accept_loop = tokio::spawn(accept_loop(listener, context, watch_shutdown));
        Ok(AdminServer { local_addr, stopping, shutdown, accept_loop, served })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// From now on `/readyz` answers 503 "stopping", so a load balancer drains the node
    /// while its requests in flight finish.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// HTTP requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Stops accepting and waits for the accept loop; connections in progress end with
    /// their runtime.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.accept_loop.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    context: Arc<AdminContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(ADMIN_CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            _ = shutdown.changed() => return,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "admin server: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let context = Arc::clone(&context);
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(|request| answer(Arc::clone(&context), request));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%error, "admin server: connection ended with an error");
            }
        });
    }
}

type Answer = Response<Full<Bytes>>;

async fn answer(
    context: Arc<AdminContext>,
    request: Request<Incoming>,
) -> Result<Answer, Infallible> {
    context.served.fetch_add(1, Ordering::Relaxed);
    let path = request.uri().path();
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
    if !known {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "not found: this port serves /metrics, /healthz and /readyz\n".to_owned(),
        ));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".to_owned());
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(response);
    }
    Ok(match path {
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => readiness(&context).await,
        _ => match context.metrics.render(&context.sources).await {
            Ok(body) => {
                let mut response = text(StatusCode::OK, body);
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        },
    })
}

/// 200 with one `ok` line per check when every check passes; 503 naming the failures.
async fn readiness(context: &AdminContext) -> Answer {
    let mut body = String::new();
    let mut ready = true;
    if context.stopping.load(Ordering::Relaxed) {
        ready = false;
        body.push_str("node: stopping\n");
    }
    if let Some(group) = &context.sources.metadata {
        let (leader, term) = {
            let metrics = group.raft().metrics();
            let metrics = metrics.borrow();
            (metrics.current_leader, metrics.current_term)
        };
        match leader {
            Some(leader) => {
                let _ = writeln!(body, "metadata: ok (leader node {leader}, term {term})");
            }
            None => {
                ready = false;
                let _ = writeln!(body, "metadata: no leader (term {term})");
            }
        }
    }
    match engine_stats(&context.sources.engine).await {
        Ok(stats) => {
            for (index, shard) in stats.iter().enumerate() {
                let usable =
                    matches!(shard.device_state, DeviceState::Healthy | DeviceState::Degraded);
                ready &= usable;
                let verdict = if usable { "ok" } else { "not usable" };
                let _ = writeln!(
                    body,
                    "shard {index}: {verdict} (device {:?}, capacity {:?})",
                    shard.device_state, shard.capacity
                );
            }
        }
        Err(reason) => {
            ready = false;
            let _ = writeln!(body, "{reason}");
        }
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    text(status, body)
}

fn text(status: StatusCode, body: String) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `PutChunk` → `put_chunk`: what each hand-written label must equal.
    fn snake_case(name: impl std::fmt::Debug) -> String {
        let mut label = String::new();
        for (i, c) in format!("{name:?}").chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                label.push('_');
            }
            label.push(c.to_ascii_lowercase());
        }
        label
    }

    #[test]
    fn operation_labels_are_snake_case() {
        use kiseki_proto::{Op, Status};
        for op in Op::ALL {
            assert_eq!(op.name(), snake_case(op));
        }
        for status in Status::ALL {
            assert_eq!(status.name(), snake_case(status));
        }
    }

    #[test]
    fn a_recorded_request_shows_in_the_text() {
        let metrics = Metrics::new();
        metrics.record("put_chunk", "ok", 0.003, 1 << 20, 0);
        metrics.record("put_chunk", "ok", 0.001, 1 << 20, 0);
        metrics.record("get_chunk", "not_found", 0.0001, 32, 0);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
        assert!(
            text.contains("kiseki_fabric_requests_total{op=\"put_chunk\",status=\"ok\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("kiseki_fabric_requests_total{op=\"get_chunk\",status=\"not_found\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kiseki_fabric_request_bytes_total{op=\"put_chunk\"} 2097152"),
            "{text}"
        );
        assert!(text.contains("kiseki_fabric_request_seconds_count{op=\"put_chunk\"} 2"), "{text}");
    }
}
