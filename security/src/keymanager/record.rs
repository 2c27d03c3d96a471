//! How one key sits in the key store: a key record, sealed under the root key; and the
//! AES-256-GCM helpers every seal of the key manager uses.
//!
//! # Key record byte map (format version 1, integers little-endian)
//!
//! ```text
//! offset  size  field
//! 0       4     magic          "KSKR"
//! 4       2     version  u16   1
//! 6       1     kind     u8    1 = system master key, 2 = tenant KEK
//! 7       1     flags    u8    bit 0 = a wrapped tenant secret follows; other bits 0
//! 8       16    tenant         tenant id; all zero for the system master key
//! 24      4     epoch    u32   >= 1
//! 28      2     sealed_len u16 length of the root-sealed key (<= 1024)
//! 30      S     sealed key     the root sealer's output for the 32 key bytes,
//!                              AAD = bytes 0..28 (magic to epoch), then the wrapped
//!                              secret if there is one
//! 30+S    60    wrapped secret only if flags bit 0: nonce (12) | AES-256-GCM of the
//!                              isolated tenant's 32-byte secret under this KEK (32) |
//!                              tag (16); AAD = "kiseki-tenant-secret-v1" | tenant | epoch
//! ```
//!
//! The AAD binds the key's name (kind and tenant), its epoch and the wrapped secret: a
//! record copied onto another tenant's or epoch's row fails to open, and so does one with
//! any changed byte.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, RandomizedNonceKey, UnboundKey};
use zeroize::Zeroizing;

use crate::constants::{KEY_LEN, NONCE_LEN, TAG_LEN, TENANT_ID_LEN};
use crate::error::CryptoError;
use crate::ids::TenantId;
use crate::keymanager::error::KeyManagerError;
use crate::keymanager::root::RootSealer;
use crate::keymanager::store::KeyScope;

const MAGIC: [u8; 4] = *b"KSKR";
const VERSION: u16 = 1;
const KIND_MASTER: u8 = 1;
const KIND_TENANT_KEK: u8 = 2;
const FLAG_TENANT_SECRET: u8 = 1;
/// Bytes 0..28: magic to epoch, the AAD of the root seal.
const LABEL_LEN: usize = 28;
const HEADER_LEN: usize = LABEL_LEN + 2;
/// A KMS may wrap with overhead of its own; more than this is not a wrapped 32-byte key.
const SEALED_KEY_MAX_BYTES: usize = 1024;
/// nonce | ciphertext of a 32-byte secret | tag.
pub(crate) const WRAPPED_SECRET_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;
const SECRET_AAD_PREFIX: &[u8] = b"kiseki-tenant-secret-v1";

const _: () = assert!(HEADER_LEN == 30, "the byte map's header is 30 bytes");
const _: () = assert!(WRAPPED_SECRET_LEN == 60);
const _: () = assert!(8 + TENANT_ID_LEN == 24);

/// One key's material as the key manager holds it once opened.
pub(crate) struct OpenedRecord {
    pub key: Zeroizing<[u8; KEY_LEN]>,
    pub wrapped_secret: Option<[u8; WRAPPED_SECRET_LEN]>,
}

/// Seals `key` (and an isolated tenant's wrapped secret) into a key record for
/// `scope`/`epoch`.
pub(crate) fn seal_record(
    root: &dyn RootSealer,
    scope: KeyScope,
    epoch: u32,
    key: &[u8; KEY_LEN],
    wrapped_secret: Option<&[u8; WRAPPED_SECRET_LEN]>,
) -> Result<Vec<u8>, KeyManagerError> {
    let labels = labels(scope, epoch, wrapped_secret.is_some());
    let mut aad = labels.to_vec();
    aad.extend_from_slice(wrapped_secret.map_or(&[][..], |wrapped| &wrapped[..]));
    let sealed = root.seal(&aad, key)?;
    let sealed_len = u16::try_from(sealed.len())
        .ok()
        .filter(|len| usize::from(*len) <= SEALED_KEY_MAX_BYTES)
        .ok_or(KeyManagerError::CorruptRecord { what: "root sealer output too long" })?;
    let mut record = Vec::with_capacity(HEADER_LEN + sealed.len() + WRAPPED_SECRET_LEN);
    record.extend_from_slice(&labels);
    record.extend_from_slice(&sealed_len.to_le_bytes());
    record.extend_from_slice(&sealed);
    if let Some(wrapped) = wrapped_secret {
        record.extend_from_slice(wrapped);
    }
    Ok(record)
}

