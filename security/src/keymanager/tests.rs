//! The key manager's acceptance tests (issue 7) over the in-memory store: policies,
//! rotation and re-seal, crypto-shred, and the audit log. The same scenarios over the
//! consensus state machine are in `consensus/tests/raft/keystore.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zeroize::Zeroizing;

use super::*;
use crate::authz::{AllowedBy, KesPolicies, Target};
use crate::authz::{AuditAction, AuditActor, AuditEvent, AuditResult, Authorizer, Caller};
use crate::envelope::{Envelope, SealParams};
use crate::ids::{ChunkId, Tenancy, TenantId};
use crate::keys::{Dek, MasterKey};
use crate::role::{OrgId, Role};

type Shared = Arc<Mutex<MemoryKeyStore>>;

const ROOT_BYTE: u8 = 0x42;
/// Bytes no record or log line may ever contain.
const SECRET_PLAINTEXT: &[u8] = b"TOP-SECRET-patient-record-0042";

fn root() -> Box<dyn RootSealer> {
    let root = Zeroizing::new([ROOT_BYTE; 32]);
    Box::new(LocalRootKey::from_bytes("test", &root, MemoryLocking::Required).unwrap())
}

fn manager<S: KeyStoreBackend>(store: S, clock: Arc<ManualClock>) -> KeyManager<S> {
    KeyManager::new(root(), store, KeyManagerConfig::default(), clock).unwrap()
}

fn org(name: &str) -> OrgId {
    OrgId::parse(name).unwrap()
}

fn identity(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn caller(name: &str, n: u8, roles: Vec<Role>) -> Caller {
    Caller::new(name, &identity(n), roles).unwrap()
}

fn tenant_admin(org_name: &str, n: u8) -> Caller {
    caller(&format!("{org_name}-admin"), n, vec![Role::TenantAdmin { org: org(org_name) }])
}

fn cluster_admin() -> Caller {
    caller("ops", 0xa0, vec![Role::ClusterAdmin])
}

fn service(store: MemoryKeyStore, policies: KesPolicies) -> KeyService<MemoryKeyStore> {
    let mut keys = manager(store, Arc::new(ManualClock::new()));
    keys.init_cluster().unwrap();
    let authorizer = Authorizer::new(Default::default(), policies);
    KeyService::new(keys, authorizer, AuditLog::default(), Box::new(NoRetentionHolds))
}

fn denied(result: Result<KeyReply, ServiceError>) -> bool {
    matches!(result, Err(ServiceError::AccessDenied))
}

// ---- policies ----

#[test]
fn an_identity_can_do_exactly_what_its_globs_allow() {
    let app = identity(7);
    let json = format!(
        r#"{{"app": {{"allow": ["/v1/key/generate/acme-*", "/v1/key/decrypt/acme-corp"],
             "deny": ["/v1/key/generate/acme-blocked"], "identities": ["{app}"]}}}}"#
    );
    let mut service = service(MemoryKeyStore::new(), KesPolicies::parse(json.as_bytes()).unwrap());
    for tenant in ["acme-corp", "acme-blocked", "other"] {
        service.keys_mut().create_tenant_kek(tenant_of_org(&org(tenant)), false).unwrap();
    }
    // A workload of acme-corp with the policy: generate and decrypt its own tenant's key.
    let workload =
        Caller::new("app", &app, vec![Role::Workload { org: org("acme-corp") }]).unwrap();
    let reply = service.call(&workload, KeyRequest::Generate { name: "acme-corp".into() }, 1);
    let Ok(KeyReply::DataKey { plaintext, ciphertext }) = reply else { panic!("{reply:?}") };
    let decrypt = KeyRequest::Decrypt { name: "acme-corp".into(), ciphertext };
    let Ok(KeyReply::Plaintext(opened)) = service.call(&workload, decrypt, 2) else { panic!() };
    assert_eq!(opened, plaintext);
    // Not allowed by a glob: create, list, rotate, delete; decrypt under another name.
    for request in [
        KeyRequest::Create { name: "acme-corp".into(), isolated: false },
        KeyRequest::List { pattern: None },
        KeyRequest::Rotate { name: "acme-corp".into() },
        KeyRequest::Delete { name: "acme-corp".into() },
        KeyRequest::Decrypt { name: "acme-other".into(), ciphertext: vec![0; 40] },
        KeyRequest::Status,
        KeyRequest::PolicyList,
    ] {
        assert!(denied(service.call(&workload, request, 3)));
    }
    // The glob allows acme-*, but the tenant rules keep it to its own tenant, and deny wins.
    assert!(denied(service.call(&workload, KeyRequest::Generate { name: "other".into() }, 4)));
    let blocked = KeyRequest::Generate { name: "acme-blocked".into() };
    assert!(denied(service.call(&workload, blocked, 5)));
}

