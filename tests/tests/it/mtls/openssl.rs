//! Certificates made by the seed's openssl commands (`shared/seeds/000`, word for word)
//! work like ours: our server accepts the tenant's certificate (an X.509 v1 leaf: `openssl
//! x509 -req` without `-extfile` writes no extensions), our client accepts the server's,
//! both give the identities our own certificates give, the KES identity and fingerprint
//! agree with what openssl itself computes, and our tooling can issue from and revoke
//! for the openssl CA.
//!
//! Needs the `openssl` CLI; without it the test fails and says how to install it
//! (`scripts/test.sh` installs it).

use std::process::Command;

use super::*;

/// The seed's commands, verbatim (bash, for the `<(...)` in the server certificate's).
const SEED_COMMANDS: &str = r#"
set -euo pipefail
# Generate Cluster CA (do this once)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
  -keyout ca.key -out ca.crt -days 3650 -nodes \
  -subj "/CN=Kiseki Cluster CA"

# Generate server certificate
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
  -keyout server.key -out server.csr -nodes \
  -subj "/CN=node1.example.com/OU=kiseki-server"

openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key \
  -CAcreateserial -out server.crt -days 365 \
  -extfile <(echo "subjectAltName=DNS:node1.example.com,IP:10.0.0.1")

# Generate tenant client certificate
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
  -keyout tenant.key -out tenant.csr -nodes \
  -subj "/CN=workload-1/OU=tenant-acme-corp"

openssl x509 -req -in tenant.csr -CA ca.crt -CAkey ca.key \
  -CAcreateserial -out tenant.crt -days 365
"#;

#[tokio::test]
async fn seed_openssl_certificates_work_like_ours() {
    require_openssl();
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    run_bash(dir, SEED_COMMANDS);
    let file = |name: &str| dir.join(name);

    // Our tooling on the openssl CA: a first revocation creates the CRL the server loads.
    let openssl_ca = CertificateAuthority::load(dir).expect("our tooling reads the seed's CA");
    let throwaway = openssl_ca.issue(&request(Role::Sre, "throwaway")).unwrap();
    openssl_ca.revoke(throwaway.certificate_der(), &file("crl.pem")).unwrap();

    let paths = |cert: &str, key: &str| TlsPaths {
        ca: file("ca.crt"),
        cert: file(cert),
        key: file(key),
        crl: Some(file("crl.pem")),
    };
    let server_context = TlsBuilder::new(paths("server.crt", "server.key")).build().unwrap();
    let mut server = Server::start_named(server_context, "node1.example.com").await;
    let tenant_context = TlsBuilder::new(paths("tenant.crt", "tenant.key")).build().unwrap();
    let tenant_client = tenant_context.client_config().unwrap();
    let openssl_tenant = server.assert_accepted(tenant_client.clone()).await;
    let openssl_server = server.context.local_identity().clone();

    // The same identities as certificates of ours with the same names.
    let ours = Cluster::new();
    let our_tenant = ours.client_context(&ours.issue(&request(tenant("acme-corp"), "workload-1")));
    let our_server = ours.client_context(&ours.issue(&request(Role::Server, "node1.example.com")));
    for (theirs, ours) in [
        (&openssl_tenant, our_tenant.local_identity()),
        (&openssl_server, our_server.local_identity()),
    ] {
        assert_eq!(theirs.role(), ours.role());
        assert_eq!(theirs.org(), ours.org());
        assert_eq!(theirs.principal(), ours.principal());
        assert_eq!(theirs.common_name(), ours.common_name());
    }
    assert_eq!(openssl_tenant.role(), Some(&tenant("acme-corp")));
    assert_eq!(openssl_tenant.common_name(), Some("workload-1"));
    assert_eq!(openssl_server.role(), Some(&Role::Server));
    assert_eq!(&openssl_tenant, tenant_context.local_identity(), "both sides agree");

    // The KES identity and fingerprint are what openssl computes.
    let kes = run_bash(
        dir,
        "openssl x509 -in tenant.crt -noout -pubkey | openssl pkey -pubin -outform DER \
         | openssl dgst -sha256 -r | cut -d' ' -f1",
    );
    assert_eq!(openssl_tenant.kes_identity().to_string(), kes.trim());
    let fingerprint = run_bash(dir, "openssl x509 -in tenant.crt -noout -fingerprint -sha256");
    let ours_hex: Vec<String> =
        openssl_tenant.fingerprint_sha256().iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(fingerprint.trim().rsplit('=').next(), Some(ours_hex.join(":").as_str()));

    // Our tooling issues from the openssl CA, and its certificates get in.
    let admin = openssl_ca.issue(&request(Role::ClusterAdmin, "admin-1")).unwrap();
    let (admin_cert, admin_key) = admin.write_files(&dir.join("admin"), "admin-1").unwrap();
    let admin_paths = TlsPaths { cert: admin_cert, key: admin_key, ..paths("x", "x") };
    let admin_client = TlsBuilder::new(admin_paths).build().unwrap().client_config().unwrap();
    let admin_identity = server.assert_accepted(admin_client).await;
    assert_eq!(admin_identity.role(), Some(&Role::ClusterAdmin));

    // Revoking the v1 tenant certificate shuts it out at the next handshake.
    let tenant_der = kiseki_security::read_certificates(&file("tenant.crt")).unwrap();
    openssl_ca.revoke(&tenant_der[0], &file("crl.pem")).unwrap();
    assert_eq!(server.context.reload_crl().unwrap(), CrlReload::Swapped { revoked_count: 2 });
    let error = server.assert_rejected(tenant_client).await;
    assert_eq!(error, rustls::Error::InvalidCertificate(CertificateError::Revoked));
}

