//! The key manager over a real metadata group on a file (issue 7): its keys and audit log
//! live in the replicated state machine, a restart finds them, a refused command changes
//! nothing, crypto-shred holds across a restart, and no secret reaches the data dir.

use std::path::Path;
use std::sync::Arc;

use kiseki_consensus::command::{AuditScope, Command, KeyScope as StateKeyScope, Sealed};
use kiseki_consensus::keystore::ConsensusKeyStore;
use kiseki_consensus::{
    ConsensusError, GroupConfig, MetadataGroup, Rejection, ShardId, TENANT_KEYS_DESTROYED,
};
use kiseki_security::TenantId;
use kiseki_security::keymanager::{
    AuditEntry, AuditKind, AuditLog, AuditOutcome, KeyManager, KeyManagerConfig, KeyManagerError,
    KeyStoreBackend as _, LocalRootKey, MemoryLocking, NoRetentionHolds, SystemClock,
    create_root_key_file,
};
use tokio::runtime::Handle;

use crate::cluster::{create_tenant, tenant};
use crate::groups::{file_group, one_shard};

const SECRET: &[u8] = b"TOP-SECRET-manifest-of-tenant-one";
/// A tenant's own KEK, imported: its bytes must never reach the data dir.
const IMPORTED_KEK: [u8; 32] = *b"IMPORTED-KEK-bytes-0123456789abc";

/// Stand-in bytes for sealed key-service policies (the store holds them opaque).
const POLICIES: &[u8] = b"sealed policies";

fn security_tenant(n: u8) -> TenantId {
    TenantId::new([n; 16]).expect("not nil")
}

fn key_manager(dir: &Path, group: &Arc<MetadataGroup>) -> KeyManager<ConsensusKeyStore> {
    let root = LocalRootKey::from_file(&dir.join("root.key"), MemoryLocking::Required)
        .expect("root key file");
    let store = ConsensusKeyStore::new(Arc::clone(group), Handle::current());
    KeyManager::new(Box::new(root), store, KeyManagerConfig::default(), Arc::new(SystemClock))
        .expect("key manager")
}

fn entry(action: &str, tenant: Option<TenantId>) -> AuditEntry {
    AuditEntry::local(
        1_700_000_000,
        AuditKind::KeyOperation,
        action,
        tenant,
        AuditOutcome::Succeeded,
    )
}

/// Runs `work` on a blocking thread (the store blocks on the group's runtime).
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("blocking task")
}

