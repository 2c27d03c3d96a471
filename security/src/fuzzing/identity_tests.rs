//! The identity fuzz target's checks on stable Rust: certificates mutated from a corpus of
//! valid and invalid peers, and SPIFFE ids built from pieces and compared with a second
//! reading of the grammar written here independently of the parser. A failure prints its
//! case number and seed; `KISEKI_FUZZ_SEED=<seed>` replays another sequence.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};

use super::{FUZZ_TRUST_DOMAIN, parse_identity};
use crate::identity::SpiffeId;
use crate::pki_error::IdentityError;

const CERT_CASES: u64 = 4_000;
const SPIFFE_CASES: u64 = 20_000;
const DEFAULT_SEED: u64 = 0x4b53_4944_0000_0001;

#[test]
fn mutated_certificates_never_panic_and_keep_the_identity_properties() {
    let seed = seed();
    let corpus = corpus();
    let mut rng = SplitMix64(seed);
    let (mut accepted, mut rejected) = (0u32, 0u32);
    for case in 0..CERT_CASES {
        let original = &corpus[rng.below(corpus.len())];
        let mut input = original.clone();
        let mutation = rng.below(4);
        match mutation {
            0 => {
                let bit = rng.below(input.len() * 8);
                input[bit / 8] ^= 1 << (bit % 8);
            }
            1 => input.truncate(rng.below(input.len())),
            2 => {
                let at = rng.below(input.len());
                input[at] = rng.next() as u8;
            }
            _ => {
                let other = &corpus[rng.below(corpus.len())];
                let at = rng.below(input.len().min(other.len()));
                input.truncate(at);
                input.extend_from_slice(&other[at..]);
            }
        }
        let context = format!("case {case}, seed {seed}, mutation {mutation}");
        match std::panic::catch_unwind(|| parse_identity(&input)) {
            Ok(Ok(_)) => accepted += 1,
            Ok(Err(_)) => rejected += 1,
            Err(_) => panic!("{context}: a property broke (the message is above)"),
        }
        if mutation == 1 {
            assert!(matches!(
                parse_identity(&input),
                Err(IdentityError::MalformedCertificate { .. })
            ));
        }
    }
    eprintln!("accepted {accepted}, rejected {rejected}");
    assert!(accepted > 200 && rejected > 200, "{accepted} accepted, {rejected} rejected");
}

#[test]
fn every_corpus_certificate_gives_its_expected_verdict() {
    let corpus = corpus();
    let verdicts: Vec<bool> = corpus.iter().map(|der| parse_identity(der).is_ok()).collect();
    assert_eq!(verdicts, [true, true, true, true, false, false, false]);
}

#[test]
fn spiffe_ids_agree_with_a_second_reading_of_the_grammar() {
    let seed = seed();
    let mut rng = SplitMix64(seed);
    let (mut accepted, mut rejected) = (0u32, 0u32);
    for case in 0..SPIFFE_CASES {
        let text = spiffe_candidate(&mut rng);
        let parsed = SpiffeId::parse(&text);
        let expected = reference_accepts(&text);
        assert_eq!(parsed.is_ok(), expected, "case {case}, seed {seed}: {text:?} {parsed:?}");
        let _ = parse_identity(text.as_bytes());
        if expected {
            accepted += 1;
        } else {
            rejected += 1;
        }
    }
    assert!(accepted > 1_000 && rejected > 1_000, "{accepted} accepted, {rejected} rejected");
}

/// Writes the corpus as seeds for the fuzz target, in `fuzz/seeds/identity_parse`. Run by
/// hand: `cargo test -p kiseki-security -- --ignored write_identity_fuzz_seeds`.
#[test]
#[ignore = "writes files into fuzz/seeds"]
fn write_identity_fuzz_seeds() {
    let manifest_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = manifest_dir.join("../fuzz/seeds/identity_parse");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, der) in corpus().iter().enumerate() {
        std::fs::write(dir.join(format!("cert-{i:02}")), der).unwrap();
    }
    let ids = [
        "spiffe://kiseki.test/tenant/acme/workload/w",
        "spiffe://kiseki.test/tenant/acme/project/p/workload/w",
        "spiffe://kiseki.test/tenant/acme",
    ];
    for (i, id) in ids.iter().enumerate() {
        std::fs::write(dir.join(format!("spiffe-{i:02}")), id).unwrap();
    }
}

