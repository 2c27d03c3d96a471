//! The CA tooling on a temporary directory: what files it writes with which modes, what it
//! refuses, what the certificates and CRLs it makes contain.

use std::os::unix::fs::PermissionsExt;

use x509_parser::extensions::GeneralName;

use super::*;
use crate::identity::{IdentityRules, PeerIdentity, Principal, TrustDomain};
use crate::role::OrgId;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
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

fn acme() -> Role {
    Role::Workload { org: OrgId::parse("acme").unwrap() }
}

fn new_ca(dir: &Path) -> CertificateAuthority {
    CertificateAuthority::init(dir, "Test CA", Validity::days_from_now(10)).unwrap()
}

#[test]
fn init_writes_a_private_ca_and_an_empty_crl() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("ca");
    let ca = new_ca(&dir);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.join(CA_CERT_FILE)), 0o644);
    let (_, cert) = X509Certificate::from_der(ca.certificate_der()).unwrap();
    assert!(cert.is_ca());
    let constraints = cert.basic_constraints().unwrap().unwrap().value;
    assert_eq!(constraints.path_len_constraint, Some(0));
    let usage = cert.key_usage().unwrap().unwrap().value;
    assert!(usage.key_cert_sign() && usage.crl_sign());
    let algorithm = &cert.public_key().algorithm;
    let curve = algorithm.parameters.as_ref().unwrap().as_oid().unwrap();
    assert_eq!(curve, OID_EC_P256, "a P-256 key");
    let crl_bytes = fs::read(dir.join(CRL_FILE)).unwrap();
    let crl_der = &crls_from_bytes(&crl_bytes, Path::new("crl")).unwrap()[0];
    let (_, crl) = CertificateRevocationList::from_der(crl_der).unwrap();
    assert_eq!(crl.iter_revoked_certificates().count(), 0);
    assert_eq!(crl.crl_number().unwrap().to_bytes_be(), vec![1]);
    crl.verify_signature(cert.public_key()).unwrap();
}

#[test]
fn init_refuses_an_existing_ca_and_changes_nothing() {
    let temp = tempfile::tempdir().unwrap();
    new_ca(temp.path());
    let before = fs::read(temp.path().join(CA_KEY_FILE)).unwrap();
    let error = CertificateAuthority::init(temp.path(), "Again", Validity::days_from_now(1));
    assert!(matches!(error, Err(PkiError::AlreadyExists { .. })), "{error:?}");
    assert_eq!(fs::read(temp.path().join(CA_KEY_FILE)).unwrap(), before);
    // A lone key (a half-finished init, or someone else's) also stops it.
    let other = tempfile::tempdir().unwrap();
    fs::write(other.path().join(CA_KEY_FILE), b"not ours").unwrap();
    let error = CertificateAuthority::init(other.path(), "CA", Validity::days_from_now(1));
    assert!(matches!(error, Err(PkiError::AlreadyExists { .. })));
    assert!(!other.path().join(CA_CERT_FILE).exists());
}

#[test]
fn load_gives_back_the_same_ca_and_checks_its_key() {
    let temp = tempfile::tempdir().unwrap();
    let ca = new_ca(temp.path());
    let loaded = CertificateAuthority::load(temp.path()).unwrap();
    assert_eq!(loaded.certificate_der(), ca.certificate_der());
    let issued = loaded.issue(&request(Role::Server, "node1")).unwrap();
    let (_, leaf) = X509Certificate::from_der(issued.certificate_der()).unwrap();
    let (_, root) = X509Certificate::from_der(ca.certificate_der()).unwrap();
    leaf.verify_signature(Some(root.public_key())).unwrap();
    assert_eq!(leaf.issuer().as_raw(), root.subject().as_raw());

    let other = tempfile::tempdir().unwrap();
    new_ca(other.path());
    fs::copy(other.path().join(CA_KEY_FILE), temp.path().join(CA_KEY_FILE)).unwrap();
    let error = CertificateAuthority::load(temp.path()).unwrap_err();
    assert!(matches!(error, PkiError::KeyDoesNotMatchCertificate { .. }), "{error}");
}

