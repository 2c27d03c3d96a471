//! Kiseki's security primitives. This part: chunk ids, keys and the sealed envelope.
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
//! What this crate does not do: no I/O, no network, no clock, no threads, no logging. It
//! does not store or fetch keys (the key manager, to come, does: it generates master keys
//! and tenant KEKs, wraps and unwraps, and hands keys in through `from_bytes`), and it does
//! not decide who may open what (roles and policies, also to come). All cryptography is
//! aws-lc-rs's; this crate only arranges it.
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
//!   too.

#![forbid(unsafe_code)]

pub mod constants;

mod envelope;
mod error;
mod ids;
mod keys;
mod role;

#[doc(hidden)]
pub mod fuzzing;

pub use envelope::{ChunkTenant, Envelope, Plaintext, SealParams};
pub use error::{CryptoError, DekBinding, MalformedEnvelope};
pub use ids::{ChunkId, Tenancy, TenantId};
pub use keys::{Dek, MasterKey, TenantKey, TenantSecret};
pub use role::{InvalidOrgId, OrgId, Role, ou};
