//! The cluster CA's tooling: create the CA, issue role certificates, revoke them in a CRL;
//! and the PEM file helpers the TLS configuration reads with.
//!
//! Admission (seed 003) adds two halves of one exchange: a node makes a key and a PKCS#10
//! request for it ([`CertificateRequest`]) and keeps the key; the CA signs the request's
//! public key into a leaf that says only what the CA's [`IssueRequest`] says
//! ([`CertificateAuthority::issue_for_csr`]); the node checks the certificate carries its key
//! ([`CertificateRequest::complete`]).
//!
//! Certificates follow the seed's hierarchy: one P-256 cluster CA (`CA=true`, path length
//! 0, keyCertSign and cRLSign) signs leaves whose OU names their role (`kiseki-server`,
//! `kiseki-keyserver`, `kiseki-admin`, `kiseki-sre`, `tenant-{org}`, and `kiseki-cgc` for
//! admission's certificate-granting certificates). A tenant leaf may carry a SPIFFE id as
//! its one URI SAN; it is then a valid X.509-SVID (digitalSignature, serverAuth and
//! clientAuth). Certificates made by the seed's openssl commands are read the same way.
//!
//! Invariants:
//! - a private key file is created new with mode 0600 (never overwritten, never widened);
//!   directories this module creates are 0700; keys pass through `Zeroizing` buffers only;
//! - `ca init` refuses to run where a CA certificate or key already exists;
//! - every issued serial is 128 random bits (top bit clear); the issuer never reuses one;
//! - a certificate signed for a CSR carries the CSR's public key and nothing else of it: the
//!   CSR's signature must verify (the requester holds the private key) and its key must be
//!   P-256; its subject, extensions and SANs are never read;
//! - a CRL is only ever replaced whole (written beside, then renamed), so a reader polling
//!   the file sees the old CRL or the new one, never half of one; its CRL number grows by
//!   one with every change, and an existing CRL is extended only if this CA signed it.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData, RevokedCertParams, SanType, SerialNumber,
    SignatureAlgorithm,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, CertificateSigningRequestDer, PrivateKeyDer,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;
use zeroize::Zeroizing;

use crate::constants::{
    CERT_BACKDATE_SECS, CRL_FILE_MAX_BYTES, CRL_NEXT_UPDATE_DAYS, CSR_PEM_MAX_BYTES,
    LEAF_VALIDITY_MAX_DAYS, PEM_FILE_MAX_BYTES, SERIAL_LEN,
};
use crate::identity::SpiffeId;
use crate::pki_error::PkiError;
use crate::role::{Role, ou};

/// The CA certificate's file name in a CA directory (the seed's name).
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA private key's file name in a CA directory (the seed's name); mode 0600.
pub const CA_KEY_FILE: &str = "ca.key";
/// The CRL's default file name in a CA directory.
pub const CRL_FILE: &str = "crl.pem";

const SECONDS_PER_DAY: u64 = 86_400;

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From a few minutes ago (clock skew) until `days` days from now.
    pub fn days_from_now(days: u32) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(CERT_BACKDATE_SECS),
            not_after: now + Duration::from_secs(u64::from(days) * SECONDS_PER_DAY),
        }
    }
}

/// A subject alternative name for a leaf: a DNS name or an IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectAltName {
    Dns(String),
    Ip(IpAddr),
}

impl SubjectAltName {
    /// An IP address if `text` parses as one, otherwise a DNS name (letters, digits, `-`,
    /// `.`, and a leading `*.` for a wildcard).
    pub fn parse(text: &str) -> Result<SubjectAltName, PkiError> {
        if let Ok(ip) = text.parse() {
            return Ok(SubjectAltName::Ip(ip));
        }
        let name = text.strip_prefix("*.").unwrap_or(text);
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if text.len() > 253 || !name.split('.').all(label_ok) {
            return Err(PkiError::InvalidRequest {
                reason: format!("{text:?} is neither an IP address nor a DNS name"),
            });
        }
        Ok(SubjectAltName::Dns(text.to_owned()))
    }
}

/// What to put in a new leaf certificate.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// The role the OU names. `TenantAdmin` cannot be issued: it comes from scope files.
    pub role: Role,
    pub common_name: String,
    /// A SPIFFE id for the one URI SAN; only for tenant workloads, of the same org.
    pub spiffe_id: Option<SpiffeId>,
    pub subject_alt_names: Vec<SubjectAltName>,
    pub validity: Validity,
}