#[test]
fn load_refuses_a_key_open_to_others_and_a_non_ca() {
    let temp = tempfile::tempdir().unwrap();
    new_ca(temp.path());
    let key = temp.path().join(CA_KEY_FILE);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
    let error = CertificateAuthority::load(temp.path()).unwrap_err();
    assert!(matches!(error, PkiError::KeyFileTooOpen { mode: 0o640, .. }), "{error}");
    assert!(error.to_string().contains("chmod 600"), "{error}");

    let good = tempfile::tempdir().unwrap();
    let ca = new_ca(good.path());
    let leaf = ca.issue(&request(Role::Server, "node1")).unwrap();
    let fake = tempfile::tempdir().unwrap();
    leaf.write_files(fake.path(), "ca").unwrap();
    let error = CertificateAuthority::load(fake.path()).unwrap_err();
    assert!(matches!(error, PkiError::NotACa { .. }), "{error}");
}

#[test]
fn issued_leaves_carry_their_role_and_profile() {
    let temp = tempfile::tempdir().unwrap();
    let ca = new_ca(temp.path());
    let cases = [
        (Role::Server, "kiseki-server", true),
        (Role::KeyServer, "kiseki-keyserver", true),
        (Role::ClusterAdmin, "kiseki-admin", false),
        (Role::Sre, "kiseki-sre", false),
        (Role::CertGranting, "kiseki-cgc", false),
        (acme(), "tenant-acme", false),
    ];
    for (role, unit, serves) in cases {
        let issued = ca.issue(&request(role.clone(), "peer-1")).unwrap();
        let (_, cert) = X509Certificate::from_der(issued.certificate_der()).unwrap();
        let units: Vec<&str> =
            cert.subject().iter_organizational_unit().map(|u| u.as_str().unwrap()).collect();
        assert_eq!(units, [unit]);
        assert!(!cert.is_ca());
        let usage = cert.key_usage().unwrap().unwrap().value;
        assert!(usage.digital_signature() && !usage.key_cert_sign() && !usage.crl_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth, "{unit}");
        assert_eq!(eku.server_auth, serves, "{unit}");
        assert_eq!(cert.raw_serial().len(), SERIAL_LEN, "{unit}");
        let identity = PeerIdentity::from_der(issued.certificate_der(), &IdentityRules::default());
        assert_eq!(identity.unwrap().role(), Some(&role));
        assert!(issued.private_key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
    }
}

#[test]
fn issued_serials_differ() {
    let temp = tempfile::tempdir().unwrap();
    let ca = new_ca(temp.path());
    let serials: std::collections::HashSet<Vec<u8>> = (0..20)
        .map(|_| {
            let issued = ca.issue(&request(Role::Sre, "sre")).unwrap();
            let (_, cert) = X509Certificate::from_der(issued.certificate_der()).unwrap();
            cert.raw_serial().to_vec()
        })
        .collect();
    assert_eq!(serials.len(), 20);
}

#[test]
fn sans_validity_and_spiffe_id_are_written() {
    let temp = tempfile::tempdir().unwrap();
    let ca = new_ca(temp.path());
    let uri = "spiffe://kiseki.test/tenant/acme/project/p/workload/w";
    let mut request = request(acme(), "w");
    request.spiffe_id = Some(SpiffeId::parse(uri).unwrap());
    request.subject_alt_names = vec![
        SubjectAltName::parse("node1.example.com").unwrap(),
        SubjectAltName::parse("10.0.0.1").unwrap(),
    ];
    request.validity = Validity::days_from_now(7);
    let issued = ca.issue(&request).unwrap();
    let (_, cert) = X509Certificate::from_der(issued.certificate_der()).unwrap();
    let names = &cert.subject_alternative_name().unwrap().unwrap().value.general_names;
    assert!(names.contains(&GeneralName::DNSName("node1.example.com")));
    assert!(names.contains(&GeneralName::IPAddress(&[10, 0, 0, 1])));
    assert!(names.contains(&GeneralName::URI(uri)));
    let life_secs = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(life_secs, 7 * 86_400 + CERT_BACKDATE_SECS as i64);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth, "an SVID has both");
    let rules = IdentityRules::new(Some(TrustDomain::parse("kiseki.test").unwrap()));
    let identity = PeerIdentity::from_der(issued.certificate_der(), &rules).unwrap();
    assert!(matches!(identity.principal(), Principal::Spiffe(id) if id.as_str() == uri));
}

