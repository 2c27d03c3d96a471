//! The one TLS configuration every Kiseki listener and client is built from.
//!
//! [`TlsBuilder`] reads the CA bundle, this node's certificate chain and key, and an
//! optional CRL, from `KISEKI_CA_PATH`, `KISEKI_CERT_PATH`, `KISEKI_KEY_PATH`,
//! `KISEKI_CRL_PATH` (or explicit [`TlsPaths`]); [`TlsContext`] then hands out rustls
//! [`ServerConfig`]s and [`ClientConfig`]s that share one certificate verifier. That
//! verifier wraps rustls' WebPKI verifiers built with the current CRLs and swaps them when
//! the CRL file changes ([`TlsContext::reload_crl`], or [`TlsContext::spawn_crl_poller`]
//! every [`TlsBuilder::crl_reload_interval`], 60 s by default), so a revocation takes
//! effect on the next handshake of every listener without a restart.
//!
//! Invariants:
//! - rustls with the aws-lc-rs provider only, TLS 1.3 only;
//! - every server requires a client certificate chaining to the cluster CA; every client
//!   verifies the server's chain and name. One exception, the admission listener
//!   ([`TlsContext::admission_server_config`]): a node that comes to be admitted has no
//!   certificate yet (seed 003), so there the client certificate is optional and the
//!   single-use admission token authenticates the client instead. A certificate that is
//!   presented there is verified exactly as everywhere else (chain, CRL, identity rules),
//!   and the admission service serves a client without one nothing but token redemption.
//!   The node's side of that first step is [`admission_client_config`]: it verifies the
//!   server like every client and presents no certificate;
//! - after the chain, the verifier derives the peer's [`PeerIdentity`]; a certificate that
//!   breaks an identity rule (see `identity.rs`) fails the handshake like a bad chain;
//! - no session resumption and no early data: every connection verifies the peer's
//!   certificate against the CRL in force at that moment (a resumed TLS 1.3 session would
//!   skip the certificate and let a revoked peer back in);
//! - a configured CRL that cannot be read or verified at start-up is a hard error; later,
//!   a missing or corrupt CRL file keeps the last good CRL and logs an error. A CRL counts
//!   only if a configured CA signed it; when CRLs are configured, a peer whose issuer has
//!   none is refused (revocation status unknown);
//! - X.509 v1 client leaves (the seed's `openssl x509 -req` without extensions makes them)
//!   are accepted only when signed directly by a configured CA, checked here with the same
//!   validity and CRL rules; intermediates must be v3 and are left to WebPKI.

mod verifier;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::NoServerSessionStorage;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::CertificateDer;

use crate::constants::CRL_RELOAD_INTERVAL_DEFAULT_SECS;
use crate::identity::{IdentityRules, PeerIdentity, TrustDomain};
use crate::pki::{read_certificates, read_private_key};
use crate::pki_error::{IdentityError, PkiError};
use verifier::{OptionalClientCert, PeerVerifier};

/// The CA bundle: PEM certificates of the CAs whose leaves are trusted.
pub const ENV_CA_PATH: &str = "KISEKI_CA_PATH";
/// This node's certificate chain, leaf first, PEM.
pub const ENV_CERT_PATH: &str = "KISEKI_CERT_PATH";
/// This node's private key, PEM, mode 0600.
pub const ENV_KEY_PATH: &str = "KISEKI_KEY_PATH";
/// Optional: the CRL file (PEM or DER), re-read periodically.
pub const ENV_CRL_PATH: &str = "KISEKI_CRL_PATH";
/// Optional: the SPIFFE trust domain accepted in peer SVIDs.
pub const ENV_TRUST_DOMAIN: &str = "KISEKI_SPIFFE_TRUST_DOMAIN";
/// Optional: seconds between CRL re-reads (default 60).
pub const ENV_CRL_RELOAD_SECS: &str = "KISEKI_CRL_RELOAD_SECS";

