//! Framed, multiplexed connections over any byte stream (`AsyncRead + AsyncWrite`).
//!
//! Two sides, both built from a reader and a writer task over the split stream:
//! - [`ClientConnection`]: requests go out through a bounded queue to the writer task,
//!   each tagged with a fresh request id; the reader task hands each response to the
//!   oneshot its id is waiting on. At most `in_flight_max` requests wait at once (a
//!   semaphore; a full connection refuses at once, so a pool can pick another). A
//!   connection idle for its idle timeout closes itself.
//! - [`serve_connection`]: the reader reads requests (waiting for an in-flight permit before
//!   it reads a payload, so a fast peer is slowed by TCP, never by memory), runs each
//!   through a [`Handler`] in its own task, and the writer sends the responses in the
//!   order they finish.
//!
//! What it does not do: TLS, connecting, pooling, retries (`tcp.rs` and the selector do
//! those), or any interpretation of payloads.
//!
//! Invariants:
//! - a frame over the payload limit, a malformed header, a frame of the wrong kind, or a
//!   response to no request in flight closes the connection at once; the event is counted
//!   in [`ConnectionStats`] and logged; nothing a peer sends can panic either side;
//! - when a connection closes, every request waiting on it fails with the close reason
//!   (`TransportError::ConnectionLost`): none waits forever on a dead connection;
//! - on the serving side every request read gets exactly one response, even if its
//!   handler panics (a drop guard answers `Internal`), unless the connection dies first;
//! - every queue is bounded by `in_flight_max`, and a payload is allocated only after its
//!   length passed the limit.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use kiseki_proto::{FrameError, FrameHeader, FrameKind, Op, Status};
use kiseki_security::PeerIdentity;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter, ReadHalf, WriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::constants::{
    CLOSE_NOTIFY_TIMEOUT, FRAME_PAYLOAD_MAX_BYTES_DEFAULT, IN_FLIGHT_PER_CONNECTION_MAX,
    STREAM_BUFFER_BYTES,
};
use crate::frame::{self, ReadError};
use crate::transport::{BoxFuture, FabricRequest, FabricResponse, SharedBytes, TransportError};

/// The bounds of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Largest payload read or written; a larger frame closes the connection.
    pub payload_max_bytes: u32,
    /// Requests in flight at once, 1 to [`IN_FLIGHT_PER_CONNECTION_MAX`].
    pub in_flight_max: usize,
}

/// Serves requests: the node's side of the fabric. One handler serves every connection of
/// a server, so it must be shareable.
pub trait Handler: Send + Sync + 'static {
    /// Answers `request` from `peer`. Errors are responses too (a status and a short
    /// message); details belong in the log, not in the response.
    fn handle<'a>(
        &'a self,
        peer: &'a Peer,
        request: FabricRequest,
    ) -> BoxFuture<'a, FabricResponse>;
}

/// Who sent a request: the identity from its verified certificate, and its address.
#[derive(Debug, Clone)]
pub struct Peer {
    pub identity: PeerIdentity,
    /// `None` for a stream that is not a socket (in-process tests).
    pub addr: Option<SocketAddr>,
}

/// Counters shared by the connections of one transport or one server.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    connections_opened: AtomicU64,
    connections_closed: AtomicU64,
    connections_closed_idle: AtomicU64,
    handshakes_failed: AtomicU64,
    frames_oversized: AtomicU64,
    frames_malformed: AtomicU64,
    requests: AtomicU64,
}

/// A snapshot of [`ConnectionCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    pub connections_opened: u64,
    pub connections_closed: u64,
    /// Of the closed ones, those closed for being idle.
    pub connections_closed_idle: u64,
    /// TLS handshakes (or, on the client, the first round trip) that failed.
    pub handshakes_failed: u64,
    /// Frames announcing a payload over the limit (each closed its connection).
    pub frames_oversized: u64,
    /// Malformed frames: bad headers, wrong kinds, responses to nothing (each closed its
    /// connection).
    pub frames_malformed: u64,
    /// Requests sent (client; a TCP connection's first Ping included) or read (server).
    pub requests: u64,
}

/// The client side of one connection; see the module's notes. Dropping it closes the
/// connection (requests still waiting fail).
#[derive(Debug)]
pub struct ClientConnection {
    shared: Arc<ClientShared>,
    outgoing: mpsc::Sender<Outgoing>,
}

