//! Who a peer is, read from its certificate after the TLS stack has verified the chain.
//!
//! A certificate names its holder in one of three ways, tried in this order:
//! 1. a SPIFFE id in its one URI SAN, `spiffe://<trust-domain>/tenant/{org}/[project/{p}/]
//!    workload/{w}`, checked against the configured trust domain (never a built-in one);
//!    it gives the role `Workload { org }`;
//! 2. an OU of the cluster CA's hierarchy (`kiseki-server`, `kiseki-admin`, `tenant-{org}`,
//!    ...), read with [`Role::from_ou`];
//! 3. otherwise a UUID v5 of the certificate's SHA-256 fingerprint: a stable identity with
//!    no role, so every authorization check denies it, yet it is never anonymous.
//!
//! Every peer also has a KES-style identity: SHA-256 of its SubjectPublicKeyInfo, printed
//! as 64 lowercase hex digits; the key manager binds its policies to that.
//!
//! Invariants:
//! - a leaf that is a CA, or whose KeyUsage (when present) lacks digitalSignature or holds
//!   keyCertSign or cRLSign, is refused, whatever it names;
//! - a certificate with more than one URI SAN is refused; one with a `spiffe:` URI SAN
//!   follows every X.509-SVID rule (KeyUsage present, EKU if present has both serverAuth
//!   and clientAuth, id at most 2048 bytes, trust domain at most 255) or is refused;
//! - an OU and a SPIFFE id that disagree, or two OUs naming different roles, are refused
//!   rather than resolved by a precedence rule;
//! - parsing never panics on any input (the fuzz target `identity_parse` checks it).

use std::fmt;

use aws_lc_rs::digest;
use uuid::Uuid;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::constants::{SPIFFE_ID_MAX_BYTES, TRUST_DOMAIN_MAX_BYTES};
use crate::pki_error::{IdentityError, SpiffeIdError};
use crate::role::{OrgId, Role};

/// The namespace of fingerprint identities (UUID v5 over a certificate's SHA-256). A fixed,
/// randomly drawn value: changing it would change every fingerprint identity.
pub const FINGERPRINT_NAMESPACE: Uuid = Uuid::from_u128(0x6b69_7365_6b69_4d8f_9c1e_2a07_f3b5_d461);

/// How peer certificates are read: today, the one SPIFFE trust domain this cluster
/// accepts. Without one, a certificate carrying a SPIFFE id is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityRules {
    trust_domain: Option<TrustDomain>,
}

impl IdentityRules {
    pub fn new(trust_domain: Option<TrustDomain>) -> IdentityRules {
        IdentityRules { trust_domain }
    }

    pub fn trust_domain(&self) -> Option<&TrustDomain> {
        self.trust_domain.as_ref()
    }
}

/// A peer's identity, derived from its (already verified) leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    principal: Principal,
    role: Option<Role>,
    common_name: Option<String>,
    kes: KesIdentity,
    fingerprint_sha256: [u8; 32],
}

/// What named the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A SPIFFE id in the URI SAN.
    Spiffe(SpiffeId),
    /// An OU of the cluster CA's hierarchy; the role is [`PeerIdentity::role`].
    OrganizationalUnit,
    /// Neither: the UUID v5 of the certificate's SHA-256 fingerprint.
    Fingerprint(Uuid),
}

impl PeerIdentity {
    /// Reads the identity of the DER certificate `der` under `rules`. The chain, validity
    /// and revocation are the TLS verifier's business and are not checked here.
    pub fn from_der(der: &[u8], rules: &IdentityRules) -> Result<PeerIdentity, IdentityError> {
        let (rest, cert) = X509Certificate::from_der(der)
            .map_err(|_| IdentityError::MalformedCertificate { what: "not X.509 DER" })?;
        if !rest.is_empty() {
            return Err(IdentityError::MalformedCertificate { what: "trailing bytes" });
        }
        check_leaf(&cert)?;
        let spiffe = spiffe_id_of(&cert, rules)?;
        let ou_role = role_from_ous(&cert)?;
        let common_name = common_name_of(&cert);
        let fingerprint_sha256 = sha256(der);
        let kes = KesIdentity(sha256(cert.public_key().raw));
        let (principal, role) = match (spiffe, ou_role) {
            (Some(spiffe), ou_role) => {
                let role = Role::Workload { org: spiffe.org().clone() };
                if ou_role.is_some_and(|ou_role| ou_role != role) {
                    return Err(IdentityError::OuContradictsSpiffeId);
                }
                (Principal::Spiffe(spiffe), Some(role))
            }
            (None, Some(role)) => (Principal::OrganizationalUnit, Some(role)),
            (None, None) => (Principal::Fingerprint(fingerprint_uuid(&fingerprint_sha256)), None),
        };
        Ok(PeerIdentity { principal, role, common_name, kes, fingerprint_sha256 })
    }