#[test]
fn no_policy_means_denied_and_a_second_binding_replaces_the_first() {
    let mut service = service(MemoryKeyStore::new(), KesPolicies::default());
    let admin = cluster_admin();
    let server = caller("node-1", 0x51, vec![Role::Server]);
    // Without a policy, even an infrastructure peer with a valid certificate gets only
    // what the role table gives: a server may not create or list keys.
    assert!(denied(service.call(&server, KeyRequest::List { pattern: None }, 1)));
    let stranger = caller("stranger", 0x52, vec![]);
    for request in [KeyRequest::Status, KeyRequest::List { pattern: None }] {
        assert!(denied(service.call(&stranger, request, 1)));
    }
    // The cluster admin writes two policies and binds the stranger to one, then the other.
    let write = |name: &str, allow: &str| KeyRequest::PolicyWrite {
        name: name.into(),
        allow: vec![allow.into()],
        deny: vec![],
    };
    service.call(&admin, write("status-only", "/v1/key/status"), 2).unwrap();
    service.call(&admin, write("list-only", "/v1/key/list"), 2).unwrap();
    let assign = |policy: &str| KeyRequest::IdentityAssign {
        identity: identity(0x52),
        policy: policy.into(),
    };
    service.call(&admin, assign("status-only"), 3).unwrap();
    assert!(service.call(&stranger, KeyRequest::Status, 4).is_ok());
    assert!(denied(service.call(&stranger, KeyRequest::List { pattern: None }, 4)));
    service.call(&admin, assign("list-only"), 5).unwrap();
    assert!(denied(service.call(&stranger, KeyRequest::Status, 6)), "first binding gone");
    assert!(service.call(&stranger, KeyRequest::List { pattern: None }, 6).is_ok());
    let describe = KeyRequest::IdentityDescribe { identity: identity(0x52) };
    let Ok(KeyReply::Identity { policy }) = service.call(&admin, describe, 7) else { panic!() };
    assert_eq!(policy.as_deref(), Some("list-only"));
    // Removing the binding leaves nothing.
    service.call(&admin, KeyRequest::IdentityDelete { identity: identity(0x52) }, 8).unwrap();
    assert!(denied(service.call(&stranger, KeyRequest::List { pattern: None }, 9)));
    // A malformed pattern is refused, not stored.
    let bad = write("bad", "/v1/key/**");
    assert!(matches!(service.call(&admin, bad, 10), Err(ServiceError::Refused(_))));
    // The stranger cannot edit policies itself.
    assert!(denied(service.call(&stranger, write("mine", "/v1/key/*/*"), 11)));
}

#[test]
fn policy_edits_are_stored_sealed_and_a_new_service_finds_them() {
    let store = Arc::new(Mutex::new(MemoryKeyStore::new()));
    let make = || {
        let mut keys = manager(Arc::clone(&store), Arc::new(ManualClock::new()));
        keys.init_cluster().unwrap();
        let authorizer = Authorizer::new(Default::default(), KesPolicies::default());
        KeyService::new(keys, authorizer, AuditLog::default(), Box::new(NoRetentionHolds))
    };
    let (admin, stranger) = (cluster_admin(), caller("stranger", 0x52, vec![]));
    let mut first = make();
    assert!(!first.restore_policies().unwrap(), "nothing stored yet");
    let write = KeyRequest::PolicyWrite {
        name: "status-only".into(),
        allow: vec!["/v1/key/status".into()],
        deny: vec![],
    };
    first.call(&admin, write, 1).unwrap();
    let assign =
        KeyRequest::IdentityAssign { identity: identity(0x52), policy: "status-only".into() };
    first.call(&admin, assign, 2).unwrap();
    assert!(first.call(&stranger, KeyRequest::Status, 3).is_ok());
    // Sealed: the store holds no pattern in the clear.
    let stored = store.lock().unwrap().policies().unwrap().expect("stored");
    assert!(!stored.windows(14).any(|w| w == b"/v1/key/status"));

    // A restart (a new service on the same store) starts with none, then finds them.
    let mut second = make();
    assert!(denied(second.call(&stranger, KeyRequest::Status, 4)));
    assert!(second.restore_policies().unwrap());
    assert!(second.call(&stranger, KeyRequest::Status, 5).is_ok());
    // An edit there (the binding removed) is what the next one finds.
    second.call(&admin, KeyRequest::IdentityDelete { identity: identity(0x52) }, 6).unwrap();
    let mut third = make();
    assert!(third.restore_policies().unwrap());
    assert!(denied(third.call(&stranger, KeyRequest::Status, 7)));
    assert!(third.authorizer().kes_policies().policy("status-only").is_some());
    // Stored policies changed by anyone without the root key are refused, not loaded.
    let mut forged = stored.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    store.lock().unwrap().put_policies(forged).unwrap();
    assert!(make().restore_policies().is_err());
}

#[test]
fn a_tenant_admin_cannot_touch_another_tenants_keys() {
    let mut service = service(MemoryKeyStore::new(), KesPolicies::default());
    let acme = tenant_admin("acme-corp", 1);
    let globex = tenant_admin("globex", 2);
    let create = |name: &str| KeyRequest::Create { name: name.into(), isolated: true };
    assert!(matches!(service.call(&acme, create("acme-corp"), 1), Ok(KeyReply::Epoch(1))));
    assert!(matches!(service.call(&globex, create("globex"), 1), Ok(KeyReply::Epoch(1))));
    for request in [
        create("acme-corp"),
        KeyRequest::Rotate { name: "acme-corp".into() },
        KeyRequest::Delete { name: "acme-corp".into() },
        KeyRequest::List { pattern: Some("acme-corp".into()) },
        KeyRequest::Import { name: "acme-corp".into(), material: Zeroizing::new(vec![1; 32]) },
        KeyRequest::Generate { name: "acme-corp".into() },
    ] {
        assert!(denied(service.call(&globex, request, 2)));
    }
    // acme's key is intact: still epoch 1, and acme itself can rotate it.
    let acme_tenant = tenant_of_org(&org("acme-corp"));
    assert_eq!(service.keys().tenant_epoch(acme_tenant).unwrap(), 1);
    let rotate = KeyRequest::Rotate { name: "acme-corp".into() };
    assert!(matches!(service.call(&acme, rotate, 3), Ok(KeyReply::Epoch(2))));
    // Nor does it reach the master key.
    assert!(denied(service.call(&acme, KeyRequest::Rotate { name: "master".into() }, 4)));
}