#[tokio::test]
async fn keys_and_audit_live_in_the_state_machine_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    create_root_key_file(&dir.path().join("root.key")).expect("root key");
    let config = GroupConfig::new(1, ShardId(0), one_shard());
    let group = Arc::new(file_group(dir.path(), config.clone()).await);
    for n in [1, 2] {
        group.propose(create_tenant(tenant(n))).await.expect("tenant");
    }
    let (one, two) = (security_tenant(1), security_tenant(2));

    let path = dir.path().to_path_buf();
    let shared = Arc::clone(&group);
    let (sealed_one, sealed_two) = blocking(move || {
        let mut keys = key_manager(&path, &shared);
        assert_eq!(keys.init_cluster().expect("init"), (1, true));
        assert_eq!(keys.rotate_master().expect("rotate"), 2);
        keys.create_tenant_kek(one, true).expect("KEK");
        keys.rotate_tenant_kek(one).expect("rotate KEK");
        keys.import_tenant_kek(two, &IMPORTED_KEK).expect("import");
        let sealed_one = keys.seal_for_tenant(one, b"ctx", SECRET).expect("seal");
        let sealed_two = keys.seal_for_tenant(two, b"ctx", b"two's data").expect("seal");
        // The key service's policies: nothing until stored, then the last stored bytes.
        assert_eq!(keys.store().policies().expect("policies"), None);
        keys.store_mut().put_policies(b"first".to_vec()).expect("policies");
        keys.store_mut().put_policies(POLICIES.to_vec()).expect("policies");
        let mut log = AuditLog::default();
        for (action, tenant) in
            [("rotate master", None), ("create kek", Some(one)), ("import", Some(two))]
        {
            let (root, store) = keys.audit_parts();
            log.append(root, store, entry(action, tenant)).expect("audit");
        }
        keys.shred_tenant(one, &NoRetentionHolds).expect("shred");
        let destroyed = Err(KeyManagerError::TenantKeysDestroyed { tenant: one });
        assert_eq!(keys.open_for_tenant(one, b"ctx", &sealed_one).map(|_| ()), destroyed);
        keys.retire_master_epoch(1).expect("retire epoch 1");
        let (root, store) = keys.audit_parts();
        log.append(root, store, entry("shred", Some(one))).expect("audit");
        (sealed_one, sealed_two)
    })
    .await;

    // Refused commands change nothing: a key for the shredded tenant, retiring the
    // current epoch, an audit record at a stale sequence.
    let before = group.local_view().expect("view").rows().expect("rows");
    let refused = [
        Command::AdvanceKeyEpoch {
            scope: StateKeyScope::Tenant(tenant(1)),
            epoch: 1,
            sealed_key: Sealed(vec![1; 40]),
        },
        Command::RetireKeyEpoch { scope: StateKeyScope::System, epoch: 2 },
        Command::DestroyTenantKeys { tenant: tenant(1) },
        Command::AppendAuditAt {
            scope: AuditScope::System,
            sequence: 1,
            sealed_record: Sealed(vec![1]),
        },
    ];
    for command in refused {
        let outcome = group.propose(command.clone()).await;
        assert!(matches!(outcome, Err(ConsensusError::Rejected(_))), "{command:?}: {outcome:?}");
    }
    let outcome = group
        .propose(Command::AdvanceKeyEpoch {
            scope: StateKeyScope::Tenant(tenant(1)),
            epoch: 1,
            sealed_key: Sealed(vec![1; 40]),
        })
        .await;
    assert!(matches!(
        outcome,
        Err(ConsensusError::Rejected(Rejection::Conflict(ref why))) if why == TENANT_KEYS_DESTROYED
    ));
    assert_eq!(group.local_view().expect("view").rows().expect("rows"), before);

    group.shutdown().await.expect("shutdown");
    drop(group);

    // After a restart from the file: the same epochs, the shred holds, the log verifies.
    let group = Arc::new(file_group(dir.path(), config).await);
    let path = dir.path().to_path_buf();
    let shared = Arc::clone(&group);
    blocking(move || {
        let mut keys = key_manager(&path, &shared);
        assert_eq!(keys.init_cluster().expect("init"), (2, false));
        assert_eq!(keys.master_epochs().expect("epochs"), vec![2]);
        assert_eq!(keys.store().policies().expect("policies").as_deref(), Some(POLICIES));
        assert!(keys.master_key(2).is_ok());
        assert_eq!(
            &keys.open_for_tenant(two, b"ctx", &sealed_two).expect("open")[..],
            b"two's data"
        );
        let destroyed = Err(KeyManagerError::TenantKeysDestroyed { tenant: one });
        assert_eq!(keys.open_for_tenant(one, b"ctx", &sealed_one).map(|_| ()), destroyed);
        assert_eq!(
            keys.create_tenant_kek(one, true),
            Err(KeyManagerError::TenantKeysDestroyed { tenant: one })
        );
        let head = AuditLog::verify(keys.root(), keys.store()).expect("verify");
        assert_eq!(head.records, 4);
        let export = AuditLog::export_tenant(keys.root(), keys.store(), two).expect("export");
        let actions: Vec<&str> = export.iter().map(|r| r.entry.action.as_str()).collect();
        assert_eq!(
            actions,
            ["rotate master", "import"],
            "tenant two sees its own record and the system's key operation, not tenant one's"
        );
        // Another root key opens nothing of this store.
        let other = dir_root_other(&path);
        let store = ConsensusKeyStore::new(Arc::clone(&shared), Handle::current());
        let mut stranger = KeyManager::new(
            Box::new(other),
            store,
            KeyManagerConfig::default(),
            Arc::new(SystemClock),
        )
        .expect("key manager");
        assert!(matches!(stranger.master_key(2), Err(KeyManagerError::CorruptRecord { .. })));
        assert!(AuditLog::verify(stranger.root(), stranger.store()).is_err());
    })
    .await;
    group.shutdown().await.expect("shutdown");
    drop(group);

    // No secret anywhere in the data dir but the root key file itself.
    for file in std::fs::read_dir(dir.path()).expect("dir") {
        let path = file.expect("entry").path();
        if path.file_name().is_some_and(|name| name == "root.key" || name == "other.key") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("read");
        for needle in [SECRET, &SECRET[..12], &IMPORTED_KEK[..], &IMPORTED_KEK[..12]] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds a secret",
                path.display()
            );
        }
    }
}

fn dir_root_other(dir: &Path) -> LocalRootKey {
    let path = dir.join("other.key");
    create_root_key_file(&path).expect("other root key");
    LocalRootKey::from_file(&path, MemoryLocking::Required).expect("other root")
}

