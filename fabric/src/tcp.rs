//! The TCP transport: TLS 1.3 with mutual authentication, pooled persistent connections,
//! and the server that answers it.
//!
//! [`TcpTransport`] (client): per endpoint a pool of up to `max_per_endpoint` connections,
//! each a [`ClientConnection`] over tokio-rustls with the configuration of
//! [`TlsContext::client_config`] (the cluster CA, this node's certificate, the CRL) and
//! TCP_NODELAY. A request goes to an idle connection if there is one, else to a new one
//! while the pool is below its bound, else to the least loaded connection with room; with
//! every connection full it is refused at once (`TransportError::Busy`). A new connection
//! makes one round trip (a Ping; any answer will do) before it takes requests: in TLS 1.3
//! the server judges the client's certificate after the client's handshake has finished,
//! so without it a refused certificate would surface as a lost request instead of a
//! handshake error. A connection idle for `idle_timeout` closes itself.
//!
//! [`TcpServer`]: an accept loop over a `TcpListener` with
//! [`TlsContext::server_config`] (client certificate required, CRL in force at each
//! handshake), TCP_NODELAY, a bounded number of connections, the peer's
//! [`PeerIdentity`](kiseki_security::PeerIdentity) derived from its verified chain, and
//! every request through a [`Handler`]; a graceful shutdown stops accepting, lets the
//! requests already read finish, then closes.
//!
//! What this does not do: choose between transports or retry (the selector does),
//! authorize (the handler does: it gets the identity with each request), or re-read the
//! CRL (the owner of the [`TlsContext`] runs its poller). A revocation takes effect at the
//! next handshake: a connection established before it lives on until it closes (idle
//! timeout, either side's shutdown).
//!
//! Invariants:
//! - no byte of a request leaves before the TLS handshake, and no response is served to a
//!   peer without a verified certificate chain and identity;
//! - at most `max_per_endpoint` connections per endpoint, [`ENDPOINTS_MAX`] endpoints,
//!   `in_flight_max` requests per connection, `connections_max` connections per server.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use kiseki_proto::Op;
use kiseki_security::{PkiError, TlsContext};
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::connection::{
    ClientConnection, ConnectionCounters, ConnectionLimits, ConnectionStats, Handler, Peer,
    PendingResponse, TryCallError, serve_connection, signalled,
};
use crate::constants::{
    CONNECT_TIMEOUT_DEFAULT, ENDPOINTS_MAX, HANDSHAKE_TIMEOUT_DEFAULT, IDLE_TIMEOUT_DEFAULT,
    MAX_PER_ENDPOINT_DEFAULT, MAX_PER_ENDPOINT_MAX, REQUEST_TIMEOUT_DEFAULT,
    SERVER_CONNECTIONS_MAX_DEFAULT, SHUTDOWN_GRACE_DEFAULT,
};
use crate::transport::{
    BoxFuture, Endpoint, FabricRequest, FabricResponse, Transport, TransportError, TransportKind,
};

/// How a [`TcpTransport`] connects and pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpConfig {
    /// Connections kept to one endpoint, 1 to [`MAX_PER_ENDPOINT_MAX`].
    pub max_per_endpoint: usize,
    /// A connection with nothing in flight for this long closes.
    pub idle_timeout: Duration,
    /// TCP connect, TLS handshake and the first round trip of a new connection.
    pub connect_timeout: Duration,
    /// From a request's send to its response.
    pub request_timeout: Duration,
    pub limits: ConnectionLimits,
}

/// The client side of the TCP transport; see the module's notes.
pub struct TcpTransport {
    config: TcpConfig,
    connector: TlsConnector,
    pools: Mutex<Pools>,
    counters: Arc<ConnectionCounters>,
}

#[derive(Debug, Default)]
struct Pools {
    closed: bool,
    by_endpoint: HashMap<Endpoint, Pool>,
}

#[derive(Debug, Default)]
struct Pool {
    connections: Vec<Arc<ClientConnection>>,
    /// Connections being set up; they count against `max_per_endpoint`.
    connecting: usize,
    /// Woken when a connection attempt ends.
    changed: Arc<Notify>,
}

/// What to do with a request, decided under the pool lock.
enum Step {
    Sent(PendingResponse),
    Connect(FabricRequest),
    Wait(tokio::sync::futures::OwnedNotified, FabricRequest),
}

impl Default for TcpConfig {
    fn default() -> TcpConfig {
        TcpConfig {
            max_per_endpoint: MAX_PER_ENDPOINT_DEFAULT,
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            limits: ConnectionLimits::default(),
        }
    }
}

