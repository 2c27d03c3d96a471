//! The admission service: the one Kiseki listener where a client certificate is optional.
//!
//! A connection without a client certificate may only redeem a token ([`Request::Admit`]):
//! the token, spent in the store file before the answer leaves, earns a certificate-granting
//! certificate (OU `kiseki-cgc`, CN = the node the token was minted for,
//! [`ADMISSION_CGC_VALIDITY_DAYS`]) over the public key of the node's CSR. A connection with a
//! certificate (verified against the CA, the CRL and the identity rules during the
//! handshake) is a [`Caller`], and every request it makes is authorized by the
//! [`Authorizer`] on an API path before anything else: `Issue` on
//! `/v1/admission/request/<name>`, `Renew` on `/v1/admission/renew/<name>`, `Call` on the
//! path it names. Authorization confines a CGC to those two paths; the service also wants
//! the caller to be a CGC whose CN is `<name>`, so a node never gets a certificate for
//! another node's name, and only the node name and the node's own address as SANs.
//!
//! What it tells a peer: one of the [`RemoteError`] words. What it logs (`tracing`): the
//! reason, the peer's address and identity, the node name, and every authorization
//! decision's audit event (target `kiseki::audit`); never a token, a key or a request body.
//!
//! Invariants:
//! - a token is judged once: whatever follows its redemption (a node name that differs,
//!   a CSR that does not verify), it is spent, and it is spent on disk before any reply;
//! - every certificate's subject, OU, SANs and validity are the service's choice; the CSR
//!   contributes its public key only (`CertificateAuthority::issue_for_csr`);
//! - bounded: [`ADMISSION_CONNECTIONS_MAX`] connections, [`ADMISSION_REQUESTS_PER_CONNECTION_MAX`]
//!   requests each, frames of at most `ADMISSION_FRAME_MAX_BYTES` (a longer one closes the
//!   connection and is counted), [`ADMISSION_IO_TIMEOUT_SECS`] for each handshake, read and
//!   write.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiseki_security::admission::check_node_name;
use kiseki_security::authz::{Api, Authorizer, Caller, Decision, Target};
use kiseki_security::constants::{
    ADMISSION_CGC_VALIDITY_DAYS, ADMISSION_ROLE_CERT_VALIDITY_DAYS, ADMISSION_SANS_MAX,
};
use kiseki_security::{
    CertificateAuthority, IssueRequest, OrgId, PeerIdentity, Role, SubjectAltName, TlsContext,
    Validity,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use super::AdmissionServiceError;
use super::store::{IfMissing, TokenStoreFile};
use super::wire::{
    FrameError, IssueRole, PROTOCOL_VERSION, RemoteError, Request, RequestFrame, Response,
    ResponseFrame, Secret, encode, read_frame, write_frame,
};
use crate::constants::{
    ADMISSION_CONNECTIONS_MAX, ADMISSION_IO_TIMEOUT_SECS, ADMISSION_REQUESTS_PER_CONNECTION_MAX,
};

/// The service's clock: seconds since the Unix epoch. Tokens expire and authorization
/// decides by it; tests pass their own.
pub type UnixClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The admission service; see the module's notes. Build it, wrap it in an `Arc`, and
/// [`AdmissionService::serve`] a listener.
pub struct AdmissionService {
    tls: TlsContext,
    acceptor: TlsAcceptor,
    authority: CertificateAuthority,
    store: TokenStoreFile,
    authorizer: Authorizer,
    clock: UnixClock,
    counters: Counters,
}

/// What the service has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    /// TCP connections accepted.
    pub connections: u64,
    /// Connections closed for a frame length of zero or over the limit.
    pub bad_frames: u64,
    /// Certificate-granting certificates issued for tokens.
    pub admitted: u64,
    /// Role certificates and renewed CGCs issued to CGCs.
    pub issued: u64,
    /// Requests answered with an error.
    pub refused: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    bad_frames: AtomicU64,
    admitted: AtomicU64,
    issued: AtomicU64,
    refused: AtomicU64,
}