/// A freshly issued leaf: its certificate and its private key.
#[derive(Debug)]
pub struct IssuedCertificate {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: Zeroizing<String>,
}

impl IssuedCertificate {
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The PKCS#8 private key in PEM. Secret: write it only with [`Self::write_files`].
    pub fn private_key_pem(&self) -> &Zeroizing<String> {
        &self.key_pem
    }

    /// Writes `<dir>/<stem>.crt` (0644) and `<dir>/<stem>.key` (0600), creating `dir`
    /// (0700) if needed and refusing to overwrite either file. Returns both paths.
    pub fn write_files(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        create_private_dir(dir)?;
        let cert_path = dir.join(format!("{stem}.crt"));
        let key_path = dir.join(format!("{stem}.key"));
        for path in [&cert_path, &key_path] {
            if path.exists() {
                return Err(PkiError::AlreadyExists { path: path.clone() });
            }
        }
        write_new_file(&key_path, self.key_pem.as_bytes(), 0o600)?;
        write_new_file(&cert_path, self.cert_pem.as_bytes(), 0o644)?;
        Ok((cert_path, key_path))
    }
}

/// A leaf signed for a certificate signing request: the certificate only; its private key
/// never left the requester.
#[derive(Debug, Clone)]
pub struct SignedCertificate {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl SignedCertificate {
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }
}

/// A new P-256 key and a PKCS#10 request for it, signed by it: what a node sends the CA
/// (through admission) to get a certificate without its private key leaving the node.
pub struct CertificateRequest {
    csr_pem: String,
    public_key_info: Vec<u8>,
    key_pem: Zeroizing<String>,
}

impl fmt::Debug for CertificateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateRequest").finish_non_exhaustive()
    }
}

impl CertificateRequest {
    /// Makes a new P-256 key and a CSR naming `common_name`. The CA ignores the name (it
    /// decides what goes in the certificate); it is there for humans reading the request.
    pub fn generate(common_name: &str) -> Result<CertificateRequest, PkiError> {
        check_common_name(common_name)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        let csr = params.serialize_request(&key).map_err(generate_error)?;
        Ok(CertificateRequest {
            csr_pem: csr.pem().map_err(generate_error)?,
            public_key_info: key.subject_public_key_info(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }

    /// The PKCS#10 request in PEM; public.
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    /// Pairs the key with the certificate the CA returned (PEM, leaf first), after checking
    /// the certificate carries this request's public key; write it with
    /// [`IssuedCertificate::write_files`].
    pub fn complete(self, cert_pem: &str) -> Result<IssuedCertificate, PkiError> {
        let response = Path::new("<certificate returned for the request>");
        let cert_der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| PkiError::Malformed { path: response.into(), what: "no certificate" })?;
        let (_, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|_| PkiError::Malformed { path: response.into(), what: "bad X.509" })?;
        if cert.public_key().raw != self.public_key_info.as_slice() {
            return Err(PkiError::KeyDoesNotMatchCertificate { path: response.into() });
        }
        Ok(IssuedCertificate {
            cert_pem: pem_encode("CERTIFICATE", &cert_der),
            cert_der,
            key_pem: self.key_pem,
        })
    }
}

/// What [`CertificateAuthority::revoke`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// The CRL was written with this number and now lists this many certificates.
    Revoked { crl_number: u64, revoked_count: usize },
    /// The certificate was already listed; the CRL was left as it was.
    AlreadyRevoked { crl_number: u64 },
}

/// The cluster CA: its certificate and signing key.
pub struct CertificateAuthority {
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority").finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Makes a new P-256 CA in memory.
    pub fn generate(
        common_name: &str,
        validity: Validity,
    ) -> Result<CertificateAuthority, PkiError> {
        check_common_name(common_name)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        params.key_identifier_method = KeyIdMethod::Sha256;
        set_validity(&mut params, validity)?;
        let cert = params.self_signed(&key).map_err(generate_error)?;
        Ok(CertificateAuthority { cert_der: cert.der().clone(), issuer: Issuer::new(params, key) })
    }

