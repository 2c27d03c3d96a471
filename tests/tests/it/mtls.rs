//! Mutual TLS between a server and clients on 127.0.0.1, both built by `TlsBuilder`, with
//! certificates from `CertificateAuthority` (and rcgen directly for the malformed ones).
//!
//! Each negative case is its own test and asserts two things: the client's exchange fails,
//! and the server's accept fails with the reason expected. In TLS 1.3 the client's
//! handshake completes before the server has checked the client's certificate, so a refused
//! client learns of it at its first read; the exchange here always writes, then reads.
//! Attackers' clients are raw rustls configurations: they present whatever certificate the
//! test gives them, where `TlsBuilder` would already refuse to load a malformed one.
//!
//! `openssl`: the seed's openssl commands, and that those certificates work like ours.

mod openssl;

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kiseki_security::{
    CRL_FILE, CertificateAuthority, CrlReload, IdentityError, IssueRequest, OrgId, PeerIdentity,
    Principal, Role, SpiffeId, SubjectAltName, TlsBuilder, TlsContext, TlsPaths, TrustDomain,
    Validity,
};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The trust domain the test cluster accepts in SVIDs.
const TRUST_DOMAIN: &str = "kiseki.test";
/// The name clients ask for; the server certificate carries it (and 127.0.0.1).
const SERVER_NAME: &str = "localhost";
/// Longest any one exchange may take before the test fails instead of hanging.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Negative cases: each asserts the client fails and the server says why.

#[tokio::test]
async fn no_client_certificate_is_rejected() {
    let cluster = Cluster::new();
    let mut server = cluster.start_server().await;
    let client = cluster.raw_client_builder().with_no_client_auth();
    let error = server.assert_rejected(client).await;
    assert!(matches!(error, rustls::Error::NoCertificatesPresented), "{error:?}");
}