/// A request accepted by a connection: await its response with [`PendingResponse::wait`].
#[derive(Debug)]
pub struct PendingResponse {
    shared: Arc<ClientShared>,
    reply: oneshot::Receiver<FabricResponse>,
}

/// Why [`ClientConnection::try_call`] did not take a request; the request comes back.
#[derive(Debug)]
pub enum TryCallError {
    /// `in_flight_max` requests are waiting: try another connection.
    Full(FabricRequest),
    /// The connection is closed.
    Closed(FabricRequest),
}

#[derive(Debug)]
struct ClientShared {
    peer: String,
    limits: ConnectionLimits,
    idle_timeout: Option<Duration>,
    permits: Arc<Semaphore>,
    state: Mutex<ClientState>,
    stop: watch::Sender<bool>,
    counters: Arc<ConnectionCounters>,
}

#[derive(Debug)]
struct ClientState {
    /// `Some(reason)` once closed; nothing is accepted after.
    closed: Option<String>,
    next_request_id: u64,
    pending: HashMap<u64, Waiting>,
    last_activity: Instant,
}

#[derive(Debug)]
struct Waiting {
    op: Op,
    reply: oneshot::Sender<FabricResponse>,
    /// Released when the response arrives or the connection closes.
    _permit: OwnedSemaphorePermit,
}

#[derive(Debug)]
struct Outgoing {
    header: FrameHeader,
    payload: Vec<u8>,
    shared: Option<SharedBytes>,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            payload_max_bytes: FRAME_PAYLOAD_MAX_BYTES_DEFAULT,
            in_flight_max: IN_FLIGHT_PER_CONNECTION_MAX,
        }
    }
}

impl ConnectionLimits {
    fn check(&self) {
        assert!(self.in_flight_max > 0, "a connection needs room for one request");
        assert!(
            self.in_flight_max <= IN_FLIGHT_PER_CONNECTION_MAX,
            "in-flight bound {} over IN_FLIGHT_PER_CONNECTION_MAX",
            self.in_flight_max
        );
    }
}

impl ClientConnection {
    /// Starts the reader and writer tasks over `stream` (on the current tokio runtime).
    /// `peer` names the other end in errors and logs. With `idle_timeout`, the connection
    /// closes itself after that long with no request in flight.
    pub fn start<S>(
        stream: S,
        peer: String,
        limits: ConnectionLimits,
        idle_timeout: Option<Duration>,
        counters: Arc<ConnectionCounters>,
    ) -> ClientConnection
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        limits.check();
        let (outgoing, queue) = mpsc::channel(limits.in_flight_max);
        let shared = Arc::new(ClientShared {
            peer,
            limits,
            idle_timeout,
            permits: Arc::new(Semaphore::new(limits.in_flight_max)),
            state: Mutex::new(ClientState {
                closed: None,
                next_request_id: 1,
                pending: HashMap::with_capacity(limits.in_flight_max),
                last_activity: Instant::now(),
            }),
            stop: watch::Sender::new(false),
            counters,
        });
        shared.counters.connections_opened.fetch_add(1, Ordering::Relaxed);
        let (read_half, write_half) = tokio::io::split(stream);
        tokio::spawn(client_reader(Arc::clone(&shared), read_half));
        tokio::spawn(client_writer(Arc::clone(&shared), write_half, queue));
        ClientConnection { shared, outgoing }
    }

    /// Queues `request` if the connection has room; the response arrives through the
    /// returned [`PendingResponse`]. Never waits. The caller checks the payload against
    /// `payload_max_bytes` first: a larger one is a programmer error (a panic).
    pub fn try_call(&self, request: FabricRequest) -> Result<PendingResponse, TryCallError> {
        let len_bytes = u32::try_from(request.len_bytes()).ok();
        let len_bytes = len_bytes.filter(|len| *len <= self.shared.limits.payload_max_bytes);
        let len_bytes = len_bytes.expect("callers check a request against the payload limit");
        let permit = match Arc::clone(&self.shared.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => return Err(TryCallError::Full(request)),
            Err(TryAcquireError::Closed) => return Err(TryCallError::Closed(request)),
        };
        let mut state = self.shared.lock();
        if state.closed.is_some() {
            return Err(TryCallError::Closed(request));
        }
        let request_id = state.next_request_id;
        state.next_request_id += 1;
        let header = FrameHeader::request(request.op, request_id, len_bytes);
        let (reply, receiver) = oneshot::channel();
        let op = request.op;
        let outgoing = Outgoing { header, payload: request.payload, shared: request.shared };
        match self.outgoing.try_send(outgoing) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(outgoing)) => {
                let request =
                    FabricRequest { op, payload: outgoing.payload, shared: outgoing.shared };
                return Err(TryCallError::Full(request));
            }
            Err(mpsc::error::TrySendError::Closed(outgoing)) => {
                let request =
                    FabricRequest { op, payload: outgoing.payload, shared: outgoing.shared };
                return Err(TryCallError::Closed(request));
            }
        }
        state.pending.insert(request_id, Waiting { op, reply, _permit: permit });
        state.last_activity = Instant::now();
        drop(state);
        self.shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        Ok(PendingResponse { shared: Arc::clone(&self.shared), reply: receiver })
    }

    /// Whether the connection is closed (it takes no more requests).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed.is_some()
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().pending.len()
    }

    /// Closes the connection now; requests still waiting fail with `reason`.
    pub fn close(&self, reason: &str) {
        self.shared.close(reason.to_owned());
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        self.shared.close("the connection was dropped".to_owned());
    }
}

