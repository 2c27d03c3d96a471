//! Issue 7's rotation acceptance, end to end on the real engine (two reactors on memory
//! devices), the object layer and a key manager: objects written under epoch 1, a
//! rotation, objects written under epoch 2, both read; the node's background re-seal
//! ([`ResealTask`]) paused in the middle, stopped and started again (it resumes from its
//! saved cursor), resumed and run to the end; then no live chunk names epoch 1 but a
//! shredded tenant's (counted unreadable, not moved), epoch 1 is retired, and every object
//! still reads with the same bytes. Retiring is refused until the pass is done.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiseki_consensus::command::DedupMode;
use kiseki_consensus::node::start_single;
use kiseki_engine::{Engine, EngineHandle};
use kiseki_gateway::objects::{ObjectConfig, ObjectError, ObjectStore, UserMetadata};
use kiseki_gateway::reseal::{
    self, PHASE_DONE, PHASE_PAUSED, ResealConfig, ResealCounters, ResealTask,
};
use kiseki_security::keymanager::NoRetentionHolds;
use kiseki_security::{Envelope, Tenancy, TenantId};

/// Small chunks, so a few KiB make many chunks and the pass many batches.
const CHUNK: usize = 1000;

/// Bucket names are global: one per tenant.
fn bucket(tenant: TenantId) -> String {
    format!("bucket-{}", tenant.as_bytes()[0])
}

fn body(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

/// Every stored chunk's envelope, walking the engine's listing in pages.
async fn envelopes(engine: &EngineHandle) -> Vec<Envelope> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = engine.chunk_ids_after(cursor, 5).await.unwrap();
        let Some(&last) = page.last() else { return all };
        for id in page {
            all.push(engine.get(id).await.unwrap());
        }
        cursor = Some(last);
    }
}

