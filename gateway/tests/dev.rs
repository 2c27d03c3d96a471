//! `kiseki-server dev` as a user runs it: the real binary on a temporary data dir with a
//! 64 MiB device on a free port, talked to over the fabric with the identities it wrote,
//! stopped with SIGTERM and started again; and every refusal it promises, each checked to
//! leave nothing behind or nothing changed.

mod process;

use std::fs;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiseki_fabric::{
    BreakerConfig, ChunkClient, ClientError, Endpoint, FabricSelector, TcpConfig, TcpTransport,
};
use kiseki_security::{
    CertificateAuthority, ChunkId, Dek, Envelope, IssueRequest, MasterKey, OrgId, Role, SealParams,
    TlsBuilder, TlsPaths, Validity,
};

use process::{lines_of, wait};

const BIN: &str = env!("CARGO_BIN_EXE_kiseki-server");

/// Longest a node may take to print its ready line or to exit: generous for a loaded CI
/// machine, and a hung node fails the test instead of hanging it.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `kiseki-server dev`.
struct Node {
    child: Child,
    addr: SocketAddr,
    /// Stdout up to and including the ready line.
    printed: String,
    lines: mpsc::Receiver<String>,
}

impl Node {
    /// Starts a node on `data_dir` with `extra` flags and waits for its ready line.
    fn start(data_dir: &Path, extra: &[&str]) -> Node {
        let mut child = Command::new(BIN)
            .args(["dev", "--data-dir", path(data_dir), "--fabric-addr", "127.0.0.1:0"])
            .args(free_admin_port(extra))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = lines_of(child.stdout.take().unwrap());
        let mut printed = String::new();
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    printed.push_str(&line);
                    printed.push('\n');
                    if let Some(rest) = line.strip_prefix("ready: serving the fabric on ") {
                        let addr = rest.split(';').next().unwrap().parse().unwrap();
                        return Node { child, addr, printed, lines };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let mut err = String::new();
                    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                    panic!("no ready line; stdout:\n{printed}\nstderr:\n{err}");
                }
            }
        }
    }

    /// Sends SIGTERM and waits for the exit; returns the status and the rest of stdout.
    fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = wait(&mut self.child, PROCESS_TIMEOUT);
        // The pipe closed with the process: the reader thread ends after its last line.
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(PROCESS_TIMEOUT) {
            rest.push(line);
        }
        (status, rest.join("\n"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A failed assertion must not leave a node running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `kiseki-server dev` with `args` to its exit: the status and stderr.
fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new(BIN)
        .arg("dev")
        .args(free_admin_port(args))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait(&mut child, PROCESS_TIMEOUT);
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status, err)
}

/// Free ports for the addresses `args` do not name: tests run side by side and the
/// defaults (9090, 9000) would be taken by the first.
fn free_admin_port(args: &[&str]) -> Vec<&'static str> {
    let mut extra = Vec::new();
    for flag in ["--admin-addr", "--s3-addr", "--grpc-addr"] {
        if !args.contains(&flag) {
            extra.extend([flag, "127.0.0.1:0"]);
        }
    }
    extra
}

/// Calls the dev node's gRPC front end (the port `printed` names) as the identity in `dir`.
fn grpc_as_tenant(printed: &str, dir: &Path) {
    use kiseki_proto::admin::StatusRequest;
    use kiseki_proto::admin::storage_admin_service_client::StorageAdminServiceClient;
    use kiseki_proto::control::TenantName;
    use kiseki_proto::control::control_service_client::ControlServiceClient;
    use kiseki_proto::data::data_service_client::DataServiceClient;
    use kiseki_proto::data::{BucketRequest, ListBucketsRequest};
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

    let port = printed
        .lines()
        .find_map(|line| line.strip_prefix("  gRPC:        127.0.0.1:"))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no gRPC address in:\n{printed}"));
    let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.crt")))
            .identity(Identity::from_pem(read("client.crt"), read("client.key")))
            .domain_name("localhost");
        let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut data = DataServiceClient::new(channel.clone());
        data.create_bucket(BucketRequest { bucket: "grpc-dev".into() }).await.unwrap();
        let buckets = data.list_buckets(ListBucketsRequest {}).await.unwrap().into_inner();
        assert!(buckets.buckets.contains(&"grpc-dev".to_owned()), "{buckets:?}");
        let mut control = ControlServiceClient::new(channel.clone());
        let tenant = control.get_tenant(TenantName { org: "dev".into() }).await.unwrap();
        assert_eq!(tenant.into_inner().org, "dev");
        let mut admin = StorageAdminServiceClient::new(channel);
        let denied = admin.status(StatusRequest {}).await.unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    });
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A chunk client with the TLS files of `paths`, on its own runtime.
struct Client {
    runtime: tokio::runtime::Runtime,
    client: ChunkClient,
    endpoint: Endpoint,
}