/// Where the TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub crl: Option<PathBuf>,
}

impl TlsPaths {
    /// From the `KISEKI_*_PATH` environment variables.
    pub fn from_env() -> Result<TlsPaths, PkiError> {
        TlsPaths::from_lookup(|name| std::env::var_os(name))
    }

    /// From any lookup of those variable names (the config file layer passes its own).
    /// An empty value counts as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<TlsPaths, PkiError> {
        let path = |name| lookup(name).filter(|value| !value.is_empty()).map(PathBuf::from);
        let required = |name: &'static str| path(name).ok_or(PkiError::MissingSetting { name });
        Ok(TlsPaths {
            ca: required(ENV_CA_PATH)?,
            cert: required(ENV_CERT_PATH)?,
            key: required(ENV_KEY_PATH)?,
            crl: path(ENV_CRL_PATH),
        })
    }
}

/// Builds a [`TlsContext`]: the only way Kiseki makes a rustls configuration.
#[derive(Debug, Clone)]
pub struct TlsBuilder {
    paths: TlsPaths,
    rules: IdentityRules,
    crl_reload_interval: Duration,
}

impl TlsBuilder {
    pub fn new(paths: TlsPaths) -> TlsBuilder {
        TlsBuilder {
            paths,
            rules: IdentityRules::default(),
            crl_reload_interval: Duration::from_secs(CRL_RELOAD_INTERVAL_DEFAULT_SECS),
        }
    }

    /// Paths, trust domain and reload interval from the environment.
    pub fn from_env() -> Result<TlsBuilder, PkiError> {
        TlsBuilder::from_lookup(|name| std::env::var_os(name))
    }

    /// Like [`Self::from_env`], with any lookup of the variable names.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<TlsBuilder, PkiError> {
        let mut builder = TlsBuilder::new(TlsPaths::from_lookup(&lookup)?);
        let text = |name: &'static str| match lookup(name).filter(|value| !value.is_empty()) {
            None => Ok(None),
            Some(value) => value
                .into_string()
                .map(Some)
                .map_err(|_| PkiError::InvalidSetting { name, reason: "not UTF-8".to_owned() }),
        };
        if let Some(domain) = text(ENV_TRUST_DOMAIN)? {
            let domain = TrustDomain::parse(&domain).map_err(|error| PkiError::InvalidSetting {
                name: ENV_TRUST_DOMAIN,
                reason: error.to_string(),
            })?;
            builder = builder.trust_domain(Some(domain));
        }
        if let Some(secs) = text(ENV_CRL_RELOAD_SECS)? {
            let secs: u64 = secs.parse().ok().filter(|secs| *secs > 0).ok_or_else(|| {
                PkiError::InvalidSetting {
                    name: ENV_CRL_RELOAD_SECS,
                    reason: format!("{secs:?} is not a positive number of seconds"),
                }
            })?;
            builder = builder.crl_reload_interval(Duration::from_secs(secs));
        }
        Ok(builder)
    }

    /// The SPIFFE trust domain peers' SVIDs must name; `None` refuses every SVID.
    pub fn trust_domain(mut self, trust_domain: Option<TrustDomain>) -> TlsBuilder {
        self.rules = IdentityRules::new(trust_domain);
        self
    }

    /// How often [`TlsContext::spawn_crl_poller`] re-reads the CRL file.
    pub fn crl_reload_interval(mut self, interval: Duration) -> TlsBuilder {
        self.crl_reload_interval = interval;
        self
    }

    /// Reads every file and checks them together: the CA bundle parses, the key matches
    /// the certificate, this node's certificate gives a valid identity, and the CRL (if
    /// configured) reads and is signed by a configured CA.
    pub fn build(self) -> Result<TlsContext, PkiError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let (anchors, roots) = trust_anchors(&self.paths.ca)?;
        let chain = read_certificates(&self.paths.cert)?;
        let local_identity = PeerIdentity::from_der(&chain[0], &self.rules)?;
        let key_der = read_private_key(&self.paths.key)?;
        let signing_key =
            provider.key_provider.load_private_key(key_der.clone_key()).map_err(|_| {
                PkiError::Malformed { path: self.paths.key.clone(), what: "unsupported key" }
            })?;
        drop(key_der);
        if !verifier::key_matches_certificate(signing_key.as_ref(), &chain[0]) {
            return Err(PkiError::KeyDoesNotMatchCertificate { path: self.paths.key.clone() });
        }
        let local_chain = chain.clone();
        let certified = Arc::new(SingleCertAndKey::from(CertifiedKey::new(chain, signing_key)));
        let verifier = Arc::new(PeerVerifier::new(
            Arc::clone(&provider),
            Arc::new(roots),
            anchors,
            self.rules,
            self.paths.crl.clone(),
        )?);
        Ok(TlsContext {
            shared: Arc::new(Shared {
                provider,
                certified,
                verifier,
                local_identity,
                local_chain,
                crl_reload_interval: self.crl_reload_interval,
            }),
        })
    }
}