impl TcpTransport {
    /// A transport presenting `tls`'s certificate and trusting its CA and CRL.
    pub fn new(tls: &TlsContext, config: TcpConfig) -> Result<TcpTransport, PkiError> {
        assert!(
            (1..=MAX_PER_ENDPOINT_MAX).contains(&config.max_per_endpoint),
            "max_per_endpoint {} must be 1 to {MAX_PER_ENDPOINT_MAX}",
            config.max_per_endpoint
        );
        let connector = TlsConnector::from(Arc::new(tls.client_config()?));
        Ok(TcpTransport {
            config,
            connector,
            pools: Mutex::new(Pools::default()),
            counters: Arc::new(ConnectionCounters::default()),
        })
    }

    pub fn config(&self) -> &TcpConfig {
        &self.config
    }

    pub fn stats(&self) -> ConnectionStats {
        self.counters.stats()
    }

    /// Open connections to `endpoint` in the pool now.
    pub fn connections(&self, endpoint: &Endpoint) -> usize {
        let pools = self.lock();
        let Some(pool) = pools.by_endpoint.get(endpoint) else { return 0 };
        pool.connections.iter().filter(|connection| !connection.is_closed()).count()
    }

    /// Closes every connection (requests in flight fail with `ConnectionLost`) and refuses
    /// further calls with `TransportError::Closed`.
    pub fn close(&self) {
        let pools = {
            let mut pools = self.lock();
            pools.closed = true;
            std::mem::take(&mut pools.by_endpoint)
        };
        for pool in pools.into_values() {
            pool.changed.notify_waiters();
            for connection in pool.connections {
                connection.close("the transport is shut down");
            }
        }
    }