impl Client {
    /// A client of the node at `addr` with a client directory's files.
    fn of_dir(dir: &Path, addr: SocketAddr, server_name: &str) -> Client {
        let paths = TlsPaths {
            ca: dir.join("ca.crt"),
            cert: dir.join("client.crt"),
            key: dir.join("client.key"),
            crl: Some(dir.join("crl.pem")),
        };
        Client::with(paths, addr, server_name)
    }

    fn with(paths: TlsPaths, addr: SocketAddr, server_name: &str) -> Client {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let tls = TlsBuilder::new(paths).build().unwrap();
        let transport = {
            let _entered = runtime.enter();
            Arc::new(TcpTransport::new(&tls, TcpConfig::default()).unwrap())
        };
        let selector = FabricSelector::new(transport, BreakerConfig::default()).unwrap();
        let client = ChunkClient::new(Arc::new(selector));
        let endpoint =
            Endpoint { node: "dev".to_owned(), addr, server_name: server_name.to_owned() };
        Client { runtime, client, endpoint }
    }

    fn ping(&self) -> Result<(), ClientError> {
        self.runtime.block_on(self.client.ping(&self.endpoint))
    }

    fn put(&self, tenant: Option<&str>, envelope: &Envelope) -> Result<(), ClientError> {
        let tenant = tenant.map(|org| OrgId::parse(org).unwrap());
        let envelope = Arc::new(envelope.clone());
        self.runtime.block_on(self.client.put_chunk(&self.endpoint, tenant.as_ref(), &envelope))
    }

    fn get(&self, tenant: Option<&str>, chunk_id: &ChunkId) -> Result<Envelope, ClientError> {
        let tenant = tenant.map(|org| OrgId::parse(org).unwrap());
        self.runtime.block_on(self.client.get_chunk(&self.endpoint, tenant.as_ref(), chunk_id))
    }
}

/// A chunk sealed as an HPC client seals it: the node only ever sees the envelope.
fn sealed(key: &MasterKey, plaintext: &[u8]) -> Envelope {
    let dek = Dek::derive(key, &ChunkId::of_plaintext(plaintext), None);
    Envelope::seal(plaintext, &SealParams::new(&dek)).unwrap()
}

fn opened(key: &MasterKey, envelope: &Envelope) -> Vec<u8> {
    let dek = Dek::derive(key, &envelope.chunk_id(), None);
    envelope.open(&dek).unwrap().to_vec()
}

