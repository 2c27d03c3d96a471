//! Names that are not secret: chunk ids, tenant ids, and whether a chunk is shared.

use std::fmt;

use aws_lc_rs::{digest, hmac};

use crate::constants::{CHUNK_ID_LEN, TENANT_ID_LEN};
use crate::keys::TenantKey;

/// A chunk's content address: SHA-256 of its plaintext, or HMAC-SHA256 under a tenant's id
/// key for tenants that opted out of cross-tenant dedup. Same id, same content: the engine
/// stores one envelope per id and counts references.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId([u8; CHUNK_ID_LEN]);

impl ChunkId {
    /// The id of a chunk shared across tenants: SHA-256(plaintext).
    pub fn of_plaintext(plaintext: &[u8]) -> ChunkId {
        ChunkId::from_digest(digest::digest(&digest::SHA256, plaintext).as_ref())
    }

    /// The id of an isolated tenant's chunk: HMAC-SHA256(tenant id key, plaintext). Two
    /// tenants storing the same bytes get unrelated ids, so neither can learn by dedup that
    /// the other holds them.
    pub fn isolated(key: &TenantKey, plaintext: &[u8]) -> ChunkId {
        ChunkId::from_digest(hmac::sign(key.hmac_key(), plaintext).as_ref())
    }

    /// An id read back from an index, an envelope or the wire.
    pub const fn from_bytes(bytes: [u8; CHUNK_ID_LEN]) -> ChunkId {
        ChunkId(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; CHUNK_ID_LEN] {
        &self.0
    }

    /// Whether `plaintext` is the content this id names. `id_key` is the tenant's id key
    /// for an isolated id, `None` for a shared one. HMAC ids are compared in constant time.
    pub(crate) fn matches(&self, plaintext: &[u8], id_key: Option<&TenantKey>) -> bool {
        match id_key {
            None => ChunkId::of_plaintext(plaintext) == *self,
            Some(key) => hmac::verify(key.hmac_key(), plaintext, &self.0).is_ok(),
        }
    }

    fn from_digest(digest: &[u8]) -> ChunkId {
        let bytes: [u8; CHUNK_ID_LEN] =
            digest.try_into().expect("SHA-256 and HMAC-SHA256 give 32 bytes");
        ChunkId(bytes)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

/// A tenant's id: a UUID, never the nil UUID (which an envelope uses for "no tenant").
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId([u8; TENANT_ID_LEN]);

impl TenantId {
    /// `None` for the nil UUID, which is reserved for shared chunks.
    pub fn new(bytes: [u8; TENANT_ID_LEN]) -> Option<TenantId> {
        if bytes == [0; TENANT_ID_LEN] { None } else { Some(TenantId(bytes)) }
    }

    pub const fn as_bytes(&self) -> &[u8; TENANT_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for TenantId {
    /// The UUID's usual form: 8-4-4-4-12 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mut rest, mut first) = (&self.0[..], true);
        for group in [4, 2, 2, 2, 6] {
            let (head, tail) = rest.split_at(group);
            if !first {
                f.write_str("-")?;
            }
            write_hex(f, head)?;
            (rest, first) = (tail, false);
        }
        Ok(())
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({self})")
    }
}

/// Who a chunk belongs to, as far as its envelope is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tenancy {
    /// Deduplicated across tenants: SHA-256 id, DEK from the master key alone, no tenant
    /// in the envelope.
    Shared,
    /// A tenant that opted out of cross-tenant dedup: HMAC id, DEK that also takes the
    /// tenant's secret, tenant id authenticated in the envelope.
    Isolated(TenantId),
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn tenant(n: u8) -> TenantId {
        TenantId::new([n; TENANT_ID_LEN]).unwrap()
    }

    fn id_key(n: u8, key_byte: u8) -> TenantKey {
        TenantKey::from_bytes(tenant(n), Zeroizing::new([key_byte; 32]))
    }

    #[test]
    fn shared_id_is_sha256_of_the_plaintext() {
        // FIPS 180-2, appendix B.1.
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(ChunkId::of_plaintext(b"abc").to_string(), expected);
    }

    #[test]
    fn isolated_id_is_hmac_sha256_under_the_tenant_key() {
        // Computed independently with Python's hmac module:
        // hmac.new(bytes([7]) * 32, b"abc", hashlib.sha256).hexdigest()
        let expected = "127da4ced6a839b8f6118bc244684d2663e70cb5ff0adeefca89d7e74d5a0525";
        assert_eq!(ChunkId::isolated(&id_key(1, 7), b"abc").to_string(), expected);
    }

    #[test]
    fn different_plaintexts_have_different_ids() {
        assert_ne!(ChunkId::of_plaintext(b"chunk a"), ChunkId::of_plaintext(b"chunk b"));
        assert_ne!(ChunkId::of_plaintext(b""), ChunkId::of_plaintext(&[0]));
        let key = id_key(1, 7);
        assert_ne!(ChunkId::isolated(&key, b"chunk a"), ChunkId::isolated(&key, b"chunk b"));
    }

    #[test]
    fn isolated_ids_differ_from_the_shared_id_and_between_tenants() {
        let plaintext = b"the same bytes in two tenants";
        let (key_a, key_b) = (id_key(1, 7), id_key(2, 8));
        let shared = ChunkId::of_plaintext(plaintext);
        let isolated_a = ChunkId::isolated(&key_a, plaintext);
        let isolated_b = ChunkId::isolated(&key_b, plaintext);
        assert_ne!(isolated_a, shared);
        assert_ne!(isolated_b, shared);
        assert_ne!(isolated_a, isolated_b);
        assert_eq!(isolated_a, ChunkId::isolated(&key_a, plaintext), "ids are deterministic");
    }

    #[test]
    fn matches_checks_content_and_key() {
        let (key_a, key_b) = (id_key(1, 7), id_key(2, 8));
        let shared = ChunkId::of_plaintext(b"x");
        assert!(shared.matches(b"x", None));
        assert!(!shared.matches(b"y", None));
        let isolated = ChunkId::isolated(&key_a, b"x");
        assert!(isolated.matches(b"x", Some(&key_a)));
        assert!(!isolated.matches(b"y", Some(&key_a)));
        assert!(!isolated.matches(b"x", Some(&key_b)));
        assert!(!isolated.matches(b"x", None));
    }

    #[test]
    fn display_is_lowercase_hex_and_uuid_form() {
        let id = ChunkId::from_bytes([0xab; CHUNK_ID_LEN]);
        assert_eq!(id.to_string(), "ab".repeat(32));
        assert_eq!(format!("{id:?}"), format!("ChunkId({})", "ab".repeat(32)));
        let bytes: [u8; 16] = std::array::from_fn(|i| i as u8);
        let tenant = TenantId::new(bytes).unwrap();
        assert_eq!(tenant.to_string(), "00010203-0405-0607-0809-0a0b0c0d0e0f");
    }

    #[test]
    fn nil_tenant_id_is_refused() {
        assert_eq!(TenantId::new([0; TENANT_ID_LEN]), None);
        assert!(TenantId::new([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]).is_some());
    }

    #[test]
    fn ids_order_and_hash_by_bytes() {
        let low = ChunkId::from_bytes([0; CHUNK_ID_LEN]);
        let high = ChunkId::from_bytes([0xff; CHUNK_ID_LEN]);
        assert!(low < high);
        let set: std::collections::HashSet<ChunkId> = [low, high, low].into_iter().collect();
        assert_eq!(set.len(), 2);
    }
}