impl PendingResponse {
    /// The response, or `ConnectionLost` if the connection closed first.
    pub async fn wait(self) -> Result<FabricResponse, TransportError> {
        match self.reply.await {
            Ok(response) => Ok(response),
            Err(_) => Err(TransportError::ConnectionLost {
                peer: self.shared.peer.clone(),
                reason: self.shared.close_reason(),
            }),
        }
    }
}

impl ClientShared {
    fn lock(&self) -> MutexGuard<'_, ClientState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes once: records why, fails every waiting request, stops both tasks.
    fn close(&self, reason: String) {
        let pending = {
            let mut state = self.lock();
            if state.closed.is_some() {
                return;
            }
            tracing::debug!(peer = %self.peer, %reason, "fabric connection closed");
            state.closed = Some(reason);
            std::mem::take(&mut state.pending)
        };
        // Dropping the reply senders wakes every waiter with the close reason.
        drop(pending);
        self.permits.close();
        self.stop.send_replace(true);
        self.counters.connections_closed.fetch_add(1, Ordering::Relaxed);
    }

    fn close_reason(&self) -> String {
        let state = self.lock();
        state.closed.clone().unwrap_or_else(|| "the connection is closing".to_owned())
    }

    /// When the connection counts as idle if nothing happens before; `None` without an
    /// idle timeout.
    fn idle_deadline(&self) -> Option<Instant> {
        let idle_timeout = self.idle_timeout?;
        let state = self.lock();
        if state.pending.is_empty() {
            Some(state.last_activity + idle_timeout)
        } else {
            Some(Instant::now() + idle_timeout)
        }
    }

    /// Closes the connection if it has been idle for its idle timeout. Decided under the
    /// state lock, so a request is either accepted before (and the connection is not idle)
    /// or refused after (and goes to another connection).
    fn close_if_idle(&self) -> bool {
        let Some(idle_timeout) = self.idle_timeout else { return false };
        {
            let state = self.lock();
            let idle = state.pending.is_empty() && state.last_activity.elapsed() >= idle_timeout;
            if !idle || state.closed.is_some() {
                return false;
            }
        }
        self.counters.connections_closed_idle.fetch_add(1, Ordering::Relaxed);
        self.close(format!("idle for {} ms", idle_timeout.as_millis()));
        true
    }
}

async fn client_reader<S>(shared: Arc<ClientShared>, read_half: ReadHalf<S>)
where
    S: AsyncRead + AsyncWrite,
{
    let mut stop = shared.stop.subscribe();
    let mut reader = BufReader::with_capacity(STREAM_BUFFER_BYTES, read_half);
    let reason = tokio::select! {
        biased;
        _ = signalled(&mut stop) => return,
        reason = read_responses(&shared, &mut reader) => reason,
    };
    shared.close(reason);
}

