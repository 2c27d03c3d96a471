//! What the TCP tests share: a test cluster CA with certificates on disk, servers on
//! 127.0.0.1, an engine on a memory device, sealed chunks, and raw TLS clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use kiseki_devices::{MemoryDevice, OpenOptions as DeviceOptions};
use kiseki_engine::{DeviceIds, Engine, EngineError, FormatOptions, OpenOptions, Shard};
use kiseki_fabric::{
    BoxFuture, ChunkService, Endpoint, FabricRequest, FabricResponse, Handler, Peer, SharedBytes,
    TcpConfig, TcpServer, TcpServerConfig, TcpTransport,
};
use kiseki_proto::{ChunkRequest, Op, Status, TenantRef};
use kiseki_security::authz::Authorizer;
use kiseki_security::{
    CRL_FILE, CertificateAuthority, ChunkId, Dek, Envelope, IssueRequest, MasterKey, OrgId, Role,
    SealParams, SubjectAltName, TlsBuilder, TlsContext, TlsPaths, Validity,
};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Longest any one step may take before a test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(10);

/// The name clients ask for; server certificates carry it and 127.0.0.1.
const SERVER_NAME: &str = "localhost";

/// A cluster CA with its CRL, and the certificates it issued, in a temporary directory.
pub struct Cluster {
    temp: tempfile::TempDir,
    ca: CertificateAuthority,
    ca_dir: PathBuf,
    leaves: AtomicUsize,
}

/// A certificate and key on disk.
pub struct Leaf {
    pub cert_der: rustls_pki_types::CertificateDer<'static>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl Cluster {
    pub fn new(ca_name: &str) -> Cluster {
        let temp = tempfile::tempdir().unwrap();
        let ca_dir = temp.path().join("ca");
        let ca = CertificateAuthority::init(&ca_dir, ca_name, Validity::days_from_now(2)).unwrap();
        Cluster { temp, ca, ca_dir, leaves: AtomicUsize::new(0) }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.ca_dir.join(kiseki_security::CA_CERT_FILE)
    }

    /// A leaf for `role` named `name`, valid for localhost and 127.0.0.1.
    pub fn leaf(&self, role: Role, name: &str) -> Leaf {
        let request = IssueRequest {
            role,
            common_name: name.to_owned(),
            spiffe_id: None,
            subject_alt_names: vec![
                SubjectAltName::parse(SERVER_NAME).unwrap(),
                SubjectAltName::parse("127.0.0.1").unwrap(),
            ],
            validity: Validity::days_from_now(1),
        };
        let issued = self.ca.issue(&request).unwrap();
        let stem = format!("leaf-{}", self.leaves.fetch_add(1, Ordering::Relaxed));
        let (cert_path, key_path) =
            issued.write_files(&self.temp.path().join("leaves"), &stem).unwrap();
        Leaf { cert_der: issued.certificate_der().clone(), cert_path, key_path }
    }

    /// A TLS context presenting `leaf`, trusting the CA bundle at `ca`, without a CRL,
    /// through the one builder.
    pub fn context_trusting(&self, leaf: &Leaf, ca: PathBuf) -> TlsContext {
        let paths =
            TlsPaths { ca, cert: leaf.cert_path.clone(), key: leaf.key_path.clone(), crl: None };
        TlsBuilder::new(paths).build().unwrap()
    }

    /// A TLS context presenting `leaf`, trusting this cluster's CA and CRL.
    pub fn context(&self, leaf: &Leaf) -> TlsContext {
        let paths = TlsPaths {
            ca: self.ca_path(),
            cert: leaf.cert_path.clone(),
            key: leaf.key_path.clone(),
            crl: Some(self.ca_dir.join(CRL_FILE)),
        };
        TlsBuilder::new(paths).build().unwrap()
    }

    /// A context for a fresh leaf of `role`.
    pub fn context_for(&self, role: Role, name: &str) -> TlsContext {
        self.context(&self.leaf(role, name))
    }

