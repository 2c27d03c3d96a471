//! What every gRPC listener of a node shares (the front end, `crate::grpc`, and the key
//! service, `crate::keys_grpc`): TLS 1.3 handshakes through our rustls acceptor, so the
//! cluster CA and the CRL in force decide who connects at all; the caller a verified
//! certificate names; and a shutdown that stops accepting, lets calls in flight finish and
//! waits a bounded time for idle clients.
//!
//! Bounds: at most [`GRPC_HANDSHAKES_MAX`] handshakes at once (more connections wait in the
//! listen backlog), each within [`GRPC_HANDSHAKE_TIMEOUT_SECS`]; at most
//! [`GRPC_ACCEPTED_QUEUE`] handshaken connections wait for the HTTP/2 server.
//!
//! Invariant: a peer whose handshake failed, or whose certificate gives no caller, reaches
//! nothing of a service; every outcome is handed to the listener's audit hook first.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use kiseki_security::TlsContext;
use kiseki_security::authz::Caller;
use rustls_pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::constants::{
    GRPC_ACCEPTED_QUEUE, GRPC_DRAIN_TIMEOUT_SECS, GRPC_HANDSHAKE_TIMEOUT_SECS, GRPC_HANDSHAKES_MAX,
};

/// The pause after a failed accept (no descriptor left, say) before the next one.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// A handshaken connection.
pub(crate) type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// What a listener does with each handshake's outcome (the caller, or why there is none)
/// before the connection is served or dropped: its audit record.
pub(crate) type OnHandshake = Arc<
    dyn Fn(Result<Caller, String>, SocketAddr) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// Handshaken connections, and the task that accepts them.
pub(crate) struct Incoming {
    streams: mpsc::Receiver<io::Result<TlsStream>>,
    accept_loop: AcceptLoop,
}

/// The accepting task, stopped when dropped: a listener whose server never started (or
/// has stopped) takes no more connections.
struct AcceptLoop(tokio::task::JoinHandle<()>);

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The caller a verified certificate chain names: its common name, key identity and the
/// role its certificate gives; `Err` says why there is none.
pub(crate) fn caller_of(
    tls: &TlsContext,
    chain: Option<&[CertificateDer<'static>]>,
) -> Result<Caller, String> {
    let chain = chain.ok_or_else(|| "no client certificate".to_owned())?;
    let identity = tls.peer_identity(Some(chain)).map_err(|error| error.to_string())?;
    let name = identity.common_name().unwrap_or("");
    Caller::new(name, &identity.kes_identity().to_string(), identity.role().cloned())
        .map_err(|error| error.to_string())
}

/// The caller of a tonic request, from the certificates its connection's handshake kept;
/// UNAUTHENTICATED (saying no more) without one.
pub(crate) fn caller_of_request<T>(
    tls: &TlsContext,
    request: &tonic::Request<T>,
) -> Result<Caller, tonic::Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| tonic::Status::unauthenticated("no client certificate"))?;
    caller_of(tls, Some(certs.as_slice()))
        .map_err(|_| tonic::Status::unauthenticated("client certificate gives no identity"))
}

/// Accepts TCP connections on `listener` and runs their TLS handshakes (ALPN `h2`) within
/// the bounds above, calling `on_handshake` with each outcome.
pub(crate) fn accept_tls(
    listener: TcpListener,
    tls: &TlsContext,
    on_handshake: OnHandshake,
) -> io::Result<Incoming> {
    let mut config = tls.server_config().map_err(io::Error::other)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (accepted, streams) = mpsc::channel(GRPC_ACCEPTED_QUEUE);
    let handshakes = Arc::new(Semaphore::new(GRPC_HANDSHAKES_MAX));
    let tls = tls.clone();
    let timeout = Duration::from_secs(GRPC_HANDSHAKE_TIMEOUT_SECS);
    let accept_loop = tokio::spawn(async move {
        loop {
            let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else { return };
            let Ok((tcp, remote)) = listener.accept().await else {
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, accepted, tls) = (acceptor.clone(), accepted.clone(), tls.clone());
            let on_handshake = Arc::clone(&on_handshake);
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(timeout, acceptor.accept(tcp)).await;
                drop(permit);
                let (stream, outcome) = match handshake {
                    Ok(Ok(stream)) => {
                        let caller = caller_of(&tls, stream.get_ref().1.peer_certificates());
                        (Some(stream), caller)
                    }
                    Ok(Err(error)) => (None, Err(error.to_string())),
                    Err(_) => (None, Err("handshake timed out".to_owned())),
                };
                let admitted = outcome.is_ok();
                on_handshake(outcome, remote).await;
                if let (Some(stream), true) = (stream, admitted) {
                    let _ = accepted.send(Ok(stream)).await;
                }
            });
        }
    });
    Ok(Incoming { streams, accept_loop: AcceptLoop(accept_loop) })
}

/// Serves `router` on `incoming` until `stopping` turns true: then no new connection is
/// taken, calls in flight finish, and idle clients get [`GRPC_DRAIN_TIMEOUT_SECS`] to hang
/// up before the server is dropped.
pub(crate) async fn serve_until_stopped(
    router: tonic::transport::server::Router,
    incoming: Incoming,
    stopping: watch::Receiver<bool>,
) -> io::Result<()> {
    let Incoming { streams, accept_loop } = incoming;
    let (mut for_server, mut for_drain) = (stopping.clone(), stopping);
    let server = router.serve_with_incoming_shutdown(
        tokio_stream::wrappers::ReceiverStream::new(streams),
        async move {
            let _ = for_server.wait_for(|stopped| *stopped).await;
        },
    );
    let drain_limit = async move {
        let _ = for_drain.wait_for(|stopped| *stopped).await;
        tokio::time::sleep(Duration::from_secs(GRPC_DRAIN_TIMEOUT_SECS)).await;
    };
    let result = tokio::select! {
        served = server => served.map_err(io::Error::other),
        () = drain_limit => Ok(()),
    };
    drop(accept_loop);
    result
}
