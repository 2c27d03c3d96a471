//! The gRPC front end over real TLS on 127.0.0.1, with certificates from a throwaway
//! cluster CA: every (role, method) pair of the method table is allowed or
//! PERMISSION_DENIED as the expectation below says; a client-set role or tenant header
//! changes nothing; one tenant never reads another's objects; an oversized message is
//! refused; objects round-trip (one message and many); the control plane, grants and
//! audit export behave per role; a revoked certificate is refused after a CRL reload
//! without a restart.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use kiseki_consensus::command::DedupMode;
use kiseki_consensus::node::start_single;
use kiseki_engine::Engine;
use kiseki_gateway::grpc::methods::METHODS;
use kiseki_gateway::grpc::{GrpcFront, GrpcServer};
use kiseki_gateway::objects::{ObjectConfig, ObjectStore};
use kiseki_gateway::s3::S3Credentials;
use kiseki_proto::admin::storage_admin_service_client::StorageAdminServiceClient;
use kiseki_proto::admin::{GetDeviceRequest, ListDevicesRequest, ListNodesRequest, StatusRequest};
use kiseki_proto::audit::ExportRequest;
use kiseki_proto::audit::audit_service_client::AuditServiceClient;
use kiseki_proto::control::control_service_client::ControlServiceClient;
use kiseki_proto::control::{
    AccessRequestId, CreateS3CredentialRequest, CreateTenantRequest, DeleteS3CredentialRequest,
    ListAccessRequestsRequest, ListS3CredentialsRequest, ListTenantsRequest, RequestAccessRequest,
    TenantName,
};
use kiseki_proto::data::data_service_client::DataServiceClient;
use kiseki_proto::data::{
    BucketRequest, GetObjectRequest, ListBucketsRequest, ListObjectsRequest, ObjectRequest,
    PutObjectHeader, PutObjectRequest, get_object_reply, put_object_request,
};
use kiseki_proto::keys::Empty as KeyEmpty;
use kiseki_proto::keys::key_service_client::KeyServiceClient;
use kiseki_security::authz::{Authorizer, KesPolicies, RoleFiles};
use kiseki_security::keymanager::{
    AuditEntry, AuditKind, AuditLog, AuditOutcome, KeyManager, KeyService, MemoryKeyStore,
    NoRetentionHolds, tenant_of_org,
};
use kiseki_security::{
    CRL_FILE, CertificateAuthority, IssueRequest, OrgId, Role, SubjectAltName, TlsBuilder,
    TlsContext, TlsPaths, Validity,
};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Small chunks, so a 2.5 MiB object has forty of them.
const CHUNK: usize = 64 << 10;

/// Every identity the walk calls with: its directory name and role.
const WHO: [&str; 7] = ["ops", "sre", "acme-admin", "acme-app", "node", "keyserver", "cgc"];

fn issue(ca: &CertificateAuthority, dir: &Path, name: &str, role: Role, sans: &[&str]) {
    let request = IssueRequest {
        role,
        common_name: name.to_owned(),
        spiffe_id: None,
        subject_alt_names: sans.iter().map(|san| SubjectAltName::parse(san).unwrap()).collect(),
        validity: Validity::days_from_now(1),
    };
    ca.issue(&request).unwrap().write_files(&dir.join(name), name).unwrap();
}

async fn channel(dir: &Path, name: &str, port: u16) -> Result<Channel, tonic::transport::Error> {
    let read = |path: PathBuf| std::fs::read_to_string(path).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(dir.join("ca/ca.crt"))))
        .identity(Identity::from_pem(
            read(dir.join(format!("{name}/{name}.crt"))),
            read(dir.join(format!("{name}/{name}.key"))),
        ))
        .domain_name("localhost");
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// The node: metadata, engine, keys, two tenants, and the gRPC front on a free port.
struct Node {
    _dir: tempfile::TempDir,
    path: PathBuf,
    ca: CertificateAuthority,
    tls: TlsContext,
    server: GrpcServer,
    keys: Arc<Mutex<KeyManager<MemoryKeyStore>>>,
    credentials: Arc<S3Credentials<MemoryKeyStore>>,
    engine: Engine,
}

