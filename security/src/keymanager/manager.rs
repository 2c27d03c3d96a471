//! [`KeyManager`]: master-key epochs, tenant KEKs, isolated-tenant secrets, crypto-shred,
//! and the cache of unwrapped keys, over a [`KeyStoreBackend`] and a [`RootSealer`].
//!
//! Reads go through the cache: an unwrapped key stays on its mlocked page for at most the
//! cache TTL (default 60 s, 5 to 300 s), then is zeroed and re-read from the store. So a
//! shred on one node reaches every other node's cache within one TTL: once its entry
//! expires, a node re-reads the store, finds the tenant destroyed, and answers
//! [`KeyManagerError::TenantKeysDestroyed`]. The node that shreds wipes its own cache at
//! once.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::AES_256_GCM;
use aws_lc_rs::hkdf;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::constants::KEY_LEN;
use crate::error::CryptoError;
use crate::ids::TenantId;
use crate::keymanager::error::KeyManagerError;
use crate::keymanager::locked::{
    LockedKey, MemoryLocking, make_process_non_dumpable, mlock_failures, process_is_non_dumpable,
};
use crate::keymanager::record::{
    aead_open, aead_seal, open_record, seal_record, unwrap_secret, wrap_secret,
};
use crate::keymanager::root::RootSealer;
use crate::keymanager::store::{KeyScope, KeyStoreBackend, StoreError};
use crate::keys::{MasterKey, TenantKey, TenantSecret};

/// The default lifetime of an unwrapped key in the cache.
pub const CACHE_TTL_DEFAULT_SECS: u64 = 60;
/// Below this, every read would go to the store (consensus) and back.
pub const CACHE_TTL_MIN_SECS: u64 = 5;
/// Above this, a shred would take too long to reach every node's cache.
pub const CACHE_TTL_MAX_SECS: u64 = 300;

const ID_KEY_INFO: &[u8] = b"kiseki-chunk-id-key-v1";
const BLOB_MAGIC: [u8; 4] = *b"KSKT";
const BLOB_VERSION: u16 = 1;
/// magic (4) | version (2) | KEK epoch (4).
const BLOB_HEADER_LEN: usize = 10;

/// How the key manager runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyManagerConfig {
    cache_ttl: Duration,
    pub memory_locking: MemoryLocking,
    /// Make the process non-dumpable when the key manager starts (on by default).
    pub non_dumpable: bool,
}

impl KeyManagerConfig {
    /// A configuration with the given cache TTL, refused outside 5..=300 s.
    pub fn with_cache_ttl_secs(secs: u64) -> Result<KeyManagerConfig, KeyManagerError> {
        if !(CACHE_TTL_MIN_SECS..=CACHE_TTL_MAX_SECS).contains(&secs) {
            return Err(KeyManagerError::InvalidCacheTtl {
                secs,
                min_secs: CACHE_TTL_MIN_SECS,
                max_secs: CACHE_TTL_MAX_SECS,
            });
        }
        Ok(KeyManagerConfig { cache_ttl: Duration::from_secs(secs), ..Default::default() })
    }

    pub fn cache_ttl(&self) -> Duration {
        self.cache_ttl
    }
}

impl Default for KeyManagerConfig {
    fn default() -> KeyManagerConfig {
        KeyManagerConfig {
            cache_ttl: Duration::from_secs(CACHE_TTL_DEFAULT_SECS),
            memory_locking: MemoryLocking::Required,
            non_dumpable: true,
        }
    }
}

/// Tenants whose data must be kept: a crypto-shred of one is refused.
pub trait RetentionHolds {
    fn has_hold(&self, tenant: TenantId) -> bool;
}

impl RetentionHolds for BTreeSet<TenantId> {
    fn has_hold(&self, tenant: TenantId) -> bool {
        self.contains(&tenant)
    }
}

/// No retention holds at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRetentionHolds;

impl RetentionHolds for NoRetentionHolds {
    fn has_hold(&self, _tenant: TenantId) -> bool {
        false
    }
}

/// What `status` reports; nothing secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyManagerStatus {
    pub root_source: String,
    pub master_epoch: Option<u32>,
    pub cached_keys: usize,
    pub cache_ttl_secs: u64,
    /// Every key in the cache sits on a locked page.
    pub cache_memory_locked: bool,
    pub mlock_failures: u64,
    pub non_dumpable: bool,
    /// Cache wipes for crypto-shreds done by this node.
    pub cache_wipes: u64,
}