#[test]
fn requests_that_break_the_profile_are_refused() {
    let temp = tempfile::tempdir().unwrap();
    let ca = new_ca(temp.path());
    let admin = Role::TenantAdmin { org: OrgId::parse("acme").unwrap() };
    let spiffe = SpiffeId::parse("spiffe://kiseki.test/tenant/acme/workload/w").unwrap();
    let mut other_org = request(Role::Workload { org: OrgId::parse("zeta").unwrap() }, "w");
    other_org.spiffe_id = Some(spiffe.clone());
    let mut on_server = request(Role::Server, "node");
    on_server.spiffe_id = Some(spiffe);
    let mut backwards = request(Role::Server, "node");
    backwards.validity.not_after = backwards.validity.not_before;
    for (case, request) in [
        ("tenant admin", request(admin, "t")),
        ("SPIFFE id of another org", other_org),
        ("SPIFFE id on a server", on_server),
        ("empty CN", request(Role::Server, "")),
        ("CN of 65 characters", request(Role::Server, &"x".repeat(65))),
        ("control character in CN", request(Role::Server, "a\nb")),
        ("expires before it starts", backwards),
    ] {
        let error = ca.issue(&request).unwrap_err();
        assert!(matches!(error, PkiError::InvalidRequest { .. }), "{case}: {error}");
    }
}

#[test]
fn write_files_uses_private_modes_and_never_overwrites() {
    let temp = tempfile::tempdir().unwrap();
    let ca = new_ca(&temp.path().join("ca"));
    let issued = ca.issue(&request(Role::Server, "node1")).unwrap();
    let out = temp.path().join("out/nested");
    let (cert, key) = issued.write_files(&out, "node1").unwrap();
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&cert), 0o644);
    assert_eq!(mode(&out), 0o700);
    let again = ca.issue(&request(Role::Server, "node1")).unwrap();
    assert!(matches!(again.write_files(&out, "node1"), Err(PkiError::AlreadyExists { .. })));
    assert_eq!(fs::read_to_string(&cert).unwrap(), issued.certificate_pem());
    let key_der = read_private_key(&key).unwrap();
    assert!(matches!(*key_der, PrivateKeyDer::Pkcs8(_)));
}

#[test]
fn revoke_grows_the_crl_number_and_lists_each_serial_once() {
    let temp = tempfile::tempdir().unwrap();
    let ca = new_ca(temp.path());
    let crl_path = temp.path().join(CRL_FILE);
    let first = ca.issue(&request(Role::Server, "a")).unwrap();
    let second = ca.issue(&request(Role::Server, "b")).unwrap();
    let outcome = ca.revoke(first.certificate_der(), &crl_path).unwrap();
    assert_eq!(outcome, RevokeOutcome::Revoked { crl_number: 2, revoked_count: 1 });
    let outcome = ca.revoke(first.certificate_der(), &crl_path).unwrap();
    assert_eq!(outcome, RevokeOutcome::AlreadyRevoked { crl_number: 2 });
    let outcome = ca.revoke(second.certificate_der(), &crl_path).unwrap();
    assert_eq!(outcome, RevokeOutcome::Revoked { crl_number: 3, revoked_count: 2 });

    let bytes = fs::read(&crl_path).unwrap();
    let der = &crls_from_bytes(&bytes, &crl_path).unwrap()[0];
    let (_, crl) = CertificateRevocationList::from_der(der).unwrap();
    let listed: Vec<Vec<u8>> = crl
        .iter_revoked_certificates()
        .map(|revoked| minimal_serial(revoked.raw_serial()).to_vec())
        .collect();
    for issued in [&first, &second] {
        let (_, cert) = X509Certificate::from_der(issued.certificate_der()).unwrap();
        assert!(listed.contains(&minimal_serial(cert.raw_serial()).to_vec()));
    }
    assert_eq!(crl.crl_number().unwrap().to_bytes_be(), vec![3]);
    assert!(crl.next_update().is_some());
    assert!(
        !temp
            .path()
            .read_dir()
            .unwrap()
            .any(|entry| { entry.unwrap().file_name().to_string_lossy().contains(".tmp-") })
    );
}