impl std::fmt::Debug for AdmissionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionService")
            .field("store", &self.store.path())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl AdmissionService {
    /// A service answering with `tls`'s certificate (its CA must be `authority`'s, so that
    /// the certificates it issues verify on its own listener), signing with `authority`,
    /// spending tokens from `store` (which must exist: a typo in its path should stop the
    /// service, not make it refuse every node). Authorization is the built-in table.
    pub fn new(
        tls: TlsContext,
        authority: CertificateAuthority,
        store: TokenStoreFile,
    ) -> Result<AdmissionService, AdmissionServiceError> {
        store.read(IfMissing::Fail)?;
        let acceptor = TlsAcceptor::from(Arc::new(tls.admission_server_config()?));
        Ok(AdmissionService {
            tls,
            acceptor,
            authority,
            store,
            authorizer: Authorizer::default(),
            clock: Arc::new(system_now_unix_secs),
            counters: Counters::default(),
        })
    }

    /// Decide with these policy files instead of the built-in table alone.
    pub fn with_authorizer(mut self, authorizer: Authorizer) -> AdmissionService {
        self.authorizer = authorizer;
        self
    }

    /// Read the time from `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: UnixClock) -> AdmissionService {
        self.clock = clock;
        self
    }

    pub fn stats(&self) -> AdmissionStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        AdmissionStats {
            connections: load(&self.counters.connections),
            bad_frames: load(&self.counters.bad_frames),
            admitted: load(&self.counters.admitted),
            issued: load(&self.counters.issued),
            refused: load(&self.counters.refused),
        }
    }

    /// Serves `listener` until `shutdown` completes, then waits for the connections in
    /// flight (each is bounded by the I/O timeout) so that no spent token goes unanswered.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let slots = Arc::new(Semaphore::new(ADMISSION_CONNECTIONS_MAX));
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let slot = tokio::select! {
                () = &mut shutdown => break,
                slot = Arc::clone(&slots).acquire_owned() => slot.expect("never closed"),
            };
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let service = Arc::clone(&self);
                    connections.spawn(async move {
                        service.connection(stream, peer).await;
                        drop(slot);
                    });
                }
                Err(error) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(%error, "admission listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            while connections.try_join_next().is_some() {}
        }
        let grace = Duration::from_secs(3 * ADMISSION_IO_TIMEOUT_SECS);
        if timeout(grace, async { while connections.join_next().await.is_some() {} }).await.is_err()
        {
            connections.shutdown().await;
        }
        Ok(())
    }

    async fn connection(&self, stream: TcpStream, peer: SocketAddr) {
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        let io_timeout = Duration::from_secs(ADMISSION_IO_TIMEOUT_SECS);
        let mut tls = match timeout(io_timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                // A refused certificate was logged with its fingerprint by the verifier.
                tracing::info!(%peer, %error, "admission handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "admission handshake timed out");
                return;
            }
        };
        let identity = match tls.get_ref().1.peer_certificates() {
            None => None,
            Some(chain) => match self.tls.peer_identity(Some(chain)) {
                Ok(identity) => Some(identity),
                Err(error) => {
                    tracing::warn!(%peer, %error, "admission peer without an identity");
                    return;
                }
            },
        };
        for _ in 0..ADMISSION_REQUESTS_PER_CONNECTION_MAX {
            let body = match timeout(io_timeout, read_frame(&mut tls)).await {
                Ok(Ok(body)) => body,
                Ok(Err(FrameError::Closed)) => return,
                Ok(Err(FrameError::BadLength { len_bytes })) => {
                    self.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, len_bytes, "admission frame length out of bounds");
                    break;
                }
                Ok(Err(error)) => {
                    tracing::info!(%peer, %error, "admission connection failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "admission connection idle; closing");
                    break;
                }
            };
            let (response, close) = self.respond(&body, identity.as_ref(), peer).await;
            drop(body);
            if let Response::Error { .. } = response {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
            }
            let frame = encode(&ResponseFrame { version: PROTOCOL_VERSION, response });
            if !matches!(timeout(io_timeout, write_frame(&mut tls, &frame)).await, Ok(Ok(()))) {
                return;
            }
            if close {
                break;
            }
        }
        let _ = timeout(io_timeout, tls.shutdown()).await;
    }

    /// The answer to one frame, and whether to close the connection after it.
    async fn respond(
        &self,
        body: &[u8],
        identity: Option<&PeerIdentity>,
        peer: SocketAddr,
    ) -> (Response, bool) {
        let frame: RequestFrame = match serde_json::from_slice(body) {
            Ok(frame) => frame,
            Err(error) => {
                // serde's message may quote the input, which may hold a token: log its
                // category and position only.
                let (category, column) = (error.classify(), error.column());
                tracing::warn!(%peer, ?category, column, "malformed admission request");
                return (Response::Error { reason: RemoteError::BadRequest }, true);
            }
        };
        if frame.version != PROTOCOL_VERSION {
            tracing::warn!(%peer, version = frame.version, "admission request of another version");
            return (Response::Error { reason: RemoteError::BadRequest }, true);
        }
        let result = match frame.request {
            Request::Admit { token, node, csr_pem } => {
                self.admit(token, node, &csr_pem, peer).await
            }
            Request::Issue { role, name, csr_pem, sans } => {
                self.issue(identity, role, &name, &csr_pem, &sans, peer)
            }
            Request::Renew { name, csr_pem } => self.renew(identity, &name, &csr_pem, peer),
            Request::Call { path, tenant } => Err(self.call(identity, &path, tenant, peer)),
        };
        let response = match result {
            Ok(certificate_pem) => Response::Certificate { certificate_pem },
            Err(reason) => Response::Error { reason },
        };
        (response, false)
    }

    async fn admit(
        &self,
        token: Secret,
        node: String,
        csr_pem: &str,
        peer: SocketAddr,
    ) -> Result<String, RemoteError> {
        if check_node_name(&node).is_err() {
            tracing::warn!(%peer, "admission refused: malformed node name");
            return Err(RemoteError::AdmissionRefused);
        }
        let now_unix_secs = (self.clock)();
        let store = self.store.clone();
        let redeemed = tokio::task::spawn_blocking(move || {
            store.update(IfMissing::Fail, |tokens| tokens.redeem(token.expose(), now_unix_secs))
        })
        .await;
        let token_node = match redeemed {
            Ok(Ok(Ok(token_node))) => token_node,
            Ok(Ok(Err(error))) => {
                tracing::warn!(%peer, %node, %error, "admission refused");
                return Err(RemoteError::AdmissionRefused);
            }
            Ok(Err(error)) => {
                tracing::error!(%peer, %node, %error, "admission failed: token store");
                return Err(RemoteError::Internal);
            }
            Err(error) => {
                tracing::error!(%peer, %node, %error, "admission failed: store task");
                return Err(RemoteError::Internal);
            }
        };
        if token_node != node {
            tracing::warn!(
                %peer, claimed = %node, %token_node,
                "admission refused: the token was minted for another node (it is now spent)"
            );
            return Err(RemoteError::AdmissionRefused);
        }
        let request = leaf_request(Role::CertGranting, &node, Vec::new());
        match self.authority.issue_for_csr(&request, csr_pem) {
            Ok(signed) => {
                self.counters.admitted.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%peer, %node, "node admitted: certificate-granting cert issued");
                Ok(signed.certificate_pem().to_owned())
            }
            Err(error) => {
                tracing::warn!(%peer, %node, %error, "admission failed after the token was spent");
                Err(RemoteError::AdmissionRefused)
            }
        }
    }

    fn issue(
        &self,
        identity: Option<&PeerIdentity>,
        role: IssueRole,
        name: &str,
        csr_pem: &str,
        sans: &[String],
        peer: SocketAddr,
    ) -> Result<String, RemoteError> {
        self.authorize_own_name(identity, Api::AdmissionRequest, name, peer)?;
        let sans = own_sans(name, sans, peer)?;
        let role = match role {
            IssueRole::Server => Role::Server,
            IssueRole::Keyserver => Role::KeyServer,
        };
        self.sign(&leaf_request(role, name, sans), csr_pem, peer)
    }

    fn renew(
        &self,
        identity: Option<&PeerIdentity>,
        name: &str,
        csr_pem: &str,
        peer: SocketAddr,
    ) -> Result<String, RemoteError> {
        self.authorize_own_name(identity, Api::AdmissionRenew, name, peer)?;
        self.sign(&leaf_request(Role::CertGranting, name, Vec::new()), csr_pem, peer)
    }

    /// Any other path: authorized like everywhere, then not served.
    fn call(
        &self,
        identity: Option<&PeerIdentity>,
        path: &str,
        tenant: Option<String>,
        peer: SocketAddr,
    ) -> RemoteError {
        let Some(identity) = identity else {
            tracing::warn!(%peer, "API call without a client certificate");
            return RemoteError::AccessDenied;
        };
        let target = match tenant.map(|org| OrgId::parse(&org)) {
            None => Target::Cluster,
            Some(Ok(org)) => Target::Tenant(org),
            Some(Err(_)) => return RemoteError::BadRequest,
        };
        match self.authorize(identity, path, &target, peer) {
            Some(decision) if decision.is_allowed() => RemoteError::NotServedHere,
            _ => RemoteError::AccessDenied,
        }
    }

    /// Authorizes `api` on `name` for a certificate-granting certificate named `name`.
    fn authorize_own_name(
        &self,
        identity: Option<&PeerIdentity>,
        api: Api,
        name: &str,
        peer: SocketAddr,
    ) -> Result<(), RemoteError> {
        let Some(identity) = identity else {
            tracing::warn!(%peer, %api, "admission call without a client certificate");
            return Err(RemoteError::AccessDenied);
        };
        let path = format!("{}/{name}", api.path_prefix());
        let allowed = self
            .authorize(identity, &path, &Target::Cluster, peer)
            .is_some_and(|decision| decision.is_allowed());
        if !allowed {
            return Err(RemoteError::AccessDenied);
        }
        if identity.role() != Some(&Role::CertGranting) {
            tracing::warn!(%peer, %identity, %api, "only a certificate-granting certificate may");
            return Err(RemoteError::AccessDenied);
        }
        if identity.common_name() != Some(name) || check_node_name(name).is_err() {
            tracing::warn!(%peer, %identity, %api, requested = %name, "CGC asked for another name");
            return Err(RemoteError::AccessDenied);
        }
        Ok(())
    }

    /// The authorizer's decision for `identity` on `path`, logged as an audit event; `None`
    /// if the identity cannot be a caller at all (logged too).
    fn authorize(
        &self,
        identity: &PeerIdentity,
        path: &str,
        target: &Target,
        peer: SocketAddr,
    ) -> Option<Decision> {
        let key_identity = identity.kes_identity().to_string();
        let roles = identity.role().cloned();
        let caller = match Caller::new(identity.common_name().unwrap_or(""), &key_identity, roles) {
            Ok(caller) => caller,
            Err(error) => {
                tracing::warn!(%peer, %identity, %error, "peer cannot be an authorization caller");
                return None;
            }
        };
        let decision = self.authorizer.authorize(&caller, path, target, (self.clock)());
        tracing::info!(target: "kiseki::audit", %peer, event = %decision.audit_event());
        Some(decision)
    }

    fn sign(
        &self,
        request: &IssueRequest,
        csr_pem: &str,
        peer: SocketAddr,
    ) -> Result<String, RemoteError> {
        let name = &request.common_name;
        match self.authority.issue_for_csr(request, csr_pem) {
            Ok(signed) => {
                self.counters.issued.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%peer, %name, role = %request.role, "certificate issued");
                Ok(signed.certificate_pem().to_owned())
            }
            Err(error) => {
                tracing::warn!(%peer, %name, role = %request.role, %error, "certificate refused");
                Err(RemoteError::BadRequest)
            }
        }
    }
}

