//! The node's side of admission: `kiseki-server join`.
//!
//! [`join`] runs the whole first admission: a new P-256 key and CSR, the token redeemed over
//! TLS that authenticates the server only (`admission_client_config`), the
//! certificate-granting certificate written to `cgc.crt` / `cgc.key`; then, over mutual TLS
//! with that CGC, one role certificate per role asked for (`server.crt` / `server.key`,
//! `keyserver.crt` / `keyserver.key`). [`renew`] does the second half again with an existing
//! CGC, renewing the CGC too. [`AdmissionClient`] is the connection both use.
//!
//! Invariants:
//! - private keys are made here and never leave the node; they pass through `Zeroizing`
//!   buffers and are written only to new files of mode 0600 (never over existing ones);
//! - before a token is spent, every file the join would write is checked to be absent, so a
//!   full or wrong output directory does not burn the token;
//! - a certificate the server returns is used only if it carries this node's new key, the
//!   role asked for and the node's name; the server must itself hold a server or keyserver
//!   certificate of the CA given.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiseki_security::{
    CertificateRequest, IdentityRules, IssuedCertificate, PeerIdentity, PkiError, Role, TlsBuilder,
    TlsPaths, admission_client_config,
};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::AdmissionServiceError;
use super::wire::{
    FrameError, IssueRole, PROTOCOL_VERSION, Request, RequestFrame, Response, ResponseFrame,
    Secret, encode, read_frame, write_frame,
};
use crate::constants::ADMISSION_IO_TIMEOUT_SECS;

/// The file stem of the certificate-granting certificate in a node's directory.
pub const CGC_FILE_STEM: &str = "cgc";

/// Which admission service to talk to, and how to recognize it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionServer {
    /// `host:port` to connect to.
    pub address: String,
    /// The name its certificate must carry (a DNS SAN or IP address).
    pub server_name: String,
    /// The cluster CA certificate (PEM) its certificate must chain to.
    pub ca_cert: PathBuf,
}

/// What a node asks for besides its CGC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRequest {
    pub roles: Vec<IssueRole>,
    /// Extra SANs: the node name again, or the address the node connects from; the
    /// service refuses any other.
    pub sans: Vec<String>,
}

/// One connection to the admission service.
#[derive(Debug)]
pub struct AdmissionClient {
    stream: TlsStream<TcpStream>,
    server_identity: PeerIdentity,
}

impl AdmissionClient {
    /// Connects and completes the handshake with `config` (without a client certificate
    /// for admission, with a CGC for the rest); checks the server's certificate is a server
    /// or keyserver certificate.
    pub async fn connect(
        server: &AdmissionServer,
        config: Arc<ClientConfig>,
    ) -> Result<AdmissionClient, AdmissionServiceError> {
        let io_timeout = Duration::from_secs(ADMISSION_IO_TIMEOUT_SECS);
        let server_name = ServerName::try_from(server.server_name.clone())
            .map_err(|_| AdmissionServiceError::Protocol { reason: "invalid server name" })?;
        let tcp = timeout(io_timeout, TcpStream::connect(&server.address))
            .await
            .map_err(|_| AdmissionServiceError::TimedOut { what: "connect" })?
            .map_err(|source| AdmissionServiceError::Connection { what: "connect", source })?;
        let stream = timeout(io_timeout, TlsConnector::from(config).connect(server_name, tcp))
            .await
            .map_err(|_| AdmissionServiceError::TimedOut { what: "TLS handshake" })?
            .map_err(|source| AdmissionServiceError::Connection {
                what: "TLS handshake",
                source,
            })?;
        let chain = stream.get_ref().1.peer_certificates();
        let server_identity = PeerIdentity::from_chain(chain, &IdentityRules::default())
            .map_err(AdmissionServiceError::Identity)?;
        if !matches!(server_identity.role(), Some(Role::Server | Role::KeyServer)) {
            return Err(AdmissionServiceError::Protocol {
                reason: "the admission server's certificate is not a server or keyserver one",
            });
        }
        Ok(AdmissionClient { stream, server_identity })
    }

    pub fn server_identity(&self) -> &PeerIdentity {
        &self.server_identity
    }

