//! Shard tests over the memory, fault-injecting and io_uring backends: basic behaviour,
//! a seeded crash simulator, corruption, capacity, I/O errors.
//!
//! Seeds: `KISEKI_SIM_SEEDS` sets how many the crash simulator runs (default 300) and
//! `KISEKI_SIM_SEED` replays one. A failure prints its seed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use kiseki_devices::rng::SplitMix64;
use kiseki_devices::{
    BlockDevice, FaultPlan, FaultyDevice, MemoryDevice, Op, OpenOptions as DeviceOptions, Request,
};
use kiseki_engine::constants::CAPACITY_CRITICAL_PERCENT;
use kiseki_engine::{
    Ack, CapacityLevel, ChunkId, DeviceIds, EngineError, FormatOptions, OpenOptions, Outcome,
    Shard, Ticket,
};

type SimDevice = FaultyDevice<MemoryDevice>;

const IDS: DeviceIds =
    DeviceIds { cluster_id: [0xC1; 16], node_id: [0x11; 16], device_id: [0xD1; 16] };

fn device_options() -> DeviceOptions {
    DeviceOptions {
        queue_depth: 64,
        buffer_count: 32,
        buffer_size_bytes: 256 << 10,
        ..DeviceOptions::default()
    }
}

fn memory_device(size_bytes: u64, seed: u64) -> SimDevice {
    let memory = MemoryDevice::new(size_bytes, &device_options()).expect("memory device");
    FaultyDevice::new(memory, FaultPlan { seed, ..FaultPlan::default() })
}

fn format_options() -> FormatOptions {
    FormatOptions { ids: IDS, region_offset_bytes: 0, region_size_bytes: None }
}

fn fresh_shard(size_bytes: u64, seed: u64) -> Shard<SimDevice> {
    let mut device = memory_device(size_bytes, seed);
    Shard::format(&mut device, &format_options()).expect("format");
    Shard::open(device, &OpenOptions::default()).expect("open")
}

/// A chunk's id and bytes, both from (key, len): the id names the bytes, as a hash would.
fn chunk(key: u64, len: usize) -> (ChunkId, Vec<u8>) {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&key.to_le_bytes());
    id[8..16].copy_from_slice(&(len as u64).to_le_bytes());
    id[16..24].copy_from_slice(b"kiseki!!");
    // One random block, repeated with each block's number stamped in: distinct blocks, and
    // cheap enough for debug builds (memcpy rather than a generator per byte).
    let mut block = [0u8; 4096];
    SplitMix64::new(key ^ (len as u64).rotate_left(32)).fill(&mut block);
    let mut bytes = Vec::with_capacity(len);
    for number in 0..len.div_ceil(4096) as u64 {
        let mut stamped = block;
        stamped[..8].copy_from_slice(&(number ^ key).to_le_bytes());
        let take = (len - bytes.len()).min(4096);
        bytes.extend_from_slice(&stamped[..take]);
    }
    (id, bytes)
}

fn bytes_of(id: &ChunkId) -> Vec<u8> {
    let key = u64::from_le_bytes(id[..8].try_into().unwrap());
    let len = u64::from_le_bytes(id[8..16].try_into().unwrap()) as usize;
    chunk(key, len).1
}

fn idle<D: BlockDevice>(shard: &mut Shard<D>) -> Vec<Ack> {
    let mut acks = Vec::new();
    shard.run_until_idle(&mut acks).expect("run_until_idle");
    acks
}

fn read<D: BlockDevice>(shard: &mut Shard<D>, id: ChunkId) -> Result<Vec<u8>, EngineError> {
    let ticket = shard.get(id)?;
    let acks = idle(shard);
    let ack = acks.into_iter().find(|a| a.ticket == ticket).expect("the get's ack");
    match ack.outcome {
        Outcome::Get(result) => result,
        other => panic!("a get acked as {other:?}"),
    }
}

fn put_ok<D: BlockDevice>(shard: &mut Shard<D>, id: ChunkId, bytes: &[u8]) {
    let ticket = shard.put(id, bytes).expect("put");
    let acks = idle(shard);
    let ack = acks.iter().find(|a| a.ticket == ticket).expect("the put's ack");
    assert!(matches!(ack.outcome, Outcome::Put(Ok(()))), "{ack:?}");
}

// ---------------------------------------------------------------------------------------
// Basics
// ---------------------------------------------------------------------------------------

#[test]
fn put_get_dedup_release_and_reopen() {
    let mut shard = fresh_shard(8 << 20, 1);
    let (a, a_bytes) = chunk(1, 10_000);
    let (b, b_bytes) = chunk(2, 1);
    let free_before = shard.stats().data_bytes_free;
    put_ok(&mut shard, a, &a_bytes);
    put_ok(&mut shard, a, &a_bytes);
    put_ok(&mut shard, b, &b_bytes);
    assert_eq!(shard.refcount(&a), Some(2));
    assert_eq!(shard.refcount(&b), Some(1));
    assert_eq!(shard.stats().chunks, 2);
    assert_eq!(shard.stats().data_bytes_free, free_before - 4 * 4096, "3 blocks + 1 block");
    assert_eq!(read(&mut shard, a).unwrap(), a_bytes);
    assert_eq!(read(&mut shard, b).unwrap(), b_bytes);

    let ticket = shard.release(a).unwrap();
    let acks = idle(&mut shard);
    assert!(
        acks.iter().any(|x| x.ticket == ticket && matches!(x.outcome, Outcome::Release(Ok(()))))
    );
    assert_eq!(shard.refcount(&a), Some(1));
    let device = shard.into_device();
    let mut shard = Shard::open(device, &OpenOptions::default()).expect("reopen");
    assert_eq!(shard.refcount(&a), Some(1));
    assert_eq!(read(&mut shard, a).unwrap(), a_bytes);
    shard.release(a).unwrap();
    idle(&mut shard);
    assert!(!shard.contains(&a));
    assert!(matches!(shard.get(a), Err(EngineError::NotFound { .. })));
    assert!(matches!(shard.release(a), Err(EngineError::NotFound { .. })));
    assert_eq!(shard.stats().data_bytes_free, free_before - 4096);
    shard.check_consistency().unwrap();
}