    async fn call_inner(
        &self,
        peer: &Endpoint,
        request: FabricRequest,
    ) -> Result<FabricResponse, TransportError> {
        let max_bytes = self.config.limits.payload_max_bytes;
        let len_bytes = request.len_bytes();
        let fits = u32::try_from(len_bytes).is_ok_and(|len| len <= max_bytes);
        if !fits {
            return Err(TransportError::Oversized { len_bytes, max_bytes });
        }
        let pending = self.dispatch(peer, request).await?;
        match tokio::time::timeout(self.config.request_timeout, pending.wait()).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout { peer: peer.node.clone() }),
        }
    }

    /// Puts `request` on a connection to `peer`, connecting first if the pool says so.
    async fn dispatch(
        &self,
        peer: &Endpoint,
        mut request: FabricRequest,
    ) -> Result<PendingResponse, TransportError> {
        let deadline = Instant::now() + self.config.connect_timeout;
        loop {
            request = match self.step(peer, request)? {
                Step::Sent(pending) => return Ok(pending),
                Step::Connect(request) => {
                    let connected = self.connect(peer, deadline).await;
                    self.connected(peer, connected)?;
                    request
                }
                Step::Wait(changed, request) => {
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        return Err(TransportError::Timeout { peer: peer.node.clone() });
                    }
                    request
                }
            };
        }
    }

    fn step(&self, peer: &Endpoint, mut request: FabricRequest) -> Result<Step, TransportError> {
        let max_per_endpoint = self.config.max_per_endpoint;
        let mut pools = self.lock();
        if pools.closed {
            return Err(TransportError::Closed);
        }
        let endpoints = pools.by_endpoint.len();
        if endpoints >= ENDPOINTS_MAX && !pools.by_endpoint.contains_key(peer) {
            pools.by_endpoint.retain(|_, pool| pool.is_live());
        }
        if pools.by_endpoint.len() >= ENDPOINTS_MAX && !pools.by_endpoint.contains_key(peer) {
            return Err(TransportError::Busy { peer: peer.node.clone() });
        }
        let pool = pools.by_endpoint.entry(peer.clone()).or_default();
        pool.connections.retain(|connection| !connection.is_closed());
        let mut by_load: Vec<(usize, &Arc<ClientConnection>)> = pool
            .connections
            .iter()
            .map(|connection| (connection.in_flight(), connection))
            .collect();
        by_load.sort_by_key(|(in_flight, _)| *in_flight);
        let room_to_grow = pool.connections.len() + pool.connecting < max_per_endpoint;
        for (in_flight, connection) in by_load {
            if in_flight > 0 && room_to_grow {
                break;
            }
            match connection.try_call(request) {
                Ok(pending) => return Ok(Step::Sent(pending)),
                Err(TryCallError::Full(back) | TryCallError::Closed(back)) => request = back,
            }
        }
        if room_to_grow {
            pool.connecting += 1;
            return Ok(Step::Connect(request));
        }
        if pool.connecting > 0 {
            return Ok(Step::Wait(Arc::clone(&pool.changed).notified_owned(), request));
        }
        Err(TransportError::Busy { peer: peer.node.clone() })
    }

    /// Connects to `peer`: TCP, TCP_NODELAY, TLS, then one Ping round trip.
    async fn connect(
        &self,
        peer: &Endpoint,
        deadline: Instant,
    ) -> Result<ClientConnection, TransportError> {
        let attempt = async {
            let tcp = TcpStream::connect(peer.addr).await.map_err(|e| connect_error(peer, &e))?;
            tcp.set_nodelay(true).map_err(|e| connect_error(peer, &e))?;
            let name = ServerName::try_from(peer.server_name.clone()).map_err(|_| {
                TransportError::Connect {
                    peer: peer.node.clone(),
                    reason: format!("{:?} is not a DNS name or IP address", peer.server_name),
                }
            })?;
            let tls = self.connector.connect(name, tcp).await.map_err(|error| {
                TransportError::Handshake { peer: peer.node.clone(), reason: error.to_string() }
            })?;
            let connection = ClientConnection::start(
                tls,
                peer.node.clone(),
                self.config.limits,
                Some(self.config.idle_timeout),
                Arc::clone(&self.counters),
            );
            let ping = FabricRequest::new(Op::Ping, Vec::new());
            let accepted = match connection.try_call(ping) {
                Ok(pending) => pending.wait().await.map(drop),
                Err(error) => Err(TransportError::ConnectionLost {
                    peer: peer.node.clone(),
                    reason: error.to_string(),
                }),
            };
            match accepted {
                Ok(()) => Ok(connection),
                Err(TransportError::ConnectionLost { reason, .. }) => {
                    Err(TransportError::Handshake { peer: peer.node.clone(), reason })
                }
                Err(error) => Err(error),
            }
        };
        let result = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout { peer: peer.node.clone() }),
        };
        if let Err(error) = &result {
            if matches!(error, TransportError::Handshake { .. } | TransportError::Timeout { .. }) {
                self.counters.count_handshake_failure();
            }
            tracing::warn!(peer = %peer.node, addr = %peer.addr, %error, "fabric connect failed");
        }
        result
    }

    /// Ends a connection attempt: the pool gets the connection (or the slot back), and
    /// whoever waits for it is woken.
    fn connected(
        &self,
        peer: &Endpoint,
        connected: Result<ClientConnection, TransportError>,
    ) -> Result<(), TransportError> {
        let mut pools = self.lock();
        if pools.closed {
            // `close` took the pools and woke their waiters.
            if let Ok(connection) = connected {
                connection.close("the transport is shut down");
            }
            return Err(TransportError::Closed);
        }
        let pool = pools.by_endpoint.get_mut(peer).expect("a pool connecting is never dropped");
        assert!(pool.connecting > 0, "a connection attempt ends that was counted");
        pool.connecting -= 1;
        pool.changed.notify_waiters();
        pool.connections.push(Arc::new(connected?));
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Pools> {
        self.pools.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Whether the pool holds anything worth keeping: a connection or an attempt.
    fn is_live(&self) -> bool {
        self.connecting > 0 || self.connections.iter().any(|connection| !connection.is_closed())
    }
}

impl Transport for TcpTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Tcp
    }

    fn call<'a>(
        &'a self,
        peer: &'a Endpoint,
        request: FabricRequest,
    ) -> BoxFuture<'a, Result<FabricResponse, TransportError>> {
        Box::pin(self.call_inner(peer, request))
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.close();
    }
}

fn connect_error(peer: &Endpoint, error: &io::Error) -> TransportError {
    TransportError::Connect { peer: peer.node.clone(), reason: error.to_string() }
}

// ---------------------------------------------------------------------------------------
// The server.

/// How a [`TcpServer`] serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpServerConfig {
    pub limits: ConnectionLimits,
    /// Connections served at once; more wait in the listen backlog.
    pub connections_max: usize,
    /// A TLS handshake not done by then is dropped.
    pub handshake_timeout: Duration,
    /// How long [`TcpServer::shutdown`] lets requests already read finish.
    pub shutdown_grace: Duration,
}

/// A running server: the accept loop and its connections; see the module's notes.
#[derive(Debug)]
pub struct TcpServer {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    accept_loop: JoinHandle<()>,
    counters: Arc<ConnectionCounters>,
}

/// Why a server did not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServerStartError {
    Tls(PkiError),
    Io(io::Error),
}