#[test]
fn dev_serves_chunks_over_mtls_stops_on_sigterm_and_recovers_them() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("kiseki-data");
    let node = Node::start(&data, &["--device-size", "64M", "--cores", "1"]);
    let printed = node.printed.clone();
    let (node_dir, tenant_dir) =
        (data.join("tls/clients/node"), data.join("tls/clients/tenant-dev"));
    for needle in [
        "made on this start".to_owned(),
        format!("data dir:    {}", data.display()),
        format!("CA bundle:   {}", data.join("tls/ca/ca.crt").display()),
        format!("fabric:      {}", node.addr),
        format!("{} (server role", node_dir.display()),
        format!("{} (tenant org dev", tenant_dir.display()),
        format!(
            "kiseki-bench -- fabric --connect {} --tls-dir {} --rw=put",
            node.addr,
            node_dir.display()
        ),
        "--rw=get".to_owned(),
        "  gRPC:        127.0.0.1:".to_owned(),
        format!("grpcurl -cacert {}", data.join("tls/ca/ca.crt").display()),
        "kiseki.data.v1.DataService/ListBuckets".to_owned(),
        "  S3:          https://127.0.0.1:".to_owned(),
        "  access key:  KSK".to_owned(),
        "aws --endpoint-url https://127.0.0.1:".to_owned(),
        "  admin:       http://127.0.0.1:".to_owned(),
    ] {
        assert!(printed.contains(&needle), "{needle:?} not in:\n{printed}");
    }
    assert!(!printed.contains("PRIVATE KEY"), "{printed}");
    assert_eq!(mode(&data), 0o700);
    for key in ["tls/ca/ca.key", "tls/server/server.key", "tls/clients/node/client.key"] {
        assert_eq!(mode(&data.join(key)), 0o600, "{key}");
    }
    assert_eq!(fs::metadata(data.join("devices/dev0.img")).unwrap().len(), 64 << 20);
    let ca_before = fs::read(data.join("tls/ca/ca.crt")).unwrap();
    let tenant_cert_before = fs::read(tenant_dir.join("client.crt")).unwrap();

    // The node identity (server role) stores and reads back; the bytes open to the
    // plaintext, so the node kept the envelope whole.
    let key = MasterKey::generate(1).unwrap();
    let as_node = Client::of_dir(&node_dir, node.addr, "localhost");
    let chunk_a = sealed(&key, b"chunk a, put by the node identity");
    as_node.put(None, &chunk_a).unwrap();
    let got = as_node.get(None, &chunk_a.chunk_id()).unwrap();
    assert_eq!(opened(&key, &got), b"chunk a, put by the node identity");

    // The tenant identity acts for its own org only, and sees only what it put.
    let as_tenant = Client::of_dir(&tenant_dir, node.addr, "127.0.0.1");
    let chunk_b = sealed(&key, b"chunk b, put by tenant dev");
    as_tenant.put(Some("dev"), &chunk_b).unwrap();
    assert_eq!(
        as_tenant.get(Some("dev"), &chunk_b.chunk_id()).unwrap().as_bytes(),
        chunk_b.as_bytes()
    );
    assert!(matches!(
        as_tenant.get(Some("dev"), &chunk_a.chunk_id()),
        Err(ClientError::NotFound { .. })
    ));
    assert!(matches!(as_tenant.put(Some("other"), &chunk_b), Err(ClientError::Denied { .. })));
    assert!(matches!(as_tenant.put(None, &chunk_b), Err(ClientError::Denied { .. })));

    // gRPC on the printed address, with the tenant's identity: its workload (and, on a dev
    // node, its admin) makes and lists buckets and reads its tenant; storage admin is not
    // its to call.
    grpc_as_tenant(&printed, &tenant_dir);

    // A client certificate from another CA, even with the server role, is refused at the
    // handshake (the client trusts the node's CA, so only its own certificate is wrong).
    let foreign = temp.path().join("foreign-ca");
    let foreign_ca =
        CertificateAuthority::init(&foreign, "another cluster", Validity::days_from_now(1))
            .unwrap();
    let request = IssueRequest {
        role: Role::Server,
        common_name: "intruder".to_owned(),
        spiffe_id: None,
        subject_alt_names: Vec::new(),
        validity: Validity::days_from_now(1),
    };
    foreign_ca.issue(&request).unwrap().write_files(&foreign, "intruder").unwrap();
    let intruder = Client::with(
        TlsPaths {
            ca: data.join("tls/ca/ca.crt"),
            cert: foreign.join("intruder.crt"),
            key: foreign.join("intruder.key"),
            crl: None,
        },
        node.addr,
        "localhost",
    );
    assert!(intruder.ping().is_err(), "a foreign client certificate was accepted");
    assert!(matches!(intruder.put(None, &chunk_a), Err(ClientError::Fabric(_))));
    as_node.ping().unwrap();

    // A second node on the same data dir is refused while the first holds it.
    let (status, err) = run_to_exit(&["--data-dir", path(&data), "--fabric-addr", "127.0.0.1:0"]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("in use by another kiseki-server"), "{err}");

    drop((as_node, as_tenant, intruder));
    let (status, rest) = node.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM must end in a clean exit: {rest}");
    assert!(rest.contains("SIGTERM: stopping"), "{rest}");
    assert!(rest.contains("the engine shut down cleanly"), "{rest}");

    // Second start: everything reused, nothing regenerated, both chunks recovered.
    let node = Node::start(&data, &[]);
    assert!(node.printed.contains("reused; 2 chunk(s) recovered"), "{}", node.printed);
    assert_eq!(fs::read(data.join("tls/ca/ca.crt")).unwrap(), ca_before);
    assert_eq!(fs::read(tenant_dir.join("client.crt")).unwrap(), tenant_cert_before);
    let as_node = Client::of_dir(&node_dir, node.addr, "localhost");
    assert_eq!(as_node.get(None, &chunk_a.chunk_id()).unwrap().as_bytes(), chunk_a.as_bytes());
    let got = as_node.get(None, &chunk_b.chunk_id()).unwrap();
    assert_eq!(opened(&key, &got), b"chunk b, put by tenant dev");
    drop(as_node);
    let (status, rest) = node.terminate();
    assert_eq!(status.code(), Some(0), "{rest}");
}