/// Opens a key record that must be `scope`'s epoch `epoch`. Any mismatch or changed byte
/// is [`KeyManagerError::CorruptRecord`]; nothing is decrypted from a record whose
/// labels are not the ones asked for.
pub(crate) fn open_record(
    root: &dyn RootSealer,
    scope: KeyScope,
    epoch: u32,
    record: &[u8],
) -> Result<OpenedRecord, KeyManagerError> {
    let corrupt = |what| KeyManagerError::CorruptRecord { what };
    if record.len() < HEADER_LEN {
        return Err(corrupt("shorter than a key record header"));
    }
    let flags = record[7];
    if flags & !FLAG_TENANT_SECRET != 0 {
        return Err(corrupt("unknown flags"));
    }
    let has_secret = flags & FLAG_TENANT_SECRET != 0;
    if record[..LABEL_LEN] != labels(scope, epoch, has_secret) {
        return Err(corrupt("the record names another key, epoch or version"));
    }
    let sealed_len = usize::from(u16::from_le_bytes([record[28], record[29]]));
    let expected = HEADER_LEN + sealed_len + if has_secret { WRAPPED_SECRET_LEN } else { 0 };
    if sealed_len > SEALED_KEY_MAX_BYTES || record.len() != expected {
        return Err(corrupt("lengths do not add up"));
    }
    let sealed = &record[HEADER_LEN..HEADER_LEN + sealed_len];
    let mut aad = record[..LABEL_LEN].to_vec();
    aad.extend_from_slice(&record[HEADER_LEN + sealed_len..]);
    let opened = root.open(&aad, sealed)?;
    let key_bytes: &[u8; KEY_LEN] =
        opened.as_slice().try_into().map_err(|_| corrupt("the sealed key is not 32 bytes"))?;
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(key_bytes);
    let wrapped_secret = if has_secret {
        let mut wrapped = [0u8; WRAPPED_SECRET_LEN];
        wrapped.copy_from_slice(&record[HEADER_LEN + sealed_len..]);
        Some(wrapped)
    } else {
        None
    };
    Ok(OpenedRecord { key, wrapped_secret })
}

/// Wraps an isolated tenant's secret under its KEK of `epoch`.
pub(crate) fn wrap_secret(
    kek: &[u8; KEY_LEN],
    tenant: TenantId,
    epoch: u32,
    secret: &[u8; KEY_LEN],
) -> Result<[u8; WRAPPED_SECRET_LEN], KeyManagerError> {
    let sealed = aead_seal(kek, &secret_aad(tenant, epoch), secret)?;
    sealed.as_slice().try_into().map_err(|_| KeyManagerError::CorruptRecord { what: "wrap" })
}

/// Unwraps it; fails if the KEK, tenant or epoch differs from the wrap's.
pub(crate) fn unwrap_secret(
    kek: &[u8; KEY_LEN],
    tenant: TenantId,
    epoch: u32,
    wrapped: &[u8; WRAPPED_SECRET_LEN],
) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyManagerError> {
    let opened = aead_open(kek, &secret_aad(tenant, epoch), wrapped)
        .map_err(|_| KeyManagerError::CorruptRecord { what: "wrapped tenant secret" })?;
    let mut secret = Zeroizing::new([0u8; KEY_LEN]);
    secret.copy_from_slice(&opened);
    Ok(secret)
}

fn secret_aad(tenant: TenantId, epoch: u32) -> Vec<u8> {
    let mut aad = SECRET_AAD_PREFIX.to_vec();
    aad.extend_from_slice(tenant.as_bytes());
    aad.extend_from_slice(&epoch.to_le_bytes());
    aad
}

fn labels(scope: KeyScope, epoch: u32, has_secret: bool) -> [u8; LABEL_LEN] {
    let mut labels = [0u8; LABEL_LEN];
    labels[..4].copy_from_slice(&MAGIC);
    labels[4..6].copy_from_slice(&VERSION.to_le_bytes());
    let (kind, tenant) = match scope {
        KeyScope::System => (KIND_MASTER, [0; TENANT_ID_LEN]),
        KeyScope::Tenant(tenant) => (KIND_TENANT_KEK, *tenant.as_bytes()),
    };
    labels[6] = kind;
    labels[7] = if has_secret { FLAG_TENANT_SECRET } else { 0 };
    labels[8..24].copy_from_slice(&tenant);
    labels[24..28].copy_from_slice(&epoch.to_le_bytes());
    labels
}