/// Three nodes, each with its own key manager over its own replica: a shred proposed
/// through the leader reaches every node's answers within one cache TTL.
#[tokio::test]
async fn a_shred_reaches_every_node_within_the_cache_ttl() {
    let cluster = crate::cluster::SimCluster::start(7, 3, ShardId(0), one_shard()).await;
    cluster.initialize().await;
    let leader = cluster.wait_for_leader(std::time::Duration::from_secs(10)).await.expect("leader");
    for n in [1, 2] {
        cluster.propose(create_tenant(tenant(n))).await.expect("tenant");
    }
    let groups: Vec<(u64, Arc<MetadataGroup>)> =
        (1..=3).map(|id| (id, cluster.group(id))).collect();
    let handle = Handle::current();
    let dir = tempfile::tempdir().expect("tempdir");
    let root_path = dir.path().join("root.key");
    create_root_key_file(&root_path).expect("root key");
    blocking(move || {
        let clock = Arc::new(kiseki_security::keymanager::ManualClock::new());
        let config = KeyManagerConfig::with_cache_ttl_secs(30).expect("ttl");
        let mut nodes: Vec<(u64, KeyManager<ConsensusKeyStore>)> = groups
            .iter()
            .map(|(id, group)| {
                let root =
                    LocalRootKey::from_file(&root_path, MemoryLocking::Required).expect("root");
                let store = ConsensusKeyStore::new(Arc::clone(group), handle.clone());
                (
                    *id,
                    KeyManager::new(Box::new(root), store, config, clock.clone()).expect("manager"),
                )
            })
            .collect();
        let (one, two) = (security_tenant(1), security_tenant(2));
        let lead = nodes.iter().position(|(id, _)| *id == leader).expect("leader's manager");
        let (blob_one, blob_two) = {
            let keys = &mut nodes[lead].1;
            keys.init_cluster().expect("init");
            keys.create_tenant_kek(one, true).expect("KEK one");
            keys.create_tenant_kek(two, true).expect("KEK two");
            (
                keys.seal_for_tenant(one, b"obj", SECRET).expect("seal"),
                keys.seal_for_tenant(two, b"obj", b"two").expect("seal"),
            )
        };
        // Every node opens the tenant's object once its replica has the key (and caches it).
        let until = |what: &str, check: &mut dyn FnMut() -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !check() {
                assert!(std::time::Instant::now() < deadline, "{what}: not within 60 s");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        };
        for (_, keys) in &mut nodes {
            until("replica has the key", &mut || {
                keys.open_for_tenant(one, b"obj", &blob_one).is_ok()
            });
        }
        nodes[lead].1.shred_tenant(one, &NoRetentionHolds).expect("shred");
        let destroyed = Err(KeyManagerError::TenantKeysDestroyed { tenant: one });
        assert_eq!(nodes[lead].1.open_for_tenant(one, b"obj", &blob_one).map(|_| ()), destroyed);
        // Once each replica has applied the shred, one TTL later every node answers
        // "tenant keys destroyed" (its cache may answer until then), and the other tenant
        // opens everywhere.
        for (_, keys) in &mut nodes {
            until("replica applied the shred", &mut || {
                kiseki_security::keymanager::KeyStoreBackend::keys_destroyed(keys.store(), one)
                    == Ok(true)
            });
        }
        clock.advance(std::time::Duration::from_secs(31));
        for (id, keys) in &mut nodes {
            let outcome = keys.open_for_tenant(one, b"obj", &blob_one).map(|_| ());
            assert_eq!(outcome, destroyed, "node {id}");
            let opened = keys.open_for_tenant(two, b"obj", &blob_two).expect("tenant two");
            assert_eq!(&opened[..], b"two", "node {id}");
        }
    })
    .await;
    cluster.stop().await;
}

#[tokio::test]
async fn an_audit_run_takes_one_log_entry_and_a_stale_run_adds_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    create_root_key_file(&dir.path().join("root.key")).expect("root key");
    let config = GroupConfig::new(1, ShardId(0), one_shard());
    let group = Arc::new(file_group(dir.path(), config).await);
    let path = dir.path().to_path_buf();
    let shared = Arc::clone(&group);
    blocking(move || {
        let mut keys = key_manager(&path, &shared);
        keys.init_cluster().expect("init");
        let last_index = || shared.raft().metrics().borrow().last_log_index.unwrap_or(0);
        let before = last_index();
        let entries: Vec<AuditEntry> = (0..40).map(|n| entry(&format!("run {n}"), None)).collect();
        let (root, store) = keys.audit_parts();
        let appended = AuditLog::default().append_all(root, store, entries).expect("run");
        assert_eq!(appended.count, 40);
        let entries_taken = last_index() - before;
        assert_eq!(entries_taken, 1, "40 records took {entries_taken} log entries");
        let records = AuditLog::verify(root, store).expect("the chain verifies").records;
        assert_eq!(appended.last, Some(records));
        // More than one command holds goes as consecutive commands.
        let before = last_index();
        let entries: Vec<AuditEntry> =
            (0..300).map(|n| entry(&format!("long run {n}"), None)).collect();
        let appended = AuditLog::default().append_all(root, store, entries).expect("long run");
        assert_eq!(appended.count, 300);
        assert_eq!(last_index() - before, 2, "256 records, then 44");
        let records = AuditLog::verify(root, store).expect("the chain verifies").records;
        assert_eq!(appended.last, Some(records));

        // A run at a sequence another append took first is refused whole.
        let next = store.audit_next().expect("next");
        let run: Vec<_> = (0..3).map(|_| (None, b"record".to_vec())).collect();
        let stale = store.append_audit_run(next - 1, run.clone());
        assert!(
            matches!(stale, Err((0, kiseki_security::keymanager::StoreError::Conflict(_)))),
            "{stale:?}"
        );
        assert_eq!(store.audit_next().expect("next"), next, "a refused run adds nothing");
        store.append_audit_run(next, run).expect("a run at the next sequence");
        assert_eq!(store.audit_next().expect("next"), next + 3);
    })
    .await;
    group.shutdown().await.expect("shutdown");
}