    /// `ca init`: makes a new CA and writes `ca.crt`, `ca.key` (0600) and an empty
    /// `crl.pem` (CRL number 1) into `dir`, creating it (0700) if needed. Refuses, before
    /// writing anything, if any of the three already exists.
    pub fn init(
        dir: &Path,
        common_name: &str,
        validity: Validity,
    ) -> Result<CertificateAuthority, PkiError> {
        let [cert_path, key_path, crl_path] =
            [CA_CERT_FILE, CA_KEY_FILE, CRL_FILE].map(|f| dir.join(f));
        for path in [&cert_path, &key_path, &crl_path] {
            if path.exists() {
                return Err(PkiError::AlreadyExists { path: path.clone() });
            }
        }
        let ca = CertificateAuthority::generate(common_name, validity)?;
        create_private_dir(dir)?;
        let key_pem = Zeroizing::new(ca.issuer.key().serialize_pem());
        write_new_file(&key_path, key_pem.as_bytes(), 0o600)?;
        write_new_file(&cert_path, ca.certificate_pem().as_bytes(), 0o644)?;
        let crl = ca.sign_crl(1, Vec::new())?;
        write_new_file(&crl_path, crl.as_bytes(), 0o644)?;
        Ok(ca)
    }

    /// Loads `ca.crt` and `ca.key` from `dir` (ours or the seed's openssl ones). Checks
    /// that the certificate is a CA, that the key file is not open to group or others, and
    /// that the key belongs to the certificate.
    pub fn load(dir: &Path) -> Result<CertificateAuthority, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_der = read_certificates(&cert_path)?.swap_remove(0);
        let (_, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|_| PkiError::Malformed { path: cert_path.clone(), what: "bad X.509" })?;
        if !cert.is_ca() {
            return Err(PkiError::NotACa { path: cert_path });
        }
        let key_der = read_private_key(&key_path)?;
        let key = KeyPair::try_from(&*key_der).map_err(|_| PkiError::Malformed {
            path: key_path.clone(),
            what: "unsupported private key",
        })?;
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(PkiError::KeyDoesNotMatchCertificate { path: key_path });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(generate_error)?;
        Ok(CertificateAuthority { cert_der, issuer })
    }

    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn certificate_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert_der)
    }

    /// Issues a leaf for `request` with a new P-256 key.
    pub fn issue(&self, request: &IssueRequest) -> Result<IssuedCertificate, PkiError> {
        let params = leaf_params(request)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate_error)?;
        Ok(IssuedCertificate {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }

    /// Issues a leaf for `request` over the public key of the PKCS#10 request `csr_pem`:
    /// what admission signs for a node that keeps its private key. The request's signature
    /// must verify with its own key (proof that the requester holds the private key), and
    /// that key must be P-256. Nothing else of the CSR is read: subject, OU, SANs, key
    /// usages and validity all come from `request`.
    pub fn issue_for_csr(
        &self,
        request: &IssueRequest,
        csr_pem: &str,
    ) -> Result<SignedCertificate, PkiError> {
        let public_key = csr_public_key(csr_pem)?;
        let params = leaf_params(request)?;
        let cert = params.signed_by(&public_key, &self.issuer).map_err(generate_error)?;
        Ok(SignedCertificate { cert_der: cert.der().clone(), cert_pem: cert.pem() })
    }

    /// Adds the certificate `cert_der` (which this CA must have issued) to the CRL at
    /// `crl_path`, creating the CRL if the file does not exist. The new CRL's number is the
    /// old one plus one.
    pub fn revoke(&self, cert_der: &[u8], crl_path: &Path) -> Result<RevokeOutcome, PkiError> {
        let serial = self.serial_issued_here(cert_der)?;
        let (old_number, mut entries) = match read_bounded(crl_path, CRL_FILE_MAX_BYTES) {
            Ok(bytes) => self.crl_entries(&bytes, crl_path)?,
            Err(PkiError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                (0, Vec::new())
            }
            Err(error) => return Err(error),
        };
        if entries.iter().any(|entry| entry.serial_number.as_ref() == serial.as_slice()) {
            return Ok(RevokeOutcome::AlreadyRevoked { crl_number: old_number });
        }
        let crl_number = old_number.checked_add(1).ok_or(PkiError::CrlNumberOutOfRange)?;
        entries.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: OffsetDateTime::now_utc(),
            reason_code: None,
            invalidity_date: None,
        });
        let revoked_count = entries.len();
        let crl = self.sign_crl(crl_number, entries)?;
        replace_file_atomically(crl_path, crl.as_bytes(), 0o644)?;
        Ok(RevokeOutcome::Revoked { crl_number, revoked_count })
    }

    /// The serial of `cert_der` (minimal big-endian bytes), if this CA signed it.
    fn serial_issued_here(&self, cert_der: &[u8]) -> Result<Vec<u8>, PkiError> {
        let (_, ca) =
            X509Certificate::from_der(&self.cert_der).map_err(|_| PkiError::NotIssuedByCa)?;
        let (_, cert) = X509Certificate::from_der(cert_der).map_err(|_| PkiError::NotIssuedByCa)?;
        if cert.issuer().as_raw() != ca.subject().as_raw() {
            return Err(PkiError::NotIssuedByCa);
        }
        cert.verify_signature(Some(ca.public_key())).map_err(|_| PkiError::NotIssuedByCa)?;
        if cert.is_ca() {
            return Err(PkiError::InvalidRequest {
                reason: "a CA certificate cannot be revoked in its own CRL".to_owned(),
            });
        }
        Ok(minimal_serial(cert.raw_serial()).to_vec())
    }

    /// The number and entries of an existing CRL, which this CA must have signed.
    fn crl_entries(
        &self,
        bytes: &[u8],
        path: &Path,
    ) -> Result<(u64, Vec<RevokedCertParams>), PkiError> {
        let ders = crls_from_bytes(bytes, path)?;
        let [der] = ders.as_slice() else {
            return Err(PkiError::Malformed { path: path.to_owned(), what: "more than one CRL" });
        };
        let (_, ca) =
            X509Certificate::from_der(&self.cert_der).map_err(|_| PkiError::NotIssuedByCa)?;
        let (_, crl) = CertificateRevocationList::from_der(der)
            .map_err(|_| PkiError::Malformed { path: path.to_owned(), what: "bad CRL" })?;
        if crl.issuer().as_raw() != ca.subject().as_raw() {
            return Err(PkiError::CrlNotSignedByCa);
        }
        crl.verify_signature(ca.public_key()).map_err(|_| PkiError::CrlNotSignedByCa)?;
        let number = match crl.crl_number() {
            None => 0,
            Some(number) => {
                let bytes = number.to_bytes_be();
                if bytes.len() > 8 {
                    return Err(PkiError::CrlNumberOutOfRange);
                }
                bytes.iter().fold(0u64, |acc, byte| acc << 8 | u64::from(*byte))
            }
        };
        let entries = crl
            .iter_revoked_certificates()
            .map(|revoked| RevokedCertParams {
                serial_number: SerialNumber::from_slice(minimal_serial(revoked.raw_serial())),
                revocation_time: revoked.revocation_date.to_datetime(),
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        Ok((number, entries))
    }

    fn sign_crl(
        &self,
        crl_number: u64,
        revoked_certs: Vec<RevokedCertParams>,
    ) -> Result<String, PkiError> {
        let this_update = OffsetDateTime::now_utc();
        let next_update_secs = u64::from(CRL_NEXT_UPDATE_DAYS) * SECONDS_PER_DAY;
        let params = CertificateRevocationListParams {
            this_update,
            next_update: this_update + Duration::from_secs(next_update_secs),
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).map_err(generate_error)?;
        Ok(pem_encode("X509 CRL", crl.der()))
    }
}

/// Reads every certificate in a PEM file (or one DER certificate), leaf first.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let bytes = read_bounded(path, PEM_FILE_MAX_BYTES)?;
    let malformed = |what| PkiError::Malformed { path: path.to_owned(), what };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|_| malformed("bad PEM"))?;
    if !certs.is_empty() {
        return Ok(certs);
    }
    if bytes.first() == Some(&0x30) {
        return Ok(vec![CertificateDer::from(bytes)]);
    }
    Err(malformed("no certificate"))
}