#[test]
fn the_cluster_admin_cannot_read_tenant_keys() {
    let mut service = service(MemoryKeyStore::new(), KesPolicies::default());
    let acme = tenant_admin("acme-corp", 1);
    let create = KeyRequest::Create { name: "acme-corp".into(), isolated: false };
    service.call(&acme, create, 1).unwrap();
    let admin = cluster_admin();
    let name = || "acme-corp".to_string();
    for request in [
        KeyRequest::Generate { name: name() },
        KeyRequest::Decrypt { name: name(), ciphertext: vec![0; 64] },
        KeyRequest::List { pattern: Some(name()) },
        KeyRequest::Rotate { name: name() },
        KeyRequest::Delete { name: name() },
        KeyRequest::Import { name: name(), material: Zeroizing::new(vec![2; 32]) },
    ] {
        assert!(denied(service.call(&admin, request, 2)));
    }
    // Even a KES policy that allows everything does not lift the zero-trust rule.
    let policies = format!(
        r#"{{"all": {{"allow": ["/v1/*/*/*", "/v1/*/*"], "identities": ["{}"]}}}}"#,
        identity(0xa0)
    );
    let mut service = service_with(service, KesPolicies::parse(policies.as_bytes()).unwrap());
    assert!(denied(service.call(&admin, KeyRequest::Generate { name: name() }, 3)));
    // The cluster's own key is the admin's to rotate.
    let rotate = KeyRequest::Rotate { name: "master".into() };
    assert!(matches!(service.call(&admin, rotate, 4), Ok(KeyReply::Epoch(2))));
}

fn service_with(
    service: KeyService<MemoryKeyStore>,
    policies: KesPolicies,
) -> KeyService<MemoryKeyStore> {
    let store = service.keys().store().clone();
    let keys = manager(store, Arc::new(ManualClock::new()));
    let authorizer = Authorizer::new(Default::default(), policies);
    KeyService::new(keys, authorizer, AuditLog::default(), Box::new(NoRetentionHolds))
}

// ---- rotation and re-seal ----

#[derive(Default)]
struct Chunks(BTreeMap<ChunkId, Envelope>, Faults);

/// What the in-memory source refuses: these ids fail to read for good; the next
/// `unavailable` calls fail as transient.
#[derive(Default)]
struct Faults {
    corrupt: Vec<ChunkId>,
    unavailable: u32,
}

impl Chunks {
    fn transient(&mut self) -> Result<(), ChunkSourceError> {
        if self.1.unavailable > 0 {
            self.1.unavailable -= 1;
            return Err(ChunkSourceError::Unavailable { problem: "busy".into() });
        }
        Ok(())
    }
}

impl ChunkSource for Chunks {
    fn chunks_after(
        &mut self,
        after: Option<ChunkId>,
        max: usize,
    ) -> Result<Vec<ChunkId>, ChunkSourceError> {
        self.transient()?;
        let range = match after {
            None => self.0.range(..),
            Some(after) => {
                self.0.range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            }
        };
        Ok(range.take(max).map(|(id, _)| *id).collect())
    }

    fn read(&mut self, id: &ChunkId) -> Result<Option<Envelope>, ChunkSourceError> {
        self.transient()?;
        if self.1.corrupt.contains(id) {
            return Err(ChunkSourceError::Unreadable { problem: "checksum".into() });
        }
        Ok(self.0.get(id).cloned())
    }

    fn replace(&mut self, id: &ChunkId, envelope: Envelope) -> Result<(), ChunkSourceError> {
        self.transient()?;
        self.0.insert(*id, envelope);
        Ok(())
    }
}

fn read_chunk<S: KeyStoreBackend>(keys: &mut KeyManager<S>, envelope: &Envelope) -> Vec<u8> {
    let master = keys.master_key(envelope.key_epoch()).unwrap();
    let secret = match envelope.tenant() {
        Tenancy::Shared => None,
        Tenancy::Isolated(tenant) => Some(keys.tenant_secret(tenant).unwrap()),
    };
    let dek = Dek::derive(&master, &envelope.chunk_id(), secret.as_ref());
    envelope.open(&dek).unwrap().to_vec()
}