/// What admission puts in a certificate for `name` in `role`.
fn leaf_request(role: Role, name: &str, subject_alt_names: Vec<SubjectAltName>) -> IssueRequest {
    let days = match role {
        Role::CertGranting => ADMISSION_CGC_VALIDITY_DAYS,
        _ => ADMISSION_ROLE_CERT_VALIDITY_DAYS,
    };
    IssueRequest {
        role,
        common_name: name.to_owned(),
        spiffe_id: None,
        subject_alt_names,
        validity: Validity::days_from_now(days),
    }
}

/// The SANs of a role certificate for node `name`: its name, and of the SANs asked for
/// only the name itself and the address the request came from. Anything else would let
/// one node answer for another's name or address.
fn own_sans(
    name: &str,
    requested: &[String],
    peer: SocketAddr,
) -> Result<Vec<SubjectAltName>, RemoteError> {
    if requested.len() > ADMISSION_SANS_MAX {
        return Err(RemoteError::BadRequest);
    }
    let peer_ip: IpAddr = peer.ip().to_canonical();
    let mut sans = vec![SubjectAltName::Dns(name.to_owned())];
    for text in requested {
        let san = SubjectAltName::parse(text).map_err(|_| RemoteError::BadRequest)?;
        let own = match &san {
            SubjectAltName::Dns(dns) => dns == name,
            SubjectAltName::Ip(ip) => ip.to_canonical() == peer_ip,
        };
        if !own {
            tracing::warn!(%peer, %name, san = %text, "refused a SAN that is not the node's own");
            return Err(RemoteError::AccessDenied);
        }
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

/// Seconds since the Unix epoch by the system clock (0 if the clock is before 1970).
pub fn system_now_unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}