#[test]
fn a_data_dir_of_another_cluster_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let (status, _) = Node::start(&data, &["--device-size", "64M", "--cores", "1"]).terminate();
    assert!(status.success());
    let start = ["--data-dir", path(&data), "--fabric-addr", "127.0.0.1:0"];

    // The manifest names another cluster than the device's superblocks carry.
    let manifest_path = data.join("meta/node.json");
    let manifest = fs::read_to_string(&manifest_path).unwrap();
    let mut tampered: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    tampered["cluster_id"] = "00112233445566778899aabbccddeeff".into();
    fs::write(&manifest_path, tampered.to_string()).unwrap();
    let (status, err) = run_to_exit(&start);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("belongs to cluster"), "{err}");
    assert!(err.contains("00112233445566778899aabbccddeeff"), "{err}");
    fs::write(&manifest_path, &manifest).unwrap();

    // Another cluster's CA in place of this one's.
    let other = temp.path().join("other-ca");
    CertificateAuthority::init(&other, "another cluster", Validity::days_from_now(1)).unwrap();
    let ca_path = data.join("tls/ca/ca.crt");
    let own_ca = fs::read(&ca_path).unwrap();
    fs::copy(other.join("ca.crt"), &ca_path).unwrap();
    let (status, err) = run_to_exit(&start);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("is not this node's cluster CA"), "{err}");
    fs::write(&ca_path, own_ca).unwrap();

    // A missing piece is named.
    let tenant_key = data.join("tls/clients/tenant-dev/client.key");
    fs::rename(&tenant_key, temp.path().join("moved.key")).unwrap();
    let (status, err) = run_to_exit(&start);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("is damaged") && err.contains("client.key is missing"), "{err}");
    fs::rename(temp.path().join("moved.key"), &tenant_key).unwrap();

    // Put back, it is a node again; flags it was not made with are refused.
    let (status, err) = run_to_exit(&[&start[..], &["--device-size", "128M"]].concat());
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("neither grows nor shrinks"), "{err}");
    let (status, _) = Node::start(&data, &[]).terminate();
    assert!(status.success());
}

#[test]
fn bad_flags_and_directories_are_refused_before_anything_is_made() {
    let temp = tempfile::tempdir().unwrap();
    let fresh = temp.path().join("fresh");
    let fresh_args = |extra: &[&'static str]| -> Vec<String> {
        let mut args = vec!["--data-dir".to_owned(), path(&fresh).to_owned()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    };
    let run = |args: &[String]| run_to_exit(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // Too small a device, alone or for the cores asked.
    let (status, err) = run(&fresh_args(&["--device-size", "16M", "--fabric-addr", "127.0.0.1:0"]));
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("--device-size 16 MiB is too small"), "{err}");
    let args =
        fresh_args(&["--device-size", "64M", "--cores", "3", "--fabric-addr", "127.0.0.1:0"]);
    let (status, err) = run(&args);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("give --device-size 96 MiB or more"), "{err}");
    let (status, err) = run(&fresh_args(&["--device-size", "lots"]));
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(!fresh.exists(), "a refused start made {}", fresh.display());

    // A port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, err) = run_to_exit(&["--data-dir", path(&fresh), "--fabric-addr", &addr]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("the address is in use"), "{err}");
    assert!(!fresh.exists());

    // A directory that holds something else is left as it was.
    let foreign = temp.path().join("home");
    fs::create_dir(&foreign).unwrap();
    fs::write(foreign.join("thesis.tex"), b"\\begin{document}").unwrap();
    let (status, err) =
        run_to_exit(&["--data-dir", path(&foreign), "--fabric-addr", "127.0.0.1:0"]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("not empty and holds no kiseki data dir"), "{err}");
    let entries: Vec<PathBuf> =
        fs::read_dir(&foreign).unwrap().map(|entry| entry.unwrap().path()).collect();
    assert_eq!(entries, [foreign.join("thesis.tex")]);

    // A first start that never finished: Kiseki's layout without a manifest.
    let half = temp.path().join("half");
    fs::create_dir_all(half.join("tls/ca")).unwrap();
    fs::write(half.join("tls/ca/ca.crt"), b"").unwrap();
    let (status, err) = run_to_exit(&["--data-dir", path(&half), "--fabric-addr", "127.0.0.1:0"]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("half-made") && err.contains("ca.key is missing"), "{err}");
}