/// AES-256-GCM with a nonce aws-lc draws: `nonce | ciphertext | tag`.
pub(crate) fn aead_seal(
    key: &[u8; KEY_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, KeyManagerError> {
    let internal = |operation| KeyManagerError::Crypto(CryptoError::Internal { operation });
    let key = RandomizedNonceKey::new(&AES_256_GCM, key).map_err(|_| internal("AES key"))?;
    let mut body = Zeroizing::new(plaintext.to_vec());
    let (nonce, tag) = key
        .seal_in_place_separate_tag(Aad::from(aad), &mut body[..])
        .map_err(|_| internal("AES-256-GCM seal"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + body.len() + TAG_LEN);
    out.extend_from_slice(nonce.as_ref());
    out.extend_from_slice(&body);
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// The inverse of [`aead_seal`]; the plaintext is zeroed on drop.
pub(crate) fn aead_open(
    key: &[u8; KEY_LEN],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, KeyManagerError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(KeyManagerError::OpenFailed);
    }
    let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| KeyManagerError::OpenFailed)?;
    let key = LessSafeKey::new(unbound);
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KeyManagerError::OpenFailed)?;
    let mut buffer = Zeroizing::new(body.to_vec());
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut buffer[..])
        .map_err(|_| KeyManagerError::OpenFailed)?
        .len();
    buffer.truncate(len);
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keymanager::locked::MemoryLocking;
    use crate::keymanager::root::LocalRootKey;

    fn root() -> LocalRootKey {
        LocalRootKey::from_bytes("test", &Zeroizing::new([3; 32]), MemoryLocking::Required).unwrap()
    }

    fn tenant(n: u8) -> TenantId {
        TenantId::new([n; 16]).unwrap()
    }

    #[test]
    fn a_record_opens_only_as_the_key_and_epoch_it_was_sealed_for() {
        let root = root();
        let key = [9u8; KEY_LEN];
        let wrapped = wrap_secret(&key, tenant(1), 2, &[5; KEY_LEN]).unwrap();
        let scope = KeyScope::Tenant(tenant(1));
        let record = seal_record(&root, scope, 2, &key, Some(&wrapped)).unwrap();
        let opened = open_record(&root, scope, 2, &record).unwrap();
        assert_eq!(*opened.key, key);
        let secret = unwrap_secret(&opened.key, tenant(1), 2, &opened.wrapped_secret.unwrap());
        assert_eq!(*secret.unwrap(), [5; KEY_LEN]);
        // Another epoch, another tenant, the system scope: refused before decrypting.
        for (scope, epoch) in [(scope, 3), (KeyScope::Tenant(tenant(2)), 2), (KeyScope::System, 2)]
        {
            assert!(open_record(&root, scope, epoch, &record).is_err(), "{scope:?} {epoch}");
        }
        // Any changed byte, a truncation or an extension fails.
        for index in 0..record.len() {
            let mut changed = record.clone();
            changed[index] ^= 1;
            assert!(open_record(&root, scope, 2, &changed).is_err(), "byte {index}");
        }
        assert!(open_record(&root, scope, 2, &record[..record.len() - 1]).is_err());
        let mut longer = record.clone();
        longer.push(0);
        assert!(open_record(&root, scope, 2, &longer).is_err());
        // The secret unwraps only under the same KEK, tenant and epoch.
        let wrapped = opened.wrapped_secret.unwrap();
        assert!(unwrap_secret(&[8; KEY_LEN], tenant(1), 2, &wrapped).is_err());
        assert!(unwrap_secret(&key, tenant(2), 2, &wrapped).is_err());
        assert!(unwrap_secret(&key, tenant(1), 1, &wrapped).is_err());
    }

    #[test]
    fn the_record_holds_no_plain_key_bytes() {
        let root = root();
        let record = seal_record(&root, KeyScope::System, 1, &[0x5a; KEY_LEN], None).unwrap();
        assert!(!record.windows(4).any(|w| w == [0x5a; 4]));
        let other = seal_record(&root, KeyScope::System, 1, &[0x5a; KEY_LEN], None).unwrap();
        assert_ne!(record, other, "fresh nonce per seal");
    }
}