/// Peers of every shape: four accepted (an OU role, a tenant OU, an SVID, an unknown OU)
/// and three refused (two URI SANs, a CA, the wrong trust domain).
fn corpus() -> Vec<Vec<u8>> {
    let svid = |uri: String| {
        move |params: &mut CertificateParams| {
            params.subject_alt_names.push(SanType::URI(uri.try_into().unwrap()));
            params.extended_key_usages =
                vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        }
    };
    let ou = |unit: &'static str| {
        move |params: &mut CertificateParams| {
            params.distinguished_name.push(DnType::OrganizationalUnitName, unit);
        }
    };
    let ok_svid = format!("spiffe://{FUZZ_TRUST_DOMAIN}/tenant/acme/project/p/workload/w");
    vec![
        leaf(ou("kiseki-server")),
        leaf(ou("tenant-acme-corp")),
        leaf(svid(ok_svid.clone())),
        leaf(ou("finance")),
        leaf(|params| {
            svid(ok_svid)(params);
            params.subject_alt_names.push(SanType::URI("https://x.example/".try_into().unwrap()));
        }),
        leaf(|params| params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained)),
        leaf(svid("spiffe://evil.test/tenant/acme/workload/w".to_owned())),
    ]
}

fn leaf(configure: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "peer");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.is_ca = IsCa::ExplicitNoCa;
    configure(&mut params);
    params.self_signed(&key).unwrap().der().to_vec()
}

/// A string built from pieces near the grammar's edges.
fn spiffe_candidate(rng: &mut SplitMix64) -> String {
    const SCHEMES: [&str; 5] = ["spiffe://", "spiffe://", "spiffe://", "SPIFFE://", "spiffe:/"];
    const DOMAINS: [&str; 7] = ["kiseki.test", "a-b_c.d", "td", "TD", "a:1", "", "x@y"];
    const SEGMENTS: [&str; 16] = [
        "tenant", "tenant", "workload", "workload", "project", "acme", "org-1", "w", "W_x.y-z",
        "Acme", "-a", ".", "..", "", "a%20", "é",
    ];
    let mut text = SCHEMES[rng.below(SCHEMES.len())].to_owned();
    match rng.below(20) {
        0 => text.push_str(&"d".repeat(255 + rng.below(2))),
        _ => text.push_str(DOMAINS[rng.below(DOMAINS.len())]),
    }
    let layout = rng.below(3);
    let count = match layout {
        0 => 4,
        1 => 6,
        _ => rng.below(8),
    };
    for index in 0..count {
        text.push('/');
        let segment = match (layout, index) {
            (0 | 1, 0) if rng.below(8) > 0 => "tenant",
            (0, 2) | (1, 4) if rng.below(8) > 0 => "workload",
            (1, 2) if rng.below(8) > 0 => "project",
            (0 | 1, 1) if rng.below(4) > 0 => ["acme", "org-1", "a"][rng.below(3)],
            (0, 3) | (1, 3 | 5) if rng.below(4) > 0 => ["w", "W_x.y-z", "P"][rng.below(3)],
            _ => SEGMENTS[rng.below(SEGMENTS.len())],
        };
        text.push_str(segment);
    }
    match rng.below(30) {
        0 => text.push('/'),
        1 => text.push_str("?q"),
        2 => text.push_str("#f"),
        3 => text.push_str(&"w".repeat(2048usize.saturating_sub(text.len()) + rng.below(2))),
        _ => {}
    }
    text
}

/// The SPIFFE-ID grammar and Kiseki's layout, read a second way.
fn reference_accepts(text: &str) -> bool {
    if text.len() > 2048 {
        return false;
    }
    let Some(rest) = text.strip_prefix("spiffe://") else { return false };
    let mut parts = rest.split('/');
    let domain = parts.next().unwrap_or("");
    let domain_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
    if domain.is_empty() || domain.len() > 255 || !domain.chars().all(domain_char) {
        return false;
    }
    let segments: Vec<&str> = parts.collect();
    let segment_char = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    let segment_ok =
        |s: &&str| !s.is_empty() && *s != "." && *s != ".." && s.chars().all(segment_char);
    if !segments.iter().all(segment_ok) {
        return false;
    }
    let org_ok = |org: &str| {
        (1..=63).contains(&org.len())
            && org.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !org.starts_with('-')
            && !org.ends_with('-')
    };
    match segments.as_slice() {
        ["tenant", org, "workload", _] => org_ok(org),
        ["tenant", org, "project", _, "workload", _] => org_ok(org),
        _ => false,
    }
}

fn seed() -> u64 {
    std::env::var("KISEKI_FUZZ_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

/// A small, seedable generator: SplitMix64.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        if bound == 0 {
            return 0;
        }
        (self.next() % bound as u64) as usize
    }
}