#[test]
fn help_explains_what_dev_runs_and_each_flag() {
    let output = Command::new(BIN).args(["dev", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "--data-dir",
        "--device-size",
        "--fabric-addr",
        "--admin-addr",
        "/readyz",
        "--s3-addr",
        "--cores",
        "chunk service",
        "gRPC (127.0.0.1:9100)",
        "--grpc-addr",
        "SigV4",
        "half-made",
        "SIGTERM",
        "RLIMIT_MEMLOCK",
        "tls/clients/tenant-dev",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
    let output = Command::new(BIN).arg("--help").output().unwrap();
    assert!(String::from_utf8(output.stdout).unwrap().contains("kiseki-server dev"));
}

#[test]
fn sigterm_during_puts_keeps_every_acknowledged_chunk() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("kiseki-data");
    let node = Node::start(&data, &["--device-size", "64M", "--cores", "1"]);
    let node_dir = data.join("tls/clients/node");

    // A writer puts distinct 64 KiB chunks back to back and reports each acknowledged one,
    // until a put fails (the node stopped).
    let key = Arc::new(MasterKey::generate(1).unwrap());
    let (acked_tx, acked_rx) = mpsc::channel::<(u32, ChunkId)>();
    let writer = {
        let (key, dir, addr) = (Arc::clone(&key), node_dir.clone(), node.addr);
        std::thread::spawn(move || -> ClientError {
            let client = Client::of_dir(&dir, addr, "localhost");
            for n in 0u32.. {
                let envelope = sealed(&key, &chunk_plaintext(n));
                match client.put(None, &envelope) {
                    Ok(()) => acked_tx.send((n, envelope.chunk_id())).unwrap(),
                    Err(e) => return e,
                }
            }
            unreachable!("the writer stops at the first failed put")
        })
    };
    let mut acked = Vec::new();
    while acked.len() < 20 {
        acked.push(acked_rx.recv_timeout(PROCESS_TIMEOUT).expect("the writer is acknowledged"));
    }
    let (status, rest) = node.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM during puts must end in a clean exit: {rest}");
    assert!(rest.contains("the engine shut down cleanly"), "{rest}");
    let stopped_by = writer.join().unwrap();
    acked.extend(acked_rx.try_iter());
    assert!(
        !matches!(stopped_by, ClientError::Denied { .. } | ClientError::NotFound { .. }),
        "the writer was stopped by the node going away, not refused: {stopped_by}"
    );

    // Every acknowledged chunk is there after a restart, whole.
    let node = Node::start(&data, &[]);
    // A put in flight at the stop may be stored with its answer lost on the way: at most
    // one more chunk than acknowledged, never fewer.
    let recovered: usize = node
        .printed
        .split("reused; ")
        .nth(1)
        .and_then(|rest| rest.split(" chunk(s) recovered").next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no recovered count in:\n{}", node.printed));
    assert!((acked.len()..=acked.len() + 1).contains(&recovered), "{recovered} vs {acked:?}");
    let client = Client::of_dir(&node_dir, node.addr, "localhost");
    for (n, chunk_id) in &acked {
        let got = client.get(None, chunk_id).unwrap();
        assert_eq!(opened(&key, &got), chunk_plaintext(*n), "chunk {n}");
    }
    drop(client);
    let (status, rest) = node.terminate();
    assert_eq!(status.code(), Some(0), "{rest}");
}

/// The plaintext of the writer's chunk `n`: 64 KiB, distinct per `n`.
fn chunk_plaintext(n: u32) -> Vec<u8> {
    let mut bytes = vec![0u8; 64 << 10];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(n).to_le_bytes()[0];
    }
    bytes[..4].copy_from_slice(&n.to_le_bytes());
    bytes
}

/// `GET http://{addr}{path}` with the bare minimum of HTTP/1.1: the status and the body.
fn http_get(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PROCESS_TIMEOUT)).unwrap();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap();
    (status, body)
}

