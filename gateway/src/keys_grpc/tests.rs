//! The key service over real gRPC and mTLS on 127.0.0.1: the role comes from the client
//! certificate alone, every (role, call) decision the service core makes holds on the wire,
//! and a revoked certificate is refused after a CRL reload without a restart.

use std::path::Path;
use std::sync::{Arc, Mutex};

use kiseki_proto::keys::key_service_client::KeyServiceClient;
use kiseki_proto::keys::{CreateKeyRequest, DecryptRequest, Empty, KeyName, ListKeysRequest};
use kiseki_security::authz::{Authorizer, KesPolicies, RoleFiles};
use kiseki_security::keymanager::{
    AuditLog, FetchedMasterKeys, KeyManager, KeyManagerConfig, KeyService, LocalRootKey,
    ManualClock, MemoryKeyStore, MemoryLocking, NoRetentionHolds,
};
use kiseki_security::{
    CertificateAuthority, ChunkId, ChunkTenant, Dek, Envelope, IssueRequest, OrgId, Role,
    SubjectAltName, TlsBuilder, TlsPaths, Validity,
};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use zeroize::Zeroizing;

fn issue(ca: &CertificateAuthority, dir: &Path, name: &str, role: Role, sans: &[&str]) {
    let request = IssueRequest {
        role,
        common_name: name.to_owned(),
        spiffe_id: None,
        subject_alt_names: sans.iter().map(|san| SubjectAltName::parse(san).unwrap()).collect(),
        validity: Validity::days_from_now(2),
    };
    ca.issue(&request).unwrap().write_files(&dir.join(name), name).unwrap();
}

pub(crate) async fn client(
    dir: &Path,
    name: &str,
    port: u16,
) -> Result<KeyServiceClient<Channel>, tonic::transport::Error> {
    let read = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(dir.join("ca/ca.crt"))))
        .identity(Identity::from_pem(
            read(dir.join(format!("{name}/{name}.crt"))),
            read(dir.join(format!("{name}/{name}.key"))),
        ))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(KeyServiceClient::new(channel))
}

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(reply) => panic!("expected a refusal, got {reply:?}"),
        Err(status) => status.code(),
    }
}