    pub fn revoke(&self, leaf: &Leaf) {
        self.ca.revoke(&leaf.cert_der, &self.ca_dir.join(CRL_FILE)).unwrap();
    }

    /// A file holding this cluster's CA and `other`'s, for a client that trusts our
    /// servers while presenting the other CA's certificate.
    pub fn bundle_with(&self, other: &Cluster) -> PathBuf {
        let path = self.temp.path().join("bundle.pem");
        let bundle = format!("{}{}", self.ca.certificate_pem(), other.ca.certificate_pem());
        std::fs::write(&path, bundle).unwrap();
        path
    }
}

pub fn tenant(org: &str) -> Role {
    Role::Workload { org: OrgId::parse(org).unwrap() }
}

/// Starts a server on 127.0.0.1 with `tls` and `handler`.
pub async fn start_server<H: Handler>(
    tls: &TlsContext,
    config: TcpServerConfig,
    handler: Arc<H>,
) -> TcpServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    TcpServer::start(listener, tls, config, handler).unwrap()
}

pub fn endpoint(server: &TcpServer) -> Endpoint {
    Endpoint {
        node: "node1".to_owned(),
        addr: server.local_addr(),
        server_name: SERVER_NAME.to_owned(),
    }
}

pub fn transport(tls: &TlsContext, config: TcpConfig) -> TcpTransport {
    TcpTransport::new(tls, config).unwrap()
}

/// Waits until `condition` holds, polling; fails the test after [`WAIT`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Handlers.

/// Answers Ping at once; any other op is held until `release_at` requests are held at once
/// or [`GateHandler::release`] is called (or [`WAIT`] passes), then echoed; from then on
/// nothing is held. Counts how many requests it holds at once. The echo's payload after its
/// first byte is answered as shared bytes.
#[derive(Debug, Default)]
pub struct GateHandler {
    pub current: AtomicUsize,
    pub max_seen: AtomicUsize,
    release_at: usize,
    open: AtomicBool,
    released: tokio::sync::Notify,
}

impl GateHandler {
    pub fn releasing_at(release_at: usize) -> Arc<GateHandler> {
        Arc::new(GateHandler { release_at, ..GateHandler::default() })
    }

    /// Lets every held request go.
    pub fn release(&self) {
        self.open.store(true, Ordering::SeqCst);
        self.released.notify_waiters();
    }
}

impl Handler for GateHandler {
    fn handle<'a>(
        &'a self,
        _peer: &'a Peer,
        request: FabricRequest,
    ) -> BoxFuture<'a, FabricResponse> {
        Box::pin(async move {
            if request.op == Op::Ping {
                return FabricResponse::new(Status::Ok, Vec::new());
            }
            let released = self.released.notified();
            let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_seen.fetch_max(now, Ordering::SeqCst);
            if now >= self.release_at {
                self.release();
            } else if !self.open.load(Ordering::SeqCst) {
                let _ = tokio::time::timeout(WAIT, released).await;
            }
            self.current.fetch_sub(1, Ordering::SeqCst);
            // The echo's tail goes out as shared bytes, so every echo crosses the wire the
            // way a served envelope does.
            let mut payload = request.payload;
            let tail = payload.split_off(payload.len().min(1));
            let shared = Some(SharedBytes::new(Arc::new(tail)));
            FabricResponse { status: Status::Ok, payload, shared }
        })
    }
}

// ---------------------------------------------------------------------------------------
// The chunk service on an engine.

const IDS: DeviceIds =
    DeviceIds { cluster_id: [0xC1; 16], node_id: [0x11; 16], device_id: [0xD1; 16] };

/// An engine with one reactor on a 16 MiB memory device, and the chunk service over it.
pub struct Node {
    pub engine: Option<Engine>,
    pub service: Arc<ChunkService>,
}

impl Node {
    pub fn start() -> Node {
        let opener = Arc::new(|_index| open_memory_shard(16 << 20));
        let engine = Engine::start(1, opener).expect("engine starts");
        let service = Arc::new(ChunkService::new(engine.handle(), Authorizer::default(), 1024));
        Node { engine: Some(engine), service }
    }