/// Reads a private key (PKCS#8, SEC1 or PKCS#1 PEM), refusing a file that group or others
/// may access.
pub fn read_private_key(path: &Path) -> Result<Zeroizing<PrivateKeyDer<'static>>, PkiError> {
    let metadata = fs::metadata(path).map_err(PkiError::io(path))?;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PkiError::KeyFileTooOpen { path: path.to_owned(), mode });
    }
    let bytes = Zeroizing::new(read_bounded(path, PEM_FILE_MAX_BYTES)?);
    let key = PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|_| PkiError::Malformed { path: path.to_owned(), what: "no private key" })?;
    Ok(Zeroizing::new(key))
}

/// Every CRL in `bytes`: PEM `X509 CRL` sections, or one DER CRL.
pub(crate) fn crls_from_bytes(
    bytes: &[u8],
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, PkiError> {
    let malformed = |what| PkiError::Malformed { path: path.to_owned(), what };
    let crls: Vec<CertificateRevocationListDer<'static>> =
        CertificateRevocationListDer::pem_slice_iter(bytes)
            .collect::<Result<_, _>>()
            .map_err(|_| malformed("bad PEM"))?;
    if !crls.is_empty() {
        return Ok(crls);
    }
    if bytes.first() == Some(&0x30) {
        return Ok(vec![CertificateRevocationListDer::from(bytes.to_vec())]);
    }
    Err(malformed("no CRL"))
}

/// Reads a whole file, refusing one over `max_bytes`.
pub(crate) fn read_bounded(path: &Path, max_bytes: u64) -> Result<Vec<u8>, PkiError> {
    let file = fs::File::open(path).map_err(PkiError::io(path))?;
    let mut bytes = Vec::new();
    file.take(max_bytes + 1).read_to_end(&mut bytes).map_err(PkiError::io(path))?;
    if bytes.len() as u64 > max_bytes {
        return Err(PkiError::FileTooLarge { path: path.to_owned(), max_bytes });
    }
    Ok(bytes)
}

/// The OU a role's certificate carries; `None` for a role no certificate gives.
pub fn organizational_unit(role: &Role) -> Option<String> {
    match role {
        Role::Server => Some(ou::SERVER.to_owned()),
        Role::KeyServer => Some(ou::KEYSERVER.to_owned()),
        Role::ClusterAdmin => Some(ou::ADMIN.to_owned()),
        Role::Sre => Some(ou::SRE.to_owned()),
        Role::CertGranting => Some(ou::CERT_GRANTING.to_owned()),
        Role::Workload { org } => Some(format!("{}{org}", ou::TENANT_PREFIX)),
        Role::TenantAdmin { .. } => None,
    }
}

/// A file name stem for a certificate named `common_name`: the CN with every character
/// outside `A-Z a-z 0-9 . - _` replaced by `_`, and a leading `.` too.
pub fn file_stem(common_name: &str) -> String {
    let keep = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    let stem: String = common_name.chars().map(|c| if keep(c) { c } else { '_' }).collect();
    match stem.strip_prefix('.') {
        Some(rest) => format!("_{rest}"),
        None => stem,
    }
}

fn leaf_params(request: &IssueRequest) -> Result<CertificateParams, PkiError> {
    let invalid = |reason: &str| PkiError::InvalidRequest { reason: reason.to_owned() };
    check_common_name(&request.common_name)?;
    let unit = organizational_unit(&request.role)
        .ok_or_else(|| invalid("tenant admin is granted by scope files, not certificates"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, request.common_name.as_str());
    params.distinguished_name.push(DnType::OrganizationalUnitName, unit);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;
    params.serial_number = Some(random_serial()?);
    set_validity(&mut params, request.validity)?;
    let serves = matches!(request.role, Role::Server | Role::KeyServer);
    params.extended_key_usages = if serves || request.spiffe_id.is_some() {
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    for name in &request.subject_alt_names {
        params.subject_alt_names.push(match name {
            SubjectAltName::Ip(ip) => SanType::IpAddress(*ip),
            SubjectAltName::Dns(dns) => {
                SanType::DnsName(dns.as_str().try_into().map_err(generate_error)?)
            }
        });
    }
    if let Some(spiffe) = &request.spiffe_id {
        if request.role.org() != Some(spiffe.org()) {
            return Err(invalid("a SPIFFE id goes only on a tenant certificate of its own org"));
        }
        let uri = spiffe.as_str().try_into().map_err(generate_error)?;
        params.subject_alt_names.push(SanType::URI(uri));
    }
    Ok(params)
}

/// The public key of a CSR: a P-256 point, taken only once the CSR's signature verifies.
struct CsrPublicKey {
    point: Vec<u8>,
}

impl PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

fn csr_public_key(csr_pem: &str) -> Result<CsrPublicKey, PkiError> {
    let refuse = |reason: &str| PkiError::InvalidRequest { reason: reason.to_owned() };
    if csr_pem.len() > CSR_PEM_MAX_BYTES {
        return Err(refuse("the certificate signing request is too large"));
    }
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|_| refuse("no PEM certificate signing request"))?;
    let (rest, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|_| refuse("malformed certificate signing request"))?;
    if !rest.is_empty() {
        return Err(refuse("bytes after the certificate signing request"));
    }
    let spki = &csr.certification_request_info.subject_pki;
    let curve = spki.algorithm.parameters.as_ref().and_then(|params| params.as_oid().ok());
    let point = spki.subject_public_key.data.as_ref();
    // An uncompressed P-256 point: 0x04, then 32 bytes of x and 32 of y.
    let p256 = spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
        && curve == Some(OID_EC_P256)
        && spki.subject_public_key.unused_bits == 0
        && point.len() == 65
        && point[0] == 0x04;
    if !p256 {
        return Err(refuse("the requested key is not an uncompressed P-256 key"));
    }
    csr.verify_signature()
        .map_err(|_| refuse("the certificate signing request's signature does not verify"))?;
    Ok(CsrPublicKey { point: point.to_vec() })
}

fn check_common_name(common_name: &str) -> Result<(), PkiError> {
    // 64 characters is X.520's upper bound for a CN.
    let ok = !common_name.is_empty()
        && common_name.chars().count() <= 64
        && !common_name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(PkiError::InvalidRequest {
            reason: "the common name must be 1 to 64 printable characters".to_owned(),
        })
    }
}

fn set_validity(params: &mut CertificateParams, validity: Validity) -> Result<(), PkiError> {
    if validity.not_after <= validity.not_before {
        return Err(PkiError::InvalidRequest {
            reason: "the certificate would expire before it becomes valid".to_owned(),
        });
    }
    params.not_before = OffsetDateTime::from(validity.not_before);
    params.not_after = OffsetDateTime::from(validity.not_after);
    Ok(())
}

/// Checks a leaf's requested life in days: 1 to [`LEAF_VALIDITY_MAX_DAYS`].
pub fn check_leaf_days(days: u32) -> Result<u32, PkiError> {
    if (1..=LEAF_VALIDITY_MAX_DAYS).contains(&days) {
        Ok(days)
    } else {
        Err(PkiError::InvalidRequest {
            reason: format!("validity must be 1 to {LEAF_VALIDITY_MAX_DAYS} days, not {days}"),
        })
    }
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; SERIAL_LEN];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| PkiError::Random)?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x40; // never a shorter encoding, never zero
    Ok(SerialNumber::from_slice(&bytes))
}

