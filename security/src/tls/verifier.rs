//! The certificate verifier behind every [`super::TlsContext`] configuration, for both
//! directions: chain and CRL checks by rustls' WebPKI verifiers (rebuilt on each CRL
//! change and swapped in under a lock held only to clone an `Arc`), X.509 v1 client leaves
//! by [`verify_v1_leaf`], then the identity rules of [`PeerIdentity::from_der`].
//!
//! Invariants: a CRL enters the verifier only after it parsed and its signature verified
//! against a configured CA; the CRL in force is replaced whole or not at all; every
//! rejection is logged with the peer's fingerprint identity (never with key material).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    CryptoProvider, verify_tls12_signature, verify_tls13_signature,
    verify_tls13_signature_with_raw_key,
};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::SigningKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::x509::X509Version;

use super::CrlReload;
use crate::constants::CRL_FILE_MAX_BYTES;
use crate::identity::{IdentityRules, PeerIdentity, fingerprint_uuid, sha256};
use crate::pki::{crls_from_bytes, minimal_serial, read_bounded};
use crate::pki_error::PkiError;

/// Verifies peers in both directions; shared by every configuration of one context.
pub(super) struct PeerVerifier {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    anchors: Vec<CertificateDer<'static>>,
    root_hints: Vec<DistinguishedName>,
    rules: IdentityRules,
    crl_path: Option<PathBuf>,
    active: RwLock<Arc<Active>>,
}

/// The verifiers built with the CRL in force.
struct Active {
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
    crls: Option<CrlSet>,
}

/// Verified CRLs: their DER for WebPKI, and the revoked serials by issuer for v1 leaves.
struct CrlSet {
    ders: Vec<CertificateRevocationListDer<'static>>,
    revoked_by_issuer: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
    file_sha256: [u8; 32],
}

impl PeerVerifier {
    /// Builds the verifier; a configured CRL that cannot be used is an error here.
    pub(super) fn new(
        provider: Arc<CryptoProvider>,
        roots: Arc<RootCertStore>,
        anchors: Vec<CertificateDer<'static>>,
        rules: IdentityRules,
        crl_path: Option<PathBuf>,
    ) -> Result<PeerVerifier, PkiError> {
        let crls = match &crl_path {
            None => None,
            Some(path) => Some(CrlSet::read(path, &anchors)?),
        };
        let active = build_active(&provider, &roots, crls)?;
        Ok(PeerVerifier {
            root_hints: roots.subjects(),
            provider,
            roots,
            anchors,
            rules,
            crl_path,
            active: RwLock::new(Arc::new(active)),
        })
    }

    pub(super) fn rules(&self) -> &IdentityRules {
        &self.rules
    }

    /// Re-reads the CRL file and swaps the verifiers if its bytes changed.
    pub(super) fn reload(&self) -> Result<CrlReload, PkiError> {
        let Some(path) = &self.crl_path else { return Ok(CrlReload::NotConfigured) };
        let result = self.try_reload(path);
        match &result {
            Ok(CrlReload::Swapped { revoked_count }) => {
                tracing::info!(path = %path.display(), revoked_count, "CRL reloaded");
            }
            Ok(_) => {}
            Err(error) => tracing::error!(
                path = %path.display(),
                %error,
                "CRL reload failed; the last good CRL stays in force"
            ),
        }
        result
    }

    fn try_reload(&self, path: &Path) -> Result<CrlReload, PkiError> {
        let bytes = read_bounded(path, CRL_FILE_MAX_BYTES)?;
        let file_sha256 = sha256(&bytes);
        let current = self.active();
        if current.crls.as_ref().is_some_and(|crls| crls.file_sha256 == file_sha256) {
            return Ok(CrlReload::Unchanged);
        }
        let crls = CrlSet::parse(&bytes, path, &self.anchors)?;
        let revoked_count = crls.revoked_count();
        let active = build_active(&self.provider, &self.roots, Some(crls))?;
        *self.active.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(active);
        Ok(CrlReload::Swapped { revoked_count })
    }