    /// Serves the chunk service on 127.0.0.1 with a fresh server certificate (`node1`) of
    /// `cluster`; the server and the endpoint that reaches it.
    pub async fn serve(&self, cluster: &Cluster) -> (TcpServer, Endpoint) {
        let tls = cluster.context_for(Role::Server, "node1");
        let server =
            start_server(&tls, TcpServerConfig::default(), Arc::clone(&self.service)).await;
        let peer = endpoint(&server);
        (server, peer)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.take() {
            engine.shutdown().expect("clean engine shutdown");
        }
    }
}

fn open_memory_shard(size_bytes: u64) -> Result<Shard<MemoryDevice>, EngineError> {
    let options = DeviceOptions {
        queue_depth: 64,
        buffer_count: 32,
        buffer_size_bytes: 256 << 10,
        ..DeviceOptions::default()
    };
    let mut device = MemoryDevice::new(size_bytes, &options).expect("memory device");
    let format = FormatOptions { ids: IDS, region_offset_bytes: 0, region_size_bytes: None };
    Shard::format(&mut device, &format)?;
    Shard::open(device, &OpenOptions::default())
}

/// Chunk `key`, sealed: its id and its envelope bytes.
pub fn chunk(key: u64) -> ([u8; 32], Vec<u8>) {
    let plaintext: Vec<u8> =
        (0..(3000 + key as usize * 17)).map(|i| (i as u64 ^ key) as u8).collect();
    let id = ChunkId::of_plaintext(&plaintext);
    let master = MasterKey::generate(1).unwrap();
    let dek = Dek::derive(&master, &id, None);
    let envelope = Envelope::seal(&plaintext, &SealParams::new(&dek)).unwrap();
    (*id.as_bytes(), envelope.into_bytes())
}

pub fn put_request(tenant: Option<&str>, envelope: &[u8]) -> FabricRequest {
    let request = ChunkRequest::Put { tenant: tenant_ref(tenant), envelope };
    encode(&request)
}

pub fn get_request(tenant: Option<&str>, chunk_id: [u8; 32]) -> FabricRequest {
    encode(&ChunkRequest::Get { tenant: tenant_ref(tenant), chunk_id })
}

pub fn has_request(tenant: Option<&str>, chunk_ids: &[[u8; 32]]) -> FabricRequest {
    let ids = chunk_ids.concat();
    encode(&ChunkRequest::Has { tenant: tenant_ref(tenant), chunk_ids: &ids })
}

pub fn release_request(tenant: Option<&str>, chunk_id: [u8; 32]) -> FabricRequest {
    encode(&ChunkRequest::Release { tenant: tenant_ref(tenant), chunk_id })
}

fn tenant_ref(tenant: Option<&str>) -> TenantRef<'_> {
    tenant.map_or(TenantRef::NONE, |org| TenantRef::org(org).unwrap())
}

fn encode(request: &ChunkRequest<'_>) -> FabricRequest {
    let mut payload = Vec::with_capacity(request.encoded_len());
    request.encode_into(&mut payload);
    FabricRequest::new(request.op(), payload)
}

// ---------------------------------------------------------------------------------------
// Raw TLS clients, for sending what no `TcpTransport` would.

pub async fn raw_tls(tls: &TlsContext, addr: SocketAddr) -> TlsStream<TcpStream> {
    let connector = TlsConnector::from(Arc::new(tls.client_config().unwrap()));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(SERVER_NAME).unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// Writes `bytes`, then reads until the server closes; `Some(bytes received)` if it closed
/// within [`WAIT`].
pub async fn closed_after_sending<S>(stream: &mut S, bytes: &[u8]) -> Option<usize>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
    let mut sink = [0u8; 1024];
    let mut received = 0usize;
    let drained = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(read) => received += read,
            }
        }
    };
    tokio::time::timeout(WAIT, drained).await.ok().map(|()| received)
}