#[test]
fn revoke_creates_a_missing_crl_and_refuses_foreign_material() {
    let temp = tempfile::tempdir().unwrap();
    let ca = new_ca(&temp.path().join("ca"));
    let other = new_ca(&temp.path().join("other"));
    let crl_path = temp.path().join("fresh.pem");
    let leaf = ca.issue(&request(Role::Sre, "s")).unwrap();
    let outcome = ca.revoke(leaf.certificate_der(), &crl_path).unwrap();
    assert_eq!(outcome, RevokeOutcome::Revoked { crl_number: 1, revoked_count: 1 });

    let foreign_leaf = other.issue(&request(Role::Sre, "s")).unwrap();
    let error = ca.revoke(foreign_leaf.certificate_der(), &crl_path).unwrap_err();
    assert!(matches!(error, PkiError::NotIssuedByCa), "{error}");

    let foreign_crl = temp.path().join("other").join(CRL_FILE);
    let error = ca.revoke(leaf.certificate_der(), &foreign_crl).unwrap_err();
    assert!(matches!(error, PkiError::CrlNotSignedByCa), "{error}");

    let garbage = temp.path().join("garbage.pem");
    fs::write(&garbage, b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n").unwrap();
    let error = ca.revoke(leaf.certificate_der(), &garbage).unwrap_err();
    assert!(matches!(error, PkiError::Malformed { .. }), "{error}");
    let error = ca.revoke(ca.certificate_der(), &crl_path).unwrap_err();
    assert!(matches!(error, PkiError::InvalidRequest { .. }), "{error}");
    let error = ca.revoke(b"not a certificate", &crl_path).unwrap_err();
    assert!(matches!(error, PkiError::NotIssuedByCa), "{error}");
}

#[test]
fn certificates_read_from_pem_or_der() {
    let temp = tempfile::tempdir().unwrap();
    let ca = new_ca(temp.path());
    let pem = temp.path().join(CA_CERT_FILE);
    assert_eq!(read_certificates(&pem).unwrap(), vec![ca.certificate_der().clone()]);
    let der = temp.path().join("ca.der");
    fs::write(&der, ca.certificate_der()).unwrap();
    assert_eq!(read_certificates(&der).unwrap(), vec![ca.certificate_der().clone()]);
    let empty = temp.path().join("empty");
    fs::write(&empty, b"hello").unwrap();
    assert!(matches!(read_certificates(&empty), Err(PkiError::Malformed { .. })));
    let missing = read_certificates(&temp.path().join("missing")).unwrap_err();
    assert!(matches!(missing, PkiError::Io { .. }));
    assert!(missing.to_string().contains("missing"), "names the path: {missing}");
}

#[test]
fn subject_alt_names_parse() {
    assert_eq!(
        SubjectAltName::parse("10.0.0.1").unwrap(),
        SubjectAltName::Ip([10, 0, 0, 1].into())
    );
    assert!(matches!(SubjectAltName::parse("::1").unwrap(), SubjectAltName::Ip(_)));
    for dns in ["node1", "node1.example.com", "*.example.com", "a-b.c"] {
        assert_eq!(SubjectAltName::parse(dns).unwrap(), SubjectAltName::Dns(dns.to_owned()));
    }
    for bad in ["", "a..b", "-a.b", "a_b", "a b", "a/b", "*", "x.*.y", &"a".repeat(64)] {
        assert!(SubjectAltName::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn file_stems_and_days() {
    assert_eq!(file_stem("node1.example.com"), "node1.example.com");
    assert_eq!(file_stem("../etc/passwd"), "_._etc_passwd");
    assert_eq!(file_stem("workload 1"), "workload_1");
    assert_eq!(file_stem(".hidden"), "_hidden");
    assert_eq!(check_leaf_days(1).unwrap(), 1);
    assert_eq!(check_leaf_days(LEAF_VALIDITY_MAX_DAYS).unwrap(), LEAF_VALIDITY_MAX_DAYS);
    assert!(check_leaf_days(0).is_err());
    assert!(check_leaf_days(LEAF_VALIDITY_MAX_DAYS + 1).is_err());
}

// Certificates for CSRs (admission).

/// A CSR made by `key` that asks for everything a requester should not get: another name,
/// the admin OU, a SAN, CA powers.
fn greedy_csr(key: &KeyPair) -> String {
    let mut params = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "root");
    params.distinguished_name.push(DnType::OrganizationalUnitName, ou::ADMIN);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn csr_der(pem: &str) -> Vec<u8> {
    CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap().as_ref().to_vec()
}

fn csr_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE REQUEST", der)
}

fn refused_reason(result: Result<SignedCertificate, PkiError>) -> String {
    match result {
        Err(PkiError::InvalidRequest { reason }) => reason,
        other => panic!("expected a refused request, got {other:?}"),
    }
}

#[test]
fn a_csr_gives_its_key_and_nothing_else() {
    let temp = tempfile::tempdir().unwrap();
    let ca = new_ca(temp.path());
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut request = request(Role::Server, "node1");
    request.subject_alt_names = vec![SubjectAltName::parse("node1").unwrap()];
    let signed = ca.issue_for_csr(&request, &greedy_csr(&key)).unwrap();
    let (_, cert) = X509Certificate::from_der(signed.certificate_der()).unwrap();
    assert_eq!(cert.public_key().raw, key.subject_public_key_info().as_slice());
    let names: Vec<_> = cert.subject().iter_common_name().map(|cn| cn.as_str().unwrap()).collect();
    assert_eq!(names, ["node1"]);
    let units: Vec<_> =
        cert.subject().iter_organizational_unit().map(|u| u.as_str().unwrap()).collect();
    assert_eq!(units, [ou::SERVER]);
    assert!(!cert.is_ca());
    let sans = cert.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(sans.general_names, [GeneralName::DNSName("node1")]);
    let identity = PeerIdentity::from_der(signed.certificate_der(), &IdentityRules::default());
    assert_eq!(identity.unwrap().role(), Some(&Role::Server));
    let (_, ca_cert) = X509Certificate::from_der(ca.certificate_der()).unwrap();
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    assert!(signed.certificate_pem().starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
fn a_csr_whose_signature_does_not_verify_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let ca = new_ca(temp.path());
    let request = request(Role::Server, "node1");
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let good = csr_der(&greedy_csr(&key));
    assert!(ca.issue_for_csr(&request, &csr_pem(&good)).is_ok());

    // A flipped bit in the signature.
    let mut forged = good.clone();
    *forged.last_mut().unwrap() ^= 0x01;
    let reason = refused_reason(ca.issue_for_csr(&request, &csr_pem(&forged)));
    assert!(reason.contains("signature"), "{reason}");

    // Someone else's public key under this key's signature: no proof of possession.
    let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mine = key.subject_public_key_info();
    let theirs = other.subject_public_key_info();
    assert_eq!(mine.len(), theirs.len());
    let at = good.windows(mine.len()).position(|window| window == mine.as_slice()).unwrap();
    let mut swapped = good.clone();
    swapped[at..at + mine.len()].copy_from_slice(&theirs);
    let reason = refused_reason(ca.issue_for_csr(&request, &csr_pem(&swapped)));
    assert!(reason.contains("signature"), "{reason}");
}

#[test]
fn malformed_or_non_p256_csrs_are_refused() {
    let temp = tempfile::tempdir().unwrap();
    let ca = new_ca(temp.path());
    let request = request(Role::Server, "node1");
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    for key in [p384, ed25519] {
        let reason = refused_reason(ca.issue_for_csr(&request, &greedy_csr(&key)));
        assert!(reason.contains("P-256"), "{reason}");
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let good = csr_der(&greedy_csr(&key));
    let mut trailing = good.clone();
    trailing.push(0);
    let cert_pem = ca.certificate_pem();
    let huge = format!("{}\n{}", "x".repeat(CSR_PEM_MAX_BYTES), csr_pem(&good));
    for bad in [String::new(), cert_pem, csr_pem(&good[..good.len() - 3]), csr_pem(&trailing), huge]
    {
        assert!(
            matches!(ca.issue_for_csr(&request, &bad), Err(PkiError::InvalidRequest { .. })),
            "{bad:.60}"
        );
    }
    // The profile rules still hold: a tenant admin is never a certificate.
    let admin =
        IssueRequest { role: Role::TenantAdmin { org: OrgId::parse("a").unwrap() }, ..request };
    assert!(ca.issue_for_csr(&admin, &csr_pem(&good)).is_err());
}

#[test]
fn a_certificate_request_completes_only_with_its_own_key() {
    let temp = tempfile::tempdir().unwrap();
    let ca = new_ca(temp.path());
    let request = request(Role::CertGranting, "node1");
    let mine = CertificateRequest::generate("node1").unwrap();
    let theirs = CertificateRequest::generate("node1").unwrap();
    assert!(!format!("{mine:?}").contains("PRIVATE"));
    let signed = ca.issue_for_csr(&request, theirs.csr_pem()).unwrap();
    assert!(matches!(
        mine.complete(signed.certificate_pem()),
        Err(PkiError::KeyDoesNotMatchCertificate { .. })
    ));
    let mine = CertificateRequest::generate("node1").unwrap();
    let signed = ca.issue_for_csr(&request, mine.csr_pem()).unwrap();
    let issued = mine.complete(signed.certificate_pem()).unwrap();
    assert_eq!(issued.certificate_der(), signed.certificate_der());
    assert!(issued.private_key_pem().contains("PRIVATE KEY"));
    let (cert_path, key_path) = issued.write_files(&temp.path().join("node"), "cgc").unwrap();
    assert_eq!(mode(&key_path), 0o600);
    let identity =
        PeerIdentity::from_der(&read_certificates(&cert_path).unwrap()[0], &Default::default());
    assert_eq!(identity.unwrap().role(), Some(&Role::CertGranting));
}