/// The loaded TLS material and the shared, CRL-reloading verifier. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TlsContext {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    provider: Arc<CryptoProvider>,
    certified: Arc<SingleCertAndKey>,
    verifier: Arc<PeerVerifier>,
    local_identity: PeerIdentity,
    local_chain: Vec<CertificateDer<'static>>,
    crl_reload_interval: Duration,
}

/// What a CRL reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlReload {
    /// No CRL path is configured.
    NotConfigured,
    /// The file holds the same bytes as the CRL in force.
    Unchanged,
    /// A new CRL is in force; it lists this many certificates.
    Swapped { revoked_count: usize },
}

impl TlsContext {
    /// A server configuration: TLS 1.3, client certificate required and verified against
    /// the CA and the current CRL, no resumption. Set ALPN on it as the protocol needs.
    pub fn server_config(&self) -> Result<ServerConfig, PkiError> {
        let shared = &self.shared;
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&shared.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_client_cert_verifier(shared.verifier.clone())
            .with_cert_resolver(shared.certified.clone());
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.max_early_data_size = 0;
        Ok(config)
    }

    /// The S3 front end's server configuration: this node's certificate, no client
    /// certificate asked for (S3 clients authenticate each request with SigV4), TLS 1.3
    /// (every current S3 client speaks it; this build's rustls has no 1.2), ALPN
    /// `http/1.1`, no resumption.
    pub fn https_server_config(&self) -> Result<ServerConfig, PkiError> {
        let shared = &self.shared;
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&shared.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_no_client_auth()
            .with_cert_resolver(shared.certified.clone());
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.max_early_data_size = 0;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The admission listener's server configuration: like [`Self::server_config`], except
    /// that a client may present no certificate (see the module's invariants for why this
    /// one listener may). A presented certificate is verified against the CA, the current
    /// CRL and the identity rules, and a bad one fails the handshake as anywhere else; the
    /// caller must treat a connection without a peer certificate as unauthenticated.
    pub fn admission_server_config(&self) -> Result<ServerConfig, PkiError> {
        let shared = &self.shared;
        let verifier = Arc::new(OptionalClientCert::new(Arc::clone(&shared.verifier)));
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&shared.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(shared.certified.clone());
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.max_early_data_size = 0;
        Ok(config)
    }

    /// A client configuration: TLS 1.3, this node's certificate presented, the server's
    /// chain and name verified against the CA and the current CRL, no resumption.
    pub fn client_config(&self) -> Result<ClientConfig, PkiError> {
        let shared = &self.shared;
        let mut config = ClientConfig::builder_with_provider(Arc::clone(&shared.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .dangerous()
            .with_custom_certificate_verifier(shared.verifier.clone())
            .with_client_cert_resolver(shared.certified.clone());
        config.resumption = Resumption::disabled();
        config.enable_early_data = false;
        Ok(config)
    }

    /// The identity this node's own certificate gives.
    pub fn local_identity(&self) -> &PeerIdentity {
        &self.shared.local_identity
    }

    /// Verifies this context's own certificate as a peer would verify it as a client: its
    /// chain against the CA, its validity now, the CRL in force. For local tools that act
    /// with an operator's credentials (`build` has already checked that the key file
    /// holds the certificate's key), so a revoked or foreign certificate acts on nothing.
    pub fn verify_local_certificate(&self) -> Result<(), PkiError> {
        use rustls::server::danger::ClientCertVerifier;
        let chain = &self.shared.local_chain;
        let now = rustls_pki_types::UnixTime::now();
        self.shared
            .verifier
            .verify_client_cert(&chain[0], &chain[1..], now)
            .map(|_| ())
            .map_err(|error| PkiError::Tls { detail: error.to_string() })
    }

    /// The identity of a peer from its verified chain (`peer_certificates()` of a
    /// connection built from this context).
    pub fn peer_identity(
        &self,
        chain: Option<&[CertificateDer<'_>]>,
    ) -> Result<PeerIdentity, IdentityError> {
        PeerIdentity::from_chain(chain, self.shared.verifier.rules())
    }

    /// Re-reads the CRL file now; swaps the CRL in if it changed. On error the last good
    /// CRL stays in force and the error is logged as well as returned.
    pub fn reload_crl(&self) -> Result<CrlReload, PkiError> {
        self.shared.verifier.reload()
    }

    pub fn crl_reload_interval(&self) -> Duration {
        self.shared.crl_reload_interval
    }

    /// Starts a thread that calls [`Self::reload_crl`] every reload interval until the
    /// returned handle is dropped.
    pub fn spawn_crl_poller(&self) -> Result<CrlPoller, PkiError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let verifier = Arc::clone(&self.shared.verifier);
        let interval = self.shared.crl_reload_interval;
        let thread = thread::Builder::new()
            .name("kiseki-crl-reload".to_owned())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    // Errors are logged inside; the last good CRL stays in force.
                    let _ = verifier.reload();
                }
            })
            .map_err(|source| PkiError::Thread { source })?;
        Ok(CrlPoller { stop: Some(stop), thread: Some(thread) })
    }
}