fn name(name: &str) -> KeyName {
    KeyName { name: name.to_owned() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_come_from_certificates_and_a_revoked_one_is_refused_after_a_crl_reload() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca =
        CertificateAuthority::init(&d.join("ca"), "Test CA", Validity::days_from_now(2)).unwrap();
    issue(&ca, d, "keyserver", Role::KeyServer, &["localhost", "127.0.0.1"]);
    let acme = OrgId::parse("acme-corp").unwrap();
    let globex = OrgId::parse("globex").unwrap();
    issue(&ca, d, "alice", Role::Workload { org: acme.clone() }, &[]);
    issue(&ca, d, "bob", Role::Workload { org: globex }, &[]);
    issue(&ca, d, "ops", Role::ClusterAdmin, &[]);
    issue(&ca, d, "node1", Role::Server, &[]);
    let tls = TlsBuilder::new(TlsPaths {
        ca: d.join("ca/ca.crt"),
        cert: d.join("keyserver/keyserver.crt"),
        key: d.join("keyserver/keyserver.key"),
        crl: Some(d.join("ca/crl.pem")),
    })
    .build()
    .unwrap();

    let root = LocalRootKey::from_bytes("test", &Zeroizing::new([7; 32]), MemoryLocking::Required)
        .unwrap();
    let mut keys = KeyManager::new(
        Box::new(root),
        MemoryKeyStore::new(),
        KeyManagerConfig::default(),
        Arc::new(ManualClock::new()),
    )
    .unwrap();
    keys.init_cluster().unwrap();
    let files = RoleFiles::parse(
        br#"{"auditor": {"Audit": ["Read"]}}"#,
        br#"{"tenant-admin": ["acme-corp/alice", "globex/bob"]}"#,
    )
    .unwrap();
    let authorizer = Authorizer::new(files, KesPolicies::default());
    let service = Arc::new(Mutex::new(KeyService::new(
        keys,
        authorizer,
        AuditLog::default(),
        Box::new(NoRetentionHolds),
    )));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(super::serve(listener, tls.clone(), Arc::clone(&service), async {
        let _ = stopped.await;
    }));

    let mut alice = client(d, "alice", port).await.unwrap();
    let mut bob = client(d, "bob", port).await.unwrap();
    let mut ops = client(d, "ops", port).await.unwrap();
    let mut node = client(d, "node1", port).await.unwrap();
    let create = |name: &str| CreateKeyRequest { name: name.to_owned(), isolated: true };

    // The tenant's admin creates its key; a storage node generates and decrypts data keys
    // under it (the admin itself does not: that is the data path's).
    assert_eq!(alice.create_key(create("acme-corp")).await.unwrap().into_inner().epoch, 1);
    assert_eq!(code(alice.create_key(create("acme-corp")).await), Code::FailedPrecondition);
    assert_eq!(code(alice.generate_data_key(name("acme-corp")).await), Code::PermissionDenied);
    let data_key = node.generate_data_key(name("acme-corp")).await.unwrap().into_inner();
    let decrypt =
        DecryptRequest { name: "acme-corp".into(), ciphertext: data_key.ciphertext.clone() };
    assert_eq!(
        node.decrypt(decrypt.clone()).await.unwrap().into_inner().plaintext,
        data_key.plaintext
    );
    assert_eq!(data_key.plaintext.len(), 32);
    assert_eq!(code(alice.decrypt(decrypt.clone()).await), Code::PermissionDenied);
    // Another tenant's admin cannot touch it, even claiming a role in a header.
    let mut claimed = tonic::Request::new(name("acme-corp"));
    claimed.metadata_mut().insert("x-kiseki-role", "cluster-admin".parse().unwrap());
    claimed.metadata_mut().insert("x-kiseki-org", "acme-corp".parse().unwrap());
    assert_eq!(code(bob.rotate_key(claimed).await), Code::PermissionDenied);
    assert_eq!(code(bob.decrypt(decrypt.clone()).await), Code::PermissionDenied);
    assert_eq!(code(bob.delete_key(name("acme-corp")).await), Code::PermissionDenied);
    // The cluster admin cannot read tenant keys, but rotates the master key.
    assert_eq!(code(ops.generate_data_key(name("acme-corp")).await), Code::PermissionDenied);
    assert_eq!(code(ops.decrypt(decrypt.clone()).await), Code::PermissionDenied);
    let list = ListKeysRequest { pattern: "acme-corp".into() };
    assert_eq!(code(ops.list_keys(list).await), Code::PermissionDenied);
    assert_eq!(ops.rotate_key(name("master")).await.unwrap().into_inner().epoch, 2);
    assert_eq!(ops.status(Empty {}).await.unwrap().into_inner().master_epoch, 2);
    assert_eq!(code(alice.status(Empty {}).await), Code::PermissionDenied);

    // A storage node fetches master-key epochs into its own locked memory: the current
    // (2) and the old one (1), each the key the service holds. Nobody else may.
    let paths = |who: &str| TlsPaths {
        ca: d.join("ca/ca.crt"),
        cert: d.join(format!("{who}/{who}.crt")),
        key: d.join(format!("{who}/{who}.key")),
        crl: None,
    };
    let endpoint: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut held = FetchedMasterKeys::new(MemoryLocking::BestEffort, false).unwrap();
    let fetched =
        super::fetch_master_key(&paths("node1"), endpoint, "localhost", None, &mut held).await;
    assert_eq!(fetched.unwrap(), 2);
    super::fetch_master_key(&paths("node1"), endpoint, "localhost", Some(1), &mut held)
        .await
        .unwrap();
    assert_eq!(held.epochs(), vec![1, 2]);
    // What the node seals with its fetched key, the service's own key of epoch 2 opens.
    let plaintext = b"sealed with the fetched key";
    let sealed_by_node =
        Envelope::seal_chunk(plaintext, &held.current().unwrap(), ChunkTenant::Shared).unwrap();
    let service_key = service.lock().unwrap().keys_mut().master_key(2).unwrap();
    let chunk_id = ChunkId::of_plaintext(plaintext);
    let opened = sealed_by_node.open(&Dek::derive(&service_key, &chunk_id, None)).unwrap();
    assert_eq!(&opened[..], plaintext);
    for who in ["alice", "ops"] {
        let mut none = FetchedMasterKeys::new(MemoryLocking::BestEffort, false).unwrap();
        let refused =
            super::fetch_master_key(&paths(who), endpoint, "localhost", None, &mut none).await;
        match refused {
            Err(super::FetchError::Refused(status)) => {
                assert_eq!(status.code(), Code::PermissionDenied, "{who}");
            }
            other => panic!("{who} fetched a master key: {other:?}"),
        }
        assert!(none.epochs().is_empty());
    }

    // Shred by the tenant's admin: the tenant's keys are gone for everyone.
    alice.delete_key(name("acme-corp")).await.unwrap();
    let status = node.decrypt(decrypt.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "tenant keys destroyed");

    // Revoke bob, reload the CRL: his next connection is refused, a valid one still works.
    let bob_der = kiseki_security::read_certificates(&d.join("bob/bob.crt")).unwrap();
    ca.revoke(&bob_der[0], &d.join("ca/crl.pem")).unwrap();
    tls.reload_crl().unwrap();
    let refused = match client(d, "bob", port).await {
        Err(_) => true,
        Ok(mut again) => again.status(Empty {}).await.is_err(),
    };
    assert!(refused, "a revoked certificate still reached the service");
    let mut ops_again = client(d, "ops", port).await.unwrap();
    assert_eq!(ops_again.status(Empty {}).await.unwrap().into_inner().master_epoch, 2);

    // Every call left audit records, and the log verifies; handshakes are recorded too:
    // alice's success in acme's export, bob's refused one in the system's records.
    let (head, acme_export, (system, _)) = {
        let service = service.lock().unwrap();
        let (root, store) = (service.keys().root(), service.keys().store());
        let tenant = kiseki_security::keymanager::tenant_of_org(&acme);
        (
            AuditLog::verify(root, store).unwrap(),
            AuditLog::export_tenant(root, store, tenant).unwrap(),
            AuditLog::cluster_view(root, store).unwrap(),
        )
    };
    assert!(head.records >= 20, "{head:?}");
    use kiseki_security::keymanager::AuditKind;
    assert!(
        acme_export
            .iter()
            .any(|r| r.entry.kind == AuditKind::AuthSuccess && r.entry.actor == "alice")
    );
    let failures: Vec<_> =
        system.iter().filter(|r| r.entry.kind == AuditKind::AuthFailure).collect();
    assert!(!failures.is_empty(), "the revoked handshake was not audited");
    assert!(failures.iter().all(|r| r.entry.actor == "unauthenticated peer"));

    // A flood of bad handshakes (plaintext) is recorded at a bounded rate; the next
    // recorded failure says how many were left out.
    const FLOOD: usize = 300;
    for _ in 0..FLOOD {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        plain.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut sink = Vec::new();
        let _ = plain.read_to_end(&mut sink).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut plain, b"plaintext").await.unwrap();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut Vec::new()).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let after = loop {
        let recorded: Vec<_> = {
            let service = service.lock().unwrap();
            let (root, store) = (service.keys().root(), service.keys().store());
            let (system, _) = AuditLog::cluster_view(root, store).unwrap();
            system.into_iter().filter(|r| r.entry.kind == AuditKind::AuthFailure).collect()
        };
        if recorded.iter().any(|r| format!("{:?}", r.entry.outcome).contains("not recorded")) {
            break recorded;
        }
        assert!(std::time::Instant::now() < deadline, "no record counts the left-out failures");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(after.len() < failures.len() + FLOOD / 2, "{} records for {FLOOD}", after.len());
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