impl Node {
    async fn start() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_owned();
        let ca = CertificateAuthority::init(&d.join("ca"), "grpc test", Validity::days_from_now(1))
            .unwrap();
        issue(&ca, &d, "server", Role::Server, &["localhost", "127.0.0.1"]);
        let acme = OrgId::parse("acme").unwrap();
        let globex = OrgId::parse("globex").unwrap();
        issue(&ca, &d, "ops", Role::ClusterAdmin, &[]);
        issue(&ca, &d, "sre", Role::Sre, &[]);
        issue(&ca, &d, "acme-admin", Role::Workload { org: acme.clone() }, &[]);
        issue(&ca, &d, "acme-app", Role::Workload { org: acme.clone() }, &[]);
        issue(&ca, &d, "globex-app", Role::Workload { org: globex.clone() }, &[]);
        issue(&ca, &d, "node", Role::Server, &[]);
        issue(&ca, &d, "keyserver", Role::KeyServer, &[]);
        issue(&ca, &d, "cgc", Role::CertGranting, &[]);
        let tls = TlsBuilder::new(TlsPaths {
            ca: d.join("ca").join(kiseki_security::CA_CERT_FILE),
            cert: d.join("server/server.crt"),
            key: d.join("server/server.key"),
            crl: Some(d.join("ca").join(CRL_FILE)),
        })
        .build()
        .unwrap();

        std::fs::create_dir_all(d.join("meta")).unwrap();
        let group = Arc::new(start_single(&d.join("meta")).await.unwrap());
        let engine =
            Engine::start(1, Arc::new(|_| common::memory_shard(96 << 20, 32, 128 << 10))).unwrap();
        let keys = Arc::new(Mutex::new(common::key_manager(9)));
        keys.lock().unwrap().init_cluster().unwrap();
        let config =
            ObjectConfig { chunk_size_bytes: CHUNK, inline_max_bytes: 4096, ..Default::default() };
        let objects = Arc::new(ObjectStore::new(
            Arc::clone(&group),
            engine.handle(),
            Arc::clone(&keys),
            config,
        ));
        objects.create_tenant(tenant_of_org(&acme), DedupMode::CrossTenant).await.unwrap();
        objects.create_tenant(tenant_of_org(&globex), DedupMode::Isolated).await.unwrap();
        let credentials = Arc::new(S3Credentials::new(Arc::clone(&group), Arc::clone(&keys)));

        // A key service of its own (another key manager) mounted beside the front.
        let mut service_keys = common::key_manager(7);
        service_keys.init_cluster().unwrap();
        let key_service = KeyService::new(
            service_keys,
            Authorizer::new(role_files(), KesPolicies::default()),
            AuditLog::default(),
            Box::new(NoRetentionHolds),
        );
        let front = GrpcFront {
            objects,
            credentials: Arc::clone(&credentials),
            keys: Arc::clone(&keys),
            meta: group,
            engine: engine.handle(),
            device_path: "memory".to_owned(),
            authorizer: Arc::new(RwLock::new(Authorizer::new(
                role_files(),
                KesPolicies::default(),
            ))),
            audit: None,
            key_service: Some(Arc::new(Mutex::new(key_service))),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = GrpcServer::start(listener, &tls, front).unwrap();
        Node { _dir: dir, path: d, ca, tls, server, keys, credentials, engine }
    }

    fn port(&self) -> u16 {
        self.server.local_addr().port()
    }

    async fn channel(&self, name: &str) -> Channel {
        channel(&self.path, name, self.port()).await.unwrap()
    }
}