#[test]
fn rotation_reseal_pause_resume_and_retire() {
    let clock = Arc::new(ManualClock::new());
    let mut keys = manager(MemoryKeyStore::new(), clock);
    assert_eq!(keys.init_cluster().unwrap(), (1, true));
    assert_eq!(keys.init_cluster().unwrap(), (1, false), "init is idempotent");
    let isolated = TenantId::new([9; 16]).unwrap();
    keys.create_tenant_kek(isolated, true).unwrap();
    let mut chunks = Chunks::default();
    let mut expected = BTreeMap::new();
    let mut write = |keys: &mut KeyManager<MemoryKeyStore>, n: u32, isolated_chunk: bool| {
        let plaintext = format!("chunk {n}").into_bytes();
        let master = keys.current_master_key().unwrap();
        let envelope = if isolated_chunk {
            let id_key = keys.tenant_id_key(isolated).unwrap();
            let secret = keys.tenant_secret(isolated).unwrap();
            let id = ChunkId::isolated(&id_key, &plaintext);
            let dek = Dek::derive(&master, &id, Some(&secret));
            Envelope::seal(&plaintext, &SealParams::new(&dek).with_tenant_wrapping(1, b"w"))
                .unwrap()
        } else {
            let dek = Dek::derive(&master, &ChunkId::of_plaintext(&plaintext), None);
            Envelope::seal(&plaintext, &SealParams::new(&dek)).unwrap()
        };
        expected.insert(envelope.chunk_id(), plaintext);
        chunks.0.insert(envelope.chunk_id(), envelope);
    };
    for n in 0..6 {
        write(&mut keys, n, n % 2 == 0);
    }
    assert_eq!(keys.rotate_master().unwrap(), 2);
    for n in 6..9 {
        write(&mut keys, n, n % 2 == 0);
    }
    let epochs = |chunks: &Chunks| chunks.0.values().map(Envelope::key_epoch).collect::<Vec<_>>();
    assert_eq!(epochs(&chunks).iter().filter(|&&e| e == 1).count(), 6);
    for envelope in chunks.0.values() {
        assert_eq!(read_chunk(&mut keys, envelope), expected[&envelope.chunk_id()]);
    }
    // Re-seal in batches of 2, pausing after the first batch.
    let mut resealer = Resealer::new(2);
    resealer.step(&mut keys, &mut chunks, 2).unwrap();
    resealer.pause();
    let before = epochs(&chunks);
    let paused = resealer.step(&mut keys, &mut chunks, 2).unwrap();
    assert_eq!(epochs(&chunks), before, "a paused re-sealer does nothing");
    assert_eq!(paused.examined, 2);
    // Resume from the saved cursor in a new re-sealer (as after a restart).
    let mut resealer = Resealer::resume_from(2, resealer.cursor(), ResealProgress::default());
    while !resealer.step(&mut keys, &mut chunks, 2).unwrap().done {}
    assert!(epochs(&chunks).iter().all(|&epoch| epoch == 2), "{:?}", epochs(&chunks));
    assert_eq!(resealer.progress().resealed + paused.resealed, 6);
    // Retire epoch 1: every chunk still reads; epoch 1 itself is gone.
    assert_eq!(keys.retire_master_epoch(2), Err(KeyManagerError::RetireCurrent { epoch: 2 }));
    keys.retire_master_epoch(1).unwrap();
    assert_eq!(keys.master_epochs().unwrap(), vec![2]);
    assert!(matches!(keys.master_key(1), Err(KeyManagerError::UnknownEpoch { epoch: 1, .. })));
    for envelope in chunks.0.values() {
        assert_eq!(read_chunk(&mut keys, envelope), expected[&envelope.chunk_id()]);
        assert_eq!(
            envelope.tenant_kek_epoch(),
            if envelope.tenant() == Tenancy::Shared { 0 } else { 1 }
        );
    }
}

#[test]
fn epochs_are_random_and_a_racing_rotation_loses() {
    let store: Shared = Arc::default();
    let mut a = manager(Arc::clone(&store), Arc::new(ManualClock::new()));
    let mut b = manager(Arc::clone(&store), Arc::new(ManualClock::new()));
    a.init_cluster().unwrap();
    assert_eq!(b.init_cluster().unwrap(), (1, false));
    a.rotate_master().unwrap();
    let id = ChunkId::of_plaintext(b"x");
    let dek = |key: MasterKey| Dek::derive(&key, &id, None);
    let (one, two) = (dek(a.master_key(1).unwrap()), dek(a.master_key(2).unwrap()));
    let sealed = Envelope::seal(b"x", &SealParams::new(&one)).unwrap();
    assert!(sealed.open(&two).is_err(), "epochs differ");
    // Another cluster's key manager (another root key) generates its own epoch 1.
    let mut other = manager(MemoryKeyStore::new(), Arc::new(ManualClock::new()));
    other.init_cluster().unwrap();
    assert_ne!(
        format!("{:?}", other.store().all_bytes()),
        format!("{:?}", store.lock().unwrap().all_bytes())
    );
    let mut copy = store.lock().unwrap().clone();
    assert!(matches!(
        copy.advance_epoch(KeyScope::System, 2, vec![1]),
        Err(StoreError::Conflict(_))
    ));
}

#[test]
fn cache_ttl_is_validated_and_status_reports_locked_memory() {
    for bad in [0, 4, 301, u64::MAX] {
        assert!(matches!(
            KeyManagerConfig::with_cache_ttl_secs(bad),
            Err(KeyManagerError::InvalidCacheTtl { .. })
        ));
    }
    for good in [5, 60, 300] {
        assert_eq!(
            KeyManagerConfig::with_cache_ttl_secs(good).unwrap().cache_ttl().as_secs(),
            good
        );
    }
    let mut keys = manager(MemoryKeyStore::new(), Arc::new(ManualClock::new()));
    keys.init_cluster().unwrap();
    keys.current_master_key().unwrap();
    let status = keys.status();
    assert!(status.non_dumpable, "the key manager made the process non-dumpable");
    assert!(status.cache_memory_locked);
    assert_eq!((status.cached_keys, status.cache_ttl_secs), (1, 60));
    assert_eq!(status.master_epoch, Some(1));
}

// ---- crypto-shred ----

