//! Which metadata shard (Raft group) owns a command's state.
//!
//! A tenant's metadata (its record, buckets, objects, uploads, tenant key epochs and audit)
//! lives in one shard so that every check a command needs reads one group's state; what is
//! looked up without a tenant (credentials by access key id, chunk refcounts by chunk id,
//! the system key epochs and audit) lives in shard 0. The mapping is part of the cluster's
//! format: the shard count is fixed when a cluster is created, and `shard_of` must never
//! change for a given count.

use crate::command::ShardKey;
use crate::constants::SHARDS_MAX;
use crate::error::ConsensusError;
use crate::types::ShardId;

/// The cluster's shard count and the mapping of owners to shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardMap {
    count: u32,
}

impl ShardMap {
    /// A map of `count` shards, 1 to `SHARDS_MAX`.
    pub fn new(count: u32) -> Result<ShardMap, ConsensusError> {
        if count == 0 || count > SHARDS_MAX {
            return Err(ConsensusError::Config(format!(
                "shard count {count} outside 1 to {SHARDS_MAX}"
            )));
        }
        Ok(ShardMap { count })
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// Every shard id of the cluster.
    pub fn shards(&self) -> impl Iterator<Item = ShardId> {
        (0..self.count).map(ShardId)
    }

    /// The shard that owns `key`'s state. Tenants spread by FNV-1a over their id (stable
    /// across builds and platforms, unlike `std`'s hasher), mixed by MurmurHash3's 64-bit
    /// finalizer: FNV's low bits alone are weak (ids of one repeated byte all landed in one
    /// of 8 shards), and the remainder below reads the low bits.
    pub fn shard_of(&self, key: ShardKey) -> ShardId {
        match key {
            ShardKey::System => ShardId(0),
            ShardKey::Tenant(tenant) => {
                let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
                for byte in tenant.0 {
                    hash ^= u64::from(byte);
                    hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
                }
                hash ^= hash >> 33;
                hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
                hash ^= hash >> 33;
                hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
                hash ^= hash >> 33;
                let shard = hash % u64::from(self.count);
                ShardId(u32::try_from(shard).expect("a remainder of a u32 count fits a u32"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::TenantId;

    #[test]
    fn counts_are_bounded() {
        assert!(ShardMap::new(0).is_err());
        assert!(ShardMap::new(SHARDS_MAX + 1).is_err());
        assert_eq!(ShardMap::new(4).map(|map| map.shards().count()).ok(), Some(4));
    }

    #[test]
    fn the_mapping_is_stable_and_spreads_tenants() {
        let map = ShardMap::new(8).expect("8 shards");
        assert_eq!(map.shard_of(ShardKey::System), ShardId(0));
        // Pinned values: a change here would move every tenant of every cluster.
        let pinned: Vec<u32> =
            (1..=4u8).map(|n| map.shard_of(ShardKey::Tenant(TenantId([n; 16]))).0).collect();
        assert_eq!(pinned, [5, 5, 7, 3]);
        let mut used = std::collections::BTreeSet::new();
        for n in 1..=64u8 {
            used.insert(map.shard_of(ShardKey::Tenant(TenantId([n; 16]))));
        }
        assert_eq!(used.len(), 8, "64 tenants reach all 8 shards");
        let one = ShardMap::new(1).expect("1 shard");
        assert_eq!(one.shard_of(ShardKey::Tenant(TenantId([9; 16]))), ShardId(0));
    }
}