    /// Sends one request and reads its response.
    pub async fn call(&mut self, request: Request) -> Result<Response, AdmissionServiceError> {
        let io_timeout = Duration::from_secs(ADMISSION_IO_TIMEOUT_SECS);
        let body = encode(&RequestFrame { version: PROTOCOL_VERSION, request });
        timeout(io_timeout, write_frame(&mut self.stream, &body))
            .await
            .map_err(|_| AdmissionServiceError::TimedOut { what: "request" })?
            .map_err(|source| AdmissionServiceError::Connection { what: "request", source })?;
        let reply = match timeout(io_timeout, read_frame(&mut self.stream)).await {
            Err(_) => return Err(AdmissionServiceError::TimedOut { what: "response" }),
            Ok(Ok(reply)) => reply,
            Ok(Err(FrameError::Io(source))) => {
                return Err(AdmissionServiceError::Connection { what: "response", source });
            }
            Ok(Err(FrameError::Closed)) => {
                return Err(AdmissionServiceError::Protocol { reason: "connection closed" });
            }
            Ok(Err(FrameError::BadLength { .. })) => {
                return Err(AdmissionServiceError::Protocol { reason: "response too large" });
            }
        };
        let frame: ResponseFrame = serde_json::from_slice(&reply)
            .map_err(|_| AdmissionServiceError::Protocol { reason: "malformed response" })?;
        if frame.version != PROTOCOL_VERSION {
            return Err(AdmissionServiceError::Protocol { reason: "response of another version" });
        }
        Ok(frame.response)
    }

    /// Redeems `token` for a certificate-granting certificate for `node` over `request`'s key.
    pub async fn admit(
        &mut self,
        token: &Secret,
        node: &str,
        request: CertificateRequest,
    ) -> Result<IssuedCertificate, AdmissionServiceError> {
        let csr_pem = request.csr_pem().to_owned();
        let admit = Request::Admit { token: token.clone(), node: node.to_owned(), csr_pem };
        let pem = self.certificate(admit).await?;
        checked(request.complete(&pem)?, &Role::CertGranting, node)
    }

    /// A role certificate for `name` (the CGC's own name) over `request`'s key.
    pub async fn issue(
        &mut self,
        role: IssueRole,
        name: &str,
        request: CertificateRequest,
        sans: &[String],
    ) -> Result<IssuedCertificate, AdmissionServiceError> {
        let csr_pem = request.csr_pem().to_owned();
        let issue = Request::Issue { role, name: name.to_owned(), csr_pem, sans: sans.to_vec() };
        let pem = self.certificate(issue).await?;
        checked(request.complete(&pem)?, &role_of(role), name)
    }

    /// A new certificate-granting certificate for `name` (the CGC's own name).
    pub async fn renew(
        &mut self,
        name: &str,
        request: CertificateRequest,
    ) -> Result<IssuedCertificate, AdmissionServiceError> {
        let csr_pem = request.csr_pem().to_owned();
        let pem = self.certificate(Request::Renew { name: name.to_owned(), csr_pem }).await?;
        checked(request.complete(&pem)?, &Role::CertGranting, name)
    }

    /// Ends the connection cleanly (TLS close_notify).
    pub async fn close(mut self) {
        let io_timeout = Duration::from_secs(ADMISSION_IO_TIMEOUT_SECS);
        let _ = timeout(io_timeout, self.stream.shutdown()).await;
    }

    async fn certificate(&mut self, request: Request) -> Result<String, AdmissionServiceError> {
        match self.call(request).await? {
            Response::Certificate { certificate_pem } => Ok(certificate_pem),
            Response::Error { reason } => Err(AdmissionServiceError::Refused(reason)),
        }
    }
}

/// The first admission of node `node` with `token`: writes `cgc.*` and one `<role>.*` pair
/// per role into `out`, and returns the paths written (certificate, key, ...).
pub async fn join(
    server: &AdmissionServer,
    token: &Secret,
    node: &str,
    roles: &RoleRequest,
    out: &Path,
) -> Result<Vec<PathBuf>, AdmissionServiceError> {
    let stems = stems(roles);
    refuse_existing(out, &stems)?;
    let config = Arc::new(admission_client_config(&server.ca_cert)?);
    let mut client = AdmissionClient::connect(server, config).await?;
    let cgc = client.admit(token, node, CertificateRequest::generate(node)?).await?;
    client.close().await;
    let (cgc_cert, cgc_key) = cgc.write_files(out, CGC_FILE_STEM)?;
    let mut written = vec![cgc_cert.clone(), cgc_key.clone()];
    written.extend(role_certificates(server, &cgc_cert, &cgc_key, roles, out, false).await?);
    Ok(written)
}

