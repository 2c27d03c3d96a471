//! The inline-data guard: token buckets that bound how many inline object bytes one tenant,
//! and all tenants together, may add to one shard's log per second.
//!
//! Inline objects are the one command whose size a tenant controls directly and that lands
//! whole in the log (and on every replica, and in every snapshot); without a bound one
//! tenant's stream of small puts would crowd every other tenant's metadata out of the
//! shard. The guard runs on the proposing leader, before the proposal: it depends on time,
//! so it must never run in `apply`, where every node must decide the same.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::command::TenantId;
use crate::constants::{
    INLINE_SHARD_BURST_BYTES, INLINE_SHARD_BYTES_PER_SECOND, INLINE_TENANT_BURST_BYTES,
    INLINE_TENANT_BYTES_PER_SECOND, INLINE_TRACKED_TENANTS_MAX,
};

/// A rate and a burst, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub bytes_per_second: u64,
    pub burst_bytes: u64,
}

/// The budgets of one shard's guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardLimits {
    pub per_tenant: Budget,
    pub per_shard: Budget,
}

impl Default for GuardLimits {
    fn default() -> GuardLimits {
        GuardLimits {
            per_tenant: Budget {
                bytes_per_second: INLINE_TENANT_BYTES_PER_SECOND,
                burst_bytes: INLINE_TENANT_BURST_BYTES,
            },
            per_shard: Budget {
                bytes_per_second: INLINE_SHARD_BYTES_PER_SECOND,
                burst_bytes: INLINE_SHARD_BURST_BYTES,
            },
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u64,
    refilled_at: Instant,
}

impl Bucket {
    fn full(budget: Budget, now: Instant) -> Bucket {
        Bucket { tokens: budget.burst_bytes, refilled_at: now }
    }

    fn refill(&mut self, budget: Budget, now: Instant) {
        let elapsed_us = now.saturating_duration_since(self.refilled_at).as_micros();
        let earned = elapsed_us * u128::from(budget.bytes_per_second) / 1_000_000;
        if earned > 0 {
            let tokens = u128::from(self.tokens) + earned;
            self.tokens =
                u64::try_from(tokens.min(u128::from(budget.burst_bytes))).unwrap_or(u64::MAX);
            self.refilled_at = now;
        }
    }

    /// How long until `bytes` tokens are there (zero if they are).
    fn wait_for(&self, budget: Budget, bytes: u64) -> Duration {
        let missing = bytes.saturating_sub(self.tokens);
        if missing == 0 || budget.bytes_per_second == 0 {
            return Duration::ZERO;
        }
        let micros = u128::from(missing) * 1_000_000 / u128::from(budget.bytes_per_second) + 1;
        Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
    }
}

/// One shard's inline-data budgets.
#[derive(Debug)]
pub struct InlineGuard {
    limits: GuardLimits,
    shard: Bucket,
    tenants: HashMap<TenantId, Bucket>,
}

impl InlineGuard {
    pub fn new(limits: GuardLimits, now: Instant) -> InlineGuard {
        InlineGuard { limits, shard: Bucket::full(limits.per_shard, now), tenants: HashMap::new() }
    }

    /// Spends `bytes` of the tenant's and the shard's budgets, or says how long to wait.
    /// A refused request spends nothing.
    pub fn admit(&mut self, tenant: TenantId, bytes: u64, now: Instant) -> Result<(), Duration> {
        let limits = self.limits;
        if bytes > limits.per_tenant.burst_bytes || bytes > limits.per_shard.burst_bytes {
            // Can never fit; the command's own size limit keeps this from happening with
            // sane limits, and a retry hint would be a lie.
            return Err(Duration::MAX);
        }
        if !self.tenants.contains_key(&tenant) && self.tenants.len() >= INLINE_TRACKED_TENANTS_MAX {
            self.forget_idlest();
        }
        let tenant_bucket =
            self.tenants.entry(tenant).or_insert_with(|| Bucket::full(limits.per_tenant, now));
        tenant_bucket.refill(limits.per_tenant, now);
        self.shard.refill(limits.per_shard, now);
        let wait = tenant_bucket
            .wait_for(limits.per_tenant, bytes)
            .max(self.shard.wait_for(limits.per_shard, bytes));
        if !wait.is_zero() {
            return Err(wait);
        }
        tenant_bucket.tokens -= bytes;
        self.shard.tokens -= bytes;
        Ok(())
    }

    fn forget_idlest(&mut self) {
        let idlest =
            self.tenants.iter().min_by_key(|(_, bucket)| bucket.refilled_at).map(|(t, _)| *t);
        if let Some(tenant) = idlest {
            self.tenants.remove(&tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> GuardLimits {
        GuardLimits {
            per_tenant: Budget { bytes_per_second: 1000, burst_bytes: 2000 },
            per_shard: Budget { bytes_per_second: 3000, burst_bytes: 3000 },
        }
    }

    #[test]
    fn one_tenant_is_held_to_its_rate_and_others_still_get_through() {
        let start = Instant::now();
        let mut guard = InlineGuard::new(limits(), start);
        let (flooder, quiet) = (TenantId([1; 16]), TenantId([2; 16]));
        assert_eq!(guard.admit(flooder, 2000, start), Ok(()), "the burst");
        let wait = guard.admit(flooder, 500, start).expect_err("burst spent");
        assert_eq!(wait, Duration::from_micros(500_001));
        assert_eq!(guard.admit(quiet, 1000, start), Ok(()), "another tenant is unaffected");
        assert_eq!(guard.admit(flooder, 500, start + Duration::from_millis(501)), Ok(()));
    }

    #[test]
    fn the_shard_budget_caps_all_tenants_together() {
        let start = Instant::now();
        let mut guard = InlineGuard::new(limits(), start);
        assert_eq!(guard.admit(TenantId([1; 16]), 2000, start), Ok(()));
        assert_eq!(guard.admit(TenantId([2; 16]), 1000, start), Ok(()));
        assert!(guard.admit(TenantId([3; 16]), 1, start).is_err(), "the shard is spent");
        assert_eq!(guard.admit(TenantId([3; 16]), 1, start + Duration::from_millis(1)), Ok(()));
    }

    #[test]
    fn a_refused_request_spends_nothing_and_impossible_ones_say_so() {
        let start = Instant::now();
        let mut guard = InlineGuard::new(limits(), start);
        let tenant = TenantId([1; 16]);
        assert_eq!(guard.admit(tenant, 1500, start), Ok(()));
        assert!(guard.admit(tenant, 1000, start).is_err());
        assert_eq!(guard.admit(tenant, 500, start), Ok(()), "the refused 1000 were not spent");
        assert_eq!(guard.admit(tenant, 2001, start), Err(Duration::MAX));
    }
}
