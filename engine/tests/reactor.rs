//! The thread-per-core runtime: `Engine` reactors owning memory-backed shards, driven through
//! an `EngineHandle` from other threads (blocking) and from an async caller.

use std::sync::Arc;
use std::time::Duration;

use kiseki_devices::{MemoryDevice, OpenOptions as DeviceOptions};
use kiseki_engine::{
    ChunkId, DeviceIds, Engine, EngineError, FormatOptions, OpenOptions, Shard, ShardOpener,
};
use kiseki_security::{Dek, Envelope, MasterKey, SealParams};
use zeroize::Zeroizing;

const IDS: DeviceIds =
    DeviceIds { cluster_id: [0xC1; 16], node_id: [0x11; 16], device_id: [0xD1; 16] };

fn memory_shards(size_bytes: u64) -> Arc<ShardOpener<MemoryDevice>> {
    Arc::new(move |_index| open_memory_shard(size_bytes))
}

fn open_memory_shard(size_bytes: u64) -> Result<Shard<MemoryDevice>, EngineError> {
    let options = DeviceOptions {
        queue_depth: 64,
        buffer_count: 32,
        buffer_size_bytes: 256 << 10,
        ..DeviceOptions::default()
    };
    let mut device = MemoryDevice::new(size_bytes, &options).expect("memory device");
    let format = FormatOptions { ids: IDS, region_offset_bytes: 0, region_size_bytes: None };
    Shard::format(&mut device, &format)?;
    Shard::open(device, &OpenOptions::default())
}

fn master_key() -> MasterKey {
    MasterKey::from_bytes(1, Zeroizing::new([0x4B; 32]))
}

fn plaintext(key: u64) -> Vec<u8> {
    (0..(1000 + key as usize * 37)).map(|i| (i as u64 ^ key) as u8).collect()
}

/// Chunk `key`, sealed: its id (SHA-256 of the plaintext) and its envelope.
fn chunk(key: u64) -> (ChunkId, Envelope) {
    let plaintext = plaintext(key);
    let id = kiseki_security::ChunkId::of_plaintext(&plaintext);
    let dek = Dek::derive(&master_key(), &id, None);
    let envelope = Envelope::seal(&plaintext, &SealParams::new(&dek)).expect("seal");
    (*id.as_bytes(), envelope)
}

/// Opens what a get returned and checks it is chunk `key`.
fn assert_is_chunk(envelope: &Envelope, key: u64) {
    let dek = Dek::derive(&master_key(), &envelope.chunk_id(), None);
    let opened = envelope.open_verified(&dek, None).expect("the envelope opens");
    assert_eq!(&*opened, &plaintext(key)[..], "chunk {key}");
}

#[test]
fn put_get_release_through_two_reactors() {
    let engine = Engine::start(2, memory_shards(16 << 20)).expect("engine starts");
    let handle = engine.handle();
    for key in 0..64 {
        let (_, envelope) = chunk(key);
        handle.put_blocking(envelope).expect("put");
    }
    for key in 0..64 {
        let (id, _) = chunk(key);
        assert_is_chunk(&handle.get_blocking(id).expect("get"), key);
        assert!(handle.contains_blocking(id).unwrap());
    }
    // Both shards got chunks (routing by the id's low bytes, uniform for SHA-256 ids).
    let stats = handle.stats_blocking().unwrap();
    assert_eq!(stats.len(), 2);
    assert!(stats.iter().all(|s| s.chunks > 0), "{stats:?}");
    assert_eq!(stats.iter().map(|s| s.chunks).sum::<u64>(), 64);
    let (id, _) = chunk(5);
    handle.release_blocking(id).unwrap();
    assert!(!handle.contains_blocking(id).unwrap());
    assert!(matches!(handle.get_blocking(id), Err(EngineError::NotFound { .. })));
    engine.shutdown().expect("clean shutdown");
}

