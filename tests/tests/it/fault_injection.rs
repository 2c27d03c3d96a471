//! The fault wrapper over the memory device, as the simulator will use it: it fails exactly
//! the request it is told to, flips exactly one bit in the read it is told to, and a power
//! cut loses only what was not flushed, block by block.

use kiseki_devices::rng::SplitMix64;
use kiseki_devices::{
    BlockDevice, DeviceError, FaultPlan, FaultyDevice, MemoryDevice, Op, OpKind, Request,
};

use crate::support::{self, BLOCK_BYTES, assert_message};

const DEVICE_BYTES: u64 = 1 << 20;
const BLOCK: usize = BLOCK_BYTES as usize;

type Faulty = FaultyDevice<MemoryDevice>;

fn faulty_memory(plan: FaultPlan, queue_depth: u32, buffers: u32, buffer_blocks: u32) -> Faulty {
    faulty_memory_of(DEVICE_BYTES, plan, queue_depth, buffers, buffer_blocks)
}

fn faulty_memory_of(
    size_bytes: u64,
    plan: FaultPlan,
    queue_depth: u32,
    buffers: u32,
    buffer_blocks: u32,
) -> Faulty {
    let options = support::options(size_bytes, queue_depth, buffers, buffer_blocks * BLOCK_BYTES);
    FaultyDevice::new(support::open_memory(&options), plan)
}

/// With eight reads in flight, exactly the one numbered in the plan fails, with EIO; the
/// others return what was written.
#[test]
fn fails_exactly_the_nth_request_with_eio() {
    const READS: u64 = 8;
    for n in 1..=READS {
        // Requests 1..=8 are the writes, 9..=16 the reads.
        let plan = FaultPlan { fail_request_number: Some(READS + n), ..FaultPlan::default() };
        let mut device = faulty_memory(plan, READS as u32, READS as u32, 1);
        for tag in 1..=READS {
            support::write_at(&mut device, (tag - 1) * u64::from(BLOCK_BYTES), &[tag as u8; BLOCK]);
        }
        for tag in 1..=READS {
            let buf = device.acquire_buffer().expect("a free buffer");
            let op = Op::Read { offset: (tag - 1) * u64::from(BLOCK_BYTES), buf };
            device.push(Request { tag, op }).unwrap_or_else(|r| panic!("read {tag}: {r}"));
        }
        let mut completions = Vec::new();
        while device.in_flight() > 0 {
            device.submit_and_reap(READS as usize, &mut completions).expect("submit_and_reap");
        }
        assert_eq!(completions.len(), READS as usize, "n={n}: every read completes");
        let mut failed = 0;
        for completion in completions {
            let tag = completion.tag;
            let buf = completion.buf.expect("a read's buffer comes back, failed or not");
            if tag == n {
                failed += 1;
                let error = completion.result.expect_err("the chosen read fails");
                assert!(
                    matches!(&error, DeviceError::Io { op: OpKind::Read, source }
                        if source.raw_os_error() == Some(libc::EIO)),
                    "n={n}: {error:?}"
                );
                assert_message(&error, &["read failed"]);
            } else {
                let moved = completion.result.unwrap_or_else(|e| panic!("n={n}, read {tag}: {e}"));
                assert_eq!(moved, BLOCK_BYTES);
                assert!(buf.as_slice().iter().all(|&b| b == tag as u8), "n={n}: read {tag}");
            }
            device.release_buffer(buf);
        }
        assert_eq!(failed, 1, "n={n}: exactly one read fails");
        support::assert_pool_full(&mut device, READS as u32);
    }
}

/// The read numbered in the plan differs from what was written in exactly one bit; the
/// others, and a later read of the same extent, are exact.
#[test]
fn flips_exactly_one_bit_in_the_chosen_read() {
    const EXTENTS: u64 = 8;
    const EXTENT_BLOCKS: u32 = 2;
    let extent_bytes = EXTENT_BLOCKS * BLOCK_BYTES;
    for seed in support::seeds(50) {
        let mut rng = SplitMix64::new(seed);
        let chosen = 1 + rng.below(EXTENTS);
        let plan =
            FaultPlan { seed, flip_bit_in_read_number: Some(chosen), ..FaultPlan::default() };
        let mut device = faulty_memory(plan, 4, 2, EXTENT_BLOCKS);
        let mut data = vec![0; EXTENTS as usize * extent_bytes as usize];
        rng.fill(&mut data);
        let extents: Vec<&[u8]> = data.chunks(extent_bytes as usize).collect();
        for (offset, extent) in (0..).step_by(extent_bytes as usize).zip(&extents) {
            support::write_at(&mut device, offset, extent);
        }
        for (number, extent) in (1..=EXTENTS).zip(&extents) {
            let got =
                support::read_at(&mut device, (number - 1) * u64::from(extent_bytes), extent_bytes);
            let flipped: u32 = got.iter().zip(*extent).map(|(a, b)| (a ^ b).count_ones()).sum();
            let expected = u32::from(number == chosen);
            assert_eq!(flipped, expected, "seed {seed}: bits flipped in read {number}");
        }
        assert_eq!(device.bits_flipped(), 1, "seed {seed}");
        let offset = (chosen - 1) * u64::from(extent_bytes);
        let again = support::read_at(&mut device, offset, extent_bytes);
        assert_eq!(again, extents[chosen as usize - 1], "seed {seed}: the device kept its data");
    }
}