/// The admin address a node printed.
fn admin_addr(printed: &str) -> SocketAddr {
    let line = printed.lines().find(|line| line.contains("admin:")).expect("an admin line");
    let url = line.split_whitespace().nth(1).unwrap();
    url.trim_start_matches("http://").parse().unwrap()
}

#[test]
fn metrics_and_health_count_what_the_node_serves_and_name_no_tenant() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("kiseki-data");
    let node = Node::start(&data, &["--device-size", "64M", "--cores", "1"]);
    let admin = admin_addr(&node.printed);

    assert_eq!(http_get(admin, "GET", "/healthz"), (200, "ok\n".to_owned()));
    let (status, body) = http_get(admin, "GET", "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("shard 0: ok"), "{body}");
    assert!(body.contains("metadata: ok (leader node 1"), "{body}");

    let key = MasterKey::generate(1).unwrap();
    let as_tenant = Client::of_dir(&data.join("tls/clients/tenant-dev"), node.addr, "localhost");
    let chunk = sealed(&key, b"counted, not named");
    as_tenant.put(Some("dev"), &chunk).unwrap();
    as_tenant.put(Some("dev"), &chunk).unwrap();
    assert!(matches!(
        as_tenant.get(Some("dev"), &ChunkId::of_plaintext(b"never put")),
        Err(ClientError::NotFound { .. })
    ));
    assert!(matches!(as_tenant.put(Some("other"), &chunk), Err(ClientError::Denied { .. })));

    let (status, metrics) = http_get(admin, "GET", "/metrics");
    assert_eq!(status, 200, "{metrics}");
    for needle in [
        "kiseki_fabric_requests_total{op=\"put_chunk\",status=\"ok\"} 2",
        "kiseki_fabric_requests_total{op=\"get_chunk\",status=\"not_found\"} 1",
        "kiseki_fabric_requests_total{op=\"put_chunk\",status=\"denied\"} 1",
        "kiseki_fabric_request_seconds_count{op=\"put_chunk\"} 3",
        "kiseki_engine_chunks{shard=\"0\"} 1",
        "kiseki_engine_device_state{shard=\"0\"} 0",
        "kiseki_fabric_connection_events{event=\"opened\"}",
        "kiseki_raft_leader_known 1",
        "kiseki_raft_is_leader 1",
        "kiseki_raft_voters 1",
        "# EOF",
    ] {
        assert!(metrics.contains(needle), "{needle:?} not in:\n{metrics}");
    }
    // The one-member group has elected itself and applied what it logged.
    let gauge = |name: &str| -> u64 {
        let line = metrics.lines().find(|line| line.starts_with(&format!("{name} "))).unwrap();
        line[name.len() + 1..].parse().unwrap()
    };
    assert!(gauge("kiseki_raft_term") >= 1, "{metrics}");
    let applied = gauge("kiseki_raft_applied_index");
    assert!(applied >= 1 && applied <= gauge("kiseki_raft_last_log_index"), "{metrics}");
    // Load, not whose: no tenant, org or certificate name in any label.
    for tenant_word in ["dev", "other", "tenant", "org="] {
        let labelled = metrics.lines().filter(|line| !line.starts_with('#')).any(|line| {
            line.split_once('{').is_some_and(|(_, labels)| labels.contains(tenant_word))
        });
        assert!(!labelled, "{tenant_word:?} in a label:\n{metrics}");
    }

    assert_eq!(http_get(admin, "POST", "/metrics").0, 405);
    assert_eq!(http_get(admin, "GET", "/").0, 404);
    assert_eq!(http_get(admin, "GET", "/metrics/../readyz").0, 404);

    drop(as_tenant);
    let (status, rest) = node.terminate();
    assert_eq!(status.code(), Some(0), "{rest}");
    assert!(std::net::TcpStream::connect(admin).is_err(), "the admin port closed with the node");
}

