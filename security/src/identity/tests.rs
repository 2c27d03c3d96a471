//! Identity rules on certificates made here with rcgen (self-signed: the chain is the TLS
//! verifier's business, not this module's), and the SPIFFE id grammar.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};

use super::*;

const DOMAIN: &str = "kiseki.example.com";
const SVID: &str = "spiffe://kiseki.example.com/tenant/acme/workload/train-1";

fn rules() -> IdentityRules {
    IdentityRules::new(Some(TrustDomain::parse(DOMAIN).unwrap()))
}

/// A self-signed leaf with CN `peer`, digitalSignature, CA=false, then `configure`.
fn leaf(configure: impl FnOnce(&mut CertificateParams)) -> (Vec<u8>, KeyPair) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "peer");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.is_ca = IsCa::ExplicitNoCa;
    configure(&mut params);
    let der = params.self_signed(&key).unwrap().der().to_vec();
    (der, key)
}

fn with_ou(unit: &'static str) -> impl FnOnce(&mut CertificateParams) {
    move |params| params.distinguished_name.push(DnType::OrganizationalUnitName, unit)
}

fn svid(uri: &'static str) -> impl FnOnce(&mut CertificateParams) {
    move |params| {
        params.subject_alt_names.push(SanType::URI(uri.try_into().unwrap()));
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    }
}

fn identity(der: &[u8]) -> Result<PeerIdentity, IdentityError> {
    PeerIdentity::from_der(der, &rules())
}

#[test]
fn every_ou_of_the_hierarchy_gives_its_role() {
    let acme = OrgId::parse("acme-corp").unwrap();
    let cases = [
        ("kiseki-server", Role::Server),
        ("kiseki-keyserver", Role::KeyServer),
        ("kiseki-admin", Role::ClusterAdmin),
        ("kiseki-sre", Role::Sre),
        ("kiseki-cgc", Role::CertGranting),
        ("tenant-acme-corp", Role::Workload { org: acme.clone() }),
    ];
    for (unit, role) in cases {
        let (der, _) = leaf(with_ou(unit));
        let identity = identity(&der).unwrap();
        assert_eq!(identity.role(), Some(&role), "{unit}");
        assert_eq!(identity.principal(), &Principal::OrganizationalUnit, "{unit}");
        assert_eq!(identity.common_name(), Some("peer"));
        assert_eq!(identity.spiffe_id(), None);
    }
    let (der, _) = leaf(with_ou("tenant-acme-corp"));
    assert_eq!(identity(&der).unwrap().org(), Some(&acme));
}

#[test]
fn unknown_ou_gets_a_stable_fingerprint_identity_and_no_role() {
    let (der, _) = leaf(with_ou("finance"));
    let first = identity(&der).unwrap();
    let second = identity(&der).unwrap();
    assert_eq!(first.role(), None);
    assert_eq!(first.org(), None);
    let Principal::Fingerprint(uuid) = first.principal() else { panic!("{first:?}") };
    assert_eq!(uuid.get_version_num(), 5);
    assert_eq!(*uuid, Uuid::new_v5(&FINGERPRINT_NAMESPACE, &sha256(&der)));
    assert_eq!(first, second, "the same certificate gives the same identity");
    let (other, _) = leaf(with_ou("finance"));
    assert_ne!(identity(&other).unwrap().fingerprint_uuid(), *uuid);
    assert!(first.to_string().starts_with(&format!("fingerprint:{uuid}")), "{first}");
}

#[test]
fn malformed_tenant_ou_falls_back_to_the_fingerprint() {
    let (der, _) = leaf(with_ou("tenant-ACME"));
    let identity = identity(&der).unwrap();
    assert!(matches!(identity.principal(), Principal::Fingerprint(_)));
    assert_eq!(identity.role(), None);
}

