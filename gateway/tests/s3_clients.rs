//! The S3 front end against a real client: an S3 server over TLS on 127.0.0.1 (a one-node
//! metadata group on redb, an engine on a memory device, a key manager), two tenants with
//! credentials made the way `s3-credentials create` makes them, and boto3 (s3_boto3.py)
//! driving every served operation and the negatives (and aws-cli's multipart `s3 cp` when
//! `aws` is on the PATH), and the protocol's edges (s3_protocol.py: checksums, payload
//! hashes, presigned URLs, clock skew, virtual-host style, bounds). boto3 comes from scripts/test.sh. At the end every chunk
//! reference must have been given back.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};

use kiseki_consensus::command::DedupMode;
use kiseki_consensus::node::start_single;
use kiseki_engine::Engine;
use kiseki_gateway::objects::{ObjectConfig, ObjectStore};
use kiseki_gateway::s3::{CredentialAuth, KisekiS3, S3Credentials, S3Server};
use kiseki_gateway::s3_front::{VirtualHosts, configure};
use kiseki_security::{
    CRL_FILE, CertificateAuthority, IssueRequest, Role, SubjectAltName, TenantId, TlsBuilder,
    TlsPaths, Validity,
};

/// Small chunks, so the client's 3-chunk object and its ranges cross chunk boundaries.
const CHUNK: usize = 64 << 10;

/// A test S3 server, its engine and the environment the client scripts read.
struct Served {
    _dir: tempfile::TempDir,
    server: S3Server,
    engine: Engine,
    env: Vec<(&'static str, String)>,
}

/// Virtual-host style under this domain in the tests (two labels: OpenSSL matches a
/// wildcard only with two labels after it); `localhost` is taken as well, as a dev node does.
const VHOST_DOMAIN: &str = "s3.kiseki.localhost";

async fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();

    // The node's TLS identity, from a throwaway cluster CA.
    let ca_dir = dir.path().join("ca");
    let ca = CertificateAuthority::init(&ca_dir, "s3 test", Validity::days_from_now(1)).unwrap();
    let wildcard = format!("*.{VHOST_DOMAIN}");
    let request = IssueRequest {
        role: Role::Server,
        common_name: "node".to_owned(),
        spiffe_id: None,
        subject_alt_names: ["127.0.0.1", "localhost", "*.localhost", VHOST_DOMAIN, &wildcard]
            .into_iter()
            .map(|name| SubjectAltName::parse(name).unwrap())
            .collect(),
        validity: Validity::days_from_now(1),
    };
    let (cert, key) =
        ca.issue(&request).unwrap().write_files(&dir.path().join("node"), "node").unwrap();
    let ca_cert = ca_dir.join(kiseki_security::CA_CERT_FILE);
    let tls = TlsBuilder::new(TlsPaths {
        ca: ca_cert.clone(),
        cert,
        key,
        crl: Some(ca_dir.join(CRL_FILE)),
    })
    .build()
    .unwrap();

    // Metadata, engine, keys.
    let group = start_single(dir.path()).await.expect("a one-member metadata group");
    let group = Arc::new(group);
    let engine =
        Engine::start(1, Arc::new(|_| common::memory_shard(192 << 20, 32, 128 << 10))).unwrap();
    let mut keys = common::key_manager(9);
    keys.init_cluster().unwrap();
    let keys = Arc::new(Mutex::new(keys));
    let objects = Arc::new(ObjectStore::new(
        Arc::clone(&group),
        engine.handle(),
        Arc::clone(&keys),
        ObjectConfig { chunk_size_bytes: CHUNK, inline_max_bytes: 4096, ..ObjectConfig::default() },
    ));
    let credentials = Arc::new(S3Credentials::new(Arc::clone(&group), Arc::clone(&keys)));
    let (alice, bob) = (TenantId::new([1; 16]).unwrap(), TenantId::new([2; 16]).unwrap());
    objects.create_tenant(alice, DedupMode::CrossTenant).await.unwrap();
    objects.create_tenant(bob, DedupMode::Isolated).await.unwrap();
    let (alice_key, alice_secret) = credentials.create(alice, "analytics").await.unwrap();
    let (bob_key, bob_secret) = credentials.create(bob, "ingest").await.unwrap();
    assert!(alice_key.starts_with("KSK") && alice_key.len() == 21, "{alice_key}");
    assert_eq!(alice_secret.len(), 40);
    assert_ne!(alice_key, bob_key);

    let mut builder =
        s3s::service::S3ServiceBuilder::new(KisekiS3::new(objects, Arc::clone(&credentials)));
    builder.set_auth(CredentialAuth(credentials));
    configure(&mut builder, VirtualHosts::new(["localhost", VHOST_DOMAIN]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = S3Server::start(listener, &tls, builder.build()).unwrap();
    let endpoint = format!("https://127.0.0.1:{}", server.local_addr().port());
    let env = vec![
        ("KISEKI_S3_ENDPOINT", endpoint),
        ("KISEKI_S3_CA", ca_cert.display().to_string()),
        ("KISEKI_S3_CHUNK", CHUNK.to_string()),
        ("KISEKI_S3_VHOST_DOMAIN", VHOST_DOMAIN.to_owned()),
        ("KISEKI_S3_ALICE_KEY", alice_key),
        ("KISEKI_S3_ALICE_SECRET", alice_secret.to_string()),
        ("KISEKI_S3_BOB_KEY", bob_key),
        ("KISEKI_S3_BOB_SECRET", bob_secret.to_string()),
    ];
    Served { _dir: dir, server, engine, env }
}

impl Served {
    /// Runs `script` (in tests/) against the server; returns its output once it passed.
    async fn run(&self, script: &str) -> String {
        let script = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
        let env = self.env.clone();
        let output = tokio::task::spawn_blocking(move || {
            Command::new("python3")
                .arg(&script)
                .envs(env)
                .output()
                .expect("python3 runs (scripts/test.sh installs it and boto3)")
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "the client failed:\n{stdout}\n{stderr}");
        assert!(stdout.contains("every check passed"), "{stdout}\n{stderr}");
        println!("{stdout}");
        stdout
    }

    /// The scripts delete everything they made: every chunk reference a put, a part, a
    /// replaced part, an aborted upload or a completion took was given back.
    async fn stop_with_no_chunks_left(self) {
        let stats = self.engine.handle().stats().await.unwrap();
        let chunks: u64 = stats.iter().map(|shard| shard.chunks).sum();
        assert_eq!(chunks, 0, "chunks still referenced after every object and upload is gone");
        self.server.shutdown().await;
        self.engine.shutdown().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_exercises_every_served_operation_and_the_negatives() {
    let served = serve().await;
    served.run("s3_boto3.py").await;
    served.stop_with_no_chunks_left().await;
}

/// Flexible checksums, Content-MD5, payload hashes, presigned URLs, clock skew,
/// virtual-host style and the front's bounds (s3_protocol.py), each with its negatives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_edges_are_checked_with_their_negatives() {
    let served = serve().await;
    served.run("s3_protocol.py").await;
    served.stop_with_no_chunks_left().await;
}