#[tokio::test]
async fn seed_style_v1_leaves_of_other_cas_are_rejected() {
    require_openssl();
    let temp = tempfile::tempdir().unwrap();
    let [ours, impostor, other] = ["ours", "impostor", "other"].map(|name| {
        let dir = temp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        dir
    });
    run_bash(&ours, SEED_COMMANDS);
    // The seed's commands again: another CA of the same name.
    run_bash(&impostor, SEED_COMMANDS);
    run_bash(&other, &SEED_COMMANDS.replace("/CN=Kiseki Cluster CA", "/CN=Some Other CA"));
    let paths = TlsPaths {
        ca: ours.join("ca.crt"),
        cert: ours.join("server.crt"),
        key: ours.join("server.key"),
        crl: None,
    };
    let server_context = TlsBuilder::new(paths).build().unwrap();
    let mut server = Server::start_named(server_context, "node1.example.com").await;
    server.assert_accepted(v1_client(&ours, &ours)).await;
    let error = server.assert_rejected(v1_client(&ours, &impostor)).await;
    assert_eq!(error, rustls::Error::InvalidCertificate(CertificateError::BadSignature));
    let error = server.assert_rejected(v1_client(&ours, &other)).await;
    assert_eq!(error, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
}

/// A raw rustls client trusting `trust`'s CA and presenting `present`'s seed tenant
/// certificate (a v1 certificate, which rustls' own `with_client_auth_cert` cannot load).
fn v1_client(trust: &Path, present: &Path) -> ClientConfig {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let chain = kiseki_security::read_certificates(&present.join("tenant.crt")).unwrap();
    let key = kiseki_security::read_private_key(&present.join("tenant.key")).unwrap();
    let key = provider.key_provider.load_private_key(key.clone_key()).unwrap();
    let resolver =
        rustls::sign::SingleCertAndKey::from(rustls::sign::CertifiedKey::new(chain, key));
    let mut roots = RootCertStore::empty();
    for ca in kiseki_security::read_certificates(&trust.join("ca.crt")).unwrap() {
        roots.add(ca).unwrap();
    }
    ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(resolver))
}

/// Fails the test with instructions when the `openssl` CLI cannot run.
fn require_openssl() {
    let found = Command::new("openssl").arg("version").output();
    match found {
        Ok(output) if output.status.success() => {}
        _ => panic!(
            "this test needs the openssl command-line tool, which is not installed or does \
             not run: install it (Debian/Ubuntu: apt-get install openssl); scripts/test.sh \
             installs it when run as root"
        ),
    }
}

/// Runs `script` with bash in `dir`; fails the test, with openssl's output, if it fails.
fn run_bash(dir: &Path, script: &str) -> String {
    let output =
        Command::new("bash").arg("-c").arg(script).current_dir(dir).output().expect("bash runs");
    assert!(
        output.status.success(),
        "{script}\nfailed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}