#[test]
fn crypto_shred_destroys_a_tenant_everywhere_within_the_ttl() {
    let store: Shared = Arc::default();
    let clock = Arc::new(ManualClock::new());
    let config = KeyManagerConfig::with_cache_ttl_secs(30).unwrap();
    let mut node_a = KeyManager::new(root(), Arc::clone(&store), config, clock.clone()).unwrap();
    let mut node_b = KeyManager::new(root(), Arc::clone(&store), config, clock.clone()).unwrap();
    node_a.init_cluster().unwrap();
    let (victim, other) = (TenantId::new([1; 16]).unwrap(), TenantId::new([2; 16]).unwrap());
    node_a.create_tenant_kek(victim, true).unwrap();
    node_a.create_tenant_kek(other, true).unwrap();
    node_a.rotate_tenant_kek(victim).unwrap();

    // The victim's objects: manifests under both KEK epochs, and isolated chunks.
    let mut manifests = Vec::new();
    for n in 0..4u8 {
        if n == 2 {
            node_a.rotate_tenant_kek(victim).unwrap();
        }
        let context = [b'k', n];
        manifests
            .push((context, node_a.seal_for_tenant(victim, &context, SECRET_PLAINTEXT).unwrap()));
    }
    let master = node_a.current_master_key().unwrap();
    let secret = node_a.tenant_secret(victim).unwrap();
    let id_key = node_a.tenant_id_key(victim).unwrap();
    let chunk_id = ChunkId::isolated(&id_key, SECRET_PLAINTEXT);
    let dek = Dek::derive(&master, &chunk_id, Some(&secret));
    let raw_envelope =
        Envelope::seal(SECRET_PLAINTEXT, &SealParams::new(&dek)).unwrap().into_bytes();
    drop((secret, dek));
    let other_manifest = node_a.seal_for_tenant(other, b"k", b"other data").unwrap();
    // Node B reads the victim's manifests (so its cache holds the KEKs).
    for (context, blob) in &manifests {
        assert_eq!(&node_b.open_for_tenant(victim, context, blob).unwrap()[..], SECRET_PLAINTEXT);
    }

    // A retention hold refuses the shred.
    let holds = BTreeSet::from([victim]);
    assert_eq!(
        node_a.shred_tenant(victim, &holds),
        Err(KeyManagerError::RetentionHold { tenant: victim })
    );
    assert!(node_a.open_for_tenant(victim, &manifests[0].0, &manifests[0].1).is_ok());
    node_a.shred_tenant(victim, &NoRetentionHolds).unwrap();

    let destroyed = Err(KeyManagerError::TenantKeysDestroyed { tenant: victim });
    // On the shredding node, at once, for every object.
    for (context, blob) in &manifests {
        assert_eq!(node_a.open_for_tenant(victim, context, blob).map(|_| ()), destroyed);
    }
    assert_eq!(node_a.tenant_secret(victim).map(|_| ()), destroyed);
    assert_eq!(
        node_a.rotate_tenant_kek(victim),
        Err(KeyManagerError::TenantKeysDestroyed { tenant: victim })
    );
    assert_eq!(
        node_a.create_tenant_kek(victim, true),
        Err(KeyManagerError::TenantKeysDestroyed { tenant: victim })
    );
    assert!(matches!(
        node_a.shred_tenant(victim, &NoRetentionHolds),
        Err(KeyManagerError::TenantKeysDestroyed { .. })
    ));
    // On the other node, within the TTL: its cache may still answer, then it may not.
    clock.advance(Duration::from_secs(31));
    for (context, blob) in &manifests {
        assert_eq!(node_b.open_for_tenant(victim, context, blob).map(|_| ()), destroyed);
    }
    // Holding the master key and the raw envelope is not enough: without the tenant
    // secret no derivation opens it (the shared derivation, other tenants' secrets).
    let envelope = Envelope::parse(&raw_envelope).unwrap();
    let master = node_b.current_master_key().unwrap();
    assert!(Envelope::parse(&raw_envelope).is_ok());
    let shared_dek = Dek::derive(&master, &chunk_id, None);
    assert!(envelope.open(&shared_dek).is_err());
    let other_secret = node_b.tenant_secret(other).unwrap();
    let wrong = Dek::derive(&master, &chunk_id, Some(&other_secret));
    assert!(envelope.open(&wrong).is_err());
    // The stored records hold nothing of the victim any more.
    let stored = store.lock().unwrap().clone();
    for epoch in 1..=3 {
        assert_eq!(stored.key_record(KeyScope::Tenant(victim), epoch), Ok(None));
    }
    // The other tenant is untouched, on both nodes.
    for node in [&mut node_a, &mut node_b] {
        assert_eq!(&node.open_for_tenant(other, b"k", &other_manifest).unwrap()[..], b"other data");
    }
    assert!(node_a.status().cache_wipes >= 1);
}

// ---- audit ----

fn event(caller: &Caller, path: &str, target: Target, allowed: bool) -> AuditEvent {
    AuditEvent {
        time_unix_s: 1_700_000_000,
        actor: AuditActor {
            common_name: caller.common_name().to_owned(),
            key_identity: caller.key_identity().to_owned(),
            roles: caller.roles().to_vec(),
        },
        action: AuditAction::Call { path: path.to_owned() },
        target,
        result: if allowed {
            AuditResult::Allowed { by: AllowedBy::Role(Role::ClusterAdmin) }
        } else {
            AuditResult::Denied { reason: crate::authz::DenyReason::NotPermitted }
        },
    }
}

