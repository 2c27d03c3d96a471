//! Errors of the certificate side of the crate: the CA tooling and TLS set-up
//! ([`PkiError`]), peer identities ([`IdentityError`]) and SPIFFE ids ([`SpiffeIdError`]).
//!
//! No variant carries key material. Paths, trust domains, OUs and reasons are not secret
//! and are named so an operator can act on the message. These messages are for the local
//! log and the operator's terminal: a remote peer only ever sees a TLS alert.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::role::InvalidOrgId;

/// What the CA tooling or the TLS configuration can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum PkiError {
    /// A file or directory could not be read or written.
    Io { path: PathBuf, source: io::Error },
    /// A file that must be created already exists; nothing was overwritten.
    AlreadyExists { path: PathBuf },
    /// A file is larger than its kind may be.
    FileTooLarge { path: PathBuf, max_bytes: u64 },
    /// A required setting is absent (an environment variable or a path).
    MissingSetting { name: &'static str },
    /// A setting has a value that cannot be used.
    InvalidSetting { name: &'static str, reason: String },
    /// A PEM or DER file holds no object of the expected kind, or a malformed one.
    Malformed { path: PathBuf, what: &'static str },
    /// A private key file is readable or writable by group or others.
    KeyFileTooOpen { path: PathBuf, mode: u32 },
    /// The private key does not belong to the certificate next to it.
    KeyDoesNotMatchCertificate { path: PathBuf },
    /// The CA certificate is not a CA (no `CA=true` basic constraint).
    NotACa { path: PathBuf },
    /// The certificate to revoke was not issued by this CA.
    NotIssuedByCa,
    /// A CRL is not signed by any configured CA, or not by the CA updating it.
    CrlNotSignedByCa,
    /// A CRL number is longer than the 20 octets RFC 5280 allows, or cannot grow further.
    CrlNumberOutOfRange,
    /// A certificate request breaks a rule; `reason` says which.
    InvalidRequest { reason: String },
    /// An organization id in a request is not valid.
    InvalidOrg(InvalidOrgId),
    /// This process's own certificate does not give a valid identity.
    LocalIdentity(IdentityError),
    /// rcgen refused to build or sign a certificate or CRL.
    Generate { detail: String },
    /// rustls refused the configuration.
    Tls { detail: String },
    /// The system random generator failed.
    Random,
    /// The CRL reload thread could not be started.
    Thread { source: io::Error },
}

/// Why a verified peer certificate does not give a Kiseki identity. Any of these rejects
/// the connection during the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityError {
    /// The bytes are not one well-formed X.509 certificate; `what` says which part broke.
    MalformedCertificate { what: &'static str },
    /// The peer's leaf certificate says `CA=true`.
    LeafIsCa,
    /// The leaf's KeyUsage lacks digitalSignature or has keyCertSign or cRLSign.
    KeyUsage { reason: &'static str },
    /// An X.509-SVID without a KeyUsage extension.
    SvidWithoutKeyUsage,
    /// An X.509-SVID whose ExtendedKeyUsage lacks serverAuth or clientAuth.
    SvidExtendedKeyUsage,
    /// More than one URI SAN; an SVID has exactly one.
    TooManyUriSans { count: usize },
    /// The URI SAN is a `spiffe:` URI that breaks the SPIFFE id rules or Kiseki's layout.
    MalformedSpiffeId(SpiffeIdError),
    /// A SPIFFE id was presented but no trust domain is configured to check it against.
    NoTrustDomainConfigured,
    /// A SPIFFE id of another trust domain than the configured one.
    WrongTrustDomain { found: String, expected: String },
    /// Two OUs that name different roles.
    ConflictingOus,
    /// An OU that names a role the SPIFFE id contradicts (another tenant, or a non-tenant
    /// role next to a workload id).
    OuContradictsSpiffeId,
    /// No certificate was presented.
    NoCertificate,
}

/// Why a string is not a Kiseki SPIFFE id. The checks follow the SPIFFE-ID standard, then
/// Kiseki's path layout `/tenant/{org}/[project/{p}/]workload/{w}`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpiffeIdError {
    TooLong {
        len_bytes: usize,
        max_bytes: usize,
    },
    /// Not `spiffe://` (the scheme must be lowercase).
    WrongScheme,
    EmptyTrustDomain,
    TrustDomainTooLong {
        len_bytes: usize,
        max_bytes: usize,
    },
    /// A trust domain character other than `a-z 0-9 . - _` (this catches ports, userinfo
    /// and uppercase).
    TrustDomainCharacter,
    /// A query (`?`) or fragment (`#`).
    QueryOrFragment,
    /// An empty path segment (`//`) or a trailing `/`.
    EmptySegment,
    /// A `.` or `..` segment.
    DotSegment,
    /// A path character other than `A-Z a-z 0-9 . - _` (this catches percent-encoding).
    SegmentCharacter,
    /// The path is not `/tenant/{org}/[project/{p}/]workload/{w}`.
    NotTenantPath,
    /// The tenant segment is not an organization id.
    Org(InvalidOrgId),
}

impl fmt::Display for PkiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use PkiError::*;
        match self {
            Io { path, source } => write!(f, "{}: {source}", path.display()),
            AlreadyExists { path } => {
                write!(f, "{} already exists; refusing to overwrite it", path.display())
            }
            FileTooLarge { path, max_bytes } => {
                write!(f, "{} is larger than {max_bytes} bytes", path.display())
            }
            MissingSetting { name } => write!(f, "{name} is not set"),
            InvalidSetting { name, reason } => write!(f, "{name}: {reason}"),
            Malformed { path, what } => write!(f, "{}: {what}", path.display()),
            KeyFileTooOpen { path, mode } => write!(
                f,
                "{} has mode {mode:04o}: a private key must not be accessible to group or \
                 others (chmod 600 it)",
                path.display()
            ),
            KeyDoesNotMatchCertificate { path } => {
                write!(f, "{}: the private key does not match the certificate", path.display())
            }
            NotACa { path } => write!(f, "{}: not a CA certificate", path.display()),
            NotIssuedByCa => f.write_str("the certificate was not issued by this CA"),
            CrlNotSignedByCa => f.write_str("the CRL is not signed by the CA"),
            CrlNumberOutOfRange => f.write_str("the CRL number is out of range"),
            InvalidRequest { reason } => write!(f, "invalid certificate request: {reason}"),
            InvalidOrg(error) => write!(f, "invalid organization id: {error}"),
            LocalIdentity(error) => write!(f, "this node's own certificate: {error}"),
            Generate { detail } => write!(f, "certificate generation failed: {detail}"),
            Tls { detail } => write!(f, "TLS configuration refused: {detail}"),
            Random => f.write_str("the system random generator failed"),
            Thread { source } => write!(f, "cannot start the CRL reload thread: {source}"),
        }
    }
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use IdentityError::*;
        match self {
            MalformedCertificate { what } => write!(f, "malformed certificate: {what}"),
            LeafIsCa => f.write_str("peer certificate is a CA certificate"),
            KeyUsage { reason } => write!(f, "peer certificate key usage {reason}"),
            SvidWithoutKeyUsage => f.write_str("X.509-SVID without a key usage extension"),
            SvidExtendedKeyUsage => {
                f.write_str("X.509-SVID extended key usage lacks serverAuth or clientAuth")
            }
            TooManyUriSans { count } => {
                write!(f, "{count} URI subject alternative names; at most one is allowed")
            }
            MalformedSpiffeId(error) => write!(f, "malformed SPIFFE id: {error}"),
            NoTrustDomainConfigured => {
                f.write_str("SPIFFE id presented but no trust domain is configured")
            }
            WrongTrustDomain { found, expected } => {
                write!(f, "SPIFFE trust domain {found:?} is not the configured {expected:?}")
            }
            ConflictingOus => f.write_str("organizational units name more than one role"),
            OuContradictsSpiffeId => {
                f.write_str("organizational unit contradicts the SPIFFE id's tenant")
            }
            NoCertificate => f.write_str("no peer certificate"),
        }
    }
}