struct CachedKey {
    key: LockedKey,
    secret: Option<LockedKey>,
    loaded_at: Instant,
}

/// The key manager of one node; see the module documentation.
pub struct KeyManager<S> {
    /// Shared, so a long read of the store (an audit export) can run without this manager's
    /// lock: see [`KeyManager::root_shared`].
    root: Arc<dyn RootSealer>,
    store: S,
    config: KeyManagerConfig,
    clock: Arc<dyn Clock>,
    cache: HashMap<(KeyScope, u32), CachedKey>,
    cache_wipes: u64,
}

impl<S: KeyStoreBackend> KeyManager<S> {
    /// A key manager over `store`. Makes the process non-dumpable first (unless the
    /// configuration says not to) and fails if it cannot.
    pub fn new(
        root: Box<dyn RootSealer>,
        store: S,
        config: KeyManagerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<KeyManager<S>, KeyManagerError> {
        if config.non_dumpable {
            make_process_non_dumpable()?;
        }
        let root = Arc::from(root);
        Ok(KeyManager { root, store, config, clock, cache: HashMap::new(), cache_wipes: 0 })
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    pub fn root(&self) -> &dyn RootSealer {
        self.root.as_ref()
    }

    /// The root sealer, to use after this manager's lock is let go: with a clone of the
    /// store it reads the audit log while puts and gets keep taking keys.
    pub fn root_shared(&self) -> Arc<dyn RootSealer> {
        Arc::clone(&self.root)
    }

    /// The root sealer and the store at once (what the audit log appends with).
    pub fn audit_parts(&mut self) -> (&dyn RootSealer, &mut S) {
        (self.root.as_ref(), &mut self.store)
    }

    pub fn config(&self) -> &KeyManagerConfig {
        &self.config
    }

    // ---- system master keys ----

    /// Cluster init: creates master-key epoch 1 from the system generator if there is
    /// none. Returns the current epoch and whether it was created now.
    pub fn init_cluster(&mut self) -> Result<(u32, bool), KeyManagerError> {
        match self.store.current_epoch(KeyScope::System)? {
            Some(epoch) => Ok((epoch, false)),
            None => Ok((self.add_epoch(KeyScope::System, None)?, true)),
        }
    }

    /// Makes a new random master key the current epoch; older epochs still open.
    pub fn rotate_master(&mut self) -> Result<u32, KeyManagerError> {
        self.require_current(KeyScope::System)?;
        self.add_epoch(KeyScope::System, None)
    }

    pub fn master_epoch(&self) -> Result<u32, KeyManagerError> {
        self.require_current(KeyScope::System)
    }

    /// The epochs whose master keys are still stored, oldest first.
    pub fn master_epochs(&self) -> Result<Vec<u32>, KeyManagerError> {
        let current = self.store.current_epoch(KeyScope::System)?.unwrap_or(0);
        let mut epochs = Vec::new();
        for epoch in 1..=current {
            if self.store.key_record(KeyScope::System, epoch)?.is_some() {
                epochs.push(epoch);
            }
        }
        Ok(epochs)
    }

    pub fn master_key(&mut self, epoch: u32) -> Result<MasterKey, KeyManagerError> {
        let cached = self.load(KeyScope::System, epoch)?;
        Ok(MasterKey::from_bytes(epoch, Zeroizing::new(*cached.key.expose())))
    }

    pub fn current_master_key(&mut self) -> Result<MasterKey, KeyManagerError> {
        let epoch = self.master_epoch()?;
        self.master_key(epoch)
    }

    /// Removes an old master-key epoch (after the re-sealer moved its chunks on).
    pub fn retire_master_epoch(&mut self, epoch: u32) -> Result<(), KeyManagerError> {
        if self.master_epoch()? == epoch {
            return Err(KeyManagerError::RetireCurrent { epoch });
        }
        if self.store.key_record(KeyScope::System, epoch)?.is_none() {
            return Err(KeyManagerError::UnknownEpoch { scope: KeyScope::System, epoch });
        }
        self.store.retire_epoch(KeyScope::System, epoch)?;
        self.cache.remove(&(KeyScope::System, epoch));
        Ok(())
    }

    // ---- tenant KEKs ----

    /// Creates a tenant's first KEK; for an isolated tenant also its secret, wrapped by
    /// the KEK.
    pub fn create_tenant_kek(
        &mut self,
        tenant: TenantId,
        isolated: bool,
    ) -> Result<u32, KeyManagerError> {
        let scope = KeyScope::Tenant(tenant);
        self.refuse_destroyed(tenant)?;
        if self.store.current_epoch(scope)?.is_some() {
            return Err(KeyManagerError::AlreadyExists { scope });
        }
        let secret = if isolated { Some(random_key()?) } else { None };
        self.add_epoch_with(scope, None, secret.as_ref())
    }

    /// A new random KEK for the tenant; the tenant secret is re-wrapped under it.
    pub fn rotate_tenant_kek(&mut self, tenant: TenantId) -> Result<u32, KeyManagerError> {
        self.next_tenant_epoch(tenant, None)
    }

    /// A new KEK epoch from key material the tenant brings (32 bytes).
    pub fn import_tenant_kek(
        &mut self,
        tenant: TenantId,
        material: &[u8],
    ) -> Result<u32, KeyManagerError> {
        let bytes: &[u8; KEY_LEN] = material
            .try_into()
            .map_err(|_| KeyManagerError::BadKeyMaterial { len_bytes: material.len() })?;
        let key = Zeroizing::new(*bytes);
        let scope = KeyScope::Tenant(tenant);
        self.refuse_destroyed(tenant)?;
        if self.store.current_epoch(scope)?.is_none() {
            return self.add_epoch_with(scope, Some(&key), None);
        }
        self.next_tenant_epoch(tenant, Some(&key))
    }

    pub fn tenant_epoch(&self, tenant: TenantId) -> Result<u32, KeyManagerError> {
        self.refuse_destroyed(tenant)?;
        self.require_current(KeyScope::Tenant(tenant))
    }

    /// The isolated tenant's secret (for its chunks' DEKs), unwrapped by the current KEK.
    pub fn tenant_secret(&mut self, tenant: TenantId) -> Result<TenantSecret, KeyManagerError> {
        let secret = self.current_secret(tenant)?;
        Ok(TenantSecret::from_bytes(tenant, secret))
    }

    /// The isolated tenant's chunk-id key, HKDF of its secret (`kiseki-chunk-id-key-v1`).
    pub fn tenant_id_key(&mut self, tenant: TenantId) -> Result<TenantKey, KeyManagerError> {
        let secret = self.current_secret(tenant)?;
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, tenant.as_bytes()).extract(&secret[..]);
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        prk.expand(&[ID_KEY_INFO], &AES_256_GCM)
            .and_then(|okm| okm.fill(&mut bytes[..]))
            .map_err(|_| CryptoError::Internal { operation: "HKDF id key" })?;
        Ok(TenantKey::from_bytes(tenant, bytes))
    }

    /// Seals a tenant's manifest or inline object under its current KEK. `context` (a
    /// bucket and key, say) is authenticated, not stored: the same context opens it.
    pub fn seal_for_tenant(
        &mut self,
        tenant: TenantId,
        context: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KeyManagerError> {
        self.seal_under(KeyScope::Tenant(tenant), context, plaintext)
    }

    /// Opens what [`KeyManager::seal_for_tenant`] sealed, under the KEK epoch it names.
    pub fn open_for_tenant(
        &mut self,
        tenant: TenantId,
        context: &[u8],
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyManagerError> {
        self.open_under(KeyScope::Tenant(tenant), context, blob)
    }

    /// Seals `plaintext` under the current epoch of `scope`'s key: `magic | version |
    /// epoch | nonce | ciphertext | tag`, the AAD binding the header, the scope and
    /// `context`.
    pub fn seal_under(
        &mut self,
        scope: KeyScope,
        context: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KeyManagerError> {
        if let KeyScope::Tenant(tenant) = scope {
            self.refuse_destroyed(tenant)?;
        }
        let epoch = self.require_current(scope)?;
        let cached = self.load(scope, epoch)?;
        let header = blob_header(epoch);
        let sealed = aead_seal(cached.key.expose(), &blob_aad(&header, scope, context), plaintext)?;
        let mut blob = header.to_vec();
        blob.extend_from_slice(&sealed);
        Ok(blob)
    }

    /// Opens what [`KeyManager::seal_under`] sealed, under the epoch it names.
    pub fn open_under(
        &mut self,
        scope: KeyScope,
        context: &[u8],
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyManagerError> {
        let Some((header, sealed)) = blob.split_first_chunk::<BLOB_HEADER_LEN>() else {
            return Err(KeyManagerError::OpenFailed);
        };
        if header[..4] != BLOB_MAGIC || header[4..6] != BLOB_VERSION.to_le_bytes() {
            return Err(KeyManagerError::OpenFailed);
        }
        let epoch = u32::from_le_bytes([header[6], header[7], header[8], header[9]]);
        let cached = self.load(scope, epoch)?;
        aead_open(cached.key.expose(), &blob_aad(header, scope, context), sealed)
    }

    /// Crypto-shred: destroys every KEK of the tenant in the store (for good) and wipes
    /// this node's cache of them. Refused while the tenant has a retention hold.
    pub fn shred_tenant(
        &mut self,
        tenant: TenantId,
        holds: &dyn RetentionHolds,
    ) -> Result<(), KeyManagerError> {
        if holds.has_hold(tenant) {
            return Err(KeyManagerError::RetentionHold { tenant });
        }
        self.refuse_destroyed(tenant)?;
        self.store.destroy_tenant_keys(tenant)?;
        self.wipe_tenant_cache(tenant);
        Ok(())
    }

    /// Zeroes and drops every cached key of the tenant.
    pub fn wipe_tenant_cache(&mut self, tenant: TenantId) {
        self.cache.retain(|(scope, _), _| *scope != KeyScope::Tenant(tenant));
        self.cache_wipes += 1;
    }

    /// Zeroes and drops every cached key older than the TTL (also done on every read).
    pub fn expire_cache(&mut self) {
        let (now, ttl) = (self.clock.now(), self.config.cache_ttl);
        self.cache.retain(|_, cached| now.saturating_duration_since(cached.loaded_at) < ttl);
    }

    pub fn status(&self) -> KeyManagerStatus {
        KeyManagerStatus {
            root_source: self.root.source(),
            master_epoch: self.store.current_epoch(KeyScope::System).ok().flatten(),
            cached_keys: self.cache.len(),
            cache_ttl_secs: self.config.cache_ttl.as_secs(),
            cache_memory_locked: self.cache.values().all(|cached| {
                cached.key.is_locked() && cached.secret.as_ref().is_none_or(LockedKey::is_locked)
            }),
            mlock_failures: mlock_failures(),
            non_dumpable: process_is_non_dumpable(),
            cache_wipes: self.cache_wipes,
        }
    }

    // ---- helpers ----

    fn refuse_destroyed(&self, tenant: TenantId) -> Result<(), KeyManagerError> {
        if self.store.keys_destroyed(tenant)? {
            return Err(KeyManagerError::TenantKeysDestroyed { tenant });
        }
        Ok(())
    }

    fn require_current(&self, scope: KeyScope) -> Result<u32, KeyManagerError> {
        self.store.current_epoch(scope)?.ok_or(KeyManagerError::NoKey { scope })
    }

    fn current_secret(
        &mut self,
        tenant: TenantId,
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyManagerError> {
        let epoch = self.tenant_epoch(tenant)?;
        let cached = self.load(KeyScope::Tenant(tenant), epoch)?;
        let secret = cached.secret.as_ref().ok_or(KeyManagerError::NotIsolated { tenant })?;
        Ok(Zeroizing::new(*secret.expose()))
    }

    fn next_tenant_epoch(
        &mut self,
        tenant: TenantId,
        material: Option<&Zeroizing<[u8; KEY_LEN]>>,
    ) -> Result<u32, KeyManagerError> {
        let epoch = self.tenant_epoch(tenant)?;
        let scope = KeyScope::Tenant(tenant);
        let secret = {
            let cached = self.load(scope, epoch)?;
            cached.secret.as_ref().map(|secret| Zeroizing::new(*secret.expose()))
        };
        self.add_epoch_with(scope, material, secret.as_ref())
    }

    fn add_epoch(
        &mut self,
        scope: KeyScope,
        material: Option<&Zeroizing<[u8; KEY_LEN]>>,
    ) -> Result<u32, KeyManagerError> {
        self.add_epoch_with(scope, material, None)
    }

    /// Seals a new epoch's record (a fresh random key unless `material` is given) and
    /// records it as the next epoch. A racing rotation elsewhere makes the store answer
    /// `Conflict`; that is returned, not retried, so an operator sees it.
    fn add_epoch_with(
        &mut self,
        scope: KeyScope,
        material: Option<&Zeroizing<[u8; KEY_LEN]>>,
        secret: Option<&Zeroizing<[u8; KEY_LEN]>>,
    ) -> Result<u32, KeyManagerError> {
        let epoch =
            self.store.current_epoch(scope)?.unwrap_or(0).checked_add(1).ok_or(
                KeyManagerError::Store(StoreError::Refused("key epochs exhausted".into())),
            )?;
        let key = match material {
            Some(material) => Zeroizing::new(**material),
            None => random_key()?,
        };
        let wrapped = match (scope, secret) {
            (KeyScope::Tenant(tenant), Some(secret)) => {
                Some(wrap_secret(&key, tenant, epoch, secret)?)
            }
            _ => None,
        };
        let record = seal_record(self.root.as_ref(), scope, epoch, &key, wrapped.as_ref())?;
        self.store.advance_epoch(scope, epoch, record)?;
        Ok(epoch)
    }

    /// The unwrapped key of one epoch, from the cache if loaded less than a TTL ago, else
    /// from the store (which answers "destroyed" after a shred).
    fn load(&mut self, scope: KeyScope, epoch: u32) -> Result<&CachedKey, KeyManagerError> {
        self.expire_cache();
        if !self.cache.contains_key(&(scope, epoch)) {
            let cached = self.read_from_store(scope, epoch)?;
            self.cache.insert((scope, epoch), cached);
        }
        Ok(&self.cache[&(scope, epoch)])
    }

    fn read_from_store(&self, scope: KeyScope, epoch: u32) -> Result<CachedKey, KeyManagerError> {
        if let KeyScope::Tenant(tenant) = scope {
            self.refuse_destroyed(tenant)?;
        }
        let record = self
            .store
            .key_record(scope, epoch)?
            .ok_or(KeyManagerError::UnknownEpoch { scope, epoch })?;
        let opened = open_record(self.root.as_ref(), scope, epoch, &record)?;
        let locking = self.config.memory_locking;
        let key = LockedKey::from_bytes(&opened.key, locking)?;
        let secret = match (scope, opened.wrapped_secret) {
            (KeyScope::Tenant(tenant), Some(wrapped)) => {
                let secret = unwrap_secret(&opened.key, tenant, epoch, &wrapped)?;
                Some(LockedKey::from_bytes(&secret, locking)?)
            }
            (_, None) => None,
            (KeyScope::System, Some(_)) => {
                return Err(KeyManagerError::CorruptRecord { what: "master key with a secret" });
            }
        };
        Ok(CachedKey { key, secret, loaded_at: self.clock.now() })
    }
}

impl<S> fmt::Debug for KeyManager<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyManager")
            .field("root", &self.root)
            .field("cached_keys", &self.cache.len())
            .finish_non_exhaustive()
    }
}

fn random_key() -> Result<Zeroizing<[u8; KEY_LEN]>, KeyManagerError> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    SystemRandom::new().fill(&mut key[..]).map_err(|_| CryptoError::Random)?;
    Ok(key)
}

fn blob_header(epoch: u32) -> [u8; BLOB_HEADER_LEN] {
    let mut header = [0u8; BLOB_HEADER_LEN];
    header[..4].copy_from_slice(&BLOB_MAGIC);
    header[4..6].copy_from_slice(&BLOB_VERSION.to_le_bytes());
    header[6..].copy_from_slice(&epoch.to_le_bytes());
    header
}

fn blob_aad(header: &[u8; BLOB_HEADER_LEN], scope: KeyScope, context: &[u8]) -> Vec<u8> {
    let mut aad = header.to_vec();
    match scope {
        KeyScope::System => aad.push(0),
        KeyScope::Tenant(tenant) => {
            aad.push(1);
            aad.extend_from_slice(tenant.as_bytes());
        }
    }
    aad.extend_from_slice(context);
    aad
}