/// A service that has recorded one event of every type, for two tenants.
fn audited_service() -> KeyService<MemoryKeyStore> {
    let mut service = service(MemoryKeyStore::new(), KesPolicies::default());
    let (acme, globex, admin) =
        (tenant_admin("acme-corp", 1), tenant_admin("globex", 2), cluster_admin());
    let workload = caller("w", 3, vec![Role::Workload { org: org("acme-corp") }]);
    let acme_target = Target::Tenant(org("acme-corp"));
    // Authentication success and failure.
    service
        .audit_authentication(
            &event(&workload, "/v1/object/get/a", acme_target.clone(), true),
            true,
        )
        .unwrap();
    service
        .audit_authentication(&event(&admin, "/v1/storage/list", Target::Cluster, false), false)
        .unwrap();
    // Key operations (tenants' and the system's), with the imported material a secret.
    let material = Zeroizing::new(SECRET_PLAINTEXT[..32.min(SECRET_PLAINTEXT.len())].to_vec());
    let mut padded = material.to_vec();
    padded.resize(32, b'!');
    service
        .call(
            &acme,
            KeyRequest::Import { name: "acme-corp".into(), material: Zeroizing::new(padded) },
            10,
        )
        .unwrap();
    service
        .call(&globex, KeyRequest::Create { name: "globex".into(), isolated: true }, 11)
        .unwrap();
    service.call(&admin, KeyRequest::Rotate { name: "master".into() }, 12).unwrap();
    // Admin operation, policy change, data access.
    service.call(&admin, KeyRequest::Status, 13).unwrap();
    let write = KeyRequest::PolicyWrite {
        name: "p".into(),
        allow: vec!["/v1/key/list".into()],
        deny: vec![],
    };
    service.call(&admin, write, 14).unwrap();
    service.audit_data_access(&event(&workload, "/v1/object/get/a", acme_target, true)).unwrap();
    service.audit_admin(&event(&admin, "/v1/storage/drain/d1", Target::Cluster, true)).unwrap();
    // A denied call is recorded too.
    assert!(denied(service.call(&globex, KeyRequest::Rotate { name: "acme-corp".into() }, 15)));
    assert!(denied(service.call(&admin, KeyRequest::Generate { name: "acme-corp".into() }, 16)));
    service
}

#[test]
fn every_event_type_produces_a_record_and_the_log_verifies() {
    let service = audited_service();
    let (root, store) = (service.keys().root(), service.keys().store());
    let head = AuditLog::verify(root, store).unwrap();
    assert!(head.records >= 12, "{head:?}");
    let (system, tenant_count) = AuditLog::cluster_view(root, store).unwrap();
    let acme = AuditLog::export_tenant(root, store, tenant_of_org(&org("acme-corp"))).unwrap();
    let mut kinds: Vec<AuditKind> = system.iter().chain(&acme).map(|r| r.entry.kind).collect();
    let globex = AuditLog::export_tenant(root, store, tenant_of_org(&org("globex"))).unwrap();
    kinds.extend(globex.iter().map(|r| r.entry.kind));
    for kind in [
        AuditKind::AuthSuccess,
        AuditKind::AuthFailure,
        AuditKind::KeyOperation,
        AuditKind::AdminOperation,
        AuditKind::PolicyChange,
        AuditKind::DataAccess,
    ] {
        assert!(kinds.contains(&kind), "no {kind:?} record");
    }
    assert!(tenant_count >= 5);
    // Who, role, what, target, result, time are all there.
    let import = acme.iter().find(|r| r.entry.action.contains("/v1/key/import/acme-corp")).unwrap();
    assert_eq!(import.entry.actor, "acme-corp-admin");
    assert_eq!(import.entry.actor_key, identity(1));
    assert!(import.entry.role.contains("acme-corp"), "{:?}", import.entry);
    assert_eq!(import.entry.target, "tenant acme-corp");
    assert_eq!(import.entry.time_unix_s, 10);
    // globex's denied try at acme's key is globex's record (it names globex's admin), and
    // the cluster admin's denied try at acme's key is acme's.
    let denial = |r: &ExportedRecord| matches!(r.entry.outcome, AuditOutcome::Denied { .. });
    assert!(globex.iter().any(|r| denial(r) && r.entry.action.contains("rotate/acme-corp")));
    assert!(acme.iter().any(|r| denial(r) && r.entry.actor == "ops"));
    assert!(!acme.iter().any(|r| r.entry.actor.contains("globex")));
}

#[test]
fn tenant_export_excludes_other_tenants_and_the_cluster_view_is_anonymous() {
    let service = audited_service();
    let (root, store) = (service.keys().root(), service.keys().store());
    let acme_id = tenant_of_org(&org("acme-corp"));
    let globex_id = tenant_of_org(&org("globex"));
    let acme = AuditLog::export_tenant(root, store, acme_id).unwrap();
    let text = format!("{acme:?}");
    assert!(!text.contains("globex"), "{text}");
    assert!(!text.contains(&globex_id.to_string()));
    assert!(acme.iter().any(|r| r.entry.tenant.as_deref() == Some(acme_id.to_string().as_str())));
    // Relevant system events: the master-key rotation and the policy change.
    assert!(
        acme.iter()
            .any(|r| r.entry.tenant.is_none() && r.entry.action.contains("/v1/key/rotate/master"))
    );
    assert!(acme.iter().any(|r| r.entry.kind == AuditKind::PolicyChange));
    // ... but not the cluster's other admin operations.
    assert!(!acme.iter().any(|r| r.entry.action.contains("storage")));
    let (system, _) = AuditLog::cluster_view(root, store).unwrap();
    let view = format!("{system:?}");
    for tenant_data in
        ["acme", "globex", &acme_id.to_string(), &globex_id.to_string(), &identity(1), &identity(3)]
    {
        assert!(!view.contains(tenant_data), "{tenant_data} in the cluster view: {view}");
    }
    assert!(system.iter().all(|r| r.entry.tenant.is_none()));
}