#[test]
fn kes_identity_is_sha256_of_the_public_key_info_in_lowercase_hex() {
    let (der, key) = leaf(with_ou("kiseki-server"));
    let identity = identity(&der).unwrap();
    let expected = sha256(&key.subject_public_key_info());
    assert_eq!(identity.kes_identity().as_bytes(), &expected);
    assert_eq!(KesIdentity::of_certificate(&der), Some(*identity.kes_identity()));
    assert_eq!(KesIdentity::of_certificate(b"junk"), None);
    let hex = identity.kes_identity().to_string();
    assert_eq!(hex.len(), 64);
    assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{hex}");
    assert_eq!(KesIdentity::parse_hex(&hex), Some(*identity.kes_identity()));
    assert_eq!(KesIdentity::parse_hex(&hex.to_uppercase()), Some(*identity.kes_identity()));
    assert_eq!(KesIdentity::parse_hex(&hex[1..]), None);
    assert_eq!(KesIdentity::parse_hex(&format!("g{}", &hex[1..])), None);
    // The KES identity follows the key, not the certificate: reissue with the same key.
    let params = CertificateParams::new(vec!["other.example".to_owned()]).unwrap();
    let reissued = params.self_signed(&key).unwrap();
    let again = PeerIdentity::from_der(reissued.der(), &rules()).unwrap();
    assert_eq!(again.kes_identity(), identity.kes_identity());
    assert_ne!(again.fingerprint_sha256(), identity.fingerprint_sha256());
}

#[test]
fn svid_gives_a_workload_of_its_tenant() {
    let (der, _) = leaf(svid(SVID));
    let identity = identity(&der).unwrap();
    let spiffe = identity.spiffe_id().expect("an SVID");
    assert_eq!(spiffe.as_str(), SVID);
    assert_eq!(spiffe.trust_domain().as_str(), DOMAIN);
    assert_eq!(spiffe.org().as_str(), "acme");
    assert_eq!(spiffe.project(), None);
    assert_eq!(spiffe.workload(), "train-1");
    assert_eq!(identity.role(), Some(&Role::Workload { org: OrgId::parse("acme").unwrap() }));
    assert!(identity.to_string().starts_with(SVID));
}

#[test]
fn svid_with_project_and_matching_tenant_ou() {
    const URI: &str = "spiffe://kiseki.example.com/tenant/acme/project/p7/workload/w";
    let (der, _) = leaf(|params| {
        svid(URI)(params);
        with_ou("tenant-acme")(params);
    });
    let identity = identity(&der).unwrap();
    assert_eq!(identity.spiffe_id().unwrap().project(), Some("p7"));
    assert_eq!(identity.org().unwrap().as_str(), "acme");
}

#[test]
fn svid_without_eku_is_accepted() {
    let (der, _) = leaf(|params| {
        svid(SVID)(params);
        params.extended_key_usages.clear();
    });
    assert!(identity(&der).is_ok());
}

#[test]
fn two_uri_sans_are_refused() {
    let (der, _) = leaf(|params| {
        svid(SVID)(params);
        let second = "spiffe://kiseki.example.com/tenant/acme/workload/two";
        params.subject_alt_names.push(SanType::URI(second.try_into().unwrap()));
    });
    assert_eq!(identity(&der), Err(IdentityError::TooManyUriSans { count: 2 }));
    let (der, _) = leaf(|params| {
        with_ou("kiseki-admin")(params);
        for uri in ["https://a.example/", "https://b.example/"] {
            params.subject_alt_names.push(SanType::URI(uri.try_into().unwrap()));
        }
    });
    assert_eq!(identity(&der), Err(IdentityError::TooManyUriSans { count: 2 }));
}

#[test]
fn one_non_spiffe_uri_san_is_not_an_identity() {
    let (der, _) = leaf(|params| {
        with_ou("kiseki-admin")(params);
        params.subject_alt_names.push(SanType::URI("https://a.example/".try_into().unwrap()));
    });
    assert_eq!(identity(&der).unwrap().role(), Some(&Role::ClusterAdmin));
}