/// Reads responses until the stream ends or breaks a rule; returns why it stopped.
async fn read_responses<R>(shared: &ClientShared, reader: &mut R) -> String
where
    R: AsyncRead + Unpin,
{
    let counters = &shared.counters;
    let peer = &shared.peer;
    loop {
        let header = match frame::read_header(reader, shared.limits.payload_max_bytes).await {
            Ok(Some(header)) => header,
            Ok(None) => return "the peer closed the connection".to_owned(),
            Err(error) => return refuse_frame(counters, peer, error),
        };
        if header.kind != FrameKind::Response {
            return malformed(counters, peer, "a request frame where a response was due");
        }
        let expected = shared.lock().pending.get(&header.request_id).map(|waiting| waiting.op);
        if expected != Some(header.op) {
            return malformed(counters, peer, "a response to no request in flight");
        }
        let payload = match frame::read_payload(reader, &header).await {
            Ok(payload) => payload,
            Err(error) => return format!("read failed: {error}"),
        };
        let waiting = {
            let mut state = shared.lock();
            state.last_activity = Instant::now();
            state.pending.remove(&header.request_id)
        };
        if let Some(waiting) = waiting {
            // The caller may have stopped waiting (a timeout); the response is dropped.
            let _ = waiting.reply.send(FabricResponse::new(header.status, payload));
        }
    }
}

async fn client_writer<S>(
    shared: Arc<ClientShared>,
    write_half: WriteHalf<S>,
    mut queue: mpsc::Receiver<Outgoing>,
) where
    S: AsyncRead + AsyncWrite,
{
    let mut stop = shared.stop.subscribe();
    let mut writer = BufWriter::with_capacity(STREAM_BUFFER_BYTES, write_half);
    loop {
        let idle_deadline = shared.idle_deadline();
        let idle = async {
            match idle_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = signalled(&mut stop) => break,
            outgoing = queue.recv() => {
                let Some(outgoing) = outgoing else { break };
                if let Err(error) = write_batch(&mut writer, &mut queue, outgoing).await {
                    shared.close(format!("write failed: {error}"));
                    break;
                }
            }
            () = idle => {
                if shared.close_if_idle() {
                    break;
                }
            }
        }
    }
    shared.close("the connection is closing".to_owned());
    let _ = tokio::time::timeout(CLOSE_NOTIFY_TIMEOUT, writer.shutdown()).await;
}

/// A frame waiting in a writer's queue: requests on the client side, responses (holding
/// their in-flight permit until written) on the serving side.
trait QueuedFrame {
    fn header(&self) -> &FrameHeader;
    /// The payload's own bytes, then the shared ones (written from where they lie).
    fn payload(&self) -> (&[u8], &[u8]);
}

impl QueuedFrame for Outgoing {
    fn header(&self) -> &FrameHeader {
        &self.header
    }

    fn payload(&self) -> (&[u8], &[u8]) {
        (&self.payload, self.shared.as_ref().map_or(&[], SharedBytes::as_bytes))
    }
}