#[test]
fn put_with_fills_the_write_buffer_and_a_failed_fill_stores_nothing() {
    let mut shard = fresh_shard(8 << 20, 1);
    let free_before = shard.stats().data_bytes_free;
    let (a, a_bytes) = chunk(1, 10_000);

    let refused = shard.put_with(a, a_bytes.len(), |_| {
        Err(kiseki_security::CryptoError::Internal { operation: "a test's seal" })
    });
    assert!(matches!(refused, Err(EngineError::Fill { .. })), "{refused:?}");
    assert!(idle(&mut shard).is_empty(), "a refused put is not acknowledged");
    assert!(!shard.contains(&a));
    assert_eq!(shard.stats().data_bytes_free, free_before, "the extent went back");
    shard.check_consistency().unwrap();

    let ticket = shard
        .put_with(a, a_bytes.len(), |window| {
            assert_eq!(window.len(), a_bytes.len(), "the window is the chunk's size");
            window.copy_from_slice(&a_bytes);
            Ok(())
        })
        .unwrap();
    assert!(idle(&mut shard).iter().any(|x| x.ticket == ticket));
    assert_eq!(read(&mut shard, a).unwrap(), a_bytes);

    // A stored chunk gets a reference without its bytes being asked for.
    let mut filled = false;
    shard
        .put_with(a, a_bytes.len(), |_| {
            filled = true;
            Ok(())
        })
        .unwrap();
    idle(&mut shard);
    assert!(!filled, "fill is called only for a new chunk");
    assert_eq!(shard.refcount(&a), Some(2));
    let too_big = shard.put_with(chunk(2, 1).0, 64 << 20, |_| Ok(()));
    assert!(matches!(too_big, Err(EngineError::BadChunkSize { .. })), "{too_big:?}");
    shard.check_consistency().unwrap();
}

#[test]
fn a_shard_in_a_device_region_stays_inside_it() {
    let mut device = memory_device(16 << 20, 2);
    let region =
        FormatOptions { ids: IDS, region_offset_bytes: 8 << 20, region_size_bytes: Some(4 << 20) };
    let layout = Shard::format(&mut device, &region).unwrap();
    assert!(layout.data_block_offset_bytes(layout.data_blocks) <= 12 << 20);
    let at_region = OpenOptions { region_offset_bytes: 8 << 20, ..OpenOptions::default() };
    let mut shard = Shard::open(device, &at_region).unwrap();
    let (id, bytes) = chunk(3, 100_000);
    put_ok(&mut shard, id, &bytes);
    let mut device = shard.into_device();
    assert!(raw_read(&mut device, 0, 8 << 20).iter().all(|&b| b == 0), "below the region");
    assert!(raw_read(&mut device, 12 << 20, 4 << 20).iter().all(|&b| b == 0), "above it");
    let error = Shard::open(device, &OpenOptions::default()).unwrap_err();
    assert!(matches!(error, EngineError::Decode { structure: "superblock", .. }), "{error}");
}

#[test]
fn bad_sizes_are_refused() {
    let mut shard = fresh_shard(8 << 20, 1);
    let max = shard.stats().max_chunk_bytes as usize;
    assert!(matches!(shard.put([1; 32], &[]), Err(EngineError::BadChunkSize { .. })));
    let big = vec![0u8; max + 1];
    assert!(matches!(shard.put([1; 32], &big), Err(EngineError::BadChunkSize { .. })));
    put_ok(&mut shard, [2; 32], &vec![7u8; max]);
}

#[test]
fn open_refuses_other_cluster_version_and_damaged_superblock() {
    let mut shard = fresh_shard(8 << 20, 1);
    put_ok(&mut shard, [1; 32], b"x");
    let device = shard.into_device();
    let other = OpenOptions { expected_cluster_id: Some([0xC2; 16]), ..OpenOptions::default() };
    let mut device = match Shard::open(device, &other) {
        Err(EngineError::WrongCluster { expected, found }) => {
            assert_eq!((expected, found), ([0xC2; 16], IDS.cluster_id));
            memory_device(8 << 20, 1)
        }
        other => panic!("expected WrongCluster, got {other:?}"),
    };
    // A fresh device: no superblock at all.
    let error = Shard::open(device, &OpenOptions::default()).unwrap_err();
    assert!(matches!(error, EngineError::Decode { structure: "superblock", .. }), "{error}");
    // Another format version, and a flipped byte.
    device = memory_device(8 << 20, 1);
    Shard::format(&mut device, &format_options()).unwrap();
    let mut block = raw_read(&mut device, 0, 4096);
    block[8] = 9;
    raw_write(&mut device, 0, &block);
    let error = Shard::open(device, &OpenOptions::default()).unwrap_err();
    assert!(matches!(error, EngineError::FormatVersion { found: 9, supported: 1 }), "{error}");
    device = memory_device(8 << 20, 1);
    Shard::format(&mut device, &format_options()).unwrap();
    let mut block = raw_read(&mut device, 0, 4096);
    block[100] ^= 4;
    raw_write(&mut device, 0, &block);
    let error = Shard::open(device, &OpenOptions::default()).unwrap_err();
    let checksum = matches!(
        error,
        EngineError::Decode { source: kiseki_engine::DecodeError::BadChecksum { .. }, .. }
    );
    assert!(checksum, "{error}");
    // The message names what is wrong.
    assert!(error.to_string().contains("checksum"), "{error}");
}

