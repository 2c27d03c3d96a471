//! Building the TLS context from files: settings, start-up failures, CRL reload outcomes.
//! Handshakes over sockets are in the integration tests (`tests/tests/it/mtls.rs`).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use super::*;
use crate::pki::{CRL_FILE, CertificateAuthority, IssueRequest, Validity};
use crate::role::Role;

struct Fixture {
    _temp: tempfile::TempDir,
    ca: CertificateAuthority,
    ca_dir: PathBuf,
    paths: TlsPaths,
}

fn fixture() -> Fixture {
    let temp = tempfile::tempdir().unwrap();
    let ca_dir = temp.path().join("ca");
    let ca = CertificateAuthority::init(&ca_dir, "CA", Validity::days_from_now(10)).unwrap();
    let issued = ca.issue(&request(Role::Server)).unwrap();
    let (cert, key) = issued.write_files(&temp.path().join("node"), "node").unwrap();
    let paths = TlsPaths {
        ca: ca_dir.join(crate::pki::CA_CERT_FILE),
        cert,
        key,
        crl: Some(ca_dir.join(CRL_FILE)),
    };
    Fixture { _temp: temp, ca, ca_dir, paths }
}

fn request(role: Role) -> IssueRequest {
    IssueRequest {
        role,
        common_name: "node".to_owned(),
        spiffe_id: None,
        subject_alt_names: Vec::new(),
        validity: Validity::days_from_now(1),
    }
}

fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
    let vars: HashMap<String, OsString> =
        vars.iter().map(|(name, value)| (name.to_string(), OsString::from(value))).collect();
    move |name| vars.get(name).cloned()
}

#[test]
fn paths_come_from_the_four_variables() {
    let all = [
        (ENV_CA_PATH, "/tls/ca.crt"),
        (ENV_CERT_PATH, "/tls/server.crt"),
        (ENV_KEY_PATH, "/tls/server.key"),
        (ENV_CRL_PATH, "/tls/crl.pem"),
    ];
    let paths = TlsPaths::from_lookup(lookup(&all)).unwrap();
    assert_eq!(paths.ca, Path::new("/tls/ca.crt"));
    assert_eq!(paths.cert, Path::new("/tls/server.crt"));
    assert_eq!(paths.key, Path::new("/tls/server.key"));
    assert_eq!(paths.crl.as_deref(), Some(Path::new("/tls/crl.pem")));
    let without_crl = TlsPaths::from_lookup(lookup(&all[..3])).unwrap();
    assert_eq!(without_crl.crl, None);
    let empty_crl = TlsPaths::from_lookup(lookup(&[all[0], all[1], all[2], (ENV_CRL_PATH, "")]));
    assert_eq!(empty_crl.unwrap().crl, None, "an empty value counts as unset");
    for missing in 0..3 {
        let mut some = all[..3].to_vec();
        let (name, _) = some.remove(missing);
        let error = TlsPaths::from_lookup(lookup(&some)).unwrap_err();
        assert!(matches!(error, PkiError::MissingSetting { name: n } if n == name), "{error}");
    }
}

#[test]
fn builder_settings_from_variables_are_checked() {
    let base = [(ENV_CA_PATH, "a"), (ENV_CERT_PATH, "b"), (ENV_KEY_PATH, "c")];
    let builder = TlsBuilder::from_lookup(lookup(&base)).unwrap();
    assert_eq!(builder.crl_reload_interval, Duration::from_secs(60));
    assert_eq!(builder.rules.trust_domain(), None);
    let set = [base.as_slice(), &[(ENV_TRUST_DOMAIN, "td.example"), (ENV_CRL_RELOAD_SECS, "5")]];
    let builder = TlsBuilder::from_lookup(lookup(&set.concat())).unwrap();
    assert_eq!(builder.crl_reload_interval, Duration::from_secs(5));
    assert_eq!(builder.rules.trust_domain().unwrap().as_str(), "td.example");
    for bad in [(ENV_TRUST_DOMAIN, "TD"), (ENV_CRL_RELOAD_SECS, "0"), (ENV_CRL_RELOAD_SECS, "1m")] {
        let error = TlsBuilder::from_lookup(lookup(&[base.as_slice(), &[bad]].concat()));
        assert!(
            matches!(error, Err(PkiError::InvalidSetting { name, .. }) if name == bad.0),
            "{bad:?}"
        );
    }
}

#[test]
fn builds_and_makes_both_configurations() {
    let fixture = fixture();
    let context = TlsBuilder::new(fixture.paths.clone()).build().unwrap();
    assert_eq!(context.local_identity().role(), Some(&Role::Server));
    let server = context.server_config().unwrap();
    assert_eq!(server.send_tls13_tickets, 0, "no resumption tickets");
    assert!(!server.session_storage.can_cache(), "no stateful resumption");
    let client = context.client_config().unwrap();
    assert!(!client.enable_early_data);
    assert!(client.client_auth_cert_resolver.has_certs());
    assert_eq!(context.crl_reload_interval(), Duration::from_secs(60));
}