async fn wait_for(counters: &ResealCounters, phase: u64, what: &str) {
    let started = Instant::now();
    while counters.phase.load(Ordering::SeqCst) != phase {
        assert!(started.elapsed() < Duration::from_secs(60), "the re-seal never got {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn config() -> ResealConfig {
    ResealConfig {
        batch_chunks: 4,
        batch_interval: Duration::from_millis(30),
        idle_check: Duration::from_millis(50),
        error_backoff: Duration::from_millis(50),
        log_every_batches: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_reseal_with_a_pause_and_a_restart_then_retire_and_every_object_reads() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("meta");
    std::fs::create_dir(&meta).unwrap();
    let group = Arc::new(start_single(dir.path()).await.unwrap());
    let engine =
        Engine::start(2, Arc::new(|_| common::memory_shard(32 << 20, 32, 64 << 10))).unwrap();
    let mut keys = common::key_manager(7);
    keys.init_cluster().unwrap();
    let keys = Arc::new(Mutex::new(keys));
    let objects = ObjectStore::new(
        Arc::clone(&group),
        engine.handle(),
        Arc::clone(&keys),
        ObjectConfig { chunk_size_bytes: CHUNK, inline_max_bytes: 100, ..ObjectConfig::default() },
    );
    let shared = TenantId::new([1; 16]).unwrap();
    let isolated = TenantId::new([2; 16]).unwrap();
    let shredded = TenantId::new([3; 16]).unwrap();
    objects.create_tenant(shared, DedupMode::CrossTenant).await.unwrap();
    objects.create_tenant(isolated, DedupMode::Isolated).await.unwrap();
    objects.create_tenant(shredded, DedupMode::Isolated).await.unwrap();
    for tenant in [shared, isolated, shredded] {
        objects.create_bucket(tenant, &bucket(tenant)).await.unwrap();
    }
    let user = UserMetadata::default();
    let mut written: BTreeMap<(TenantId, String), Vec<u8>> = BTreeMap::new();
    let mut seed = 0u8;
    let mut put = async |tenant: TenantId, key: &str, len: usize| {
        seed += 1;
        let bytes = body(seed, len);
        objects.put_object(tenant, &bucket(tenant), key.as_bytes(), &bytes, &user).await.unwrap();
        written.insert((tenant, key.to_owned()), bytes);
    };

    // Epoch 1.
    put(shared, "one-a", 5 * CHUNK + 17).await;
    put(shared, "one-b", 3 * CHUNK).await;
    put(isolated, "one-c", 4 * CHUNK + 1).await;
    put(shredded, "one-d", 3 * CHUNK + 5).await;
    // Rotate; epoch 2.
    assert_eq!(keys.lock().unwrap().rotate_master().unwrap(), 2);
    put(shared, "two-a", 2 * CHUNK + 3).await;
    put(isolated, "two-b", 3 * CHUNK).await;
    let handle = engine.handle();
    let read_all = async |skip_shredded: bool| {
        for ((tenant, key), bytes) in &written {
            if skip_shredded && *tenant == shredded {
                continue;
            }
            let (_, got) =
                objects.get_object(*tenant, &bucket(*tenant), key.as_bytes(), None).await.unwrap();
            assert_eq!(&got, bytes, "object {key}");
        }
    };
    read_all(false).await;
    let before = envelopes(&handle).await;
    let by_epoch =
        |list: &[Envelope], epoch| list.iter().filter(|e| e.key_epoch() == epoch).count();
    let is_shredded = |e: &Envelope| e.tenant() == Tenancy::Isolated(shredded);
    let (old, new) = (by_epoch(&before, 1), by_epoch(&before, 2));
    let old_shredded = before.iter().filter(|e| e.key_epoch() == 1 && is_shredded(e)).count();
    assert_eq!((old, new), (6 + 3 + 5 + 4, 3 + 3), "chunks under epoch 1 and epoch 2");
    assert_eq!(old_shredded, 4);

    // A shredded tenant's chunks cannot be opened by anyone: the pass counts, never moves them.
    keys.lock().unwrap().shred_tenant(shredded, &NoRetentionHolds).unwrap();
    // Negative: no pass yet, so epoch 1 must not be retired.
    assert!(reseal::check_retire(&meta, 1, true).unwrap_err().contains("no re-seal"));

    // The pass: paused once the first batch is saved.
    let task = ResealTask::spawn(meta.clone(), handle.clone(), Arc::clone(&keys), config());
    let counters = task.counters();
    let started = Instant::now();
    while counters.batches.load(Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "no batch ran");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    reseal::set_paused(&meta, true).unwrap();
    wait_for(&counters, PHASE_PAUSED, "paused").await;
    let at_pause = reseal::load_state(&meta).unwrap().unwrap();
    assert!(!at_pause.done && at_pause.examined > 0 && at_pause.cursor.is_some(), "{at_pause}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(reseal::load_state(&meta).unwrap().unwrap(), at_pause, "a paused pass waits");
    // The data path goes on while paused, and reads both epochs.
    read_all(true).await;
    assert!(reseal::check_retire(&meta, 1, true).unwrap_err().contains("not done"));

    // A restart while paused: the new task resumes from the saved cursor, not from zero.
    task.stop().await;
    let task = ResealTask::spawn(meta.clone(), handle.clone(), Arc::clone(&keys), config());
    let counters = task.counters();
    wait_for(&counters, PHASE_PAUSED, "paused after the restart").await;
    assert_eq!(counters.examined.load(Ordering::SeqCst), at_pause.examined);
    reseal::set_paused(&meta, false).unwrap();
    wait_for(&counters, PHASE_DONE, "done").await;
    task.stop().await;

    let state = reseal::load_state(&meta).unwrap().unwrap();
    assert!(state.done && state.target_epoch == 2 && state.failed == 0, "{state}");
    assert_eq!(state.examined as usize, before.len(), "every chunk examined once: {state}");
    assert_eq!(state.resealed as usize, old - old_shredded, "{state}");
    assert_eq!(state.unreadable as usize, old_shredded, "{state}");
    let after = envelopes(&handle).await;
    assert_eq!(after.len(), before.len(), "a re-seal adds and drops no chunk");
    for envelope in &after {
        assert!(
            envelope.key_epoch() == 2 || is_shredded(envelope),
            "a live chunk still names epoch {} (tenant {:?})",
            envelope.key_epoch(),
            envelope.tenant()
        );
    }
    assert_eq!(by_epoch(&after, 1), old_shredded, "the shredded tenant's chunks did not move");

    // Retire epoch 1: allowed now; every readable object still reads the same bytes.
    reseal::check_retire(&meta, 1, true).unwrap();
    keys.lock().unwrap().retire_master_epoch(1).unwrap();
    assert_eq!(keys.lock().unwrap().master_epochs().unwrap(), vec![2]);
    read_all(true).await;
    let shredded_read = objects.get_object(shredded, &bucket(shredded), b"one-d", None).await;
    assert!(matches!(shredded_read, Err(ObjectError::TenantKeysDestroyed)), "{shredded_read:?}");
    // A new task finds nothing to do: the pass to the current epoch is done.
    let task = ResealTask::spawn(meta.clone(), handle.clone(), Arc::clone(&keys), config());
    wait_for(&task.counters(), PHASE_DONE, "done again without work").await;
    task.stop().await;
    assert_eq!(reseal::load_state(&meta).unwrap().unwrap(), state);

    drop(objects);
    tokio::task::spawn_blocking(move || engine.shutdown().unwrap()).await.unwrap();
    group.shutdown().await.unwrap();
}