#[test]
fn verify_detects_edited_deleted_and_reordered_records() {
    let service = audited_service();
    let pristine = service.keys().store().clone();
    let root = service.keys().root();
    let count = AuditLog::verify(root, &pristine).unwrap().records as usize;
    let check = |tamper: &dyn Fn(&mut Vec<StoredAudit>)| {
        let mut store = pristine.clone();
        tamper(store.audit_mut());
        AuditLog::verify(root, &store)
    };
    // Edited: one byte of a middle record's body, and of the last record.
    for index in [2, count - 1] {
        let result = check(&|records| {
            let bytes = &mut records[index].bytes;
            let at = bytes.len() - 5;
            bytes[at] ^= 0x01;
        });
        assert!(
            matches!(
                result,
                Err(AuditVerifyError::Edited { .. } | AuditVerifyError::Malformed { .. })
            ),
            "{result:?}"
        );
    }
    // Edited with a recomputed chain but no root key: the MAC gives it away.
    let result = check(&|records| {
        let text = String::from_utf8(records[3].bytes.clone()).unwrap();
        records[3].bytes =
            text.replace("succeeded", "failed").replace("allowed", "denied").into_bytes();
    });
    assert!(matches!(result, Err(AuditVerifyError::Edited { sequence: 4 })), "{result:?}");
    // Moved to another tenant's scope.
    let result = check(&|records| records[0].tenant = None);
    assert!(matches!(result, Err(AuditVerifyError::Edited { sequence: 1 })), "{result:?}");
    // Deleted: from the middle, and the last one.
    let result = check(&|records| {
        records.remove(4);
    });
    assert!(
        matches!(result, Err(AuditVerifyError::OutOfPlace { sequence: 5, claims: 6 })),
        "{result:?}"
    );
    let result = check(&|records| {
        records.pop();
    });
    assert_eq!(result, Err(AuditVerifyError::Missing { sequence: count as u64 }));
    // Reordered.
    let result = check(&|records| records.swap(1, 2));
    assert!(
        matches!(result, Err(AuditVerifyError::OutOfPlace { sequence: 2, claims: 3 })),
        "{result:?}"
    );
    // Untouched, it verifies.
    assert!(AuditLog::verify(root, &pristine).is_ok());
}