    fn active(&self) -> Arc<Active> {
        // The lock guards only an `Arc` swap; a panic elsewhere cannot leave it half-set.
        Arc::clone(&self.active.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// The identity rules, turned into a handshake error.
    fn check_identity(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        PeerIdentity::from_der(end_entity, &self.rules)
            .map(|_| ())
            .map_err(|error| CertificateError::Other(OtherError(Arc::new(error))).into())
    }

    fn signature_algorithms(&self) -> &rustls::crypto::WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

impl std::fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerVerifier")
            .field("anchors", &self.anchors.len())
            .field("rules", &self.rules)
            .field("crl_path", &self.crl_path)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.root_hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let active = self.active();
        let chain = if is_x509_v1(end_entity) {
            verify_v1_leaf(end_entity, intermediates, &self.anchors, active.crls.as_ref(), now)
        } else {
            active.client.verify_client_cert(end_entity, intermediates, now).map(|_| ())
        };
        chain
            .and_then(|()| self.check_identity(end_entity))
            .inspect_err(|error| log_rejection("client", end_entity, error))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, self.signature_algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss, self.signature_algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signature_algorithms().supported_schemes()
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let active = self.active();
        active
            .server
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .and_then(|_| self.check_identity(end_entity))
            .inspect_err(|error| log_rejection("server", end_entity, error))?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, self.signature_algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss, self.signature_algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signature_algorithms().supported_schemes()
    }
}

/// The admission listener's client verifier: a client may present no certificate; one
/// that is presented goes through every check of the [`PeerVerifier`] it wraps.
#[derive(Debug)]
pub(super) struct OptionalClientCert {
    inner: Arc<PeerVerifier>,
}

impl OptionalClientCert {
    pub(super) fn new(inner: Arc<PeerVerifier>) -> OptionalClientCert {
        OptionalClientCert { inner }
    }
}

impl ClientCertVerifier for OptionalClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        ClientCertVerifier::root_hint_subjects(self.inner.as_ref())
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ClientCertVerifier::verify_tls12_signature(self.inner.as_ref(), message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ClientCertVerifier::verify_tls13_signature(self.inner.as_ref(), message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ClientCertVerifier::supported_verify_schemes(self.inner.as_ref())
    }
}

impl CrlSet {
    fn read(path: &Path, anchors: &[CertificateDer<'static>]) -> Result<CrlSet, PkiError> {
        CrlSet::parse(&read_bounded(path, CRL_FILE_MAX_BYTES)?, path, anchors)
    }

    /// Parses every CRL in `bytes` and checks each is signed by one of `anchors`.
    fn parse(
        bytes: &[u8],
        path: &Path,
        anchors: &[CertificateDer<'static>],
    ) -> Result<CrlSet, PkiError> {
        let ders = crls_from_bytes(bytes, path)?;
        let mut revoked_by_issuer: HashMap<Vec<u8>, HashSet<Vec<u8>>> = HashMap::new();
        for der in &ders {
            let (rest, crl) = CertificateRevocationList::from_der(der)
                .map_err(|_| PkiError::Malformed { path: path.to_owned(), what: "bad CRL" })?;
            if !rest.is_empty() {
                return Err(PkiError::Malformed { path: path.to_owned(), what: "bad CRL" });
            }
            let signed_by_anchor = anchors.iter().any(|anchor| {
                X509Certificate::from_der(anchor).is_ok_and(|(_, ca)| {
                    ca.subject().as_raw() == crl.issuer().as_raw()
                        && crl.verify_signature(ca.public_key()).is_ok()
                })
            });
            if !signed_by_anchor {
                return Err(PkiError::CrlNotSignedByCa);
            }
            let serials = revoked_by_issuer.entry(crl.issuer().as_raw().to_vec()).or_default();
            for revoked in crl.iter_revoked_certificates() {
                serials.insert(minimal_serial(revoked.raw_serial()).to_vec());
            }
        }
        Ok(CrlSet { ders, revoked_by_issuer, file_sha256: sha256(bytes) })
    }

    fn revoked_count(&self) -> usize {
        self.revoked_by_issuer.values().map(HashSet::len).sum()
    }
}

fn build_active(
    provider: &Arc<CryptoProvider>,
    roots: &Arc<RootCertStore>,
    crls: Option<CrlSet>,
) -> Result<Active, PkiError> {
    let ders = crls.as_ref().map(|crls| crls.ders.clone()).unwrap_or_default();
    let builder_error =
        |error: rustls::server::VerifierBuilderError| PkiError::Tls { detail: error.to_string() };
    let client =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), Arc::clone(provider))
            .with_crls(ders.clone())
            .build()
            .map_err(builder_error)?;
    let server =
        WebPkiServerVerifier::builder_with_provider(Arc::clone(roots), Arc::clone(provider))
            .with_crls(ders)
            .build()
            .map_err(builder_error)?;
    Ok(Active { client, server, crls })
}

/// Whether the TLS stack must be told the key and certificate disagree: compares the
/// signing key's SubjectPublicKeyInfo with the certificate's (works for v1 certificates,
/// which rustls' own check cannot parse).
pub(super) fn key_matches_certificate(key: &dyn SigningKey, cert: &CertificateDer<'_>) -> bool {
    let Some(key_spki) = key.public_key() else { return false };
    X509Certificate::from_der(cert)
        .is_ok_and(|(_, cert)| key_spki.as_ref() == cert.public_key().raw)
}

fn is_x509_v1(der: &[u8]) -> bool {
    X509Certificate::from_der(der).is_ok_and(|(_, cert)| cert.version() == X509Version::V1)
}

/// Verifies an X.509 v1 leaf: signed directly by one of `anchors` with a SHA-2 or Ed25519
/// algorithm, within its validity at `now`, and not revoked by the CRLs in force (if any
/// are configured, one of them must cover its issuer).
fn verify_v1_leaf(
    leaf_der: &[u8],
    intermediates: &[CertificateDer<'_>],
    anchors: &[CertificateDer<'static>],
    crls: Option<&CrlSet>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let (rest, leaf) =
        X509Certificate::from_der(leaf_der).map_err(|_| CertificateError::BadEncoding)?;
    if !rest.is_empty() || leaf.signature_algorithm != leaf.tbs_certificate.signature {
        return Err(CertificateError::BadEncoding.into());
    }
    // A v1 leaf is accepted only straight under a trust anchor: the chain is the leaf.
    if !intermediates.is_empty() {
        return Err(CertificateError::UnknownIssuer.into());
    }
    let algorithm = &leaf.signature_algorithm.algorithm;
    let allowed = [
        OID_SIG_ECDSA_WITH_SHA256,
        OID_SIG_ECDSA_WITH_SHA384,
        OID_SIG_ED25519,
        OID_PKCS1_SHA256WITHRSA,
        OID_PKCS1_SHA384WITHRSA,
        OID_PKCS1_SHA512WITHRSA,
    ];
    if !allowed.contains(algorithm) {
        return Err(CertificateError::BadSignature.into());
    }
    let mut named_issuer = false;
    let mut signed = false;
    for anchor in anchors {
        let Ok((_, ca)) = X509Certificate::from_der(anchor) else { continue };
        if ca.subject().as_raw() != leaf.issuer().as_raw() {
            continue;
        }
        named_issuer = true;
        if leaf.verify_signature(Some(ca.public_key())).is_ok() {
            signed = true;
            break;
        }
    }
    match (named_issuer, signed) {
        (false, _) => return Err(CertificateError::UnknownIssuer.into()),
        (true, false) => return Err(CertificateError::BadSignature.into()),
        (true, true) => {}
    }
    let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if now_secs < leaf.validity().not_before.timestamp() {
        return Err(CertificateError::NotValidYet.into());
    }
    if now_secs > leaf.validity().not_after.timestamp() {
        return Err(CertificateError::Expired.into());
    }
    if let Some(crls) = crls {
        let serials = crls
            .revoked_by_issuer
            .get(leaf.issuer().as_raw())
            .ok_or(CertificateError::UnknownRevocationStatus)?;
        if serials.contains(minimal_serial(leaf.raw_serial())) {
            return Err(CertificateError::Revoked.into());
        }
    }
    Ok(())
}

/// TLS 1.3 CertificateVerify: by WebPKI, or by the raw key of a v1 certificate.
fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &rustls::crypto::WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if !is_x509_v1(cert) {
        return verify_tls13_signature(message, cert, dss, algorithms);
    }
    let (_, parsed) = X509Certificate::from_der(cert).map_err(|_| CertificateError::BadEncoding)?;
    let spki = SubjectPublicKeyInfoDer::from(parsed.public_key().raw);
    verify_tls13_signature_with_raw_key(message, &spki, dss, algorithms)
}

fn log_rejection(side: &'static str, end_entity: &CertificateDer<'_>, error: &rustls::Error) {
    let fingerprint = fingerprint_uuid(&sha256(end_entity.as_ref()));
    tracing::warn!(side, %fingerprint, %error, "peer certificate rejected");
}