#[tokio::test]
async fn certificate_from_another_ca_is_rejected() {
    let cluster = Cluster::new();
    let other = Cluster::with_ca_name("Some Other CA");
    let mut server = cluster.start_server().await;
    let leaf = other.issue(&request(tenant("acme"), "intruder"));
    let error = server.assert_rejected(cluster.raw_client(&leaf)).await;
    assert_eq!(error, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
}

#[tokio::test]
async fn certificate_from_an_impostor_ca_of_the_same_name_is_rejected() {
    let cluster = Cluster::new();
    let impostor = Cluster::new();
    let mut server = cluster.start_server().await;
    let leaf = impostor.issue(&request(Role::ClusterAdmin, "admin"));
    let error = server.assert_rejected(cluster.raw_client(&leaf)).await;
    assert_eq!(error, rustls::Error::InvalidCertificate(CertificateError::BadSignature));
}

#[tokio::test]
async fn expired_certificate_is_rejected() {
    let cluster = Cluster::new();
    let mut server = cluster.start_server().await;
    let mut request = request(tenant("acme"), "old");
    request.validity = Validity {
        not_before: SystemTime::now() - days(10),
        not_after: SystemTime::now() - days(1),
    };
    let leaf = cluster.issue(&request);
    let error = server.assert_rejected(cluster.raw_client(&leaf)).await;
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn not_yet_valid_certificate_is_rejected() {
    let cluster = Cluster::new();
    let mut server = cluster.start_server().await;
    let mut request = request(tenant("acme"), "early");
    request.validity = Validity {
        not_before: SystemTime::now() + days(1),
        not_after: SystemTime::now() + days(10),
    };
    let leaf = cluster.issue(&request);
    let error = server.assert_rejected(cluster.raw_client(&leaf)).await;
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }
            )
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn revoked_certificate_is_rejected_after_a_reload_without_restart() {
    let cluster = Cluster::new();
    let mut server = cluster.start_server().await;
    let leaf = cluster.issue(&request(tenant("acme"), "soon-revoked"));
    // One client configuration for every attempt: no resumed session may skip the check.
    let client = cluster.client_context(&leaf).client_config().unwrap();
    let identity = server.assert_accepted(client.clone()).await;
    assert_eq!(identity.role(), Some(&tenant("acme")));

    cluster.revoke(&leaf);
    // Not yet reloaded: the CRL in force is the old one.
    server.assert_accepted(client.clone()).await;
    assert_eq!(server.context.reload_crl().unwrap(), CrlReload::Swapped { revoked_count: 1 });
    let error = server.assert_rejected(client.clone()).await;
    assert_eq!(error, rustls::Error::InvalidCertificate(CertificateError::Revoked));
    // Another certificate of the same CA still gets in.
    let other = cluster.issue(&request(tenant("acme"), "still-fine"));
    server.assert_accepted(cluster.client_context(&other).client_config().unwrap()).await;
}

#[tokio::test]
async fn revoked_certificate_is_rejected_once_the_poller_rereads_the_crl() {
    let cluster = Cluster::new();
    let context = cluster.server_builder().crl_reload_interval(Duration::from_millis(50));
    let mut server = Server::start(context.build().unwrap()).await;
    let _poller = server.context.spawn_crl_poller().unwrap();
    let leaf = cluster.issue(&request(Role::ClusterAdmin, "admin-1"));
    let client = cluster.client_context(&leaf).client_config().unwrap();
    server.assert_accepted(client.clone()).await;
    cluster.revoke(&leaf);
    let deadline = tokio::time::Instant::now() + EXCHANGE_TIMEOUT;
    loop {
        let (client_result, server_result) = server.exchange(client.clone()).await;
        match server_result {
            Ok(_) => {
                assert!(client_result.is_ok());
                assert!(tokio::time::Instant::now() < deadline, "the poller never reloaded");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => {
                assert!(client_result.is_err(), "the server refused but the client got through");
                let error = rustls_error(&error).expect("a TLS error");
                assert_eq!(error, &rustls::Error::InvalidCertificate(CertificateError::Revoked));
                break;
            }
        }
    }
}

#[tokio::test]
async fn wrong_key_usage_is_rejected() {
    let cluster = Cluster::new();
    let mut server = cluster.start_server().await;
    // keyCertSign instead of digitalSignature: a signing key posing as a TLS client.
    let leaf = cluster.rcgen_leaf(|params| {
        params.distinguished_name.push(DnType::OrganizationalUnitName, "kiseki-admin");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    });
    let error = server.assert_rejected(cluster.raw_client(&leaf)).await;
    assert_eq!(
        identity_error(&error),
        Some(&IdentityError::KeyUsage { reason: "lacks digitalSignature" })
    );
}

#[tokio::test]
async fn server_only_extended_key_usage_is_rejected() {
    let cluster = Cluster::new();
    let mut server = cluster.start_server().await;
    let leaf = cluster.rcgen_leaf(|params| {
        params.distinguished_name.push(DnType::OrganizationalUnitName, "kiseki-admin");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    });
    let error = server.assert_rejected(cluster.raw_client(&leaf)).await;
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
            )
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn two_uri_sans_are_rejected() {
    let cluster = Cluster::new();
    let mut server = cluster.start_server().await;
    let leaf = cluster.rcgen_leaf(|params| {
        svid(params, "spiffe://kiseki.test/tenant/acme/workload/one");
        svid(params, "spiffe://kiseki.test/tenant/acme/workload/two");
    });
    let error = server.assert_rejected(cluster.raw_client(&leaf)).await;
    assert_eq!(identity_error(&error), Some(&IdentityError::TooManyUriSans { count: 2 }));
}

#[tokio::test]
async fn malformed_spiffe_id_is_rejected() {
    let cluster = Cluster::new();
    let mut server = cluster.start_server().await;
    let leaf = cluster.rcgen_leaf(|params| svid(params, "spiffe://kiseki.test/tenant/acme"));
    let error = server.assert_rejected(cluster.raw_client(&leaf)).await;
    assert!(
        matches!(identity_error(&error), Some(IdentityError::MalformedSpiffeId(_))),
        "{error:?}"
    );
}

#[tokio::test]
async fn wrong_trust_domain_is_rejected() {
    let cluster = Cluster::new();
    let mut server = cluster.start_server().await;
    let leaf =
        cluster.rcgen_leaf(|params| svid(params, "spiffe://evil.test/tenant/acme/workload/w"));
    let error = server.assert_rejected(cluster.raw_client(&leaf)).await;
    assert_eq!(
        identity_error(&error),
        Some(&IdentityError::WrongTrustDomain {
            found: "evil.test".to_owned(),
            expected: TRUST_DOMAIN.to_owned(),
        })
    );
}

#[tokio::test]
async fn client_refuses_a_server_from_another_ca() {
    let cluster = Cluster::new();
    let other = Cluster::with_ca_name("Some Other CA");
    let mut server = other.start_server().await;
    let leaf = cluster.issue(&request(tenant("acme"), "w"));
    let client = cluster.client_context(&leaf).client_config().unwrap();
    let (client_result, server_result) = server.exchange(client).await;
    let client_error = client_result.expect_err("the client trusted a foreign server");
    assert_eq!(
        rustls_error(&client_error),
        Some(&rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
    );
    assert!(server_result.is_err());
}

// ---------------------------------------------------------------------------------------
// Positive cases.

#[tokio::test]
async fn every_role_gets_in_with_its_identity() {
    let cluster = Cluster::new();
    let mut server = cluster.start_server().await;
    let roles = [
        Role::Server,
        Role::KeyServer,
        Role::ClusterAdmin,
        Role::Sre,
        Role::CertGranting,
        tenant("acme-corp"),
    ];
    for role in roles {
        let leaf = cluster.issue(&request(role.clone(), "peer-1"));
        let context = cluster.client_context(&leaf);
        assert_eq!(context.local_identity().role(), Some(&role));
        let identity = server.assert_accepted(context.client_config().unwrap()).await;
        assert_eq!(identity.role(), Some(&role), "{role}");
        assert_eq!(identity.principal(), &Principal::OrganizationalUnit, "{role}");
        assert_eq!(identity.common_name(), Some("peer-1"), "{role}");
        assert_eq!(identity.org(), role.org(), "{role}");
        assert_eq!(identity.kes_identity(), context.local_identity().kes_identity(), "{role}");
        assert_eq!(identity.kes_identity().to_string().len(), 64);
    }
}

#[tokio::test]
async fn spiffe_svid_gets_in_as_its_workload() {
    let cluster = Cluster::new();
    let mut server = cluster.start_server().await;
    let uri = "spiffe://kiseki.test/tenant/acme/project/climate/workload/train-7";
    let mut request = request(tenant("acme"), "train-7");
    request.spiffe_id = Some(SpiffeId::parse(uri).unwrap());
    let leaf = cluster.issue(&request);
    let identity =
        server.assert_accepted(cluster.client_context(&leaf).client_config().unwrap()).await;
    let spiffe = identity.spiffe_id().expect("a SPIFFE identity");
    assert_eq!(spiffe.as_str(), uri);
    assert_eq!(spiffe.org().as_str(), "acme");
    assert_eq!(spiffe.project(), Some("climate"));
    assert_eq!(spiffe.workload(), "train-7");
    assert_eq!(identity.role(), Some(&tenant("acme")));
}

#[tokio::test]
async fn unknown_ou_gets_a_stable_fingerprint_identity() {
    let cluster = Cluster::new();
    let mut server = cluster.start_server().await;
    let leaf = cluster.rcgen_leaf(|params| {
        params.distinguished_name.push(DnType::OrganizationalUnitName, "finance");
    });
    let first = server.assert_accepted(cluster.raw_client(&leaf)).await;
    let second = server.assert_accepted(cluster.raw_client(&leaf)).await;
    let Principal::Fingerprint(uuid) = first.principal() else { panic!("{first:?}") };
    assert_eq!(uuid.get_version_num(), 5, "a name-based (v5) UUID");
    assert_eq!(first.role(), None, "no role: everything will be denied");
    assert_eq!(second.principal(), first.principal(), "stable across connections");
    let other = cluster.rcgen_leaf(|params| {
        params.distinguished_name.push(DnType::OrganizationalUnitName, "finance");
    });
    let third = server.assert_accepted(cluster.raw_client(&other)).await;
    assert_ne!(third.principal(), first.principal(), "another certificate, another identity");
}

// ---------------------------------------------------------------------------------------
// The test cluster: a CA directory, a server context, certificates on disk.

/// A CA in a temporary directory, with its CRL.
struct Cluster {
    temp: tempfile::TempDir,
    ca: CertificateAuthority,
    ca_dir: PathBuf,
}

/// A certificate and key on disk.
struct Leaf {
    cert_der: CertificateDer<'static>,
    key_der: PrivateKeyDer<'static>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster::with_ca_name("Test Cluster CA")
    }

    fn with_ca_name(name: &str) -> Cluster {
        let temp = tempfile::tempdir().unwrap();
        let ca_dir = temp.path().join("ca");
        let ca = CertificateAuthority::init(&ca_dir, name, Validity::days_from_now(2)).unwrap();
        Cluster { temp, ca, ca_dir }
    }

    fn ca_path(&self) -> PathBuf {
        self.ca_dir.join(kiseki_security::CA_CERT_FILE)
    }

    fn crl_path(&self) -> PathBuf {
        self.ca_dir.join(CRL_FILE)
    }

    /// The server's builder: a `kiseki-server` certificate for localhost and 127.0.0.1,
    /// the CA's CRL, the test trust domain.
    fn server_builder(&self) -> TlsBuilder {
        let mut request = request(Role::Server, "node1");
        request.subject_alt_names = vec![
            SubjectAltName::parse(SERVER_NAME).unwrap(),
            SubjectAltName::parse("127.0.0.1").unwrap(),
        ];
        let leaf = self.issue(&request);
        self.builder(&leaf)
    }

    async fn start_server(&self) -> Server {
        Server::start(self.server_builder().build().unwrap()).await
    }

    fn builder(&self, leaf: &Leaf) -> TlsBuilder {
        let paths = TlsPaths {
            ca: self.ca_path(),
            cert: leaf.cert_path.clone(),
            key: leaf.key_path.clone(),
            crl: Some(self.crl_path()),
        };
        TlsBuilder::new(paths).trust_domain(Some(TrustDomain::parse(TRUST_DOMAIN).unwrap()))
    }

    /// A client context through the one builder, as every Kiseki client makes it.
    fn client_context(&self, leaf: &Leaf) -> TlsContext {
        self.builder(leaf).build().unwrap()
    }

    fn issue(&self, request: &IssueRequest) -> Leaf {
        let issued = self.ca.issue(request).unwrap();
        let dir = self.temp.path().join("leaves");
        let stem = format!("leaf-{}", leaf_count(&dir));
        let (cert_path, key_path) = issued.write_files(&dir, &stem).unwrap();
        let key_der = kiseki_security::read_private_key(&key_path).unwrap().clone_key();
        Leaf { cert_der: issued.certificate_der().clone(), key_der, cert_path, key_path }
    }

    /// A leaf signed by this CA with rcgen directly (no profile checks): CN `rogue`,
    /// digitalSignature, CA=false, then `configure`. Written to disk too.
    fn rcgen_leaf(&self, configure: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let ca_pem = std::fs::read_to_string(self.ca_path()).unwrap();
        let ca_key_pem =
            std::fs::read_to_string(self.ca_dir.join(kiseki_security::CA_KEY_FILE)).unwrap();
        let issuer =
            Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key_pem).unwrap()).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "rogue");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.is_ca = IsCa::ExplicitNoCa;
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2090, 1, 1);
        configure(&mut params);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let dir = self.temp.path().join("rogue");
        std::fs::create_dir_all(&dir).unwrap();
        let stem = format!("rogue-{}", leaf_count(&dir));
        let cert_path = dir.join(format!("{stem}.crt"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Leaf { cert_der: cert.der().clone(), key_der, cert_path, key_path }
    }

    fn revoke(&self, leaf: &Leaf) {
        self.ca.revoke(&leaf.cert_der, &self.crl_path()).unwrap();
    }

    /// A raw rustls client trusting this CA, builder stage before the client certificate.
    fn raw_client_builder(
        &self,
    ) -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.certificate_der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
    }

    /// A raw rustls client presenting `leaf`, whatever it holds.
    fn raw_client(&self, leaf: &Leaf) -> ClientConfig {
        self.raw_client_builder()
            .with_client_auth_cert(vec![leaf.cert_der.clone()], leaf.key_der.clone_key())
            .unwrap()
    }
}

