//! Kiseki's security primitives: chunk ids, keys and the sealed envelope (the crypto
//! core); and the cluster's certificates, the one TLS configuration, and peer identities.
//!
//! A chunk is named by its content and encrypted once:
//! - [`ChunkId`]: SHA-256 of the plaintext, or HMAC-SHA256 under a [`TenantKey`] for
//!   tenants that opt out of cross-tenant dedup ([`Tenancy::Isolated`]).
//! - [`Dek`]: each chunk's data encryption key, HKDF-SHA256 of the epoch's [`MasterKey`]
//!   (followed by the tenant's [`TenantSecret`] for an isolated tenant), salted with the
//!   chunk id, info `kiseki-chunk-dek-v1`. Derived on storage nodes; the key manager never
//!   sees chunk ids.
//! - [`Envelope`]: the chunk at rest and on the wire. A versioned little-endian header,
//!   the tenant-wrapped derivation parameters, AES-256-GCM ciphertext and tag; the header
//!   from its version field on is the AAD, so an envelope moved onto another chunk id,
//!   epoch or tenant fails to open. Its byte map is in `envelope.rs`.
//!   [`Envelope::open_verified`] also checks the plaintext against its chunk id, which
//!   catches a chunk sealed under another chunk's id (a poisoned dedup entry).
//!
//! Certificates and TLS:
//! - [`CertificateAuthority`] (`pki.rs`): the cluster CA, role certificates whose OU names
//!   the role, CRLs with a growing number; what `kiseki-server ca|cert` runs. For admission
//!   it also signs a node's CSR ([`CertificateAuthority::issue_for_csr`]), and
//!   [`CertificateRequest`] is the node's side.
//! - [`admission`]: single-use admission tokens for new nodes (seed 003); the service that
//!   redeems them over the network is the gateway's.
//! - [`TlsBuilder`] / [`TlsContext`] (`tls.rs`): rustls on aws-lc-rs, TLS 1.3, client
//!   certificates required (optional only on the admission listener, where a token
//!   authenticates the client), one verifier per context that reloads the CRL without a
//!   restart.
//! - [`PeerIdentity`] (`identity.rs`): role and org from the OU, or a SPIFFE id checked by the
//!   X.509-SVID rules, or a UUID v5 of the fingerprint; and the KES identity of every peer.
//!
//! Authorization and the second authentication stage:
//! - [`authz`]: may this caller call this API path on this target? The built-in role table,
//!   KES-style glob policies, policy and scope files, and the cluster admin's access grants
//!   approved by the tenant; every decision carries its audit record.
//! - [`jwt`]: the tenant IdP's JWT (RS256/ES256 against a cached JWKS, HS256), checked
//!   against the tenant of the peer's certificate. It reads a JWKS file when its cache
//!   refreshes ([`jwt::JwksFile`]); `authz` reads nothing and takes the time as an input.
//!
//! Where the I/O is: the crypto core (ids, keys, envelopes, identities) does no I/O, keeps
//! no clock, starts no thread and logs nothing. `pki` and `tls` read and write certificate,
//! key and CRL files; `tls` reads the clock through rustls, logs CRL reloads and rejected
//! peers with `tracing`, and may start one CRL-reload thread. Neither opens a socket: callers
//! hand the rustls configurations to their own listeners and connectors.
//!
//! What the crypto core does not do: it does not store or fetch keys (the [`keymanager`]
//! does: it generates master keys and tenant KEKs, wraps and unwraps, and hands keys in
//! through `from_bytes`), and it does not decide who may open what (roles and policies).
//! All cryptography is aws-lc-rs's, TLS's included; this crate only arranges it.
//!
//! Invariants:
//! - an [`Envelope`] exists only as the output of a seal or of a parse that checked every
//!   rule of the byte map; no constructor takes raw parts, so no plaintext can pass as one;
//! - the parser never panics and never allocates from a length it read: every malformed
//!   input gets one [`MalformedEnvelope`] value, the first rule it breaks;
//! - a seal writes the header from the DEK's own labels (chunk id, epoch, tenancy), and an
//!   open refuses a DEK whose labels differ before decrypting;
//! - every nonce is 96 random bits drawn by aws-lc during the seal; keys are per chunk, so
//!   GCM's limit of 2^32 random nonces per key is reached only if one chunk is sealed four
//!   billion times;
//! - secrets sit in heap `Zeroizing` buffers, are zeroed on drop, are not `Clone`, and
//!   never appear in `Debug` output or in an error; opened [`Plaintext`] is zeroed on drop
//!   too; private keys read or generated for certificates pass through `Zeroizing` buffers
//!   and are written only to new files of mode 0600.

// Unsafe code is denied everywhere but `keymanager/locked.rs` (page allocation, mlock).
#![deny(unsafe_code)]

pub mod admission;
pub mod authz;
pub mod clock;
pub mod constants;
pub mod jwt;
pub mod keymanager;

mod envelope;
mod error;
mod identity;
mod ids;
mod keys;
mod pki;
mod pki_error;
mod role;
mod tls;

#[doc(hidden)]
pub mod fuzzing;

pub use envelope::{ChunkTenant, Envelope, Plaintext, SealParams};
pub use error::{CryptoError, DekBinding, MalformedEnvelope};
pub use identity::{
    FINGERPRINT_NAMESPACE, IdentityRules, KesIdentity, PeerIdentity, Principal, SpiffeId,
    TrustDomain,
};
pub use ids::{ChunkId, Tenancy, TenantId};
pub use keys::{Dek, MasterKey, TenantKey, TenantSecret};
pub use pki::{
    CA_CERT_FILE, CA_KEY_FILE, CRL_FILE, CertificateAuthority, CertificateRequest, IssueRequest,
    IssuedCertificate, RevokeOutcome, SignedCertificate, SubjectAltName, Validity, check_leaf_days,
    file_stem, organizational_unit, read_certificates, read_private_key, replace_file_atomically,
};
pub use pki_error::{IdentityError, PkiError, SpiffeIdError};
pub use role::{InvalidOrgId, OrgId, Role, ou};
pub use tls::{
    CrlPoller, CrlReload, ENV_CA_PATH, ENV_CERT_PATH, ENV_CRL_PATH, ENV_CRL_RELOAD_SECS,
    ENV_KEY_PATH, ENV_TRUST_DOMAIN, TlsBuilder, TlsContext, TlsPaths, admission_client_config,
};