/// A serial's big-endian magnitude without DER's leading zero bytes.
pub(crate) fn minimal_serial(raw: &[u8]) -> &[u8] {
    let start = raw.iter().position(|byte| *byte != 0).unwrap_or(raw.len().saturating_sub(1));
    &raw[start..]
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn generate_error(error: rcgen::Error) -> PkiError {
    PkiError::Generate { detail: error.to_string() }
}

fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(PkiError::io(dir))
}

/// Creates `path` with `mode`, failing if it exists; flushes it to disk.
fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut file =
        fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(
            |source| match source.kind() {
                io::ErrorKind::AlreadyExists => PkiError::AlreadyExists { path: path.to_owned() },
                _ => PkiError::Io { path: path.to_owned(), source },
            },
        )?;
    file.write_all(bytes).map_err(PkiError::io(path))?;
    file.sync_all().map_err(PkiError::io(path))
}

/// Replaces `path` whole: writes a temporary file (mode `mode`) beside it, flushes it,
/// renames it over `path`, and flushes the directory; a reader sees the old bytes or the
/// new ones, never a mix. Two writers of one path must be serialized by the caller (the
/// temporary file's name is fixed per process).
pub fn replace_file_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| PkiError::InvalidSetting {
        name: "path",
        reason: format!("{} names no file", path.display()),
    })?;
    let temporary = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let _ = fs::remove_file(&temporary);
    write_new_file(&temporary, bytes, mode)?;
    if let Err(source) = fs::rename(&temporary, path) {
        let _ = fs::remove_file(&temporary);
        return Err(PkiError::Io { path: path.to_owned(), source });
    }
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests;