#[test]
fn checkpoints_let_the_journal_wrap_many_times() {
    let mut shard = fresh_shard(8 << 20, 5);
    let journal_blocks = shard.stats().journal_blocks_total;
    let mut live = Vec::new();
    // One group (one journal block) per put: ten laps of the ring.
    for i in 0..journal_blocks * 10 {
        let (id, bytes) = chunk(i, 1 + (i as usize * 131) % 9000);
        put_ok(&mut shard, id, &bytes);
        live.push(id);
        if live.len() > 50 {
            let gone = live.remove(0);
            let ticket = shard.release(gone).unwrap();
            let acks = idle(&mut shard);
            assert!(acks.iter().any(|a| a.ticket == ticket));
        }
        assert!(shard.stats().journal_blocks_used <= journal_blocks);
    }
    let stats = shard.stats();
    assert!(stats.checkpoints_written >= 10, "{stats:?}");
    assert_eq!(stats.chunks, live.len() as u64);
    let device = shard.into_device();
    let mut shard = Shard::open(device, &OpenOptions::default()).unwrap();
    assert_eq!(shard.stats().chunks, live.len() as u64);
    for id in &live {
        assert_eq!(read(&mut shard, *id).unwrap(), bytes_of(id));
    }
    shard.check_consistency().unwrap();
}

// ---------------------------------------------------------------------------------------
// Crash simulation
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum LogOp {
    Put(ChunkId),
    Release(ChunkId),
}

fn apply(state: &mut HashMap<ChunkId, u32>, op: LogOp) {
    match op {
        LogOp::Put(id) => *state.entry(id).or_insert(0) += 1,
        LogOp::Release(id) => {
            let refs = state.get_mut(&id).expect("model releases only live chunks");
            *refs -= 1;
            if *refs == 0 {
                state.remove(&id);
            }
        }
    }
}

fn chunk_len(rng: &mut SplitMix64) -> usize {
    let max = match rng.below(10) {
        0..=5 => 8 << 10,
        6..=8 => 64 << 10,
        _ => 256 << 10,
    };
    1 + rng.below(max) as usize
}