fn leaf_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|entries| entries.count()).unwrap_or(0)
}

fn request(role: Role, common_name: &str) -> IssueRequest {
    IssueRequest {
        role,
        common_name: common_name.to_owned(),
        spiffe_id: None,
        subject_alt_names: Vec::new(),
        validity: Validity::days_from_now(1),
    }
}

fn tenant(org: &str) -> Role {
    Role::Workload { org: OrgId::parse(org).unwrap() }
}

fn svid(params: &mut CertificateParams, uri: &str) {
    params.subject_alt_names.push(SanType::URI(uri.try_into().unwrap()));
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
}

fn days(count: u64) -> Duration {
    Duration::from_secs(count * 86_400)
}

// ---------------------------------------------------------------------------------------
// The server: accepts connections one at a time and reports each outcome.

/// A TLS server on 127.0.0.1 that answers `ok` to one byte, reporting for each connection
/// the peer's identity or the error its accept ended with.
struct Server {
    addr: SocketAddr,
    server_name: &'static str,
    context: TlsContext,
    outcomes: mpsc::Receiver<Result<PeerIdentity, io::Error>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(context: TlsContext) -> Server {
        Server::start_named(context, SERVER_NAME).await
    }

    /// A server whose clients ask for `server_name`.
    async fn start_named(context: TlsContext, server_name: &'static str) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(context.server_config().unwrap()));
        let (report, outcomes) = mpsc::channel(4);
        let serving = context.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let outcome = serve(&acceptor, &serving, tcp).await;
                if report.send(outcome).await.is_err() {
                    break;
                }
            }
        });
        Server { addr, server_name, context, outcomes, task }
    }

    /// One exchange from a client with `config`: what the client saw, what the server saw.
    async fn exchange(
        &mut self,
        config: ClientConfig,
    ) -> (Result<(), io::Error>, Result<PeerIdentity, io::Error>) {
        let client =
            tokio::time::timeout(EXCHANGE_TIMEOUT, talk(config, self.addr, self.server_name))
                .await
                .unwrap_or_else(|_| {
                    Err(io::Error::new(io::ErrorKind::TimedOut, "client timed out"))
                });
        let server = tokio::time::timeout(EXCHANGE_TIMEOUT, self.outcomes.recv())
            .await
            .expect("the server reported no outcome")
            .expect("the server task ended");
        (client, server)
    }

    async fn assert_accepted(&mut self, config: ClientConfig) -> PeerIdentity {
        let (client, server) = self.exchange(config).await;
        client.expect("the client's exchange failed");
        server.expect("the server refused the client")
    }

    /// Asserts both sides failed; returns the TLS error the server's accept gave.
    async fn assert_rejected(&mut self, config: ClientConfig) -> rustls::Error {
        let (client, server) = self.exchange(config).await;
        assert!(client.is_err(), "the client's exchange succeeded");
        let error = server.expect_err("the server accepted the client");
        rustls_error(&error).cloned().unwrap_or_else(|| panic!("not a TLS error: {error}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    acceptor: &TlsAcceptor,
    context: &TlsContext,
    tcp: TcpStream,
) -> Result<PeerIdentity, io::Error> {
    let mut tls = acceptor.accept(tcp).await?;
    let identity = context.peer_identity(tls.get_ref().1.peer_certificates());
    let identity = identity.map_err(io::Error::other)?;
    let mut request = [0u8; 1];
    tls.read_exact(&mut request).await?;
    tls.write_all(b"ok").await?;
    tls.flush().await?;
    let _ = tls.shutdown().await;
    Ok(identity)
}

/// Connects, writes one byte, reads the two-byte answer.
async fn talk(config: ClientConfig, addr: SocketAddr, name: &str) -> Result<(), io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut tls = TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
    tls.write_all(b"?").await?;
    let mut answer = [0u8; 2];
    tls.read_exact(&mut answer).await?;
    if &answer != b"ok" {
        return Err(io::Error::other("wrong answer"));
    }
    Ok(())
}

/// The rustls error inside an I/O error from tokio-rustls, if there is one.
fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The identity rule a handshake broke, if that is why it failed.
fn identity_error(error: &rustls::Error) -> Option<&IdentityError> {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<IdentityError>()
        }
        _ => None,
    }
}