/// The CRL reload thread; dropping it stops the thread and waits for it.
#[derive(Debug)]
pub struct CrlPoller {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for CrlPoller {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The client configuration of admission's first step, for a node that has no certificate
/// yet: TLS 1.3, the server's chain and name verified against the CA certificates in
/// `ca_path` and the server's certificate against the identity rules, no certificate
/// presented, no resumption. Every later connection uses a [`TlsContext`] built from the
/// certificate it earned.
pub fn admission_client_config(ca_path: &Path) -> Result<ClientConfig, PkiError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let (anchors, roots) = trust_anchors(ca_path)?;
    let rules = IdentityRules::default();
    let verifier =
        Arc::new(PeerVerifier::new(Arc::clone(&provider), Arc::new(roots), anchors, rules, None)?);
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    Ok(config)
}

/// The CA certificates of a bundle file, and the same as rustls trust anchors.
fn trust_anchors(
    ca_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, RootCertStore), PkiError> {
    let anchors = read_certificates(ca_path)?;
    let mut roots = RootCertStore::empty();
    for anchor in &anchors {
        roots.add(anchor.clone()).map_err(|_| PkiError::Malformed {
            path: ca_path.to_owned(),
            what: "a CA certificate rustls cannot use as a trust anchor",
        })?;
    }
    Ok((anchors, roots))
}

fn tls_error(error: rustls::Error) -> PkiError {
    PkiError::Tls { detail: error.to_string() }
}

#[cfg(test)]
mod tests;
