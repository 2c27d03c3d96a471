//! Admission (seed 003) against a real `AdmissionService` on 127.0.0.1: a node redeems a
//! token once for a certificate-granting certificate (CGC), and with the CGC gets a server
//! certificate that works on Kiseki's ordinary mutual TLS.
//!
//! The negative half: a replayed, expired, unknown or malformed token, or one minted for
//! another node; a CGC calling data and admin paths, or asking for another node's name or
//! SANs; a server, admin or anonymous caller asking for certificates; an oversized frame;
//! a client certificate of another CA, and a revoked CGC. Each asserts the refusal and that
//! nothing was issued; the command-line test asserts a token never shows up in an error.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use kiseki_gateway::admission::wire::{
    IssueRole, RemoteError, Request, Response, Secret, write_frame,
};
use kiseki_gateway::admission::{
    AdmissionClient, AdmissionServer, AdmissionService, AdmissionServiceError, IfMissing,
    RoleRequest, TokenStoreFile, join, renew, system_now_unix_secs,
};
use kiseki_gateway::constants::ADMISSION_FRAME_MAX_BYTES;
use kiseki_security::admission::TokenStore;
use kiseki_security::{
    CA_CERT_FILE, CRL_FILE, CertificateAuthority, CertificateRequest, IssueRequest, PeerIdentity,
    Role, SubjectAltName, TlsBuilder, TlsContext, TlsPaths, Validity, admission_client_config,
    read_certificates,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use zeroize::Zeroizing;

/// The name the admission service's certificate carries (with 127.0.0.1).
const SERVER_NAME: &str = "localhost";
/// Longest any one exchange may take before the test fails instead of hanging.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The token works once.

#[tokio::test]
async fn a_token_admits_its_node_once_and_the_server_certificate_works_for_mtls() {
    let cluster = Cluster::start().await;
    let token = cluster.mint("node7", 600);
    let out = cluster.dir("node7");
    let roles = RoleRequest { roles: vec![IssueRole::Server], sans: vec!["127.0.0.1".into()] };
    let written = join(&cluster.server(), &token, "node7", &roles, &out).await.unwrap();
    let names: Vec<_> = written.iter().map(|p| p.file_name().unwrap().to_owned()).collect();
    assert_eq!(names, ["cgc.crt", "cgc.key", "server.crt", "server.key"]);
    for key in ["cgc.key", "server.key"] {
        assert_eq!(mode(&out.join(key)), 0o600, "{key}");
    }
    let cgc = identity_of(&out.join("cgc.crt"));
    assert_eq!((cgc.role(), cgc.common_name()), (Some(&Role::CertGranting), Some("node7")));
    let server = identity_of(&out.join("server.crt"));
    assert_eq!((server.role(), server.common_name()), (Some(&Role::Server), Some("node7")));
    assert_eq!(cluster.service.stats().admitted, 1);
    assert_eq!(cluster.service.stats().issued, 1);

    // The node's certificate on ordinary mutual TLS, both ways: as a client of another
    // node, and as a server reached by its address (the IP SAN it was granted).
    let node = tls_context(&cluster.ca_cert(), &out.join("server.crt"), &out.join("server.key"));
    let peer = cluster.tls.clone();
    let seen = mtls_exchange(&peer, &node, SERVER_NAME).await.unwrap();
    assert_eq!((seen.role(), seen.common_name()), (Some(&Role::Server), Some("node7")));
    let seen = mtls_exchange(&node, &peer, "127.0.0.1").await.unwrap();
    assert_eq!(seen.role(), Some(&Role::Server));
    let error = mtls_exchange(&node, &peer, "node8").await.unwrap_err();
    assert!(error.to_string().contains("certificate"), "not valid for another name: {error}");

    // Replay: the same token again, whoever presents it.
    let again = cluster.dir("node7-again");
    let replay = join(&cluster.server(), &token, "node7", &roles, &again).await;
    assert_refused(replay, RemoteError::AdmissionRefused);
    assert!(!again.join("cgc.crt").exists() && !again.join("cgc.key").exists());
    assert_eq!(cluster.service.stats().admitted, 1);
}

// ---------------------------------------------------------------------------------------
// Tokens that must not work.

#[tokio::test]
async fn an_expired_token_is_refused() {
    // Minted with a lifetime that ended an hour ago.
    let cluster = Cluster::start().await;
    let now = system_now_unix_secs();
    let token = cluster.mint_at("node7", 3600, now - 2 * 3600);
    let result = cluster.admit_only(&token, "node7").await;
    assert_refused(result, RemoteError::AdmissionRefused);

    // Minted now for a minute, presented to a service whose clock is two minutes ahead.
    let later = Cluster::start_with_clock(Arc::new(move || system_now_unix_secs() + 120)).await;
    let token = later.mint("node8", 60);
    assert_refused(later.admit_only(&token, "node8").await, RemoteError::AdmissionRefused);
    assert_eq!(later.service.stats().admitted, 0);
    // It was judged once, so it is spent as well as expired.
    assert!(later.store_records()[0].used_unix_secs.is_some());
}

#[tokio::test]
async fn unknown_malformed_and_other_nodes_tokens_are_refused() {
    let cluster = Cluster::start().await;
    let real = cluster.mint("node7", 600);
    let unknown = secret(&format!("kiseki-adm-{}", "ab".repeat(32)));
    let truncated = secret(&real.expose()[..real.expose().len() - 1]);
    for token in [unknown, truncated, secret(""), secret("admit me"), secret(&"x".repeat(4096))] {
        assert_refused(cluster.admit_only(&token, "node7").await, RemoteError::AdmissionRefused);
    }
    // None of that spent the real token.
    assert!(cluster.store_records()[0].used_unix_secs.is_none());

    // The real token, for another node's name: refused, and spent.
    assert_refused(cluster.admit_only(&real, "node8").await, RemoteError::AdmissionRefused);
    assert_refused(cluster.admit_only(&real, "node7").await, RemoteError::AdmissionRefused);
    let stats = cluster.service.stats();
    assert_eq!((stats.admitted, stats.issued), (0, 0));
}

// ---------------------------------------------------------------------------------------
// What a CGC may not do.

#[tokio::test]
async fn a_cgc_calling_data_or_admin_paths_is_denied() {
    let cluster = Cluster::start().await;
    let (cert, key) = cluster.admitted("node7").await;
    let mut client = cluster.connect(&cert, &key).await;
    let calls = [
        ("/v1/chunk/get/0123abcd", Some("acme")),
        ("/v1/chunk/put/0123abcd", Some("acme")),
        ("/v1/object/get/bucket-key", Some("acme")),
        ("/v1/storage/list", None),
        ("/v1/tenant/create/acme", Some("acme")),
        ("/v1/key/decrypt/master", None),
        ("/v1/admission/mint/node9", None),
        ("/v1/raft/append/group-1", None),
    ];
    for (path, tenant) in calls {
        let request = Request::Call { path: path.into(), tenant: tenant.map(Into::into) };
        let response = client.call(request).await.unwrap();
        assert_eq!(response, denied(RemoteError::AccessDenied), "{path}");
    }

    // The same paths are not denied wholesale: an admin may list storage (which this
    // listener does not serve) but not read tenant data either.
    let admin = cluster.issue_direct(Role::ClusterAdmin, "root");
    let mut client = cluster.connect(&admin.0, &admin.1).await;
    let list = Request::Call { path: "/v1/storage/list".into(), tenant: None };
    assert_eq!(client.call(list).await.unwrap(), denied(RemoteError::NotServedHere));
    let read = Request::Call { path: "/v1/chunk/get/0123abcd".into(), tenant: Some("acme".into()) };
    assert_eq!(client.call(read).await.unwrap(), denied(RemoteError::AccessDenied));
}

#[tokio::test]
async fn a_cgc_cannot_get_certificates_for_another_name_or_address() {
    let cluster = Cluster::start().await;
    let (cert, key) = cluster.admitted("node7").await;
    let mut client = cluster.connect(&cert, &key).await;
    let issue = |name: &str, sans: &[&str]| Request::Issue {
        role: IssueRole::Server,
        name: name.to_owned(),
        csr_pem: CertificateRequest::generate("x").unwrap().csr_pem().to_owned(),
        sans: sans.iter().map(|s| (*s).to_owned()).collect(),
    };
    let refusals = [
        issue("node8", &[]),
        issue("node7", &["node8"]),
        issue("node7", &["10.9.9.9"]),
        issue("node7", &["*.example.com"]),
        issue("node7/../node8", &[]),
        Request::Renew {
            name: "node8".into(),
            csr_pem: CertificateRequest::generate("x").unwrap().csr_pem().into(),
        },
    ];
    for request in refusals {
        let shown = format!("{request:?}");
        assert_eq!(
            client.call(request).await.unwrap(),
            denied(RemoteError::AccessDenied),
            "{shown}"
        );
    }
    assert_eq!(cluster.service.stats().issued, 0);

    // Its own name, its own address, and a renewal of its own CGC are granted.
    let request = CertificateRequest::generate("node7").unwrap();
    let own_address = ["127.0.0.1".to_owned()];
    let keyserver = client.issue(IssueRole::Keyserver, "node7", request, &own_address);
    let keyserver = keyserver.await.unwrap();
    let identity = PeerIdentity::from_der(keyserver.certificate_der(), &Default::default());
    assert_eq!(identity.unwrap().role(), Some(&Role::KeyServer));
    let renewed = client.renew("node7", CertificateRequest::generate("node7").unwrap()).await;
    assert!(renewed.is_ok(), "{renewed:?}");
    assert_eq!(cluster.service.stats().issued, 2);
}

#[tokio::test]
async fn only_a_cgc_may_ask_for_certificates() {
    let cluster = Cluster::start().await;
    // Certificates of other roles for the very same name, straight from the CA.
    for role in [Role::Server, Role::KeyServer, Role::ClusterAdmin] {
        let (cert, key) = cluster.issue_direct(role.clone(), "node7");
        let mut client = cluster.connect(&cert, &key).await;
        let request = CertificateRequest::generate("node7").unwrap();
        let issued = client.issue(IssueRole::Server, "node7", request, &[]).await;
        assert_refused(issued, RemoteError::AccessDenied);
        let renewed = client.renew("node7", CertificateRequest::generate("node7").unwrap()).await;
        assert_refused(renewed, RemoteError::AccessDenied);
    }
    // And no certificate at all.
    let config = Arc::new(admission_client_config(&cluster.ca_cert()).unwrap());
    let mut client = AdmissionClient::connect(&cluster.server(), config).await.unwrap();
    let request = CertificateRequest::generate("node7").unwrap();
    assert_refused(
        client.issue(IssueRole::Server, "node7", request, &[]).await,
        RemoteError::AccessDenied,
    );
    let call = Request::Call { path: "/v1/storage/list".into(), tenant: None };
    assert_eq!(client.call(call).await.unwrap(), denied(RemoteError::AccessDenied));
    assert_eq!(cluster.service.stats().issued, 0);
}

// ---------------------------------------------------------------------------------------
// The connection itself.

#[tokio::test]
async fn an_oversized_or_empty_frame_closes_the_connection() {
    let cluster = Cluster::start().await;
    for len_bytes in [ADMISSION_FRAME_MAX_BYTES + 1, u32::MAX, 0] {
        let mut stream = cluster.anonymous_stream().await;
        stream.write_all(&len_bytes.to_le_bytes()).await.unwrap();
        stream.write_all(b"{\"version\":1}").await.unwrap();
        stream.flush().await.unwrap();
        let mut reply = Vec::new();
        let read = tokio::time::timeout(EXCHANGE_TIMEOUT, stream.read_to_end(&mut reply)).await;
        // Closed: end of stream (or a reset), and not one byte of answer.
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{len_bytes}: {read:?}");
        assert!(reply.is_empty(), "{len_bytes}");
    }
    assert_eq!(cluster.service.stats().bad_frames, 3);

    // A frame of exactly the limit is read (and refused as a bad request, then closed).
    let mut stream = cluster.anonymous_stream().await;
    let body = vec![b' '; ADMISSION_FRAME_MAX_BYTES as usize];
    write_frame(&mut stream, &body).await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    assert!(String::from_utf8_lossy(&reply).contains("bad_request"));
    assert_eq!(cluster.service.stats().bad_frames, 3);
}

#[tokio::test]
async fn a_client_certificate_of_another_ca_fails_the_handshake() {
    let cluster = Cluster::start().await;
    let other = Cluster::start().await;
    // A CGC for node7, from another CA: it must not even reach the request.
    let (cert, key) = other.issue_direct(Role::CertGranting, "node7");
    let forged =
        TlsBuilder::new(TlsPaths { ca: cluster.ca_cert(), cert, key, crl: None }).build().unwrap();
    let config = Arc::new(forged.client_config().unwrap());
    let outcome = match AdmissionClient::connect(&cluster.server(), config).await {
        Err(error) => Err(error),
        Ok(mut client) => {
            let request = CertificateRequest::generate("node7").unwrap();
            client.issue(IssueRole::Server, "node7", request, &[]).await.map(|_| ())
        }
    };
    assert!(
        matches!(outcome, Err(AdmissionServiceError::Connection { .. })),
        "refused in the handshake, not by a response: {outcome:?}"
    );
    let stats = cluster.service.stats();
    assert_eq!((stats.issued, stats.refused), (0, 0), "no request was ever answered");
}

#[tokio::test]
async fn a_revoked_cgc_fails_the_handshake_after_a_crl_reload() {
    let cluster = Cluster::start().await;
    let (cert, key) = cluster.admitted("node7").await;
    let out = cluster.dir("renewed");
    let roles = RoleRequest { roles: vec![IssueRole::Server], sans: Vec::new() };
    renew(&cluster.server(), &cert, &key, &roles, &out).await.unwrap();
    assert_eq!(identity_of(&out.join("cgc.crt")).role(), Some(&Role::CertGranting));

    cluster
        .ca
        .revoke(&read_certificates(&cert).unwrap()[0], &cluster.ca_dir.join(CRL_FILE))
        .unwrap();
    cluster.tls.reload_crl().unwrap();
    let again = cluster.dir("renewed-again");
    let result = renew(&cluster.server(), &cert, &key, &roles, &again).await;
    assert!(matches!(result, Err(AdmissionServiceError::Connection { .. })), "{result:?}");
    assert!(!again.join("cgc.crt").exists());
    // The renewed CGC (another serial) still works.
    let (cert, key) = (out.join("cgc.crt"), out.join("cgc.key"));
    renew(&cluster.server(), &cert, &key, &roles, &again).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// The command line.

#[tokio::test]
async fn the_command_line_mints_a_token_shown_once_and_joins_with_it() {
    let cluster = Cluster::start().await;
    let help = cli("--help").await.1;
    for needle in ["admission-token create", "admission serve", "join"] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
    assert!(cli("admission serve --help").await.1.contains("client certificate is optional"));

    let store = path(&cluster.store);
    let (code, out, err) =
        cli(&format!("admission-token create --node node9 --store {store}")).await;
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    let token = out.split_whitespace().find(|word| word.starts_with("kiseki-adm-")).unwrap();
    assert_eq!(token.len(), "kiseki-adm-".len() + 64);
    assert!(out.contains("kiseki-server join"), "says how to use it: {out}");
    assert_eq!(mode(&cluster.store), 0o600);
    assert!(!fs::read_to_string(&cluster.store).unwrap().contains(token));

    let secrets = cluster.dir("secrets");
    fs::create_dir_all(&secrets).unwrap();
    let token_file = secrets.join("token");
    fs::write(&token_file, format!("{token}\n")).unwrap();
    let server = format!(
        "--server {} --server-name {SERVER_NAME} --ca-cert {}",
        cluster.address,
        path(&cluster.ca_cert())
    );
    let node_dir = cluster.dir("node9");
    let join_line = format!(
        "join {server} --node node9 --role server --role keyserver --token-file {} --out {}",
        path(&token_file),
        path(&node_dir)
    );
    let (code, out, err) = cli(&join_line).await;
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert!(out.contains("KISEKI_CERT_PATH="), "{out}");
    for file in ["cgc.crt", "cgc.key", "server.crt", "server.key", "keyserver.crt", "keyserver.key"]
    {
        assert!(node_dir.join(file).exists(), "{file}");
    }
    assert_eq!(identity_of(&node_dir.join("keyserver.crt")).role(), Some(&Role::KeyServer));

    // Again with the same token (on the command line this time): refused, and neither the
    // error nor the output shows the token.
    let again = path(&cluster.dir("node9-again"));
    let replay = format!("join {server} --node node9 --role server --token {token} --out {again}");
    let (code, out, err) = cli(&replay).await;
    assert_eq!(code, ExitCode::from(1), "{out}");
    assert!(err.contains("admission refused"), "{err}");
    assert!(!err.contains(token) && !out.contains(token));

    // Renewal with the CGC.
    let renewed = cluster.dir("node9-renewed");
    let renew_line = format!(
        "join {server} --renew --cgc {} --role server --out {}",
        path(&node_dir),
        path(&renewed)
    );
    let (code, out, err) = cli(&renew_line).await;
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert!(out.contains("renewed"), "{out}");
    assert_eq!(identity_of(&renewed.join("server.crt")).common_name(), Some("node9"));
    assert_eq!(identity_of(&renewed.join("cgc.crt")).role(), Some(&Role::CertGranting));

    // Usage errors (exit code 2): no token, a token with --renew, a bad node name, a
    // service certificate that is not a server's.
    let admin = cluster.issue_direct(Role::ClusterAdmin, "root");
    let ca = path(&cluster.ca_dir);
    let usage = [
        format!("join {server} --node node9 --role server --out {again}"),
        format!(
            "join {server} --renew --cgc {} --token t --role server --out {again}",
            path(&node_dir)
        ),
        format!("admission-token create --node Node_9 --store {store}"),
        format!(
            "admission serve --ca {ca} --cert {} --key {} --store {store} --listen 127.0.0.1:0",
            path(&admin.0),
            path(&admin.1)
        ),
    ];
    for line in &usage {
        let (code, _, err) = cli(line).await;
        assert_eq!(code, ExitCode::from(2), "{line}: {err}");
    }
    // A service pointed at a store that does not exist stops before it listens.
    let cert = cluster.temp.path().join("tls/admission.crt");
    let missing = format!(
        "admission serve --ca {ca} --cert {} --key {} --store {} --listen 127.0.0.1:0",
        path(&cert),
        path(&cert.with_extension("key")),
        path(&cluster.dir("no-such-store.json"))
    );
    let (code, out, err) = cli(&missing).await;
    assert_eq!(code, ExitCode::from(1), "{out}");
    assert!(err.contains("token store"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Helpers.

/// A cluster CA, an admission service on 127.0.0.1 with a token store, and a temporary
/// directory for everything; the service stops when this is dropped.
struct Cluster {
    temp: tempfile::TempDir,
    ca_dir: PathBuf,
    ca: CertificateAuthority,
    store: PathBuf,
    tls: TlsContext,
    address: SocketAddr,
    service: Arc<AdmissionService>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_with_clock(Arc::new(system_now_unix_secs)).await
    }

    async fn start_with_clock(clock: kiseki_gateway::admission::UnixClock) -> Cluster {
        let temp = tempfile::tempdir().unwrap();
        let ca_dir = temp.path().join("ca");
        let ca =
            CertificateAuthority::init(&ca_dir, "Test CA", Validity::days_from_now(30)).unwrap();
        let mut request = request(Role::Server, "admission.test");
        request.subject_alt_names = vec![
            SubjectAltName::parse(SERVER_NAME).unwrap(),
            SubjectAltName::parse("127.0.0.1").unwrap(),
        ];
        let (cert, key) =
            ca.issue(&request).unwrap().write_files(&temp.path().join("tls"), "admission").unwrap();
        let tls = TlsBuilder::new(TlsPaths {
            ca: ca_dir.join(CA_CERT_FILE),
            cert,
            key,
            crl: Some(ca_dir.join(CRL_FILE)),
        })
        .build()
        .unwrap();
        let store = temp.path().join("tokens.json");
        fs::write(&store, TokenStore::new().to_json()).unwrap();
        let authority = CertificateAuthority::load(&ca_dir).unwrap();
        let service = AdmissionService::new(tls.clone(), authority, TokenStoreFile::new(&store))
            .unwrap()
            .with_clock(clock);
        let service = Arc::new(service);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(Arc::clone(&service).serve(listener, async move {
            let _ = stopped.await;
        }));
        Cluster { temp, ca_dir, ca, store, tls, address, service, stop: Some(stop), task }
    }

    fn server(&self) -> AdmissionServer {
        AdmissionServer {
            address: self.address.to_string(),
            server_name: SERVER_NAME.to_owned(),
            ca_cert: self.ca_cert(),
        }
    }

    fn ca_cert(&self) -> PathBuf {
        self.ca_dir.join(CA_CERT_FILE)
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.temp.path().join(name)
    }

    fn mint(&self, node: &str, ttl_secs: u64) -> Secret {
        self.mint_at(node, ttl_secs, system_now_unix_secs())
    }

    fn mint_at(&self, node: &str, ttl_secs: u64, now_unix_secs: u64) -> Secret {
        let file = TokenStoreFile::new(&self.store);
        let token = file.update(IfMissing::Fail, |s| s.mint(node, ttl_secs, now_unix_secs));
        secret(token.unwrap().unwrap().expose())
    }

    fn store_records(&self) -> Vec<kiseki_security::admission::TokenRecord> {
        TokenStoreFile::new(&self.store).read(IfMissing::Fail).unwrap().records().to_vec()
    }

    /// Only the first step: the token for a CGC, nothing written.
    async fn admit_only(&self, token: &Secret, node: &str) -> Result<(), AdmissionServiceError> {
        let config = Arc::new(admission_client_config(&self.ca_cert()).unwrap());
        let mut client = AdmissionClient::connect(&self.server(), config).await?;
        let request = CertificateRequest::generate(node).unwrap();
        client.admit(token, node, request).await.map(|_| ())
    }

    /// A node admitted with a fresh token: the paths of its CGC and key.
    async fn admitted(&self, node: &str) -> (PathBuf, PathBuf) {
        let token = self.mint(node, 600);
        let out = self.dir(node);
        let roles = RoleRequest { roles: Vec::new(), sans: Vec::new() };
        join(&self.server(), &token, node, &roles, &out).await.unwrap();
        (out.join("cgc.crt"), out.join("cgc.key"))
    }

    /// A certificate straight from the CA (no admission), written to files.
    fn issue_direct(&self, role: Role, name: &str) -> (PathBuf, PathBuf) {
        let issued = self.ca.issue(&request(role.clone(), name)).unwrap();
        let dir = self.dir(&format!("direct-{role}-{name}"));
        issued.write_files(&dir, "leaf").unwrap()
    }

    /// A connection to the service presenting `cert`.
    async fn connect(&self, cert: &Path, key: &Path) -> AdmissionClient {
        let context = tls_context(&self.ca_cert(), cert, key);
        let config = Arc::new(context.client_config().unwrap());
        AdmissionClient::connect(&self.server(), config).await.unwrap()
    }

    /// A raw TLS stream to the service without a client certificate.
    async fn anonymous_stream(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let config = Arc::new(admission_client_config(&self.ca_cert()).unwrap());
        let tcp = TcpStream::connect(self.address).await.unwrap();
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        TlsConnector::from(config).connect(name, tcp).await.unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

fn request(role: Role, common_name: &str) -> IssueRequest {
    IssueRequest {
        role,
        common_name: common_name.to_owned(),
        spiffe_id: None,
        subject_alt_names: Vec::new(),
        validity: Validity::days_from_now(30),
    }
}

fn tls_context(ca: &Path, cert: &Path, key: &Path) -> TlsContext {
    let paths =
        TlsPaths { ca: ca.to_owned(), cert: cert.to_owned(), key: key.to_owned(), crl: None };
    TlsBuilder::new(paths).build().unwrap()
}

fn secret(text: &str) -> Secret {
    Secret::new(Zeroizing::new(text.to_owned()))
}

fn denied(reason: RemoteError) -> Response {
    Response::Error { reason }
}

fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, AdmissionServiceError>,
    expected: RemoteError,
) {
    match result {
        Err(AdmissionServiceError::Refused(reason)) => assert_eq!(reason, expected),
        other => panic!("expected a refusal ({expected}), got {other:?}"),
    }
}

fn identity_of(cert: &Path) -> PeerIdentity {
    PeerIdentity::from_der(&read_certificates(cert).unwrap()[0], &Default::default()).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn path(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

/// One mutual-TLS exchange on 127.0.0.1 through the ordinary configurations: `server`
/// listens, `client` connects asking for `server_name`; the identity the server derived
/// for the client, or the first error of either side.
async fn mtls_exchange(
    server: &TlsContext,
    client: &TlsContext,
    server_name: &str,
) -> io::Result<PeerIdentity> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(Arc::new(server.server_config().unwrap()));
    let context = server.clone();
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut stream = acceptor.accept(tcp).await?;
        let mut ping = [0u8; 4];
        stream.read_exact(&mut ping).await?;
        stream.write_all(b"pong").await?;
        stream.shutdown().await?;
        let chain = stream.get_ref().1.peer_certificates();
        context.peer_identity(chain).map_err(io::Error::other)
    });
    let connector = TlsConnector::from(Arc::new(client.client_config().unwrap()));
    let name = ServerName::try_from(server_name.to_owned()).map_err(io::Error::other)?;
    let talked = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let tcp = TcpStream::connect(address).await?;
        let mut stream = connector.connect(name, tcp).await?;
        stream.write_all(b"ping").await?;
        let mut pong = [0u8; 4];
        stream.read_exact(&mut pong).await?;
        io::Result::Ok(())
    })
    .await
    .map_err(io::Error::other)?;
    if let Err(error) = talked {
        served.abort();
        return Err(error);
    }
    served.await.map_err(io::Error::other)?
}

/// Runs the `kiseki-server` command line `line` (split at whitespace; test paths have none)
/// on a blocking thread, since the network commands build their own runtime: its exit code,
/// stdout and stderr.
async fn cli(line: &str) -> (ExitCode, String, String) {
    let argv: Vec<String> = std::iter::once("kiseki-server")
        .chain(line.split_whitespace())
        .map(str::to_owned)
        .collect();
    tokio::task::spawn_blocking(move || {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = kiseki_gateway::cli::main(argv, &mut out, &mut err);
        (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
    })
    .await
    .unwrap()
}