#[test]
fn malformed_spiffe_ids_are_refused_not_ignored() {
    let cases: [(&'static str, SpiffeIdError); 3] = [
        ("SPIFFE://kiseki.example.com/tenant/acme/workload/w", SpiffeIdError::WrongScheme),
        ("spiffe://kiseki.example.com/tenant/acme", SpiffeIdError::NotTenantPath),
        ("spiffe://kiseki.example.com/tenant/ac%20me/workload/w", SpiffeIdError::SegmentCharacter),
    ];
    for (uri, error) in cases {
        let (der, _) = leaf(svid(uri));
        assert_eq!(identity(&der), Err(IdentityError::MalformedSpiffeId(error)), "{uri}");
    }
}

#[test]
fn wrong_or_unconfigured_trust_domain_is_refused() {
    let (der, _) = leaf(svid("spiffe://evil.example.com/tenant/acme/workload/w"));
    assert_eq!(
        identity(&der),
        Err(IdentityError::WrongTrustDomain {
            found: "evil.example.com".to_owned(),
            expected: DOMAIN.to_owned(),
        })
    );
    let (der, _) = leaf(svid(SVID));
    assert_eq!(
        PeerIdentity::from_der(&der, &IdentityRules::default()),
        Err(IdentityError::NoTrustDomainConfigured)
    );
}

#[test]
fn svid_key_usage_rules() {
    let (der, _) = leaf(|params| {
        svid(SVID)(params);
        params.key_usages.clear();
    });
    assert_eq!(identity(&der), Err(IdentityError::SvidWithoutKeyUsage));
    let (der, _) = leaf(|params| {
        svid(SVID)(params);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    });
    assert_eq!(identity(&der), Err(IdentityError::SvidExtendedKeyUsage));
    let (der, _) = leaf(|params| {
        svid(SVID)(params);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    });
    assert_eq!(identity(&der), Err(IdentityError::SvidExtendedKeyUsage));
}

#[test]
fn leaf_rules_hold_for_every_certificate() {
    type Configure = fn(&mut CertificateParams);
    let cases: [(Configure, IdentityError); 4] = [
        (
            |params| params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained),
            IdentityError::LeafIsCa,
        ),
        (
            |params| params.key_usages = vec![KeyUsagePurpose::KeyEncipherment],
            IdentityError::KeyUsage { reason: "lacks digitalSignature" },
        ),
        (
            |params| params.key_usages.push(KeyUsagePurpose::KeyCertSign),
            IdentityError::KeyUsage { reason: "has keyCertSign" },
        ),
        (
            |params| params.key_usages.push(KeyUsagePurpose::CrlSign),
            IdentityError::KeyUsage { reason: "has cRLSign" },
        ),
    ];
    for (configure, error) in cases {
        for svid_too in [false, true] {
            let (der, _) = leaf(|params| {
                with_ou("kiseki-admin")(params);
                if svid_too {
                    svid(SVID)(params);
                }
                configure(params);
            });
            assert_eq!(identity(&der), Err(error.clone()), "svid: {svid_too}");
        }
    }
}

#[test]
fn ou_that_contradicts_the_svid_is_refused() {
    for unit in ["tenant-other", "kiseki-admin", "kiseki-server"] {
        let (der, _) = leaf(|params| {
            svid(SVID)(params);
            with_ou(unit)(params);
        });
        assert_eq!(identity(&der), Err(IdentityError::OuContradictsSpiffeId), "{unit}");
    }
}

#[test]
fn malformed_der_is_refused() {
    let (der, _) = leaf(with_ou("kiseki-admin"));
    assert!(matches!(
        identity(&der[..der.len() - 1]),
        Err(IdentityError::MalformedCertificate { .. })
    ));
    let mut trailing = der.clone();
    trailing.push(0);
    assert_eq!(
        identity(&trailing),
        Err(IdentityError::MalformedCertificate { what: "trailing bytes" })
    );
    assert!(identity(b"").is_err());
    assert_eq!(PeerIdentity::from_chain(Some(&[]), &rules()), Err(IdentityError::NoCertificate));
    assert_eq!(PeerIdentity::from_chain(None, &rules()), Err(IdentityError::NoCertificate));
}