/// Writes `first` and whatever else is queued, each dropped (releasing what it holds) once
/// written, then flushes once.
async fn write_batch<W, F>(
    writer: &mut W,
    queue: &mut mpsc::Receiver<F>,
    first: F,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
    F: QueuedFrame,
{
    let (payload, shared) = first.payload();
    frame::write_frame(writer, first.header(), payload, shared).await?;
    drop(first);
    while let Ok(next) = queue.try_recv() {
        let (payload, shared) = next.payload();
        frame::write_frame(writer, next.header(), payload, shared).await?;
    }
    writer.flush().await
}

// ---------------------------------------------------------------------------------------
// The serving side.

/// A response on its way to the writer, holding its request's in-flight permit until the
/// writer has written it.
#[derive(Debug)]
struct ServerOutgoing {
    header: FrameHeader,
    payload: Vec<u8>,
    shared: Option<SharedBytes>,
    _permit: OwnedSemaphorePermit,
}

impl QueuedFrame for ServerOutgoing {
    fn header(&self) -> &FrameHeader {
        &self.header
    }

    fn payload(&self) -> (&[u8], &[u8]) {
        (&self.payload, self.shared.as_ref().map_or(&[], SharedBytes::as_bytes))
    }
}

/// The one response a request gets: sent by [`ResponseSlot::send`], or `Internal` by its
/// drop if the handler never answered (it panicked, or its task was dropped).
#[derive(Debug)]
struct ResponseSlot {
    op: Op,
    request_id: u64,
    payload_max_bytes: u32,
    route: Option<(mpsc::Sender<ServerOutgoing>, OwnedSemaphorePermit)>,
}

/// Serves requests on `stream` from `peer` with `handler` until the peer closes, breaks a
/// rule, or `shutdown` turns true. On shutdown it stops reading, lets the requests it has
/// read finish and their responses go out, then closes the stream.
pub async fn serve_connection<S, H>(
    stream: S,
    peer: Arc<Peer>,
    handler: Arc<H>,
    limits: ConnectionLimits,
    counters: Arc<ConnectionCounters>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler + ?Sized,
{
    limits.check();
    counters.connections_opened.fetch_add(1, Ordering::Relaxed);
    let (read_half, write_half) = tokio::io::split(stream);
    let (outgoing, queue) = mpsc::channel(limits.in_flight_max);
    let broken = watch::Sender::new(false);
    // Aborted if this future is dropped (a server dropped without a graceful shutdown), so
    // the stream closes with it.
    let mut writer = AbortOnDrop(tokio::spawn(server_writer(write_half, queue, broken.clone())));
    let mut reader = BufReader::with_capacity(STREAM_BUFFER_BYTES, read_half);
    let mut broken_rx = broken.subscribe();
    let served = ServeContext { peer, handler, limits, counters: Arc::clone(&counters), outgoing };
    let outcome = tokio::select! {
        biased;
        _ = signalled(&mut broken_rx) => Outcome::Broken,
        _ = signalled(&mut shutdown) => Outcome::Drain,
        outcome = served.read_requests(&mut reader) => outcome,
    };
    // The writer ends once every response slot is gone (drained) or at once (broken).
    drop(served);
    if outcome == Outcome::Broken {
        broken.send_replace(true);
    }
    let _ = (&mut writer.0).await;
    counters.connections_closed.fetch_add(1, Ordering::Relaxed);
}

/// A task that ends when its handle is dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Stop reading, finish what was read.
    Drain,
    /// Close now: the stream or the peer failed.
    Broken,
}

struct ServeContext<H: ?Sized> {
    peer: Arc<Peer>,
    handler: Arc<H>,
    limits: ConnectionLimits,
    counters: Arc<ConnectionCounters>,
    outgoing: mpsc::Sender<ServerOutgoing>,
}

impl<H: Handler + ?Sized> ServeContext<H> {
    async fn read_requests<R>(&self, reader: &mut R) -> Outcome
    where
        R: AsyncRead + Unpin,
    {
        let permits = Arc::new(Semaphore::new(self.limits.in_flight_max));
        let peer = self.peer.to_string();
        let counters = &self.counters;
        loop {
            let header = match frame::read_header(reader, self.limits.payload_max_bytes).await {
                Ok(Some(header)) => header,
                Ok(None) => return Outcome::Drain,
                Err(error) => {
                    refuse_frame(counters, &peer, error);
                    return Outcome::Broken;
                }
            };
            if header.kind != FrameKind::Request {
                malformed(counters, &peer, "a response frame where a request was due");
                return Outcome::Broken;
            }
            let permit = Arc::clone(&permits).acquire_owned().await.expect("never closed");
            let payload = match frame::read_payload(reader, &header).await {
                Ok(payload) => payload,
                Err(error) => {
                    tracing::debug!(%peer, %error, "fabric connection broke mid-request");
                    return Outcome::Broken;
                }
            };
            counters.requests.fetch_add(1, Ordering::Relaxed);
            self.spawn_request(header, payload, permit);
        }
    }

    fn spawn_request(&self, header: FrameHeader, payload: Vec<u8>, permit: OwnedSemaphorePermit) {
        let slot = ResponseSlot {
            op: header.op,
            request_id: header.request_id,
            payload_max_bytes: self.limits.payload_max_bytes,
            route: Some((self.outgoing.clone(), permit)),
        };
        let handler = Arc::clone(&self.handler);
        let peer = Arc::clone(&self.peer);
        let request = FabricRequest::new(header.op, payload);
        tokio::spawn(async move {
            let response = handler.handle(&peer, request).await;
            slot.send(response);
        });
    }
}

impl ResponseSlot {
    fn send(mut self, response: FabricResponse) {
        self.route_response(response);
    }

    fn route_response(&mut self, response: FabricResponse) {
        let Some((outgoing, permit)) = self.route.take() else { return };
        let total_bytes = response.len_bytes();
        let FabricResponse { mut status, mut payload, mut shared } = response;
        let len_bytes = match u32::try_from(total_bytes) {
            Ok(len) if len <= self.payload_max_bytes => len,
            _ => {
                tracing::error!(
                    op = ?self.op,
                    len_bytes = total_bytes,
                    max_bytes = self.payload_max_bytes,
                    "a handler's response is over the frame limit; answering Internal"
                );
                status = Status::Internal;
                payload = Vec::new();
                shared = None;
                0
            }
        };
        let header = FrameHeader::response(self.op, self.request_id, status, len_bytes);
        // The queue holds at most one response per permit, and this one holds a permit:
        // it has room. It is closed only when the connection is gone.
        if let Err(mpsc::error::TrySendError::Full(_)) =
            outgoing.try_send(ServerOutgoing { header, payload, shared, _permit: permit })
        {
            tracing::error!("response queue full despite holding a permit; response dropped");
        }
    }
}

impl Drop for ResponseSlot {
    fn drop(&mut self) {
        if self.route.is_some() {
            tracing::error!(op = ?self.op, "a request ended without a response; answering");
            let message = kiseki_proto::error_message("internal error").as_bytes().to_vec();
            self.route_response(FabricResponse::new(Status::Internal, message));
        }
    }
}

async fn server_writer<S>(
    write_half: WriteHalf<S>,
    mut queue: mpsc::Receiver<ServerOutgoing>,
    broken: watch::Sender<bool>,
) where
    S: AsyncRead + AsyncWrite,
{
    let mut broken_rx = broken.subscribe();
    let mut writer = BufWriter::with_capacity(STREAM_BUFFER_BYTES, write_half);
    loop {
        let outgoing = tokio::select! {
            biased;
            _ = signalled(&mut broken_rx) => return,
            outgoing = queue.recv() => outgoing,
        };
        let Some(first) = outgoing else { break };
        if let Err(error) = write_batch(&mut writer, &mut queue, first).await {
            tracing::debug!(%error, "fabric response write failed; closing");
            broken.send_replace(true);
            return;
        }
    }
    let _ = tokio::time::timeout(CLOSE_NOTIFY_TIMEOUT, writer.shutdown()).await;
}

// ---------------------------------------------------------------------------------------
// Shared helpers.

/// Resolves once `signal` is true (or its sender is gone).
pub(crate) async fn signalled(signal: &mut watch::Receiver<bool>) {
    let _ = signal.wait_for(|set| *set).await;
}

/// Counts and logs a frame that could not be read; returns the close reason.
fn refuse_frame(counters: &ConnectionCounters, peer: &str, error: ReadError) -> String {
    match error {
        ReadError::Header(FrameError::Oversized { len_bytes, max_bytes }) => {
            counters.frames_oversized.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                %peer,
                len_bytes,
                max_bytes,
                "oversized fabric frame; closing the connection"
            );
            format!("oversized frame: {len_bytes} bytes over the {max_bytes}-byte limit")
        }
        ReadError::Header(error) => malformed(counters, peer, &error.to_string()),
        ReadError::Io(error) => format!("read failed: {error}"),
    }
}