    /// Reads the identity of a TLS peer from its presented chain (leaf first).
    pub fn from_chain(
        chain: Option<&[rustls_pki_types::CertificateDer<'_>]>,
        rules: &IdentityRules,
    ) -> Result<PeerIdentity, IdentityError> {
        let leaf = chain.and_then(|chain| chain.first()).ok_or(IdentityError::NoCertificate)?;
        PeerIdentity::from_der(leaf, rules)
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The peer's role; `None` for a fingerprint identity, which may do nothing.
    pub fn role(&self) -> Option<&Role> {
        self.role.as_ref()
    }

    /// The tenant the peer acts for, if any.
    pub fn org(&self) -> Option<&OrgId> {
        self.role.as_ref().and_then(Role::org)
    }

    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        match &self.principal {
            Principal::Spiffe(spiffe) => Some(spiffe),
            _ => None,
        }
    }

    /// The subject's CN (the scope file's key), if the certificate has exactly one.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// SHA-256 of the SubjectPublicKeyInfo: the key manager's identity for this peer.
    pub fn kes_identity(&self) -> &KesIdentity {
        &self.kes
    }

    /// SHA-256 of the whole DER certificate.
    pub fn fingerprint_sha256(&self) -> &[u8; 32] {
        &self.fingerprint_sha256
    }

    /// UUID v5 of the fingerprint, for every peer (the principal of those with no role).
    pub fn fingerprint_uuid(&self) -> Uuid {
        fingerprint_uuid(&self.fingerprint_sha256)
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.principal, &self.role) {
            (Principal::Spiffe(spiffe), _) => write!(f, "{spiffe}")?,
            (Principal::OrganizationalUnit, Some(role)) => write!(f, "{role}")?,
            _ => write!(f, "fingerprint:{}", self.fingerprint_uuid())?,
        }
        if let Some(common_name) = &self.common_name {
            write!(f, " cn={common_name:?}")?;
        }
        write!(f, " kes={}", self.kes)
    }
}

/// A KES-style identity: SHA-256 of a certificate's SubjectPublicKeyInfo. Displays as 64
/// lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KesIdentity([u8; 32]);

impl KesIdentity {
    /// The KES identity of a DER certificate, with no identity rule checked (for tools
    /// that show it even for a certificate a peer would be refused with).
    pub fn of_certificate(der: &[u8]) -> Option<KesIdentity> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        Some(KesIdentity(sha256(cert.public_key().raw)))
    }

    /// Parses 64 hex digits (either case).
    pub fn parse_hex(text: &str) -> Option<KesIdentity> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let high = char::from(pair[0]).to_digit(16)?;
            let low = char::from(pair[1]).to_digit(16)?;
            *byte = u8::try_from(high << 4 | low).ok()?;
        }
        Some(KesIdentity(out))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for KesIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