/// A printed summary line's value: the text after `label` up to the end of the line.
fn printed_value<'a>(printed: &'a str, label: &str) -> &'a str {
    let line = printed.lines().find(|line| line.trim_start().starts_with(label)).unwrap();
    line.trim_start()[label.len()..].split_whitespace().next().unwrap()
}

/// Runs a boto3 snippet against a dev node: `ops` is Python with `s3` a client.
fn boto3(printed: &str, ca: &Path, ops: &str) -> String {
    let script = format!(
        "import boto3, sys\nfrom botocore.config import Config\n\
         s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id=sys.argv[2], \
         aws_secret_access_key=sys.argv[3], region_name='us-east-1', verify=sys.argv[4], \
         config=Config(s3={{'addressing_style': 'path'}}, retries={{'max_attempts': 1}}))\n{ops}"
    );
    let output = Command::new("python3")
        .args(["-c", &script])
        .arg(printed_value(printed, "S3:"))
        .arg(printed_value(printed, "access key:"))
        .arg(printed_value(printed, "secret key:"))
        .arg(ca)
        .output()
        .expect("python3 with boto3 (scripts/test.sh installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[test]
fn dev_serves_s3_with_the_printed_key_and_keeps_objects_and_keys_across_a_restart() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("kiseki-data");
    let ca = data.join("tls/ca/ca.crt");
    let node = Node::start(&data, &["--device-size", "64M", "--cores", "1"]);
    let first_key = printed_value(&node.printed, "access key:").to_owned();
    assert!(first_key.starts_with("KSK"), "{}", node.printed);
    let put = "body = bytes(range(256)) * 12289\n\
               s3.create_bucket(Bucket='keep')\n\
               s3.put_object(Bucket='keep', Key='big', Body=body, Metadata={'k': 'v'})\n\
               s3.put_object(Bucket='keep', Key='small', Body=b'hello kiseki')\n\
               print([b['Name'] for b in s3.list_buckets()['Buckets']])";
    assert_eq!(boto3(&node.printed, &ca, put).trim(), "['keep']");
    // The root key is the owner's alone; the secret is nowhere in the data dir in the clear.
    assert_eq!(mode(&data.join("meta/root.key")), 0o600);
    let secret = printed_value(&node.printed, "secret key:").to_owned();
    let (status, rest) = node.terminate();
    assert_eq!(status.code(), Some(0), "{rest}");
    for file in walk(&data) {
        let bytes = fs::read(&file).unwrap();
        let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!found, "the S3 secret is in the clear in {}", file.display());
    }

    // Second start: the same key and secret, and the objects read back whole.
    let node = Node::start(&data, &[]);
    assert_eq!(printed_value(&node.printed, "access key:"), first_key);
    assert_eq!(printed_value(&node.printed, "secret key:"), secret);
    let get = "body = bytes(range(256)) * 12289\n\
               got = s3.get_object(Bucket='keep', Key='big')\n\
               assert got['Body'].read() == body\n\
               assert got['Metadata'] == {'k': 'v'}\n\
               ranged = s3.get_object(Bucket='keep', Key='big', Range='bytes=1048570-1048580')\n\
               assert ranged['Body'].read() == body[1048570:1048581]\n\
               print(s3.get_object(Bucket='keep', Key='small')['Body'].read().decode())";
    assert_eq!(boto3(&node.printed, &ca, get).trim(), "hello kiseki");
    // Path style on `localhost` as well as 127.0.0.1; virtual-host style on
    // `<bucket>.localhost`, sent to 127.0.0.1 with the Host header naming the bucket (the
    // system resolver here need not know `*.localhost`).
    let hosts = "import http.client, ssl, urllib.parse\n\
                 from botocore.auth import S3SigV4Auth\n\
                 from botocore.awsrequest import AWSRequest\n\
                 from botocore.credentials import Credentials\n\
                 port = urllib.parse.urlparse(sys.argv[1]).port\n\
                 local = boto3.client('s3', endpoint_url='https://localhost:%d' % port, \
                 aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3], \
                 region_name='us-east-1', verify=sys.argv[4], \
                 config=Config(s3={'addressing_style': 'path'}))\n\
                 print(local.get_object(Bucket='keep', Key='small')['Body'].read().decode())\n\
                 host = 'keep.localhost:%d' % port\n\
                 request = AWSRequest(method='GET', url='https://%s/small' % host, \
                 headers={'X-Amz-Content-SHA256': 'UNSIGNED-PAYLOAD'})\n\
                 S3SigV4Auth(Credentials(sys.argv[2], sys.argv[3]), 's3', 'us-east-1')\
                 .add_auth(request)\n\
                 headers = dict(request.headers.items())\n\
                 headers['Host'] = host\n\
                 tls = ssl.create_default_context(cafile=sys.argv[4])\n\
                 connection = http.client.HTTPSConnection('127.0.0.1', port, context=tls)\n\
                 connection.request('GET', '/small', headers=headers)\n\
                 response = connection.getresponse()\n\
                 print(response.status, response.read().decode())";
    assert_eq!(boto3(&node.printed, &ca, hosts).trim(), "hello kiseki\n200 hello kiseki");
    // Each answer counted by operation and status since this start: four whole GETs, one
    // ranged; no bucket or key in any label.
    let (status, metrics) = http_get(admin_addr(&node.printed), "GET", "/metrics");
    assert_eq!(status, 200);
    for needle in [
        "kiseki_s3_requests_total{op=\"GetObject\",status=\"200\"} 4",
        "kiseki_s3_requests_total{op=\"GetObject\",status=\"206\"} 1",
        "kiseki_s3_request_seconds_count{op=\"GetObject\"} 5",
        "kiseki_s3_response_bytes_total{op=\"GetObject\"}",
    ] {
        assert!(metrics.contains(needle), "{needle:?} not in:\n{metrics}");
    }
    let labelled = metrics.lines().any(|line| line.contains("keep") || line.contains("small"));
    assert!(!labelled, "a bucket or key in the metrics:\n{metrics}");
    let (status, rest) = node.terminate();
    assert_eq!(status.code(), Some(0), "{rest}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

#[test]
fn s3_requests_and_unknown_keys_land_in_the_audit_log_and_it_verifies() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("kiseki-data");
    let ca = data.join("tls/ca/ca.crt");
    let node = Node::start(&data, &["--device-size", "64M", "--cores", "1"]);
    let ops = "s3.create_bucket(Bucket='audited')\n\
               s3.put_object(Bucket='audited', Key='k', Body=b'x')\n\
               print(s3.get_object(Bucket='audited', Key='k')['Body'].read().decode())";
    assert_eq!(boto3(&node.printed, &ca, ops).trim(), "x");
    // A key nobody holds: refused, and recorded.
    let stranger = "import botocore\n\
                    s3 = boto3.client('s3', endpoint_url=sys.argv[1], \
                    aws_access_key_id='KSKNOBODYHOLDSTHIS', aws_secret_access_key='x' * 40, \
                    region_name='us-east-1', verify=sys.argv[4], \
                    config=Config(s3={'addressing_style': 'path'}, retries={'max_attempts': 1}))\n\
                    try:\n    s3.list_buckets()\nexcept botocore.exceptions.ClientError as e:\n    \
                    print(e.response['Error']['Code'])";
    assert_eq!(boto3(&node.printed, &ca, stranger).trim(), "InvalidAccessKeyId");
    let (status, rest) = node.terminate();
    assert_eq!(status.code(), Some(0), "{rest}");

    // The records are in the metadata (the audit log's store) and the chain verifies.
    let metadata = fs::read(data.join("meta/shard-0.redb")).unwrap();
    let has = |text: &str| metadata.windows(text.len()).any(|w| w == text.as_bytes());
    for expected in ["s3 CreateBucket", "s3 PutObject", "s3 GetObject", "InvalidAccessKeyId"] {
        assert!(has(expected), "no audit record with {expected:?}");
    }
    assert!(has("KSKNOBODYHOLDSTHIS"), "the refused key id is named");
    let output =
        Command::new(BIN).args(["audit", "verify", "--data-dir", path(&data)]).output().unwrap();
    let verified = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{verified}{}", String::from_utf8_lossy(&output.stderr));
    assert!(verified.contains("audit log verified"), "{verified}");
}