/// At a million per million every read comes back with exactly one bit flipped.
#[test]
fn flips_one_bit_in_every_read_at_full_chance() {
    let seed = support::seeds(1).start;
    let plan = FaultPlan { seed, flip_bit_per_million_reads: 1_000_000, ..FaultPlan::default() };
    let mut device = faulty_memory(plan, 4, 2, 1);
    let mut data = vec![0; BLOCK];
    SplitMix64::new(seed).fill(&mut data);
    support::write_at(&mut device, 0, &data);
    for read in 1..=16 {
        let got = support::read_at(&mut device, 0, BLOCK_BYTES);
        let flipped: u32 = got.iter().zip(&data).map(|(a, b)| (a ^ b).count_ones()).sum();
        assert_eq!(flipped, 1, "seed {seed}: read {read}");
    }
    assert_eq!(device.bits_flipped(), 16);
}

/// Per seed: write data A over random extents and flush; then write B (and trim) over
/// random extents without flushing, and push one more write without reaping it; cut the
/// power. Every block untouched since the flush is exactly as flushed (A, or zeros if never
/// written); every block changed since is either as flushed or as last changed, block by
/// block; the unreaped write is lost. Across seeds, unflushed blocks are both kept and
/// lost, and some multi-block write tears.
#[test]
fn power_cut_loses_only_unflushed_blocks() {
    let mut totals = PowerCutOutcome::default();
    for seed in support::seeds(200) {
        let outcome = power_cut_once(seed);
        totals.kept_blocks += outcome.kept_blocks;
        totals.lost_blocks += outcome.lost_blocks;
        totals.torn_extents += outcome.torn_extents;
    }
    assert!(totals.kept_blocks > 0, "no unflushed block survived any power cut: {totals:?}");
    assert!(totals.lost_blocks > 0, "no unflushed block was lost at any power cut: {totals:?}");
    assert!(totals.torn_extents > 0, "no multi-block write tore at any power cut: {totals:?}");
}

#[derive(Debug, Default)]
struct PowerCutOutcome {
    kept_blocks: u64,
    lost_blocks: u64,
    torn_extents: u64,
}

/// Small, so that 20 extents of up to 16 blocks overlap often.
const POWER_CUT_DEVICE_BYTES: u64 = 256 << 10;
const POWER_CUT_BLOCKS: usize = (POWER_CUT_DEVICE_BYTES / BLOCK_BYTES as u64) as usize;
const POWER_CUT_EXTENT_BLOCKS_MAX: u64 = 16;

fn power_cut_once(seed: u64) -> PowerCutOutcome {
    let mut rng = SplitMix64::new(seed);
    let plan = FaultPlan { seed, ..FaultPlan::default() };
    let extent_blocks = POWER_CUT_EXTENT_BLOCKS_MAX as u32;
    let mut device = faulty_memory_of(POWER_CUT_DEVICE_BYTES, plan, 4, 4, extent_blocks);

    // What a flush made durable, per block: A where written, zeros elsewhere.
    let mut durable = vec![0u8; POWER_CUT_DEVICE_BYTES as usize];
    for _ in 0..12 {
        let blocks = random_extent(&mut rng);
        let mut data = vec![0; blocks.len() * BLOCK];
        rng.fill(&mut data);
        support::write_at(&mut device, (blocks.start * BLOCK) as u64, &data);
        durable[blocks.start * BLOCK..blocks.end * BLOCK].copy_from_slice(&data);
    }
    assert!(matches!(support::run_op(&mut device, Op::Flush), Ok(0)), "seed {seed}: flush");

    // What each block held last before the cut, if it changed since the flush.
    let mut latest = durable.clone();
    let mut changed = [false; POWER_CUT_BLOCKS];
    let mut extents = Vec::new();
    for _ in 0..8 {
        let blocks = random_extent(&mut rng);
        let bytes = blocks.start * BLOCK..blocks.end * BLOCK;
        if rng.chance(1, 4) {
            let trim = Op::Trim { offset: bytes.start as u64, len_bytes: bytes.len() as u64 };
            assert!(matches!(support::run_op(&mut device, trim), Ok(0)), "seed {seed}: trim");
            latest[bytes].fill(0);
        } else {
            rng.fill(&mut latest[bytes.clone()]);
            support::write_at(&mut device, bytes.start as u64, &latest[bytes]);
        }
        changed[blocks.clone()].fill(true);
        extents.push(blocks);
    }
    push_unreaped_write(&mut device, &mut rng, seed);

    device.power_cut();
    assert_eq!(device.in_flight(), 0, "seed {seed}: nothing in flight after a power cut");
    support::assert_pool_full(&mut device, 4);
    let after = read_device(&mut device);
    check_blocks(seed, &after, &durable, &latest, &changed);
    outcome(&after, &durable, &latest, &extents)
}