fn malformed(counters: &ConnectionCounters, peer: &str, what: &str) -> String {
    counters.frames_malformed.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(%peer, %what, "malformed fabric frame; closing the connection");
    format!("protocol error: {what}")
}

impl ConnectionCounters {
    pub fn stats(&self) -> ConnectionStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ConnectionStats {
            connections_opened: load(&self.connections_opened),
            connections_closed: load(&self.connections_closed),
            connections_closed_idle: load(&self.connections_closed_idle),
            handshakes_failed: load(&self.handshakes_failed),
            frames_oversized: load(&self.frames_oversized),
            frames_malformed: load(&self.frames_malformed),
            requests: load(&self.requests),
        }
    }

    pub(crate) fn count_handshake_failure(&self) {
        self.handshakes_failed.fetch_add(1, Ordering::Relaxed);
    }
}

impl ConnectionStats {
    /// Connections open now.
    pub fn connections_open(&self) -> u64 {
        self.connections_opened.saturating_sub(self.connections_closed)
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            Some(addr) => write!(f, "{addr} {}", self.identity),
            None => write!(f, "{}", self.identity),
        }
    }
}

impl fmt::Display for TryCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryCallError::Full(_) => f.write_str("the connection's in-flight bound is reached"),
            TryCallError::Closed(_) => f.write_str("the connection is closed"),
        }
    }
}

#[cfg(test)]
mod tests;