impl Default for TcpServerConfig {
    fn default() -> TcpServerConfig {
        TcpServerConfig {
            limits: ConnectionLimits::default(),
            connections_max: SERVER_CONNECTIONS_MAX_DEFAULT,
            handshake_timeout: HANDSHAKE_TIMEOUT_DEFAULT,
            shutdown_grace: SHUTDOWN_GRACE_DEFAULT,
        }
    }
}

impl TcpServer {
    /// Serves `listener` with `handler` on the current tokio runtime until
    /// [`Self::shutdown`] (or until dropped, which stops at once).
    pub fn start<H>(
        listener: TcpListener,
        tls: &TlsContext,
        config: TcpServerConfig,
        handler: Arc<H>,
    ) -> Result<TcpServer, ServerStartError>
    where
        H: Handler + ?Sized,
    {
        assert!(config.connections_max > 0, "a server serves at least one connection");
        let local_addr = listener.local_addr().map_err(ServerStartError::Io)?;
        let acceptor =
            TlsAcceptor::from(Arc::new(tls.server_config().map_err(ServerStartError::Tls)?));
        let counters = Arc::new(ConnectionCounters::default());
        let shutdown = watch::Sender::new(false);
        let context = Arc::new(ServerContext {
            acceptor,
            tls: tls.clone(),
            handler,
            config,
            counters: Arc::clone(&counters),
            shutdown: shutdown.subscribe(),
        });
        let accept_loop = tokio::spawn(accept_loop(listener, context));
        Ok(TcpServer { local_addr, shutdown, accept_loop, counters })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> ConnectionStats {
        self.counters.stats()
    }

    /// The live counters behind [`Self::stats`], for a reader that outlives this handle
    /// (a metrics endpoint).
    pub fn counters(&self) -> Arc<ConnectionCounters> {
        Arc::clone(&self.counters)
    }

    /// Stops accepting, lets each connection finish the requests it has read (up to the
    /// shutdown grace), closes them, and returns when all are closed.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        let _ = (&mut self.accept_loop).await;
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

struct ServerContext<H: ?Sized> {
    acceptor: TlsAcceptor,
    tls: TlsContext,
    config: TcpServerConfig,
    counters: Arc<ConnectionCounters>,
    shutdown: watch::Receiver<bool>,
    handler: Arc<H>,
}

async fn accept_loop<H: Handler + ?Sized>(listener: TcpListener, context: Arc<ServerContext<H>>) {
    let mut shutdown = context.shutdown.clone();
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let full = connections.len() >= context.config.connections_max;
        tokio::select! {
            biased;
            _ = signalled(&mut shutdown) => break,
            _ = connections.join_next(), if full => {}
            accepted = listener.accept(), if !full => match accepted {
                Ok((tcp, addr)) => {
                    connections.spawn(serve_tcp(tcp, addr, Arc::clone(&context)));
                }
                Err(error) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "fabric accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    drop(listener);
    let grace = context.config.shutdown_grace;
    let drained =
        tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} })
            .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "fabric shutdown grace over; dropping connections with requests in flight"
        );
        connections.shutdown().await;
    }
}

async fn serve_tcp<H: Handler + ?Sized>(
    tcp: TcpStream,
    addr: SocketAddr,
    context: Arc<ServerContext<H>>,
) {
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%addr, %error, "TCP_NODELAY not set");
    }
    let handshake = context.acceptor.accept(tcp);
    let stream = match tokio::time::timeout(context.config.handshake_timeout, handshake).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            context.counters.count_handshake_failure();
            tracing::warn!(%addr, %error, "fabric TLS handshake refused");
            return;
        }
        Err(_) => {
            context.counters.count_handshake_failure();
            tracing::warn!(%addr, "fabric TLS handshake timed out");
            return;
        }
    };
    let identity = match context.tls.peer_identity(stream.get_ref().1.peer_certificates()) {
        Ok(identity) => identity,
        Err(error) => {
            context.counters.count_handshake_failure();
            tracing::warn!(%addr, %error, "fabric peer has no usable identity");
            return;
        }
    };
    tracing::debug!(%addr, %identity, "fabric connection accepted");
    let peer = Arc::new(Peer { identity, addr: Some(addr) });
    let handler = Arc::clone(&context.handler);
    let shutdown = context.shutdown.clone();
    let counters = Arc::clone(&context.counters);
    serve_connection(stream, peer, handler, context.config.limits, counters, shutdown).await;
}

impl fmt::Display for ServerStartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerStartError::Tls(error) => write!(f, "fabric server TLS: {error}"),
            ServerStartError::Io(error) => write!(f, "fabric server listener: {error}"),
        }
    }
}

impl std::error::Error for ServerStartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerStartError::Tls(error) => Some(error),
            ServerStartError::Io(error) => Some(error),
        }
    }
}