/// A write of random data pushed and never reaped: lost at the power cut, it must leave no
/// trace (its data is random, so it matches neither the flushed nor the latest contents).
fn push_unreaped_write(device: &mut Faulty, rng: &mut SplitMix64, seed: u64) {
    let blocks = random_extent(rng);
    let mut buf = device.acquire_buffer().expect("a free buffer");
    buf.set_len((blocks.len() * BLOCK) as u32);
    rng.fill(buf.as_mut_slice());
    let op = Op::Write { offset: (blocks.start * BLOCK) as u64, buf };
    if let Err(rejected) = device.push(Request { tag: 99, op }) {
        panic!("seed {seed}: the last write was refused: {rejected}");
    }
    assert_eq!(device.in_flight(), 1, "seed {seed}");
}

fn check_blocks(seed: u64, after: &[u8], durable: &[u8], latest: &[u8], changed: &[bool]) {
    for (number, &changed) in changed.iter().enumerate() {
        let bytes = number * BLOCK..(number + 1) * BLOCK;
        let (got, old, new) = (&after[bytes.clone()], &durable[bytes.clone()], &latest[bytes]);
        if changed {
            assert!(
                got == old || got == new,
                "seed {seed}: block {number}, changed since the flush, is neither as flushed \
                 nor as last written"
            );
        } else if old.iter().all(|&b| b == 0) {
            assert!(got.iter().all(|&b| b == 0), "seed {seed}: never-written block {number}");
        } else {
            assert!(got == old, "seed {seed}: flushed, untouched block {number} changed");
        }
    }
}

fn outcome(
    after: &[u8],
    durable: &[u8],
    latest: &[u8],
    extents: &[std::ops::Range<usize>],
) -> PowerCutOutcome {
    // Per block: Some(true) kept, Some(false) lost, None when old and new are equal.
    let fate = |number: usize| {
        let bytes = number * BLOCK..(number + 1) * BLOCK;
        let (old, new) = (&durable[bytes.clone()], &latest[bytes.clone()]);
        (old != new).then(|| after[bytes] == *new)
    };
    let mut result = PowerCutOutcome::default();
    let mut counted = [false; POWER_CUT_BLOCKS];
    for extent in extents {
        let fates: Vec<bool> = extent.clone().filter_map(fate).collect();
        if fates.contains(&true) && fates.contains(&false) {
            result.torn_extents += 1;
        }
        for number in extent.clone() {
            match (std::mem::replace(&mut counted[number], true), fate(number)) {
                (false, Some(true)) => result.kept_blocks += 1,
                (false, Some(false)) => result.lost_blocks += 1,
                _ => {}
            }
        }
    }
    result
}

fn read_device(device: &mut Faulty) -> Vec<u8> {
    let chunk = POWER_CUT_EXTENT_BLOCKS_MAX as usize * BLOCK;
    let mut after = Vec::with_capacity(POWER_CUT_DEVICE_BYTES as usize);
    for offset in (0..POWER_CUT_DEVICE_BYTES).step_by(chunk) {
        after.extend(support::read_at(device, offset, chunk as u32));
    }
    after
}

fn random_extent(rng: &mut SplitMix64) -> std::ops::Range<usize> {
    let count = 1 + rng.below(POWER_CUT_EXTENT_BLOCKS_MAX) as usize;
    let first = rng.below((POWER_CUT_BLOCKS - count + 1) as u64) as usize;
    first..first + count
}