/// One seed: rounds of random puts (some duplicates) and releases interleaved with polls,
/// then a power cut at a random point (often mid group commit), recovery, and checks.
fn simulate(seed: u64) -> Result<(), String> {
    let mut rng = SplitMix64::new(seed);
    let size_bytes = if rng.chance(1, 2) { 8 << 20 } else { 16 << 20 };
    // A quarter of the seeds also fail one device request (a write, flush, read or trim).
    let fail_request_number = rng.chance(1, 4).then(|| 10 + rng.below(600));
    let mut memory = MemoryDevice::new(size_bytes, &device_options()).expect("memory device");
    Shard::format(&mut memory, &format_options()).expect("format");
    let plan = FaultPlan { seed, fail_request_number, ..FaultPlan::default() };
    let injected = |error: &EngineError| {
        fail_request_number.is_some()
            && matches!(error, EngineError::Device { .. } | EngineError::ShardFailed { .. })
    };
    let mut shard = match Shard::open(FaultyDevice::new(memory, plan), &OpenOptions::default()) {
        Ok(shard) => shard,
        Err(error) if injected(&error) => return skipped(),
        Err(error) => return Err(format!("open: {error}")),
    };
    // The recovered state before this round, and the ops queued since, in queue order.
    let mut base: HashMap<ChunkId, u32> = HashMap::new();
    let mut keys: Vec<ChunkId> = Vec::new();
    let rounds = 1 + rng.below(4);
    let may_fail = fail_request_number.is_some();
    for round in 0..rounds {
        let mut log: Vec<LogOp> = Vec::new();
        let mut live = base.clone();
        let mut tickets: HashMap<Ticket, usize> = HashMap::new();
        let mut acked = 0usize;
        let mut acks = Vec::new();
        // Some rounds run long enough to fill half the journal and checkpoint while running.
        let steps = if rng.chance(1, 4) { 200 + rng.below(400) } else { 5 + rng.below(80) };
        let cut_after = rng.below(steps + 1);
        for step in 0..steps + 4 {
            if step >= steps {
                // The tail: a few polls only, so the cut may land anywhere in a commit.
                if rng.chance(1, 2) {
                    break;
                }
                shard.poll(&mut acks).map_err(|e| e.to_string())?;
            } else {
                match rng.below(10) {
                    0..=3 => {
                        let (id, bytes) = chunk(rng.next_u64() % 1_000_000, chunk_len(&mut rng));
                        keys.push(id);
                        queue_put(
                            &mut shard,
                            id,
                            &bytes,
                            &mut log,
                            &mut live,
                            &mut tickets,
                            may_fail,
                        )?;
                    }
                    4..=5 if !keys.is_empty() => {
                        let id = keys[rng.below(keys.len() as u64) as usize];
                        let bytes = bytes_of(&id);
                        queue_put(
                            &mut shard,
                            id,
                            &bytes,
                            &mut log,
                            &mut live,
                            &mut tickets,
                            may_fail,
                        )?;
                    }
                    6 if !keys.is_empty() && rng.chance(1, 2) => {
                        // A replace changes no reference: the model only checks it is
                        // refused exactly when the chunk is not live.
                        let id = keys[rng.below(keys.len() as u64) as usize];
                        let model_live = live.contains_key(&id);
                        match shard.replace(id, &replacement_of(&id)) {
                            Ok(_) if model_live => {}
                            Err(EngineError::NotFound { .. }) => {}
                            Err(EngineError::Busy { .. } | EngineError::NoSpace { .. }) => {}
                            Err(EngineError::CapacityCritical { .. }) => {}
                            Err(error) if injected(&error) => {}
                            other => {
                                return Err(format!("replace: {other:?}, model live {model_live}"));
                            }
                        }
                    }
                    6..=7 if !keys.is_empty() => {
                        let id = keys[rng.below(keys.len() as u64) as usize];
                        let model_live = live.contains_key(&id);
                        match shard.release(id) {
                            Ok(ticket) if model_live => {
                                tickets.insert(ticket, log.len());
                                log.push(LogOp::Release(id));
                                apply(&mut live, LogOp::Release(id));
                            }
                            Err(EngineError::NotFound { .. }) if !model_live => {}
                            Err(EngineError::Busy { .. }) => {}
                            Err(error) if injected(&error) => {}
                            other => {
                                return Err(format!("release: {other:?}, model live {model_live}"));
                            }
                        }
                    }
                    _ => {
                        shard.poll(&mut acks).map_err(|e| e.to_string())?;
                    }
                }
                if step == cut_after && rng.chance(1, 3) {
                    shard.run_until_idle(&mut acks).map_err(|e| e.to_string())?;
                }
            }
            for ack in acks.drain(..) {
                match ack.outcome {
                    Outcome::Replace(Ok(())) => continue,
                    Outcome::Replace(Err(EngineError::Interrupted { .. }))
                        if fail_request_number.is_some() =>
                    {
                        continue;
                    }
                    Outcome::Replace(_) => return Err(format!("ack {ack:?}")),
                    _ => {}
                }
                let ok = matches!(ack.outcome, Outcome::Put(Ok(())) | Outcome::Release(Ok(())));
                let interrupted = matches!(
                    ack.outcome,
                    Outcome::Put(Err(EngineError::Interrupted { .. }))
                        | Outcome::Release(Err(EngineError::Interrupted { .. }))
                );
                if interrupted && fail_request_number.is_some() {
                    continue;
                }
                if !ok {
                    return Err(format!("ack {ack:?}"));
                }
                let at = tickets[&ack.ticket];
                if at != acked {
                    return Err(format!("ack of op {at} out of order (expected {acked})"));
                }
                acked += 1;
            }
        }
        // Power cut, recovery.
        if shard.failed().is_some() {
            SIM_FAILED_SHARDS_VERIFIED.fetch_add(1, Ordering::Relaxed);
        }
        let mut device = shard.into_device();
        device.power_cut();
        device.reopen();
        shard = match Shard::open(device, &OpenOptions::default()) {
            Ok(shard) => shard,
            Err(error) if injected(&error) => return skipped(),
            Err(error) => return Err(format!("round {round}: recovery failed: {error}")),
        };
        let recovered: HashMap<ChunkId, u32> = shard.chunks().collect();
        // The recovered state is the base plus a prefix of the log at least as long as the
        // acknowledged ops.
        let mut state = base.clone();
        for op in &log[..acked] {
            apply(&mut state, *op);
        }
        let mut prefix = None;
        for k in acked..=log.len() {
            if state == recovered {
                prefix = Some(k);
                break;
            }
            if k < log.len() {
                apply(&mut state, log[k]);
            }
        }
        let Some(prefix) = prefix else {
            if std::env::var("KISEKI_SIM_DEBUG").is_ok() {
                let short = |id: &ChunkId| u64::from_le_bytes(id[..8].try_into().unwrap());
                let mut b: Vec<_> = base.iter().map(|(k, v)| (short(k), *v)).collect();
                let mut r: Vec<_> = recovered.iter().map(|(k, v)| (short(k), *v)).collect();
                b.sort();
                r.sort();
                eprintln!("base {b:?}\nrecovered {r:?}");
                for op in &log {
                    match op {
                        LogOp::Put(id) => eprintln!("put {}", short(id)),
                        LogOp::Release(id) => eprintln!("release {}", short(id)),
                    }
                }
            }
            return Err(format!(
                "round {round}: recovered {} chunks match no prefix of the {} ops from the {} \
                 acked on",
                recovered.len(),
                log.len(),
                acked
            ));
        };
        shard.check_consistency().map_err(|e| format!("round {round}: {e}"))?;
        if shard.stats().chunks != recovered.len() as u64 {
            return Err(format!("round {round}: stats count {} chunks", shard.stats().chunks));
        }
        for id in recovered.keys() {
            let got = match read(&mut shard, *id) {
                Ok(got) => got,
                Err(error) if injected(&error) => return skipped(),
                Err(error) => return Err(format!("round {round}: get: {error}")),
            };
            // A replace may have landed or not (its ack is no reference change): either
            // bytes, never others.
            if got != bytes_of(id) && got != replacement_of(id) {
                return Err(format!("round {round}: chunk read back differs (prefix {prefix})"));
            }
        }
        base = recovered;
        SIM_ROUNDS_VERIFIED.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Ends a seed whose injected error hit recovery or a verifying read: nothing left to check.
fn skipped() -> Result<(), String> {
    SIM_SKIPPED_AFTER_INJECTED_ERROR.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn queue_put(
    shard: &mut Shard<SimDevice>,
    id: ChunkId,
    bytes: &[u8],
    log: &mut Vec<LogOp>,
    live: &mut HashMap<ChunkId, u32>,
    tickets: &mut HashMap<Ticket, usize>,
    shard_may_fail: bool,
) -> Result<(), String> {
    match shard.put(id, bytes) {
        Ok(ticket) => {
            tickets.insert(ticket, log.len());
            log.push(LogOp::Put(id));
            apply(live, LogOp::Put(id));
            Ok(())
        }
        Err(EngineError::Busy { .. } | EngineError::CapacityCritical { .. }) => Ok(()),
        Err(EngineError::NoSpace { .. }) => Ok(()),
        Err(EngineError::Device { .. } | EngineError::ShardFailed { .. }) if shard_may_fail => {
            Ok(())
        }
        Err(other) => Err(format!("put: {other}")),
    }
}

/// What the simulator exercised, for its summary line.
static SIM_ROUNDS_VERIFIED: AtomicU64 = AtomicU64::new(0);
static SIM_FAILED_SHARDS_VERIFIED: AtomicU64 = AtomicU64::new(0);
static SIM_SKIPPED_AFTER_INJECTED_ERROR: AtomicU64 = AtomicU64::new(0);

fn seeds_from_env() -> std::ops::Range<u64> {
    if let Ok(seed) = std::env::var("KISEKI_SIM_SEED") {
        let seed: u64 = seed.parse().expect("KISEKI_SIM_SEED is a number");
        return seed..seed + 1;
    }
    let count = std::env::var("KISEKI_SIM_SEEDS").map_or(300, |n| n.parse().expect("a count"));
    0..count
}

#[test]
fn crash_simulation_keeps_every_acknowledged_op() {
    let started = std::time::Instant::now();
    let seeds = seeds_from_env();
    let count = seeds.end - seeds.start;
    for seed in seeds {
        if let Err(error) = simulate(seed) {
            panic!("crash simulation failed, replay with KISEKI_SIM_SEED={seed}: {error}");
        }
    }
    eprintln!(
        "crash simulation: {count} seeds in {:.1?}: {} rounds verified after a power cut, {} \
         of them after a failed write or flush; {} seeds stopped early (injected error in recovery \
         or a verifying read)",
        started.elapsed(),
        SIM_ROUNDS_VERIFIED.load(Ordering::Relaxed),
        SIM_FAILED_SHARDS_VERIFIED.load(Ordering::Relaxed),
        SIM_SKIPPED_AFTER_INJECTED_ERROR.load(Ordering::Relaxed),
    );
}

// ---------------------------------------------------------------------------------------
// Replace (re-sealed envelopes) and the ordered listing
// ---------------------------------------------------------------------------------------

/// The bytes a replace of chunk `id` stores: other bytes, half as long (another extent size).
fn replacement_of(id: &ChunkId) -> Vec<u8> {
    let key = u64::from_le_bytes(id[..8].try_into().unwrap());
    let len = u64::from_le_bytes(id[8..16].try_into().unwrap()) as usize;
    chunk(key ^ 0x5EA1, len / 2 + 1).1
}

fn replace_ok<D: BlockDevice>(shard: &mut Shard<D>, id: ChunkId, bytes: &[u8]) {
    let ticket = shard.replace(id, bytes).expect("replace");
    let acks = idle(shard);
    let ack = acks.iter().find(|a| a.ticket == ticket).expect("the replace's ack");
    assert!(matches!(ack.outcome, Outcome::Replace(Ok(()))), "{ack:?}");
}

#[test]
fn a_replace_switches_the_bytes_keeps_the_references_and_frees_the_old_extent() {
    let mut shard = fresh_shard(8 << 20, 21);
    let (a, a_bytes) = chunk(1, 10_000);
    let (b, b_bytes) = chunk(2, 300);
    put_ok(&mut shard, a, &a_bytes);
    put_ok(&mut shard, a, &a_bytes);
    put_ok(&mut shard, b, &b_bytes);
    let free_before = shard.stats().data_bytes_free;
    let new_a = replacement_of(&a);
    assert_eq!(new_a.len(), 5_001);
    replace_ok(&mut shard, a, &new_a);
    assert_eq!(read(&mut shard, a).unwrap(), new_a);
    assert_eq!(shard.refcount(&a), Some(2), "a replace keeps the references");
    assert_eq!(shard.stats().chunks, 2);
    assert_eq!(shard.stats().data_bytes_free, free_before + 4096, "3 blocks became 2");
    shard.check_consistency().unwrap();
    // Durable: a reopen replays (or loads) the switch.
    let mut shard = Shard::open(shard.into_device(), &OpenOptions::default()).unwrap();
    assert_eq!(read(&mut shard, a).unwrap(), new_a);
    assert_eq!(read(&mut shard, b).unwrap(), b_bytes);
    assert_eq!(shard.refcount(&a), Some(2));
    assert_eq!(shard.stats().data_bytes_free, free_before + 4096);
    shard.check_consistency().unwrap();
    // Releases after a replace free the new extent, not the old one twice.
    for _ in 0..2 {
        shard.release(a).unwrap();
    }
    idle(&mut shard);
    assert!(!shard.contains(&a));
    shard.check_consistency().unwrap();
    let mut shard = Shard::open(shard.into_device(), &OpenOptions::default()).unwrap();
    assert!(!shard.contains(&a));
    assert_eq!(read(&mut shard, b).unwrap(), b_bytes);
    shard.check_consistency().unwrap();
}

#[test]
fn a_replace_of_a_chunk_not_stored_is_not_found() {
    let mut shard = fresh_shard(8 << 20, 22);
    let (a, a_bytes) = chunk(1, 5_000);
    let (b, b_bytes) = chunk(2, 5_000);
    let free_before = shard.stats().data_bytes_free;
    assert!(
        matches!(shard.replace(a, &a_bytes), Err(EngineError::NotFound { chunk_id }) if chunk_id == a)
    );
    // Not yet acknowledged: not stored as far as a replace is concerned.
    let ticket = shard.put(a, &a_bytes).unwrap();
    assert!(matches!(shard.replace(a, &a_bytes), Err(EngineError::NotFound { .. })));
    // Its last release queued: gone as far as a replace is concerned.
    put_ok(&mut shard, b, &b_bytes);
    shard.release(b).unwrap();
    assert!(matches!(shard.replace(b, &b_bytes), Err(EngineError::NotFound { .. })));
    let acks = idle(&mut shard);
    assert!(acks.iter().all(|ack| ack.ticket != ticket), "acked by the put of b already");
    assert!(shard.contains(&a) && !shard.contains(&b));
    assert!(matches!(shard.replace(b, &b_bytes), Err(EngineError::NotFound { .. })));
    assert_eq!(shard.stats().data_bytes_free, free_before - 2 * 4096, "only a is stored");
    assert!(matches!(shard.replace(a, &[]), Err(EngineError::BadChunkSize { .. })));
    shard.check_consistency().unwrap();
}

#[test]
fn a_replace_queued_with_a_release_and_a_revive_recovers_consistently() {
    // Queue order: replace, release to zero, put again (revives the entry on the replaced
    // bytes), then a crash after the whole group is durable.
    let mut shard = fresh_shard(8 << 20, 23);
    let (a, a_bytes) = chunk(1, 9_000);
    put_ok(&mut shard, a, &a_bytes);
    let new_a = replacement_of(&a);
    shard.replace(a, &new_a).unwrap();
    shard.release(a).unwrap();
    shard.put(a, &a_bytes).unwrap();
    let acks = idle(&mut shard);
    assert!(acks.iter().all(|ack| !matches!(
        ack.outcome,
        Outcome::Put(Err(_)) | Outcome::Release(Err(_)) | Outcome::Replace(Err(_))
    )));
    assert_eq!(read(&mut shard, a).unwrap(), new_a, "the revive names the replaced bytes");
    assert_eq!(shard.refcount(&a), Some(1));
    shard.check_consistency().unwrap();
    let mut device = shard.into_device();
    device.power_cut();
    let mut shard = Shard::open(device, &OpenOptions::default()).unwrap();
    assert_eq!(read(&mut shard, a).unwrap(), new_a);
    assert_eq!(shard.refcount(&a), Some(1));
    shard.check_consistency().unwrap();
}

#[test]
fn a_read_in_flight_keeps_the_replaced_extent_until_it_completes() {
    let mut shard = fresh_shard(8 << 20, 24);
    let (a, a_bytes) = chunk(1, 12_000);
    put_ok(&mut shard, a, &a_bytes);
    let free_before = shard.stats().data_bytes_free;
    let new_a = replacement_of(&a);
    let replace = shard.replace(a, &new_a).unwrap();
    let mut acks = Vec::new();
    // Two turns (the data write, then the journal write complete; the flush is pushed),
    // then a get of the old extent: the flush completes (and the switch applies) in the
    // turn that reaps the read, before the read's completion is handled.
    let mut get = None;
    for turn in 0..20 {
        shard.poll(&mut acks).unwrap();
        if turn == 1 {
            assert_eq!(shard.stats().pending_ops, 1, "the replace is not applied yet");
            get = Some(shard.get(a).unwrap());
        }
        if acks.iter().any(|ack| ack.ticket == replace) {
            break;
        }
    }
    shard.run_until_idle(&mut acks).unwrap();
    let get = get.expect("a get was started");
    let got = acks.iter().find(|ack| ack.ticket == get).expect("the get's ack");
    match &got.outcome {
        Outcome::Get(Ok(bytes)) => assert!(bytes == &a_bytes, "the read saw the old extent"),
        other => panic!("the get in flight failed: {other:?}"),
    }
    assert_eq!(shard.stats().integrity_errors, 0);
    assert_eq!(read(&mut shard, a).unwrap(), new_a);
    assert_eq!(shard.stats().data_bytes_free, free_before + 4096, "old extent freed after");
    shard.check_consistency().unwrap();
}

#[test]
fn a_crash_around_a_replace_leaves_the_old_or_the_new_bytes_never_neither() {
    let mut switched = 0;
    let mut kept = 0;
    for seed in seeds_from_env().take(60) {
        let mut shard = fresh_shard(8 << 20, seed);
        let mut rng = SplitMix64::new(seed ^ 0xC0FFEE);
        let chunks: Vec<(ChunkId, Vec<u8>)> =
            (0..12).map(|n| chunk(seed * 100 + n, chunk_len(&mut rng))).collect();
        for (id, bytes) in &chunks {
            put_ok(&mut shard, *id, bytes);
        }
        let mut tickets = HashMap::new();
        for (id, _) in chunks.iter().filter(|_| rng.chance(2, 3)) {
            let ticket = shard.replace(*id, &replacement_of(id)).unwrap();
            tickets.insert(ticket, *id);
        }
        // A few turns (maybe none): the cut lands before, inside or after the group.
        let mut acked = Vec::new();
        let mut acks = Vec::new();
        for _ in 0..rng.below(6) {
            shard.poll(&mut acks).unwrap();
        }
        for ack in acks {
            assert!(matches!(ack.outcome, Outcome::Replace(Ok(()))), "seed {seed}: {ack:?}");
            acked.push(tickets[&ack.ticket]);
        }
        let mut device = shard.into_device();
        device.power_cut();
        device.reopen();
        let mut shard = Shard::open(device, &OpenOptions::default())
            .unwrap_or_else(|e| panic!("seed {seed}: recovery: {e}"));
        shard.check_consistency().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        for (id, bytes) in &chunks {
            assert_eq!(shard.refcount(id), Some(1), "seed {seed}");
            let got = read(&mut shard, *id).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            if got == replacement_of(id) {
                switched += 1;
            } else {
                assert_eq!(&got, bytes, "seed {seed}: neither the old nor the new bytes");
                assert!(!acked.contains(id), "seed {seed}: an acknowledged replace was lost");
                kept += 1;
            }
        }
        // The space the recovery freed is reusable: new chunks go in and every chunk reads.
        let more: Vec<_> = (0..6).map(|n| chunk(seed * 100 + 50 + n, 20_000)).collect();
        for (id, bytes) in &more {
            put_ok(&mut shard, *id, bytes);
        }
        for (id, bytes) in &more {
            assert_eq!(&read(&mut shard, *id).unwrap(), bytes, "seed {seed}");
        }
        shard.check_consistency().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
    assert!(switched > 0 && kept > 0, "cuts on both sides: {switched} switched, {kept} kept");
}

#[test]
fn chunk_ids_are_listed_in_order_from_a_cursor() {
    let mut shard = fresh_shard(8 << 20, 25);
    let mut ids: Vec<ChunkId> = (0..40).map(|n| chunk(n * 7919, 100).0).collect();
    for id in &ids {
        put_ok(&mut shard, *id, &bytes_of(id));
    }
    // An unacknowledged put is not listed.
    let (pending, pending_bytes) = chunk(999_999, 100);
    shard.put(pending, &pending_bytes).unwrap();
    ids.sort();
    let mut walked = Vec::new();
    let mut cursor = None;
    loop {
        let page = shard.chunk_ids_after(cursor.as_ref(), 7);
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        cursor = Some(*last);
        walked.extend(page);
    }
    assert_eq!(walked, ids);
    assert_eq!(shard.chunk_ids_after(Some(&[0xFF; 32]), 7), Vec::<ChunkId>::new());
    idle(&mut shard);
    assert!(shard.chunk_ids_after(None, 100).contains(&pending));
}

// ---------------------------------------------------------------------------------------
// Corruption, capacity, I/O errors
// ---------------------------------------------------------------------------------------

fn raw_read<D: BlockDevice>(device: &mut D, offset: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let mut buf = device.acquire_buffer().unwrap();
        let piece = (len - out.len()).min(buf.capacity() as usize);
        buf.set_len(piece as u32);
        let offset = offset + out.len() as u64;
        device.push(Request { tag: 0, op: Op::Read { offset, buf } }).unwrap();
        let mut completions = Vec::new();
        device.submit_and_reap(1, &mut completions).unwrap();
        let buf = completions.pop().unwrap().buf.unwrap();
        out.extend_from_slice(buf.as_slice());
        device.release_buffer(buf);
    }
    out
}

fn raw_write<D: BlockDevice>(device: &mut D, offset: u64, bytes: &[u8]) {
    let mut buf = device.acquire_buffer().unwrap();
    buf.set_len(bytes.len() as u32);
    buf.as_mut_slice().copy_from_slice(bytes);
    device.push(Request { tag: 0, op: Op::Write { offset, buf } }).unwrap();
    let mut completions = Vec::new();
    device.submit_and_reap(1, &mut completions).unwrap();
    let completion = completions.pop().unwrap();
    completion.result.unwrap();
    device.release_buffer(completion.buf.unwrap());
}

/// Offset of the first block of the data area holding `needle` at its start.
fn find_extent<D: BlockDevice>(shard: Shard<D>, needle: &[u8]) -> (D, u64) {
    let layout = shard.superblock().layout;
    let mut device = shard.into_device();
    for block in 0..layout.data_blocks {
        let offset = layout.data_block_offset_bytes(block);
        let bytes = raw_read(&mut device, offset, 4096);
        if bytes.starts_with(needle) {
            return (device, offset);
        }
    }
    panic!("extent not found");
}

#[test]
fn a_flipped_byte_is_an_integrity_error_on_get_and_in_scrub() {
    for at in [0usize, 4095, 4096, 9999] {
        let mut shard = fresh_shard(8 << 20, 7);
        let (a, a_bytes) = chunk(7, 10_000);
        let (b, b_bytes) = chunk(8, 5_000);
        put_ok(&mut shard, a, &a_bytes);
        put_ok(&mut shard, b, &b_bytes);
        let (mut device, offset) = find_extent(shard, &a_bytes[..64]);
        let block_at = offset + (at as u64 / 4096) * 4096;
        let mut block = raw_read(&mut device, block_at, 4096);
        block[at % 4096] ^= 0x20;
        raw_write(&mut device, block_at, &block);
        let mut shard = Shard::open(device, &OpenOptions::default()).unwrap();
        match read(&mut shard, a) {
            Err(EngineError::Integrity { chunk_id, .. }) => assert_eq!(chunk_id, a),
            other => panic!("byte {at}: expected an integrity error, got {other:?}"),
        }
        assert_eq!(shard.stats().integrity_errors, 1);
        assert_eq!(read(&mut shard, b).unwrap(), b_bytes, "the other chunk is intact");
        assert_eq!(shard.scrub_step(10), 2, "two chunks to scrub");
        idle(&mut shard);
        assert_eq!(shard.stats().integrity_errors, 2, "scrub found it once more");
        assert_eq!(shard.stats().scrub_reads, 2);
    }
}

#[test]
fn past_critical_puts_are_refused_and_reads_continue() {
    let mut shard = fresh_shard(8 << 20, 3);
    let size = 200 << 10;
    let mut stored = Vec::new();
    let error = loop {
        let (id, bytes) = chunk(stored.len() as u64, size);
        match shard.put(id, &bytes) {
            Ok(_) => {
                idle(&mut shard);
                stored.push(id);
            }
            Err(error) => break error,
        }
        assert!(stored.len() < 1000, "never refused");
    };
    match &error {
        EngineError::CapacityCritical { device_id, fill_percent, critical_percent } => {
            assert_eq!(*device_id, IDS.device_id);
            assert!(*fill_percent >= CAPACITY_CRITICAL_PERCENT);
            assert_eq!(*critical_percent, CAPACITY_CRITICAL_PERCENT);
        }
        other => panic!("expected CapacityCritical, got {other}"),
    }
    let message = error.to_string();
    assert!(message.contains("d1d1d1d1") && message.contains("% full"), "{message}");
    assert!(shard.stats().capacity >= CapacityLevel::Critical);
    assert!(matches!(shard.put([0xEE; 32], b"small"), Err(EngineError::CapacityCritical { .. })));
    assert_eq!(read(&mut shard, stored[0]).unwrap(), bytes_of(&stored[0]));
    // Releasing brings the shard back under the threshold.
    for id in stored.iter().take(stored.len() / 2) {
        shard.release(*id).unwrap();
    }
    idle(&mut shard);
    assert!(shard.stats().capacity < CapacityLevel::Critical);
    put_ok(&mut shard, [0xEE; 32], b"small");
    shard.check_consistency().unwrap();
}

/// Fails the Nth device request for each N in turn: the failure surfaces as a typed error,
/// the shard refuses puts after a failed write or flush, reads go on, and after a reopen
/// every acknowledged put is there.
#[test]
fn an_io_error_fails_the_shard_and_recovery_keeps_acknowledged_puts() {
    let mut failed_shards = 0;
    for n in 1..120u64 {
        let mut memory = MemoryDevice::new(8 << 20, &device_options()).unwrap();
        Shard::format(&mut memory, &format_options()).unwrap();
        let plan = FaultPlan { seed: n, fail_request_number: Some(n), ..FaultPlan::default() };
        let device = FaultyDevice::new(memory, plan);
        let mut shard = match Shard::open(device, &OpenOptions::default()) {
            Ok(shard) => shard,
            Err(EngineError::Device { .. }) => continue,
            Err(other) => panic!("n {n}: open failed with {other}"),
        };
        let mut acked = Vec::new();
        let mut tickets = HashMap::new();
        for i in 0..40u64 {
            let (id, bytes) = chunk(i, 1 + (i as usize * 7919) % 20_000);
            match shard.put(id, &bytes) {
                Ok(ticket) => {
                    tickets.insert(ticket, id);
                }
                Err(EngineError::ShardFailed { .. }) => break,
                Err(EngineError::Device { .. }) => break,
                Err(other) => panic!("n {n}: put failed with {other}"),
            }
            let mut acks = Vec::new();
            let _ = shard.run_until_idle(&mut acks);
            for ack in acks {
                match ack.outcome {
                    Outcome::Put(Ok(())) => acked.push(tickets[&ack.ticket]),
                    Outcome::Put(Err(EngineError::Interrupted { .. })) => {}
                    other => panic!("n {n}: {other:?}"),
                }
            }
        }
        if shard.failed().is_some() {
            failed_shards += 1;
            assert!(matches!(shard.put([9; 32], b"x"), Err(EngineError::ShardFailed { .. })));
            if let Some(id) = acked.first() {
                assert_eq!(read(&mut shard, *id).unwrap(), bytes_of(id), "n {n}: reads go on");
            }
        }
        let mut device = shard.into_device();
        device.reopen();
        let mut shard = Shard::open(device, &OpenOptions::default()).unwrap();
        for id in &acked {
            assert_eq!(read(&mut shard, *id).unwrap(), bytes_of(id), "n {n}");
        }
        shard.check_consistency().unwrap();
    }
    assert!(failed_shards > 10, "only {failed_shards} runs hit a failed write or flush");
}

// ---------------------------------------------------------------------------------------
// The real backend
// ---------------------------------------------------------------------------------------

#[test]
fn io_uring_smoke() {
    use kiseki_devices::IoUringDevice;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("shard.dev");
    let options = DeviceOptions {
        create: true,
        size_bytes: Some(16 << 20),
        queue_depth: 32,
        buffer_count: 16,
        buffer_size_bytes: 256 << 10,
        ..DeviceOptions::default()
    };
    let mut device = IoUringDevice::open(&path, &options).expect("io_uring device");
    Shard::format(&mut device, &format_options()).unwrap();
    let mut shard = Shard::open(device, &OpenOptions::default()).unwrap();
    let chunks: Vec<(ChunkId, Vec<u8>)> =
        (0..40).map(|i| chunk(i, 1 + i as usize * 5000)).collect();
    let mut tickets = Vec::new();
    let mut acks = Vec::new();
    for (id, bytes) in &chunks {
        loop {
            match shard.put(*id, bytes) {
                Ok(ticket) => break tickets.push(ticket),
                Err(EngineError::Busy { .. }) => shard.run_until_idle(&mut acks).map(drop).unwrap(),
                Err(other) => panic!("put: {other}"),
            }
        }
    }
    acks.extend(idle(&mut shard));
    assert_eq!(acks.len(), chunks.len());
    assert!(acks.iter().all(|a| matches!(a.outcome, Outcome::Put(Ok(())))));
    drop(shard);
    let options = DeviceOptions { create: false, ..options };
    let device = IoUringDevice::open(&path, &options).unwrap();
    let mut shard = Shard::open(device, &OpenOptions::default()).unwrap();
    for (id, bytes) in &chunks {
        assert_eq!(&read(&mut shard, *id).unwrap(), bytes);
    }
    assert_eq!(shard.stats().chunks, 40);
    shard.check_consistency().unwrap();
}