/// acme-admin is its tenant's admin by the scope file; nobody else is anyone's.
fn role_files() -> RoleFiles {
    RoleFiles::parse(br#"{}"#, br#"{"tenant-admin": ["acme/acme-admin"]}"#).unwrap()
}

/// The expectation, written out apart from the security crate's table: may `who` call
/// `method`? (acme-admin holds both the workload role of its certificate and the tenant
/// admin role of the scope file.)
fn expected(method: &str, who: &str) -> bool {
    let name = method.rsplit('/').next().unwrap();
    let service = method.split('/').nth(1).unwrap();
    let workload = matches!(who, "acme-admin" | "acme-app");
    let operator = matches!(who, "ops" | "sre");
    match service {
        "kiseki.data.v1.DataService" => workload,
        "kiseki.admin.v1.StorageAdminService" => operator,
        "kiseki.audit.v1.AuditService" => operator || who == "acme-admin",
        "kiseki.control.v1.ControlService" => match name {
            "CreateTenant" | "RequestAccess" => who == "ops",
            "ListTenants" => operator,
            "ListAccessRequests" => operator || who == "acme-admin",
            "GetTenant" | "CreateS3Credential" | "ListS3Credentials" | "DeleteS3Credential"
            | "ApproveAccess" | "DenyAccess" => who == "acme-admin",
            other => panic!("no expectation for {other}"),
        },
        other => panic!("no expectation for {other}"),
    }
}

fn put_stream(bucket: &str, key: &[u8], body: &[u8]) -> Vec<PutObjectRequest> {
    let header = PutObjectHeader {
        bucket: bucket.to_owned(),
        key: key.to_vec(),
        content_type: "application/octet-stream".to_owned(),
        metadata: [("origin".to_owned(), "grpc-test".to_owned())].into(),
    };
    let mut messages =
        vec![PutObjectRequest { part: Some(put_object_request::Part::Header(header)) }];
    for piece in body.chunks(1 << 20) {
        messages
            .push(PutObjectRequest { part: Some(put_object_request::Part::Piece(piece.to_vec())) });
    }
    messages
}

/// One call of `method` as `who`, with a request that names only what `who` may name:
/// the result's code, or `Ok` when the call passed the gate (whatever came after).
async fn call(node: &Node, method: &str, who: &str) -> Result<(), Code> {
    let channel = node.channel(who).await;
    let mut data = DataServiceClient::new(channel.clone());
    let mut admin = StorageAdminServiceClient::new(channel.clone());
    let mut control = ControlServiceClient::new(channel.clone());
    let mut audit = AuditServiceClient::new(channel);
    let object = || ObjectRequest { bucket: "walk-none".into(), key: b"k".to_vec() };
    let own_org = if who.starts_with("acme") { "acme" } else { "" };
    let name = method.rsplit('/').next().unwrap();
    let result: Result<(), tonic::Status> = match name {
        "ListBuckets" => data.list_buckets(ListBucketsRequest {}).await.map(drop),
        "CreateBucket" => {
            data.create_bucket(BucketRequest { bucket: format!("walk-{who}") }).await.map(drop)
        }
        "DeleteBucket" => {
            data.delete_bucket(BucketRequest { bucket: "walk-none".into() }).await.map(drop)
        }
        "PutObject" => {
            let stream = tokio_stream::iter(put_stream(&format!("walk-{who}"), b"k", b"v"));
            data.put_object(stream).await.map(drop)
        }
        "GetObject" => {
            let request = GetObjectRequest {
                bucket: "walk-none".into(),
                key: b"k".to_vec(),
                ..Default::default()
            };
            data.get_object(request).await.map(drop)
        }
        "HeadObject" => data.head_object(object()).await.map(drop),
        "DeleteObject" => data.delete_object(object()).await.map(drop),
        "ListObjects" => {
            let request = ListObjectsRequest { bucket: "walk-none".into(), ..Default::default() };
            data.list_objects(request).await.map(drop)
        }
        "GetManifest" => data.get_manifest(object()).await.map(drop),
        "Status" => admin.status(StatusRequest {}).await.map(drop),
        "ListNodes" => admin.list_nodes(ListNodesRequest {}).await.map(drop),
        "ListDevices" => admin.list_devices(ListDevicesRequest {}).await.map(drop),
        "GetDevice" => admin.get_device(GetDeviceRequest { shard: 0 }).await.map(drop),
        "CreateTenant" => {
            let request = CreateTenantRequest { org: format!("walk-{who}"), isolated: false };
            control.create_tenant(request).await.map(drop)
        }
        "ListTenants" => control.list_tenants(ListTenantsRequest::default()).await.map(drop),
        "GetTenant" => control.get_tenant(TenantName { org: "acme".into() }).await.map(drop),
        "CreateS3Credential" => {
            let request = CreateS3CredentialRequest { workload: "walk".into() };
            control.create_s3_credential(request).await.map(drop)
        }
        "ListS3Credentials" => {
            control.list_s3_credentials(ListS3CredentialsRequest {}).await.map(drop)
        }
        "DeleteS3Credential" => {
            let request = DeleteS3CredentialRequest { access_key: "KSKNOSUCHKEY".into() };
            control.delete_s3_credential(request).await.map(drop)
        }
        "RequestAccess" => {
            let request = RequestAccessRequest {
                org: "acme".into(),
                objects: vec!["Audit".into()],
                read: true,
                write: false,
                duration_s: 60,
            };
            control.request_access(request).await.map(drop)
        }
        "ApproveAccess" => control.approve_access(AccessRequestId { id: 999_999 }).await.map(drop),
        "DenyAccess" => control.deny_access(AccessRequestId { id: 999_999 }).await.map(drop),
        "ListAccessRequests" => {
            control.list_access_requests(ListAccessRequestsRequest {}).await.map(drop)
        }
        "Export" => {
            let request = ExportRequest { org: own_org.into(), after_sequence: 0 };
            match audit.export(request).await {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    while stream.message().await.map_err(|s| s.code())?.is_some() {}
                    Ok(())
                }
                Err(status) => Err(status),
            }
        }
        other => panic!("the walk has no call for {other}"),
    };
    match result {
        Ok(()) => Ok(()),
        Err(status) if status.code() == Code::PermissionDenied => Err(Code::PermissionDenied),
        // Past the gate, refused for what the request named (no such bucket, say).
        Err(status) => {
            assert_ne!(status.code(), Code::Unauthenticated, "{who} {method}: {status:?}");
            assert_ne!(status.code(), Code::Unimplemented, "{who} {method}: {status:?}");
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_and_method_pair_is_allowed_or_denied_as_expected() {
    let node = Node::start().await;
    let mut checked = 0;
    for method in METHODS {
        for who in WHO {
            let outcome = call(&node, method.path, who).await;
            let allowed = outcome.is_ok();
            assert_eq!(allowed, expected(method.path, who), "{who} calling {}", method.path);
            checked += 1;
        }
    }
    assert_eq!(checked, METHODS.len() * WHO.len());

    // The key service is mounted on the same server, and checks roles itself.
    let mut ops = KeyServiceClient::new(node.channel("ops").await);
    assert!(ops.status(KeyEmpty {}).await.unwrap().into_inner().master_epoch >= 1);
    let mut app = KeyServiceClient::new(node.channel("acme-app").await);
    assert_eq!(app.status(KeyEmpty {}).await.unwrap_err().code(), Code::PermissionDenied);

    // Health and reflection answer any certified peer.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(node.channel("acme-app").await);
    let check =
        tonic_health::pb::HealthCheckRequest { service: "kiseki.data.v1.DataService".to_owned() };
    let status = health.check(check).await.unwrap().into_inner().status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    node.server.shutdown().await.unwrap();
    node.engine.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_round_trip_and_stay_inside_their_tenant() {
    let node = Node::start().await;
    let mut acme = DataServiceClient::new(node.channel("acme-app").await);
    let mut globex = DataServiceClient::new(node.channel("globex-app").await);
    acme.create_bucket(BucketRequest { bucket: "acme-data".into() }).await.unwrap();

    // One message: a small (inline) object.
    let small = b"small object bytes".to_vec();
    let stream = tokio_stream::iter(put_stream("acme-data", b"small", &small));
    acme.put_object(stream).await.unwrap();
    assert_eq!(get(&mut acme, "acme-data", b"small", None).await.unwrap(), small);

    // Many messages: 2.5 MiB in pieces of 1 MiB, forty chunks of 64 KiB.
    let big: Vec<u8> =
        (0..(5u32 << 19)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let stream = tokio_stream::iter(put_stream("acme-data", b"dir/big", &big));
    let reply = acme.put_object(stream).await.unwrap().into_inner();
    assert_eq!(reply.size_bytes, big.len() as u64);
    let request = GetObjectRequest {
        bucket: "acme-data".into(),
        key: b"dir/big".to_vec(),
        ..Default::default()
    };
    let mut stream = acme.get_object(request).await.unwrap().into_inner();
    let (mut pieces, mut got, mut head) = (0, Vec::new(), None);
    while let Some(message) = stream.message().await.unwrap() {
        match message.part.unwrap() {
            get_object_reply::Part::Head(h) => head = Some(h),
            get_object_reply::Part::Piece(piece) => {
                pieces += 1;
                got.extend_from_slice(&piece);
            }
        }
    }
    assert_eq!(got, big, "the streamed object came back different");
    assert_eq!(pieces, 3, "2.5 MiB should come back in three pieces");
    let meta = head.unwrap().meta.unwrap();
    assert_eq!(meta.size_bytes, big.len() as u64);
    assert_eq!(meta.etag, reply.etag);
    assert_eq!(meta.metadata.get("origin").map(String::as_str), Some("grpc-test"));
    // A range across a chunk boundary.
    let range = (CHUNK as u64 - 10)..(CHUNK as u64 + 10);
    let ranged = get(&mut acme, "acme-data", b"dir/big", Some(range.clone())).await.unwrap();
    assert_eq!(ranged, big[range.start as usize..range.end as usize]);
    // The manifest: forty contiguous chunks covering the object.
    let object = || ObjectRequest { bucket: "acme-data".into(), key: b"dir/big".to_vec() };
    let manifest = acme.get_manifest(object()).await.unwrap().into_inner();
    assert!(!manifest.inline);
    assert_eq!(manifest.chunks.len(), big.len().div_ceil(CHUNK));
    let mut offset = 0;
    for chunk in &manifest.chunks {
        assert_eq!(chunk.offset_bytes, offset);
        assert_eq!(chunk.id.len(), 32);
        offset += u64::from(chunk.size_bytes);
    }
    assert_eq!(offset, big.len() as u64);
    let listed = acme
        .list_objects(ListObjectsRequest { bucket: "acme-data".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<&[u8]> = listed.objects.iter().map(|o| o.key.as_slice()).collect();
    assert_eq!(keys, [b"dir/big".as_slice(), b"small".as_slice()]);

    // The other tenant sees none of it, whatever its headers claim; the answers are those
    // of an absent bucket.
    let request = GetObjectRequest {
        bucket: "acme-data".into(),
        key: b"small".to_vec(),
        ..Default::default()
    };
    assert_eq!(globex.get_object(claim(request)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(globex.head_object(claim(object())).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(globex.get_manifest(claim(object())).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(globex.delete_object(claim(object())).await.unwrap_err().code(), Code::NotFound);
    let list = ListObjectsRequest { bucket: "acme-data".into(), ..Default::default() };
    assert_eq!(globex.list_objects(claim(list)).await.unwrap_err().code(), Code::NotFound);
    let buckets = globex.list_buckets(claim(ListBucketsRequest {})).await.unwrap().into_inner();
    assert!(buckets.buckets.is_empty(), "{buckets:?}");
    // Nor does a header make a workload an operator.
    let mut control = ControlServiceClient::new(node.channel("acme-app").await);
    let denied = control.list_tenants(claim(ListTenantsRequest::default())).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(denied.message(), "access denied");
    // The object is still acme's.
    assert_eq!(get(&mut acme, "acme-data", b"small", None).await.unwrap(), small);

    // Oversized messages are refused, streamed or not.
    let header =
        PutObjectHeader { bucket: "acme-data".into(), key: b"huge".to_vec(), ..Default::default() };
    let messages = vec![
        PutObjectRequest { part: Some(put_object_request::Part::Header(header)) },
        PutObjectRequest { part: Some(put_object_request::Part::Piece(vec![0; 5 << 20])) },
    ];
    let refused = acme.put_object(tokio_stream::iter(messages)).await.unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    let refused = acme.create_bucket(BucketRequest { bucket: "b".repeat(5 << 20) }).await;
    assert_eq!(refused.unwrap_err().code(), Code::OutOfRange);
    assert_eq!(get(&mut acme, "acme-data", b"huge", None).await.unwrap_err(), Code::NotFound);

    // Delete, then it is gone.
    acme.delete_object(object()).await.unwrap();
    assert_eq!(get(&mut acme, "acme-data", b"dir/big", None).await.unwrap_err(), Code::NotFound);
    acme.delete_object(ObjectRequest { bucket: "acme-data".into(), key: b"small".to_vec() })
        .await
        .unwrap();
    acme.delete_bucket(BucketRequest { bucket: "acme-data".into() }).await.unwrap();
    node.server.shutdown().await.unwrap();
    node.engine.shutdown().unwrap();
}

/// `message` with headers claiming a cluster admin's role and acme's tenant.
fn claim<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert("x-kiseki-role", "cluster-admin".parse().unwrap());
    metadata.insert("x-kiseki-org", "acme".parse().unwrap());
    metadata.insert("x-kiseki-tenant", "acme".parse().unwrap());
    request
}

async fn get(
    client: &mut DataServiceClient<Channel>,
    bucket: &str,
    key: &[u8],
    range: Option<std::ops::Range<u64>>,
) -> Result<Vec<u8>, Code> {
    let request = GetObjectRequest {
        bucket: bucket.to_owned(),
        key: key.to_vec(),
        has_range: range.is_some(),
        range_start: range.as_ref().map_or(0, |r| r.start),
        range_end: range.as_ref().map_or(0, |r| r.end),
    };
    let mut stream = client.get_object(request).await.map_err(|s| s.code())?.into_inner();
    let mut bytes = Vec::new();
    while let Some(message) = stream.message().await.map_err(|s| s.code())? {
        if let Some(get_object_reply::Part::Piece(piece)) = message.part {
            bytes.extend_from_slice(&piece);
        }
    }
    Ok(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_grants_audit_export_and_a_revoked_certificate() {
    let node = Node::start().await;
    let mut admin = ControlServiceClient::new(node.channel("acme-admin").await);
    let mut ops = ControlServiceClient::new(node.channel("ops").await);

    // Tenants: the cluster admin creates and lists; a tenant admin sees its own only.
    let made =
        ops.create_tenant(CreateTenantRequest { org: "initech".into(), isolated: true }).await;
    let made = made.unwrap().into_inner();
    assert!(made.isolated);
    assert_eq!(made.tenant_id, tenant_of_org(&OrgId::parse("initech").unwrap()).to_string());
    let listed = ops.list_tenants(ListTenantsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.tenants.len(), 3, "{listed:?}");
    let own = admin.get_tenant(TenantName { org: "acme".into() }).await.unwrap().into_inner();
    assert!(!own.isolated);
    let other = admin.get_tenant(TenantName { org: "globex".into() }).await;
    assert_eq!(other.unwrap_err().code(), Code::PermissionDenied);
    let bad = admin.get_tenant(TenantName { org: "Not/An/Org".into() }).await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);

    // S3 credentials: the tenant admin makes one, and the secret is the stored one.
    let request = CreateS3CredentialRequest { workload: "trainer".into() };
    let made = admin.create_s3_credential(request).await.unwrap().into_inner();
    assert!(made.access_key.starts_with("KSK"), "{made:?}");
    let (owner, secret) = node.credentials.lookup(&made.access_key).await.unwrap().unwrap();
    assert_eq!(secret.as_str(), made.secret_key);
    assert_eq!(owner.tenant, tenant_of_org(&OrgId::parse("acme").unwrap()));
    assert_eq!(owner.workload, "trainer");
    let keys = admin.list_s3_credentials(ListS3CredentialsRequest {}).await.unwrap().into_inner();
    assert_eq!(keys.credentials.len(), 1);
    assert!(keys.credentials[0].secret_key.is_empty(), "a listing carries no secret");
    let delete = DeleteS3CredentialRequest { access_key: made.access_key.clone() };
    admin.delete_s3_credential(delete.clone()).await.unwrap();
    assert_eq!(admin.delete_s3_credential(delete).await.unwrap_err().code(), Code::NotFound);
    assert!(node.credentials.lookup(&made.access_key).await.unwrap().is_none());

    // Access grants: the cluster admin cannot read acme's configuration until acme's
    // admin approves its request; then it can, within the grant's scope only.
    assert_eq!(
        ops.get_tenant(TenantName { org: "acme".into() }).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let request = RequestAccessRequest {
        org: "acme".into(),
        objects: vec!["TenantConfig".into()],
        read: true,
        write: false,
        duration_s: 600,
    };
    let pending = ops.request_access(request).await.unwrap().into_inner();
    assert_eq!(pending.state, "pending");
    let id = AccessRequestId { id: pending.id };
    // Only acme's admin decides it: not the requester, not another tenant's workload.
    assert_eq!(ops.approve_access(id).await.unwrap_err().code(), Code::PermissionDenied);
    let mut globex = ControlServiceClient::new(node.channel("globex-app").await);
    assert_eq!(globex.approve_access(id).await.unwrap_err().code(), Code::PermissionDenied);
    admin.approve_access(id).await.unwrap();
    let seen = admin.list_access_requests(ListAccessRequestsRequest {}).await.unwrap();
    assert_eq!(seen.into_inner().requests[0].state, "approved");
    let granted = ops.get_tenant(TenantName { org: "acme".into() }).await.unwrap().into_inner();
    assert_eq!(granted.org, "acme");
    let outside = ops.list_s3_credentials(ListS3CredentialsRequest {}).await;
    assert_eq!(outside.unwrap_err().code(), Code::PermissionDenied);
    // A denial is acme's admin's alone as well: another tenant cannot deny acme's request
    // (nor learn whether it exists), and a denied request stays denied.
    let request = RequestAccessRequest {
        org: "acme".into(),
        objects: vec!["TenantConfig".into()],
        read: true,
        write: true,
        duration_s: 60,
    };
    let second = ops.request_access(request).await.unwrap().into_inner();
    let second_id = AccessRequestId { id: second.id };
    let refused = globex.deny_access(second_id).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = ops.deny_access(second_id).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    admin.deny_access(second_id).await.unwrap();
    let seen = admin.list_access_requests(ListAccessRequestsRequest {}).await.unwrap();
    let states: Vec<(u64, String)> =
        seen.into_inner().requests.into_iter().map(|r| (r.id, r.state)).collect();
    assert!(states.contains(&(second.id, "denied".to_owned())), "{states:?}");
    assert_eq!(admin.approve_access(second_id).await.unwrap_err().code(), Code::FailedPrecondition);

    // Audit export: acme's admin gets acme's records, not globex's; the cluster admin gets
    // system records only and a count of the rest.
    {
        let mut keys = node.keys.lock().unwrap();
        let mut log = AuditLog::default();
        for (org, action) in
            [(Some("acme"), "acme event"), (Some("globex"), "globex event"), (None, "system event")]
        {
            let tenant = org.map(|org| tenant_of_org(&OrgId::parse(org).unwrap()));
            let entry = AuditEntry::local(
                1,
                AuditKind::AdminOperation,
                action,
                tenant,
                AuditOutcome::Succeeded,
            );
            let (root, store) = keys.audit_parts();
            log.append(root, store, entry).unwrap();
        }
    }
    let export = |channel: Channel, org: &str| {
        let request = ExportRequest { org: org.to_owned(), after_sequence: 0 };
        async move {
            let mut client = AuditServiceClient::new(channel);
            let mut stream = client.export(request).await?.into_inner();
            let (mut records, mut withheld) = (Vec::new(), 0);
            while let Some(reply) = stream.message().await? {
                records.extend(reply.records);
                withheld += reply.tenant_records_withheld;
            }
            Ok::<_, tonic::Status>((records, withheld))
        }
    };
    let (acme_records, _) = export(node.channel("acme-admin").await, "acme").await.unwrap();
    let actions: Vec<&str> = acme_records.iter().map(|r| r.action.as_str()).collect();
    assert!(actions.contains(&"acme event"), "{actions:?}");
    assert!(!actions.contains(&"globex event") && !actions.contains(&"system event"));
    let (system, withheld) = export(node.channel("ops").await, "").await.unwrap();
    assert!(system.iter().all(|r| r.tenant.is_empty()), "{system:?}");
    assert!(system.iter().any(|r| r.action == "system event"));
    assert_eq!(withheld, 2);
    let denied = export(node.channel("acme-admin").await, "globex").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = export(node.channel("ops").await, "globex").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // Revoke acme-app, reload the CRL: its next connection is refused; others still work.
    let mut app = DataServiceClient::new(node.channel("acme-app").await);
    app.list_buckets(ListBucketsRequest {}).await.unwrap();
    let der = kiseki_security::read_certificates(&node.path.join("acme-app/acme-app.crt")).unwrap();
    node.ca.revoke(&der[0], &node.path.join("ca").join(CRL_FILE)).unwrap();
    node.tls.reload_crl().unwrap();
    let refused = match channel(&node.path, "acme-app", node.port()).await {
        Err(_) => true,
        Ok(channel) => {
            DataServiceClient::new(channel).list_buckets(ListBucketsRequest {}).await.is_err()
        }
    };
    assert!(refused, "a revoked certificate still reached the front");
    let mut ops_data = StorageAdminServiceClient::new(node.channel("ops").await);
    let status = ops_data.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.shards, 1);
    assert!(status.ready, "{status:?}");
    assert_eq!(status.metadata_voters.len(), 1);
    let devices = ops_data.list_devices(ListDevicesRequest {}).await.unwrap().into_inner();
    assert_eq!(devices.devices.len(), 1);
    assert_eq!(devices.devices[0].state, "healthy");
    node.server.shutdown().await.unwrap();
    node.engine.shutdown().unwrap();
}
