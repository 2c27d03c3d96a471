//! Keys: the system master key of an epoch, an isolated tenant's secret and id key, and
//! the per-chunk data encryption key (DEK) derived from them.
//!
//! Every secret lives in a heap-allocated `Zeroizing` buffer: moving a key moves a pointer
//! and leaves no copy of its bytes on a stack, and dropping it overwrites them. `Debug`
//! prints labels (epoch, tenant, chunk), never bytes. None of these types is `Clone`: a key
//! is shared by reference, so the number of copies in memory stays the number created.

use std::fmt;

use aws_lc_rs::aead::AES_256_GCM;
use aws_lc_rs::hkdf;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::constants::{DEK_INFO, KEY_LEN};
use crate::error::CryptoError;
use crate::ids::{ChunkId, Tenancy, TenantId};

/// The system master key of one key epoch: the input from which storage nodes derive
/// every chunk's DEK. Generated at cluster init (never a constant), kept by the key
/// manager, and never sent to a client.
pub struct MasterKey {
    epoch: u32,
    secret: Secret,
}

impl MasterKey {
    /// A fresh random key from the system generator.
    pub fn generate(epoch: u32) -> Result<MasterKey, CryptoError> {
        Ok(MasterKey { epoch, secret: Secret::generate()? })
    }

    /// A key the key manager unwrapped. The caller's buffer is zeroed when it drops here.
    pub fn from_bytes(epoch: u32, bytes: Zeroizing<[u8; KEY_LEN]>) -> MasterKey {
        MasterKey { epoch, secret: Secret::from_bytes(bytes) }
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The key's bytes, for the key service to hand to a storage node.
    pub(crate) fn expose(&self) -> &[u8; KEY_LEN] {
        self.secret.expose()
    }
}

/// An isolated tenant's secret, added to the DEK derivation's input. Only the tenant's KEK
/// unwraps it, so once the KEK is destroyed (crypto-shred) the master key alone can no
/// longer derive the tenant's DEKs.
pub struct TenantSecret {
    tenant: TenantId,
    secret: Secret,
}

impl TenantSecret {
    pub fn generate(tenant: TenantId) -> Result<TenantSecret, CryptoError> {
        Ok(TenantSecret { tenant, secret: Secret::generate()? })
    }

    pub fn from_bytes(tenant: TenantId, bytes: Zeroizing<[u8; KEY_LEN]>) -> TenantSecret {
        TenantSecret { tenant, secret: Secret::from_bytes(bytes) }
    }

    pub fn tenant(&self) -> TenantId {
        self.tenant
    }
}

/// An isolated tenant's key for HMAC chunk ids ([`ChunkId::isolated`]).
///
/// Held as aws-lc's prepared HMAC key (the padded key blocks), which aws-lc cleanses when
/// it is dropped (`HMAC_CTX_cleanup`); the raw bytes are zeroed as soon as it is built.
pub struct TenantKey {
    tenant: TenantId,
    key: hmac::Key,
}

impl TenantKey {
    pub fn generate(tenant: TenantId) -> Result<TenantKey, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new().fill(&mut bytes[..]).map_err(|_| CryptoError::Random)?;
        Ok(TenantKey::from_bytes(tenant, bytes))
    }

    pub fn from_bytes(tenant: TenantId, bytes: Zeroizing<[u8; KEY_LEN]>) -> TenantKey {
        TenantKey { tenant, key: hmac::Key::new(hmac::HMAC_SHA256, &bytes[..]) }
    }

    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    pub(crate) fn hmac_key(&self) -> &hmac::Key {
        &self.key
    }
}

/// The data encryption key of one chunk, labelled with what it was derived for: the chunk
/// id, the master key's epoch and the tenancy. Sealing takes the labels from the DEK, so an
/// envelope's header always names the key that sealed it; opening refuses a DEK whose
/// labels differ from the envelope's before decrypting anything.
pub struct Dek {
    chunk_id: ChunkId,
    key_epoch: u32,
    tenancy: Tenancy,
    secret: Secret,
}

