//! Admission of new nodes over the network (seed 003; DESIGN.md "Identity and
//! authorization").
//!
//! An administrator mints a single-use token for a node (`kiseki-server admission-token
//! create`, into a [`TokenStoreFile`]). The node connects to the [`AdmissionService`]
//! (`kiseki-server admission serve`) over TLS that authenticates the server only, presents
//! the token with a CSR, and gets a certificate-granting certificate (CGC). With the CGC, over
//! mutual TLS, it asks for its role certificates and, later, renewals (`kiseki-server join`,
//! [`join`] and [`renew`]).
//!
//! - `wire`: frames (u32 LE length, bounded) and the JSON messages;
//! - `service`: the listener, its authorization and what it signs;
//! - `client`: the node's side;
//! - `store`: the token store file, locked and replaced atomically.
//!
//! What this module does not do: mint or judge tokens, sign or verify certificates, or
//! decide who may call which path; `kiseki_security`'s `admission`, `pki`, `tls` and `authz`
//! do, and this module wires them to sockets and files.

mod client;
mod service;
mod store;
pub mod wire;

use std::fmt;
use std::io;
use std::path::PathBuf;

use kiseki_security::admission::AdmissionError;
use kiseki_security::{IdentityError, PkiError};

pub use client::{
    AdmissionClient, AdmissionServer, CGC_FILE_STEM, RoleRequest, join, renew, role_stem,
};
pub use service::{AdmissionService, AdmissionStats, UnixClock, system_now_unix_secs};
pub use store::{IfMissing, TokenStoreFile};
use wire::RemoteError;

/// What admission can fail with, locally (the service, the store, the CLI) or as the
/// node (a refusal from the service, which names only a [`RemoteError`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum AdmissionServiceError {
    /// The token store file (or its lock file) could not be read, locked or written.
    Store { path: PathBuf, source: io::Error },
    /// A token could not be minted, or the store file is corrupt.
    Token(AdmissionError),
    /// Certificates, keys, files or the TLS configuration.
    Pki(PkiError),
    /// A certificate does not give a valid identity.
    Identity(IdentityError),
    /// Connecting to or talking with the admission service failed.
    Connection { what: &'static str, source: io::Error },
    /// The admission service did not answer in time.
    TimedOut { what: &'static str },
    /// The admission service answered with a refusal.
    Refused(RemoteError),
    /// The admission service, or a certificate it returned, did not follow the protocol.
    Protocol { reason: &'static str },
}

impl fmt::Display for AdmissionServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdmissionServiceError::Store { path, source } => {
                write!(f, "token store {}: {source}", path.display())
            }
            AdmissionServiceError::Token(error) => write!(f, "admission token: {error}"),
            AdmissionServiceError::Pki(error) => write!(f, "{error}"),
            AdmissionServiceError::Identity(error) => write!(f, "{error}"),
            AdmissionServiceError::Connection { what, source } => {
                write!(f, "admission service, {what}: {source}")
            }
            AdmissionServiceError::TimedOut { what } => {
                write!(f, "admission service, {what}: timed out")
            }
            AdmissionServiceError::Refused(reason) => {
                write!(f, "the admission service refused: {reason}")
            }
            AdmissionServiceError::Protocol { reason } => {
                write!(f, "admission service: {reason}")
            }
        }
    }
}

impl std::error::Error for AdmissionServiceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AdmissionServiceError::Store { source, .. }
            | AdmissionServiceError::Connection { source, .. } => Some(source),
            AdmissionServiceError::Token(error) => Some(error),
            AdmissionServiceError::Pki(error) => Some(error),
            AdmissionServiceError::Identity(error) => Some(error),
            _ => None,
        }
    }
}

impl From<PkiError> for AdmissionServiceError {
    fn from(error: PkiError) -> AdmissionServiceError {
        AdmissionServiceError::Pki(error)
    }
}