impl fmt::Display for SpiffeIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SpiffeIdError::*;
        match self {
            TooLong { len_bytes, max_bytes } => {
                write!(f, "{len_bytes} bytes, over the {max_bytes}-byte limit")
            }
            WrongScheme => f.write_str("scheme is not spiffe://"),
            EmptyTrustDomain => f.write_str("empty trust domain"),
            TrustDomainTooLong { len_bytes, max_bytes } => {
                write!(f, "trust domain of {len_bytes} bytes, over the {max_bytes}-byte limit")
            }
            TrustDomainCharacter => f.write_str("trust domain may hold only a-z, 0-9, '.-_'"),
            QueryOrFragment => f.write_str("query or fragment"),
            EmptySegment => f.write_str("empty path segment or trailing '/'"),
            DotSegment => f.write_str("'.' or '..' path segment"),
            SegmentCharacter => f.write_str("path may hold only A-Z, a-z, 0-9, '.-_'"),
            NotTenantPath => f.write_str(
                "path is not /tenant/{org}/workload/{w} or \
                 /tenant/{org}/project/{p}/workload/{w}",
            ),
            Org(error) => write!(f, "tenant segment: {error}"),
        }
    }
}

impl std::error::Error for PkiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PkiError::Io { source, .. } | PkiError::Thread { source } => Some(source),
            PkiError::InvalidOrg(error) => Some(error),
            PkiError::LocalIdentity(error) => Some(error),
            _ => None,
        }
    }
}

impl std::error::Error for IdentityError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IdentityError::MalformedSpiffeId(error) => Some(error),
            _ => None,
        }
    }
}

impl std::error::Error for SpiffeIdError {}

impl From<SpiffeIdError> for IdentityError {
    fn from(error: SpiffeIdError) -> IdentityError {
        IdentityError::MalformedSpiffeId(error)
    }
}

impl From<IdentityError> for PkiError {
    fn from(error: IdentityError) -> PkiError {
        PkiError::LocalIdentity(error)
    }
}

impl From<InvalidOrgId> for PkiError {
    fn from(error: InvalidOrgId) -> PkiError {
        PkiError::InvalidOrg(error)
    }
}

impl PkiError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> PkiError {
        let path = path.into();
        move |source| PkiError::Io { path, source }
    }
}