#[test]
fn many_threads_share_one_handle() {
    let engine = Engine::start(2, memory_shards(32 << 20)).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let handle = engine.handle();
            std::thread::spawn(move || {
                for key in (t * 100)..(t * 100 + 50) {
                    let (id, envelope) = chunk(key);
                    handle.put_blocking(envelope).unwrap();
                    assert_is_chunk(&handle.get_blocking(id).unwrap(), key);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("caller thread");
    }
    let total: u64 = engine.handle().stats_blocking().unwrap().iter().map(|s| s.chunks).sum();
    assert_eq!(total, 200);
    engine.shutdown().unwrap();
}

/// An idle reactor sleeps in its device; a request must wake it (the doorbell).
#[test]
fn a_request_wakes_an_idle_reactor() {
    let engine = Engine::start(1, memory_shards(8 << 20)).unwrap();
    let handle = engine.handle();
    std::thread::sleep(Duration::from_millis(100));
    let (_, envelope) = chunk(1);
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || done_tx.send(handle.put_blocking(envelope)).unwrap());
    let result = done.recv_timeout(Duration::from_secs(10)).expect("the reactor woke up");
    result.expect("put");
    engine.shutdown().unwrap();
}

#[test]
fn after_shutdown_requests_are_refused() {
    let engine = Engine::start(1, memory_shards(8 << 20)).unwrap();
    let handle = engine.handle();
    engine.shutdown().unwrap();
    let (id, envelope) = chunk(2);
    assert!(matches!(handle.put_blocking(envelope), Err(EngineError::Stopped)));
    assert!(matches!(handle.get_blocking(id), Err(EngineError::Stopped)));
}

#[test]
fn a_shard_that_fails_to_open_fails_the_start() {
    let opener: Arc<ShardOpener<MemoryDevice>> = Arc::new(|index| {
        Err(EngineError::Reactor { index, reason: "no device for this test".to_owned() })
    });
    let error = Engine::start(2, opener).expect_err("the start must fail");
    assert!(error.to_string().contains("no device for this test"), "{error}");
}

/// The reactor takes at most a bounded number of requests; beyond that callers get `Busy`
/// at once rather than a growing queue.
#[test]
fn a_flood_gets_busy_not_an_unbounded_queue() {
    let engine = Engine::start(1, memory_shards(64 << 20)).unwrap();
    let handle = engine.handle();
    let (id, envelope) = chunk(3);
    handle.put_blocking(envelope).unwrap();
    // Fire many gets without waiting for replies: some must be refused as Busy, and every
    // accepted one must still be answered correctly.
    let mut accepted = Vec::new();
    let mut busy = 0;
    for _ in 0..20_000 {
        match handle.get_nowait(id) {
            Ok(reply) => accepted.push(reply),
            Err(EngineError::Busy { .. }) => busy += 1,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(busy > 0, "20,000 requests without waiting never found a full queue");
    // Accepted requests are answered: with the bytes, or Busy from the shard's own bound on
    // reads in flight. None is lost.
    let mut served = 0;
    for reply in accepted {
        match reply.blocking_recv().expect("every accepted request is answered") {
            Ok(envelope) => {
                assert_is_chunk(&envelope, 3);
                served += 1;
            }
            Err(EngineError::Busy { .. }) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(served > 0, "no get was served");
    engine.shutdown().unwrap();
}

/// Stores raw bytes through the shard's own interface before the reactor starts: the only
/// way anything but a sealed envelope can reach the device.
fn shard_with_raw(chunk_id: ChunkId, bytes: Vec<u8>) -> Arc<ShardOpener<MemoryDevice>> {
    Arc::new(move |_index| {
        let mut shard = open_memory_shard(8 << 20)?;
        shard.put(chunk_id, &bytes)?;
        let mut acks = Vec::new();
        shard.run_until_idle(&mut acks)?;
        assert_eq!(acks.len(), 1, "the raw put was acknowledged");
        Ok(shard)
    })
}

#[test]
fn a_stored_chunk_that_is_not_an_envelope_is_an_error_not_data() {
    let (id, _) = chunk(7);
    let engine = Engine::start(1, shard_with_raw(id, plaintext(7))).unwrap();
    let error = engine.handle().get_blocking(id).expect_err("plaintext is not an envelope");
    assert!(matches!(error, EngineError::NotAnEnvelope { .. }), "{error}");
    engine.shutdown().unwrap();
}

#[test]
fn an_envelope_stored_under_another_id_is_refused() {
    let (id, _) = chunk(8);
    let (other_id, other) = chunk(9);
    let engine = Engine::start(1, shard_with_raw(id, other.into_bytes())).unwrap();
    match engine.handle().get_blocking(id) {
        Err(EngineError::ChunkIdMismatch { chunk_id, found }) => {
            assert_eq!(chunk_id, id);
            assert_eq!(found, other_id);
        }
        other => panic!("expected ChunkIdMismatch, got {other:?}"),
    }
    engine.shutdown().unwrap();
}

/// Chunk `key` sealed again under another master-key epoch: the same id, another envelope.
fn resealed(key: u64) -> Envelope {
    let plaintext = plaintext(key);
    let id = kiseki_security::ChunkId::of_plaintext(&plaintext);
    let epoch_2 = MasterKey::from_bytes(2, Zeroizing::new([0x4C; 32]));
    Envelope::seal(&plaintext, &SealParams::new(&Dek::derive(&epoch_2, &id, None))).unwrap()
}

#[test]
fn chunks_are_listed_in_id_order_across_shards_and_replaced_in_place() {
    let engine = Engine::start(3, memory_shards(16 << 20)).expect("engine starts");
    let handle = engine.handle();
    let mut ids = Vec::new();
    for key in 0..50 {
        let (id, envelope) = chunk(key);
        handle.put_blocking(envelope).unwrap();
        ids.push(id);
    }
    ids.sort();
    let shards: std::collections::BTreeSet<_> = ids.iter().map(|id| handle.shard_of(id)).collect();
    assert_eq!(shards.len(), 3, "the chunks spread over every shard");
    // Walk in pages of 8 from a cursor, replacing each chunk as it is listed (the re-sealer's
    // pattern): every chunk is listed exactly once, in order.
    let mut walked = Vec::new();
    let mut cursor = None;
    loop {
        let page = handle.chunk_ids_after_blocking(cursor, 8).unwrap();
        assert!(page.len() <= 8);
        let Some(&last) = page.last() else { break };
        for id in &page {
            let key = (0..50).find(|&key| chunk(key).0 == *id).unwrap();
            handle.replace_blocking(resealed(key)).unwrap();
        }
        cursor = Some(last);
        walked.extend(page);
    }
    assert_eq!(walked, ids);
    for key in 0..50 {
        let envelope = handle.get_blocking(chunk(key).0).unwrap();
        assert_eq!(envelope.key_epoch(), 2, "chunk {key} was replaced");
        assert_opens_under_epoch_2(&envelope, key);
    }
    // A replace of a chunk not stored is refused, and stores nothing.
    let (absent, _) = chunk(1_000);
    let refused = handle.replace_blocking(resealed(1_000));
    assert!(matches!(refused, Err(EngineError::NotFound { chunk_id }) if chunk_id == absent));
    assert!(!handle.contains_blocking(absent).unwrap());
    let stats = handle.stats_blocking().unwrap();
    assert_eq!(stats.iter().map(|shard| shard.chunks).sum::<u64>(), 50);
    engine.shutdown().unwrap();
}

/// Opens a replaced chunk under epoch 2 and checks it is chunk `key`.
fn assert_opens_under_epoch_2(envelope: &Envelope, key: u64) {
    let epoch_2 = MasterKey::from_bytes(2, Zeroizing::new([0x4C; 32]));
    let dek = Dek::derive(&epoch_2, &envelope.chunk_id(), None);
    let opened = envelope.open_verified(&dek, None).expect("the re-sealed envelope opens");
    assert_eq!(&*opened, &plaintext(key)[..], "chunk {key}");
}