#[test]
fn no_secret_reaches_a_record_or_a_log_line() {
    let logs = Arc::new(Mutex::new(Vec::<u8>::new()));
    let writer = {
        let logs = Arc::clone(&logs);
        move || LogWriter(Arc::clone(&logs))
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let service = tracing::subscriber::with_default(subscriber, audited_service);
    let mut haystack = service.keys().store().all_bytes();
    haystack.extend_from_slice(&logs.lock().unwrap());
    haystack.extend_from_slice(format!("{service:?}").as_bytes());
    let needles: [&[u8]; 3] = [SECRET_PLAINTEXT, &SECRET_PLAINTEXT[..16], &[ROOT_BYTE; 8]];
    for needle in needles {
        assert!(!haystack.windows(needle.len()).any(|w| w == needle), "found {needle:?}");
    }
    let hex_root = format!("{ROOT_BYTE:02x}").repeat(8);
    assert!(!String::from_utf8_lossy(&haystack).contains(&hex_root));
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn data_access_is_sampled_as_configured() {
    let mut keys = manager(MemoryKeyStore::new(), Arc::new(ManualClock::new()));
    let mut log = AuditLog::with_data_access_sampling(10);
    let workload = caller("w", 3, vec![Role::Workload { org: org("acme-corp") }]);
    let access = event(&workload, "/v1/object/get/a", Target::Tenant(org("acme-corp")), true);
    let mut recorded = 0;
    for _ in 0..25 {
        let (root, store) = keys.audit_parts();
        if log
            .append(root, store, AuditEntry::from_event(AuditKind::DataAccess, &access))
            .unwrap()
            .is_some()
        {
            recorded += 1;
        }
    }
    assert_eq!(recorded, 3, "1 in 10 of 25: the 1st, 11th and 21st");
    let (root, store) = keys.audit_parts();
    let key_op =
        AuditEntry::local(1, AuditKind::KeyOperation, "rotate", None, AuditOutcome::Succeeded);
    assert!(log.append(root, store, key_op).unwrap().is_some(), "other kinds are never sampled");
}

#[test]
fn reseal_counts_shredded_and_corrupt_chunks_and_retries_after_a_transient_error() {
    let clock = Arc::new(ManualClock::new());
    let mut keys = manager(MemoryKeyStore::new(), clock);
    keys.init_cluster().unwrap();
    let (kept, shredded) = (TenantId::new([3; 16]).unwrap(), TenantId::new([4; 16]).unwrap());
    keys.create_tenant_kek(kept, true).unwrap();
    keys.create_tenant_kek(shredded, true).unwrap();
    let mut chunks = Chunks::default();
    for n in 0..8u32 {
        let tenant = if n % 2 == 0 { kept } else { shredded };
        let plaintext = format!("isolated chunk {n}").into_bytes();
        let master = keys.current_master_key().unwrap();
        let id = ChunkId::isolated(&keys.tenant_id_key(tenant).unwrap(), &plaintext);
        let dek = Dek::derive(&master, &id, Some(&keys.tenant_secret(tenant).unwrap()));
        let params = SealParams::new(&dek).with_tenant_wrapping(1, b"w");
        chunks.0.insert(id, Envelope::seal(&plaintext, &params).unwrap());
    }
    keys.rotate_master().unwrap();
    keys.shred_tenant(shredded, &NoRetentionHolds).unwrap();
    let corrupt = *chunks.0.keys().next().unwrap();
    chunks.1.corrupt.push(corrupt);
    let mut resealer = Resealer::new(2);
    // A transient error stops the step before the chunk and keeps the cursor.
    chunks.1.unavailable = 1;
    assert!(matches!(resealer.step(&mut keys, &mut chunks, 3), Err(ResealError::Chunks { .. })));
    assert_eq!(resealer.cursor(), None);
    assert_eq!(resealer.progress(), ResealProgress::default());
    while !resealer.step(&mut keys, &mut chunks, 3).unwrap().done {}
    let progress = resealer.progress();
    assert_eq!(progress.examined, 8);
    assert_eq!(progress.unreadable + progress.resealed + progress.failed, 8);
    assert_eq!(progress.failed, 1, "the corrupt chunk");
    let corrupt_was_shredded = chunks.0[&corrupt].tenant() == Tenancy::Isolated(shredded);
    assert_eq!(progress.unreadable, if corrupt_was_shredded { 3 } else { 4 });
    for (id, envelope) in &chunks.0 {
        let moved = envelope.key_epoch() == 2;
        let is_kept = envelope.tenant() == Tenancy::Isolated(kept);
        assert_eq!(moved, is_kept && *id != corrupt, "only the readable tenant's chunks move");
    }
}

/// A store on which another appender's record lands at the third place of the next run.
struct RacedOnce {
    inner: MemoryKeyStore,
    root: Box<dyn RootSealer>,
    raced: bool,
}

impl KeyStoreBackend for RacedOnce {
    fn advance_epoch(
        &mut self,
        scope: KeyScope,
        epoch: u32,
        record: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.inner.advance_epoch(scope, epoch, record)
    }
    fn retire_epoch(&mut self, scope: KeyScope, epoch: u32) -> Result<(), StoreError> {
        self.inner.retire_epoch(scope, epoch)
    }
    fn destroy_tenant_keys(&mut self, tenant: TenantId) -> Result<(), StoreError> {
        self.inner.destroy_tenant_keys(tenant)
    }
    fn current_epoch(&self, scope: KeyScope) -> Result<Option<u32>, StoreError> {
        self.inner.current_epoch(scope)
    }
    fn key_record(&self, scope: KeyScope, epoch: u32) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.key_record(scope, epoch)
    }
    fn keys_destroyed(&self, tenant: TenantId) -> Result<bool, StoreError> {
        self.inner.keys_destroyed(tenant)
    }
    fn append_audit(
        &mut self,
        sequence: u64,
        tenant: Option<TenantId>,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.inner.append_audit(sequence, tenant, bytes)
    }
    fn append_audit_run(
        &mut self,
        first: u64,
        records: Vec<(Option<TenantId>, Vec<u8>)>,
    ) -> Result<(), (usize, StoreError)> {
        for (offset, (tenant, bytes)) in records.into_iter().enumerate() {
            if offset == 2 && !self.raced {
                self.raced = true;
                let other = AuditEntry::local(
                    9,
                    AuditKind::AdminOperation,
                    "racer",
                    None,
                    AuditOutcome::Succeeded,
                );
                AuditLog::default().append(self.root.as_ref(), &mut self.inner, other).unwrap();
            }
            self.inner
                .append_audit(first + offset as u64, tenant, bytes)
                .map_err(|e| (offset, e))?;
        }
        Ok(())
    }
    fn audit_next(&self) -> Result<u64, StoreError> {
        self.inner.audit_next()
    }
    fn audit_record(&self, sequence: u64) -> Result<Option<StoredAudit>, StoreError> {
        self.inner.audit_record(sequence)
    }
    fn put_policies(&mut self, sealed: Vec<u8>) -> Result<(), StoreError> {
        self.inner.put_policies(sealed)
    }
    fn policies(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.policies()
    }
}

#[test]
fn a_run_of_records_is_chained_together_and_rechained_after_a_racing_append() {
    let mut store = RacedOnce { inner: MemoryKeyStore::new(), root: root(), raced: false };
    let root = root();
    let entries: Vec<AuditEntry> = (0..5)
        .map(|n| {
            let action = format!("run {n}");
            AuditEntry::local(n, AuditKind::KeyOperation, &action, None, AuditOutcome::Succeeded)
        })
        .collect();
    let appended = AuditLog::default().append_all(root.as_ref(), &mut store, entries).unwrap();
    assert_eq!(appended, Appended { count: 5, last: Some(6) });
    assert!(store.raced, "the racer appended in the middle of the run");
    let head = AuditLog::verify(root.as_ref(), &store).unwrap();
    assert_eq!(head.records, 6, "five of ours and the racer's, one chain");
    let (system, _) = AuditLog::cluster_view(root.as_ref(), &store).unwrap();
    let actions: Vec<&str> = system.iter().map(|r| r.entry.action.as_str()).collect();
    assert_eq!(actions, ["run 0", "run 1", "racer", "run 2", "run 3", "run 4"]);

    // Sampling applies to a run as to single appends: one data access in three.
    let mut sampled = AuditLog::with_data_access_sampling(3);
    let reads: Vec<AuditEntry> = (0..7)
        .map(|n| AuditEntry::local(n, AuditKind::DataAccess, "get", None, AuditOutcome::Succeeded))
        .collect();
    let appended = sampled.append_all(root.as_ref(), &mut store, reads).unwrap();
    assert_eq!(appended, Appended { count: 3, last: Some(9) });
    assert_eq!(AuditLog::verify(root.as_ref(), &store).unwrap().records, 9);
}