/// Renews with the CGC at `cgc_cert` / `cgc_key`: a new CGC and one certificate per role,
/// written into `out` (which must not hold them yet). Returns the paths written.
pub async fn renew(
    server: &AdmissionServer,
    cgc_cert: &Path,
    cgc_key: &Path,
    roles: &RoleRequest,
    out: &Path,
) -> Result<Vec<PathBuf>, AdmissionServiceError> {
    let stems = stems(roles);
    refuse_existing(out, &stems)?;
    role_certificates(server, cgc_cert, cgc_key, roles, out, true).await
}

/// Over mutual TLS with the CGC: the CGC renewed (if `renew_cgc`), then each role.
async fn role_certificates(
    server: &AdmissionServer,
    cgc_cert: &Path,
    cgc_key: &Path,
    roles: &RoleRequest,
    out: &Path,
    renew_cgc: bool,
) -> Result<Vec<PathBuf>, AdmissionServiceError> {
    let paths = TlsPaths {
        ca: server.ca_cert.clone(),
        cert: cgc_cert.to_owned(),
        key: cgc_key.to_owned(),
        crl: None,
    };
    let context = TlsBuilder::new(paths).build()?;
    let identity = context.local_identity();
    let node = match (identity.role(), identity.common_name()) {
        (Some(Role::CertGranting), Some(node)) => node.to_owned(),
        _ => {
            return Err(AdmissionServiceError::Protocol {
                reason: "the certificate given is not a certificate-granting certificate",
            });
        }
    };
    let mut client = AdmissionClient::connect(server, Arc::new(context.client_config()?)).await?;
    let mut written = Vec::new();
    if renew_cgc {
        let cgc = client.renew(&node, CertificateRequest::generate(&node)?).await?;
        let (cert, key) = cgc.write_files(out, CGC_FILE_STEM)?;
        written.extend([cert, key]);
    }
    for role in &roles.roles {
        let request = CertificateRequest::generate(&node)?;
        let issued = client.issue(*role, &node, request, &roles.sans).await?;
        let (cert, key) = issued.write_files(out, role_stem(*role))?;
        written.extend([cert, key]);
    }
    client.close().await;
    Ok(written)
}

/// The file stem of a role's certificate: `server` or `keyserver`.
pub fn role_stem(role: IssueRole) -> &'static str {
    match role {
        IssueRole::Server => "server",
        IssueRole::Keyserver => "keyserver",
    }
}

fn role_of(role: IssueRole) -> Role {
    match role {
        IssueRole::Server => Role::Server,
        IssueRole::Keyserver => Role::KeyServer,
    }
}

fn stems(roles: &RoleRequest) -> Vec<&'static str> {
    let mut stems = vec![CGC_FILE_STEM];
    stems.extend(roles.roles.iter().map(|role| role_stem(*role)));
    stems
}

fn refuse_existing(out: &Path, stems: &[&str]) -> Result<(), AdmissionServiceError> {
    for stem in stems {
        for extension in ["crt", "key"] {
            let path = out.join(format!("{stem}.{extension}"));
            if path.exists() {
                return Err(PkiError::AlreadyExists { path }.into());
            }
        }
    }
    Ok(())
}

/// `issued`, if it gives `role` to `name`.
fn checked(
    issued: IssuedCertificate,
    role: &Role,
    name: &str,
) -> Result<IssuedCertificate, AdmissionServiceError> {
    let identity = PeerIdentity::from_der(issued.certificate_der(), &IdentityRules::default())
        .map_err(AdmissionServiceError::Identity)?;
    if identity.role() != Some(role) || identity.common_name() != Some(name) {
        return Err(AdmissionServiceError::Protocol {
            reason: "the certificate returned is not for the role and name asked for",
        });
    }
    Ok(issued)
}