impl Dek {
    /// HKDF-SHA256 with salt = chunk id, info = [`DEK_INFO`], and input key material = the
    /// master key, followed by the tenant secret for an isolated tenant's chunk.
    pub fn derive(
        master: &MasterKey,
        chunk_id: &ChunkId,
        tenant_secret: Option<&TenantSecret>,
    ) -> Dek {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, chunk_id.as_bytes());
        let (prk, tenancy) = match tenant_secret {
            None => (salt.extract(master.secret.expose()), Tenancy::Shared),
            Some(tenant_secret) => {
                let mut ikm = Zeroizing::new([0u8; 2 * KEY_LEN]);
                let (master_part, tenant_part) = ikm.split_at_mut(KEY_LEN);
                master_part.copy_from_slice(master.secret.expose());
                tenant_part.copy_from_slice(tenant_secret.secret.expose());
                (salt.extract(&ikm[..]), Tenancy::Isolated(tenant_secret.tenant))
            }
        };
        let mut secret = Secret::zeroed();
        prk.expand(&[DEK_INFO], &AES_256_GCM)
            .and_then(|okm| okm.fill(secret.expose_mut()))
            .expect("HKDF-SHA256 expands to one 32-byte block");
        Dek { chunk_id: *chunk_id, key_epoch: master.epoch, tenancy, secret }
    }

    /// A DEK received from a storage node (an HPC client seals and opens on its side), with
    /// the labels it was sent with.
    pub fn from_bytes(
        chunk_id: ChunkId,
        key_epoch: u32,
        tenancy: Tenancy,
        bytes: Zeroizing<[u8; KEY_LEN]>,
    ) -> Dek {
        Dek { chunk_id, key_epoch, tenancy, secret: Secret::from_bytes(bytes) }
    }

    pub fn chunk_id(&self) -> ChunkId {
        self.chunk_id
    }

    pub fn key_epoch(&self) -> u32 {
        self.key_epoch
    }

    pub fn tenancy(&self) -> Tenancy {
        self.tenancy
    }

    pub(crate) fn expose(&self) -> &[u8; KEY_LEN] {
        self.secret.expose()
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey").field("epoch", &self.epoch).finish_non_exhaustive()
    }
}

impl fmt::Debug for TenantSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantSecret").field("tenant", &self.tenant).finish_non_exhaustive()
    }
}

impl fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantKey").field("tenant", &self.tenant).finish_non_exhaustive()
    }
}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dek")
            .field("chunk_id", &self.chunk_id)
            .field("key_epoch", &self.key_epoch)
            .field("tenancy", &self.tenancy)
            .finish_non_exhaustive()
    }
}

/// 32 secret bytes on the heap, zeroed on drop. No `Debug`, no `Clone`.
struct Secret(Box<Zeroizing<[u8; KEY_LEN]>>);

impl Secret {
    fn zeroed() -> Secret {
        Secret(Box::new(Zeroizing::new([0; KEY_LEN])))
    }

    fn generate() -> Result<Secret, CryptoError> {
        let mut secret = Secret::zeroed();
        SystemRandom::new().fill(secret.expose_mut()).map_err(|_| CryptoError::Random)?;
        Ok(secret)
    }

    /// Copies into a fresh heap buffer; `bytes` is zeroed when it drops at the end.
    fn from_bytes(bytes: Zeroizing<[u8; KEY_LEN]>) -> Secret {
        let mut secret = Secret::zeroed();
        secret.expose_mut().copy_from_slice(&bytes[..]);
        secret
    }

    fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn expose_mut(&mut self) -> &mut [u8] {
        &mut self.0[..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER_BYTE: u8 = 0x11;
    const TENANT_BYTE: u8 = 0x22;

    fn tenant(n: u8) -> TenantId {
        TenantId::new([n; 16]).unwrap()
    }

    fn master(epoch: u32, byte: u8) -> MasterKey {
        MasterKey::from_bytes(epoch, Zeroizing::new([byte; KEY_LEN]))
    }

    fn secret(tenant_n: u8, byte: u8) -> TenantSecret {
        TenantSecret::from_bytes(tenant(tenant_n), Zeroizing::new([byte; KEY_LEN]))
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn dek_matches_an_independent_hkdf() {
        // Expected values computed with Python's hmac module (RFC 5869 written out):
        // salt = SHA-256(b"abc"), info = b"kiseki-chunk-dek-v1", IKM = 0x11 * 32
        // (shared) or 0x11 * 32 + 0x22 * 32 (isolated).
        let chunk_id = ChunkId::of_plaintext(b"abc");
        let shared = Dek::derive(&master(1, MASTER_BYTE), &chunk_id, None);
        assert_eq!(
            hex(shared.expose()),
            "86b5e0f9c38ae536de99ab75514cdb209c31605e141550fed7d3de60092bff71"
        );
        let tenant_secret = secret(1, TENANT_BYTE);
        let isolated = Dek::derive(&master(1, MASTER_BYTE), &chunk_id, Some(&tenant_secret));
        assert_eq!(
            hex(isolated.expose()),
            "95e2822777854f99488a99353d6d0d384149772f23a0c125f9c447660e0c6b5c"
        );
        assert_eq!(shared.tenancy(), Tenancy::Shared);
        assert_eq!(isolated.tenancy(), Tenancy::Isolated(tenant(1)));
        assert_eq!((isolated.chunk_id(), isolated.key_epoch()), (chunk_id, 1));
    }

    #[test]
    fn dek_differs_by_chunk_id_epoch_and_tenant_secret() {
        let (id_a, id_b) = (ChunkId::of_plaintext(b"a"), ChunkId::of_plaintext(b"b"));
        let epoch_1 = MasterKey::generate(1).unwrap();
        let epoch_2 = MasterKey::generate(2).unwrap();
        let base = Dek::derive(&epoch_1, &id_a, None);
        let other_chunk = Dek::derive(&epoch_1, &id_b, None);
        let other_epoch = Dek::derive(&epoch_2, &id_a, None);
        let (secret_1, secret_2) = (secret(1, 0x33), secret(2, 0x44));
        let with_secret_1 = Dek::derive(&epoch_1, &id_a, Some(&secret_1));
        let with_secret_2 = Dek::derive(&epoch_1, &id_a, Some(&secret_2));
        let all = [&base, &other_chunk, &other_epoch, &with_secret_1, &with_secret_2];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x.expose(), y.expose(), "{x:?} and {y:?} share key bytes");
            }
        }
        assert_eq!(other_epoch.key_epoch(), 2);
        let again = Dek::derive(&epoch_1, &id_a, None);
        assert_eq!(base.expose(), again.expose(), "derivation is deterministic");
    }

    #[test]
    fn generated_keys_are_random() {
        let (a, b) = (MasterKey::generate(1).unwrap(), MasterKey::generate(1).unwrap());
        assert_ne!(a.secret.expose(), b.secret.expose());
        assert_ne!(a.secret.expose(), &[0; KEY_LEN]);
        let (c, d) = (TenantSecret::generate(tenant(1)), TenantSecret::generate(tenant(1)));
        assert_ne!(c.unwrap().secret.expose(), d.unwrap().secret.expose());
        let (e, f) = (TenantKey::generate(tenant(1)).unwrap(), TenantKey::generate(tenant(1)));
        let f = f.unwrap();
        assert_ne!(ChunkId::isolated(&e, b"x"), ChunkId::isolated(&f, b"x"));
    }

    #[test]
    fn debug_shows_labels_and_no_key_bytes() {
        // 0x5a is 'Z' and 90: look for it in hex, decimal and as a character.
        let key_bytes = || Zeroizing::new([0x5a; KEY_LEN]);
        let chunk_id = ChunkId::from_bytes([0x01; 32]);
        let outputs = [
            format!("{:?}", MasterKey::from_bytes(7, key_bytes())),
            format!("{:#?}", MasterKey::from_bytes(7, key_bytes())),
            format!("{:?}", TenantSecret::from_bytes(tenant(3), key_bytes())),
            format!("{:?}", TenantKey::from_bytes(tenant(3), key_bytes())),
            format!("{:?}", Dek::from_bytes(chunk_id, 7, Tenancy::Shared, key_bytes())),
        ];
        for output in &outputs {
            let lower = output.to_lowercase();
            assert!(!lower.contains("5a5a"), "{output}");
            assert!(!output.contains("90"), "{output}");
            assert!(!output.contains("ZZ"), "{output}");
            assert!(!output.contains('['), "no byte arrays at all: {output}");
        }
        assert!(outputs[0].contains("epoch: 7"), "{}", outputs[0]);
        assert!(outputs[2].contains("03030303-"), "{}", outputs[2]);
        assert!(outputs[4].contains(&chunk_id.to_string()), "{}", outputs[4]);
    }

    #[test]
    fn from_bytes_keeps_the_bytes() {
        let key = MasterKey::from_bytes(3, Zeroizing::new([9; KEY_LEN]));
        assert_eq!(key.secret.expose(), &[9; KEY_LEN]);
        assert_eq!(key.epoch(), 3);
    }
}