#[test]
fn an_unreadable_or_foreign_crl_stops_start_up() {
    let fixture = fixture();
    let mut paths = fixture.paths.clone();
    paths.crl = Some(fixture.ca_dir.join("absent.pem"));
    let error = TlsBuilder::new(paths.clone()).build().unwrap_err();
    assert!(matches!(error, PkiError::Io { .. }), "{error}");

    let corrupt = fixture.ca_dir.join("corrupt.pem");
    fs::write(&corrupt, b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n").unwrap();
    paths.crl = Some(corrupt);
    let error = TlsBuilder::new(paths.clone()).build().unwrap_err();
    assert!(matches!(error, PkiError::Malformed { .. }), "{error}");

    let other_dir = fixture.ca_dir.join("other");
    CertificateAuthority::init(&other_dir, "Other", Validity::days_from_now(1)).unwrap();
    paths.crl = Some(other_dir.join(CRL_FILE));
    let error = TlsBuilder::new(paths).build().unwrap_err();
    assert!(matches!(error, PkiError::CrlNotSignedByCa), "{error}");
}

#[test]
fn start_up_refuses_a_wrong_key_an_open_key_and_an_invalid_own_identity() {
    let fixture = fixture();
    let other = fixture.ca.issue(&request(Role::Server)).unwrap();
    let other_dir = fixture.ca_dir.join("x");
    let (_, other_key) = other.write_files(&other_dir, "x").unwrap();
    let mut paths = fixture.paths.clone();
    paths.key = other_key.clone();
    let error = TlsBuilder::new(paths).build().unwrap_err();
    assert!(matches!(error, PkiError::KeyDoesNotMatchCertificate { .. }), "{error}");

    fs::set_permissions(&fixture.paths.key, fs::Permissions::from_mode(0o644)).unwrap();
    let error = TlsBuilder::new(fixture.paths.clone()).build().unwrap_err();
    assert!(matches!(error, PkiError::KeyFileTooOpen { .. }), "{error}");
    fs::set_permissions(&fixture.paths.key, fs::Permissions::from_mode(0o600)).unwrap();

    let org = crate::role::OrgId::parse("acme").unwrap();
    let mut svid = request(Role::Workload { org });
    let uri = "spiffe://td.example/tenant/acme/workload/w";
    svid.spiffe_id = Some(crate::identity::SpiffeId::parse(uri).unwrap());
    let (cert, key) = fixture.ca.issue(&svid).unwrap().write_files(&other_dir, "svid").unwrap();
    let paths = TlsPaths { cert, key, ..fixture.paths.clone() };
    let error = TlsBuilder::new(paths.clone()).build().unwrap_err();
    assert!(
        matches!(error, PkiError::LocalIdentity(IdentityError::NoTrustDomainConfigured)),
        "{error}"
    );
    let domain = TrustDomain::parse("td.example").unwrap();
    let context = TlsBuilder::new(paths).trust_domain(Some(domain)).build().unwrap();
    assert_eq!(context.local_identity().spiffe_id().unwrap().as_str(), uri);
}

#[test]
fn reload_swaps_on_change_and_keeps_the_last_good_crl() {
    let fixture = fixture();
    let crl_path = fixture.paths.crl.clone().unwrap();
    let context = TlsBuilder::new(fixture.paths.clone()).build().unwrap();
    assert_eq!(context.reload_crl().unwrap(), CrlReload::Unchanged);

    let victim = fixture.ca.issue(&request(Role::Sre)).unwrap();
    fixture.ca.revoke(victim.certificate_der(), &crl_path).unwrap();
    assert_eq!(context.reload_crl().unwrap(), CrlReload::Swapped { revoked_count: 1 });
    assert_eq!(context.reload_crl().unwrap(), CrlReload::Unchanged);
    let good = fs::read(&crl_path).unwrap();

    fs::remove_file(&crl_path).unwrap();
    assert!(matches!(context.reload_crl(), Err(PkiError::Io { .. })));
    fs::write(&crl_path, b"garbage").unwrap();
    assert!(matches!(context.reload_crl(), Err(PkiError::Malformed { .. })));
    // The good CRL is still the one in force: putting it back changes nothing.
    fs::write(&crl_path, &good).unwrap();
    assert_eq!(context.reload_crl().unwrap(), CrlReload::Unchanged);

    let mut no_crl = fixture.paths.clone();
    no_crl.crl = None;
    let context = TlsBuilder::new(no_crl).build().unwrap();
    assert_eq!(context.reload_crl().unwrap(), CrlReload::NotConfigured);
}

#[test]
fn dropping_the_poller_stops_its_thread_promptly() {
    let fixture = fixture();
    let context = TlsBuilder::new(fixture.paths.clone())
        .crl_reload_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let poller = context.spawn_crl_poller().unwrap();
    let started = Instant::now();
    drop(poller);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}