#[test]
fn spiffe_ids_in_kiseki_layout_parse() {
    let id = SpiffeId::parse("spiffe://td/tenant/a/workload/W.x_y-z").unwrap();
    assert_eq!(id.trust_domain().as_str(), "td");
    assert_eq!(id.org().as_str(), "a");
    assert_eq!(id.workload(), "W.x_y-z");
    let id = SpiffeId::parse("spiffe://a.b-c_d/tenant/org-1/project/P/workload/w").unwrap();
    assert_eq!(id.project(), Some("P"));
    assert_eq!(id.to_string(), "spiffe://a.b-c_d/tenant/org-1/project/P/workload/w");
}

#[test]
fn spiffe_id_grammar_violations() {
    use SpiffeIdError::*;
    let cases: &[(&str, SpiffeIdError)] = &[
        ("", WrongScheme),
        ("https://td/tenant/a/workload/w", WrongScheme),
        ("Spiffe://td/tenant/a/workload/w", WrongScheme),
        ("spiffe:/td/tenant/a/workload/w", WrongScheme),
        ("spiffe://", EmptyTrustDomain),
        ("spiffe:///tenant/a/workload/w", EmptyTrustDomain),
        ("spiffe://TD/tenant/a/workload/w", TrustDomainCharacter),
        ("spiffe://td:443/tenant/a/workload/w", TrustDomainCharacter),
        ("spiffe://user@td/tenant/a/workload/w", TrustDomainCharacter),
        ("spiffe://td/tenant/a/workload/w?x=1", QueryOrFragment),
        ("spiffe://td/tenant/a/workload/w#f", QueryOrFragment),
        ("spiffe://td/tenant//workload/w", EmptySegment),
        ("spiffe://td/tenant/a/workload/w/", EmptySegment),
        ("spiffe://td/", EmptySegment),
        ("spiffe://td/tenant/./workload/w", DotSegment),
        ("spiffe://td/tenant/a/workload/..", DotSegment),
        ("spiffe://td/tenant/a/workload/w%41", SegmentCharacter),
        ("spiffe://td/tenant/a/workload/w x", SegmentCharacter),
        ("spiffe://td/tenant/a/workload/wé", SegmentCharacter),
        ("spiffe://td", NotTenantPath),
        ("spiffe://td/tenant/a", NotTenantPath),
        ("spiffe://td/tenant/a/workload", NotTenantPath),
        ("spiffe://td/tenant/a/workload/w/extra", NotTenantPath),
        ("spiffe://td/tenant/a/project/p/workload", NotTenantPath),
        ("spiffe://td/org/a/workload/w", NotTenantPath),
        ("spiffe://td/tenant/a/project/p/x/workload/w", NotTenantPath),
    ];
    for (uri, error) in cases {
        assert_eq!(SpiffeId::parse(uri), Err(error.clone()), "{uri:?}");
    }
    assert!(matches!(SpiffeId::parse("spiffe://td/tenant/Acme/workload/w"), Err(Org(_))));
    assert!(matches!(SpiffeId::parse("spiffe://td/tenant/-a/workload/w"), Err(Org(_))));
}

#[test]
fn spiffe_id_length_limits() {
    let prefix = "spiffe://td/tenant/a/workload/";
    let longest = format!("{prefix}{}", "w".repeat(SPIFFE_ID_MAX_BYTES - prefix.len()));
    assert_eq!(longest.len(), 2048);
    assert!(SpiffeId::parse(&longest).is_ok());
    let too_long = format!("{longest}w");
    assert_eq!(
        SpiffeId::parse(&too_long),
        Err(SpiffeIdError::TooLong { len_bytes: 2049, max_bytes: 2048 })
    );
    let domain = "d".repeat(255);
    assert!(SpiffeId::parse(&format!("spiffe://{domain}/tenant/a/workload/w")).is_ok());
    assert_eq!(
        SpiffeId::parse(&format!("spiffe://{domain}d/tenant/a/workload/w")),
        Err(SpiffeIdError::TrustDomainTooLong { len_bytes: 256, max_bytes: 255 })
    );
    assert_eq!(TrustDomain::parse(""), Err(SpiffeIdError::EmptyTrustDomain));
}