/// A SPIFFE trust domain: 1 to 255 bytes of `a-z 0-9 . - _`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn parse(text: &str) -> Result<TrustDomain, SpiffeIdError> {
        if text.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        if text.len() > TRUST_DOMAIN_MAX_BYTES {
            return Err(SpiffeIdError::TrustDomainTooLong {
                len_bytes: text.len(),
                max_bytes: TRUST_DOMAIN_MAX_BYTES,
            });
        }
        let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b);
        if !text.bytes().all(allowed) {
            return Err(SpiffeIdError::TrustDomainCharacter);
        }
        Ok(TrustDomain(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SPIFFE id in Kiseki's layout:
/// `spiffe://<trust-domain>/tenant/{org}/[project/{p}/]workload/{w}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    uri: String,
    trust_domain: TrustDomain,
    org: OrgId,
    project: Option<String>,
    workload: String,
}

impl SpiffeId {
    const SCHEME: &'static str = "spiffe://";

    /// Parses `uri` by the SPIFFE-ID standard, then by Kiseki's path layout. The trust
    /// domain is not compared with anything here; [`PeerIdentity::from_der`] does that.
    pub fn parse(uri: &str) -> Result<SpiffeId, SpiffeIdError> {
        if uri.len() > SPIFFE_ID_MAX_BYTES {
            return Err(SpiffeIdError::TooLong {
                len_bytes: uri.len(),
                max_bytes: SPIFFE_ID_MAX_BYTES,
            });
        }
        let rest = uri.strip_prefix(Self::SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        if rest.contains(['?', '#']) {
            return Err(SpiffeIdError::QueryOrFragment);
        }
        let (domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let trust_domain = TrustDomain::parse(domain)?;
        let segments = path_segments(path)?;
        let (org, project, workload) = match segments.as_slice() {
            ["tenant", org, "workload", workload] => (*org, None, *workload),
            ["tenant", org, "project", project, "workload", workload] => {
                (*org, Some(*project), *workload)
            }
            _ => return Err(SpiffeIdError::NotTenantPath),
        };
        Ok(SpiffeId {
            uri: uri.to_owned(),
            trust_domain,
            org: OrgId::parse(org).map_err(SpiffeIdError::Org)?,
            project: project.map(str::to_owned),
            workload: workload.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn org(&self) -> &OrgId {
        &self.org
    }

    pub fn project(&self) -> Option<&str> {
        self.project.as_deref()
    }

    pub fn workload(&self) -> &str {
        &self.workload
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

/// Splits a SPIFFE path (`""` or `/a/b`) into its segments, checking each by the standard.
fn path_segments(path: &str) -> Result<Vec<&str>, SpiffeIdError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    // `path` starts with '/' (it was split off at the first one); the first piece is empty.
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for segment in &segments {
        if segment.is_empty() {
            return Err(SpiffeIdError::EmptySegment);
        }
        if *segment == "." || *segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b".-_".contains(&b);
        if !segment.bytes().all(allowed) {
            return Err(SpiffeIdError::SegmentCharacter);
        }
    }
    Ok(segments)
}

/// The rules every peer leaf follows, SVID or not.
fn check_leaf(cert: &X509Certificate<'_>) -> Result<(), IdentityError> {
    let malformed = |what| move |_| IdentityError::MalformedCertificate { what };
    let constraints = cert.basic_constraints().map_err(malformed("basic constraints"))?;
    if constraints.is_some_and(|constraints| constraints.value.ca) {
        return Err(IdentityError::LeafIsCa);
    }
    if let Some(usage) = cert.key_usage().map_err(malformed("key usage"))? {
        let usage = usage.value;
        if !usage.digital_signature() {
            return Err(IdentityError::KeyUsage { reason: "lacks digitalSignature" });
        }
        if usage.key_cert_sign() {
            return Err(IdentityError::KeyUsage { reason: "has keyCertSign" });
        }
        if usage.crl_sign() {
            return Err(IdentityError::KeyUsage { reason: "has cRLSign" });
        }
    }
    Ok(())
}

/// The SPIFFE id of an X.509-SVID, checked against every SVID rule; `None` for a
/// certificate without a `spiffe:` URI SAN.
fn spiffe_id_of(
    cert: &X509Certificate<'_>,
    rules: &IdentityRules,
) -> Result<Option<SpiffeId>, IdentityError> {
    let malformed = |what| move |_| IdentityError::MalformedCertificate { what };
    let names = cert.subject_alternative_name().map_err(malformed("subject alt name"))?;
    let uris: Vec<&str> = names
        .iter()
        .flat_map(|names| names.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    if uris.len() > 1 {
        return Err(IdentityError::TooManyUriSans { count: uris.len() });
    }
    let Some(uri) = uris.first() else { return Ok(None) };
    // Any spelling of the scheme makes it an SVID claim; `SpiffeId::parse` then insists
    // on the lowercase form, so `SPIFFE://...` is refused rather than ignored.
    let is_spiffe = uri.get(..7).is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe:"));
    if !is_spiffe {
        return Ok(None);
    }
    let spiffe = SpiffeId::parse(uri)?;
    let expected = rules.trust_domain.as_ref().ok_or(IdentityError::NoTrustDomainConfigured)?;
    if spiffe.trust_domain() != expected {
        return Err(IdentityError::WrongTrustDomain {
            found: spiffe.trust_domain().to_string(),
            expected: expected.to_string(),
        });
    }
    // The KeyUsage bits were checked by `check_leaf`; an SVID must also have the extension.
    if cert.key_usage().map_err(malformed("key usage"))?.is_none() {
        return Err(IdentityError::SvidWithoutKeyUsage);
    }
    let usage = cert.extended_key_usage().map_err(malformed("extended key usage"))?;
    if usage.is_some_and(|usage| !(usage.value.server_auth && usage.value.client_auth)) {
        return Err(IdentityError::SvidExtendedKeyUsage);
    }
    Ok(Some(spiffe))
}

/// The role the subject's OUs name: `None` if none names one, an error if two name
/// different roles. OUs the hierarchy does not know are ignored.
fn role_from_ous(cert: &X509Certificate<'_>) -> Result<Option<Role>, IdentityError> {
    let mut found: Option<Role> = None;
    for unit in cert.subject().iter_organizational_unit() {
        let Ok(text) = unit.as_str() else { continue };
        let Some(role) = Role::from_ou(text) else { continue };
        match &found {
            Some(previous) if *previous != role => return Err(IdentityError::ConflictingOus),
            _ => found = Some(role),
        }
    }
    Ok(found)
}

/// The subject's CN when there is exactly one readable CN.
fn common_name_of(cert: &X509Certificate<'_>) -> Option<String> {
    let mut names = cert.subject().iter_common_name();
    let (Some(first), None) = (names.next(), names.next()) else { return None };
    first.as_str().ok().map(str::to_owned)
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = digest::digest(&digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

pub(crate) fn fingerprint_uuid(fingerprint_sha256: &[u8; 32]) -> Uuid {
    Uuid::new_v5(&FINGERPRINT_NAMESPACE, fingerprint_sha256)
}

#[cfg(test)]
mod tests;
