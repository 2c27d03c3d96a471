//! One conformance suite for every `BlockDevice` backend in the build.
//!
//! Each check is a function generic over `D: BlockDevice` that takes a factory
//! (`Fn(&OpenOptions) -> D`); `conformance_suite!` instantiates every check for every
//! backend, so a test reads `device_conformance::<backend>::<check>`. A backend that
//! behaves differently from the others fails here by name.

use kiseki_devices::rng::SplitMix64;
use kiseki_devices::{
    BlockDevice, Completion, DeviceError, DmaBuf, Misalignment, Op, OpKind, OpenOptions, Rejected,
    Request,
};

use crate::support::{self, BLOCK_BYTES, assert_message};

/// Requests kept in flight by the round-trip check (fio's iodepth).
const IODEPTH: usize = 64;
/// Largest extent of the round-trip check, in blocks; the pool's buffers hold one.
const EXTENT_BLOCKS_MAX: u64 = 16;
/// Device of the round-trip check: room for 64 extents of up to 16 blocks twice over, so
/// that non-overlapping extents are easy to find while 64 are in flight.
const ROUND_TRIP_DEVICE_BYTES: u64 = 8 << 20;
/// Writes per seed in the round-trip check: 8.5 blocks on average, about 17 MiB, so that
/// most blocks are written more than once.
const ROUND_TRIP_WRITES: usize = 512;
/// Seeds per round-trip check.
const ROUND_TRIP_SEEDS: u64 = 2;
/// Device of every other check.
const SMALL_DEVICE_BYTES: u64 = 1 << 20;

macro_rules! conformance_suite {
    ($($backend:ident => $open:path;)*) => {$(
        mod $backend {
            #[test]
            fn round_trips_random_extents_at_iodepth_64() {
                super::round_trips_random_extents_at_iodepth_64($open);
            }

            #[test]
            fn flush_completes_ok() {
                super::flush_completes_ok($open);
            }

            #[test]
            fn trim_reads_zeros_and_spares_neighbours() {
                super::trim_reads_zeros_and_spares_neighbours($open);
            }

            #[test]
            fn refuses_misaligned_buffer_address() {
                super::refuses_misaligned_buffer_address($open);
            }

            #[test]
            fn refuses_misaligned_offset() {
                super::refuses_misaligned_offset($open);
            }

            #[test]
            fn refuses_misaligned_length() {
                super::refuses_misaligned_length($open);
            }

            #[test]
            fn refuses_extents_out_of_range() {
                super::refuses_extents_out_of_range($open);
            }

            #[test]
            fn refuses_zero_length() {
                super::refuses_zero_length($open);
            }

            #[test]
            fn refuses_push_beyond_queue_depth() {
                super::refuses_push_beyond_queue_depth($open);
            }

            #[test]
            fn read_only_refuses_changes_and_serves_reads() {
                super::read_only_refuses_changes_and_serves_reads($open);
            }
        }
    )*};
}

conformance_suite! {
    memory => crate::support::open_memory;
    uring => crate::support::open_uring;
    faulty_memory => crate::support::open_faulty_memory;
    faulty_uring => crate::support::open_faulty_uring;
}

/// Writes random extents with 64 in flight (never two overlapping at once), then reads the
/// whole device back with 64 in flight and compares it byte for byte with a model.
fn round_trips_random_extents_at_iodepth_64<D: BlockDevice>(open: impl Fn(&OpenOptions) -> D) {
    let _pool = support::large_pool_lock();
    let buffer_bytes = EXTENT_BLOCKS_MAX as u32 * BLOCK_BYTES;
    let options = support::options(ROUND_TRIP_DEVICE_BYTES, 64, 64, buffer_bytes);
    for seed in support::seeds(ROUND_TRIP_SEEDS) {
        let mut device = open(&options);
        let mut rng = SplitMix64::new(seed);
        let mut model = vec![0u8; ROUND_TRIP_DEVICE_BYTES as usize];
        write_random_extents(&mut device, &mut rng, &mut model, seed);
        read_back_and_compare(&mut device, &mut rng, &model, seed);
        support::assert_pool_full(&mut device, 64);
    }
}

fn write_random_extents<D: BlockDevice>(
    device: &mut D,
    rng: &mut SplitMix64,
    model: &mut [u8],
    seed: u64,
) {
    let block = BLOCK_BYTES as usize;
    // Blocks under a write in flight; the tag of a write is its first block, unique
    // because extents in flight never overlap.
    let mut busy = vec![false; model.len() / block];
    let mut completions = Vec::with_capacity(IODEPTH);
    let (mut pushed, mut deepest) = (0, 0);
    while pushed < ROUND_TRIP_WRITES || device.in_flight() > 0 {
        while pushed < ROUND_TRIP_WRITES && device.in_flight() < IODEPTH {
            let Some(blocks) = pick_free_extent(rng, &busy) else { break };
            busy[blocks.clone()].fill(true);
            let bytes = blocks.start * block..blocks.end * block;
            let mut buf = acquire(device, seed);
            buf.set_len(bytes.len() as u32);
            rng.fill(buf.as_mut_slice());
            model[bytes.clone()].copy_from_slice(buf.as_slice());
            let op = Op::Write { offset: bytes.start as u64, buf };
            push(device, Request { tag: blocks.start as u64, op }, seed);
            pushed += 1;
        }
        deepest = deepest.max(device.in_flight());
        reap_at_least_one(device, &mut completions, seed);
        for completion in completions.drain(..) {
            let buf = expect_done(completion.kind, completion.result, completion.buf, seed);
            let first = completion.tag as usize;
            busy[first..first + buf.len() as usize / block].fill(false);
            device.release_buffer(buf);
        }
    }
    assert_eq!(deepest, IODEPTH, "seed {seed}: writes never reached iodepth {IODEPTH}");
}

/// Reads the device in consecutive extents of random length, `IODEPTH` at a time.
fn read_back_and_compare<D: BlockDevice>(
    device: &mut D,
    rng: &mut SplitMix64,
    model: &[u8],
    seed: u64,
) {
    let block = u64::from(BLOCK_BYTES);
    let size_bytes = model.len() as u64;
    let mut completions = Vec::with_capacity(IODEPTH);
    let (mut next_offset, mut deepest) = (0, 0);
    while next_offset < size_bytes || device.in_flight() > 0 {
        while next_offset < size_bytes && device.in_flight() < IODEPTH {
            let blocks = (1 + rng.below(EXTENT_BLOCKS_MAX)).min((size_bytes - next_offset) / block);
            let mut buf = acquire(device, seed);
            buf.set_len((blocks * block) as u32);
            let op = Op::Read { offset: next_offset, buf };
            push(device, Request { tag: next_offset, op }, seed);
            next_offset += blocks * block;
        }
        deepest = deepest.max(device.in_flight());
        reap_at_least_one(device, &mut completions, seed);
        for completion in completions.drain(..) {
            let buf = expect_done(completion.kind, completion.result, completion.buf, seed);
            let offset = completion.tag as usize;
            let expected = &model[offset..offset + buf.len() as usize];
            if let Some(at) = buf.as_slice().iter().zip(expected).position(|(a, b)| a != b) {
                panic!(
                    "seed {seed}: read at offset {offset} ({} bytes) differs from what was \
                     written at byte {at} (device offset {})",
                    buf.len(),
                    offset + at
                );
            }
            device.release_buffer(buf);
        }
    }
    assert_eq!(deepest, IODEPTH, "seed {seed}: reads never reached iodepth {IODEPTH}");
}

/// A random extent of 1..=16 blocks with no block busy, or `None` after a few misses.
fn pick_free_extent(rng: &mut SplitMix64, busy: &[bool]) -> Option<std::ops::Range<usize>> {
    for _ in 0..64 {
        let count = 1 + rng.below(EXTENT_BLOCKS_MAX) as usize;
        let first = rng.below((busy.len() - count + 1) as u64) as usize;
        let blocks = first..first + count;
        if !busy[blocks.clone()].iter().any(|&b| b) {
            return Some(blocks);
        }
    }
    None
}

fn acquire<D: BlockDevice>(device: &mut D, seed: u64) -> DmaBuf {
    device.acquire_buffer().unwrap_or_else(|| panic!("seed {seed}: the pool ran dry"))
}

fn push<D: BlockDevice>(device: &mut D, request: Request, seed: u64) {
    if let Err(rejected) = device.push(request) {
        panic!("seed {seed}: {} refused: {rejected}", rejected.request.op.kind());
    }
}

fn reap_at_least_one<D: BlockDevice>(device: &mut D, completions: &mut Vec<Completion>, seed: u64) {
    let in_flight = device.in_flight();
    let reaped = device
        .submit_and_reap(1, completions)
        .unwrap_or_else(|e| panic!("seed {seed}: submit_and_reap: {e}"));
    assert_eq!(reaped, completions.len(), "seed {seed}: the count returned is what was added");
    assert!(reaped >= 1, "seed {seed}: asked for 1 of {in_flight} in flight, got none");
    assert_eq!(device.in_flight(), in_flight - reaped, "seed {seed}: in_flight after reap");
}

/// Checks a read or write completed in full and returns its buffer.
fn expect_done(
    kind: OpKind,
    result: Result<u32, DeviceError>,
    buf: Option<DmaBuf>,
    seed: u64,
) -> DmaBuf {
    let buf = buf.unwrap_or_else(|| panic!("seed {seed}: a {kind} came back without its buffer"));
    match result {
        Ok(moved) => assert_eq!(moved, buf.len(), "seed {seed}: {kind} moved {moved} bytes"),
        Err(e) => panic!("seed {seed}: {kind} failed: {e}"),
    }
    buf
}

fn flush_completes_ok<D: BlockDevice>(open: impl Fn(&OpenOptions) -> D) {
    let mut device = open(&support::options(SMALL_DEVICE_BYTES, 4, 4, BLOCK_BYTES));
    assert!(matches!(support::run_op(&mut device, Op::Flush), Ok(0)), "a flush of nothing");
    let data = vec![0x5a; BLOCK_BYTES as usize];
    support::write_at(&mut device, 0, &data);
    let flushed = support::run_op(&mut device, Op::Flush);
    assert!(matches!(flushed, Ok(0)), "flush after a write: {flushed:?}");
    assert_eq!(support::read_at(&mut device, 0, BLOCK_BYTES), data);
}

fn trim_reads_zeros_and_spares_neighbours<D: BlockDevice>(open: impl Fn(&OpenOptions) -> D) {
    let block = BLOCK_BYTES as usize;
    let mut device = open(&support::options(SMALL_DEVICE_BYTES, 4, 2, 8 * BLOCK_BYTES));
    let mut data = vec![0; 8 * block];
    SplitMix64::new(0x7819).fill(&mut data);
    let extent_offset = 16 * u64::from(BLOCK_BYTES);
    support::write_at(&mut device, extent_offset, &data);
    let trim = Op::Trim {
        offset: extent_offset + u64::from(BLOCK_BYTES),
        len_bytes: 6 * u64::from(BLOCK_BYTES),
    };
    let trimmed = support::run_op(&mut device, trim);
    assert!(matches!(trimmed, Ok(0)), "trim: {trimmed:?}");
    let after = support::read_at(&mut device, extent_offset, 8 * BLOCK_BYTES);
    assert_eq!(after[..block], data[..block], "the block before the trim is untouched");
    assert_eq!(after[7 * block..], data[7 * block..], "the block after the trim is untouched");
    assert!(after[block..7 * block].iter().all(|&b| b == 0), "the trimmed range reads zeros");
}

/// Buffers of two blocks, so that a window can start half a kilobyte in.
fn error_device<D: BlockDevice>(open: impl Fn(&OpenOptions) -> D) -> D {
    open(&support::options(SMALL_DEVICE_BYTES, 4, 2, 2 * BLOCK_BYTES))
}

fn refuses_misaligned_buffer_address<D: BlockDevice>(open: impl Fn(&OpenOptions) -> D) {
    let mut device = error_device(open);
    for write in [false, true] {
        let mut buf = device.acquire_buffer().expect("a free buffer");
        buf.set_window(512, BLOCK_BYTES);
        let address = buf.as_ptr() as u64;
        let index = buf.index();
        let rejected = support::push_refused(&mut device, read_or_write(write, 0, buf));
        let error = &rejected.error;
        assert!(
            matches!(
                error,
                DeviceError::Misaligned {
                    what: Misalignment::BufferAddress,
                    value,
                    alignment_bytes: 4096,
                } if *value == address
            ),
            "{error:?}"
        );
        assert_message(error, &["buffer address", "4096"]);
        let buf = buffer_back(rejected, index, 512, BLOCK_BYTES);
        device.release_buffer(buf);
    }
    support::assert_pool_full(&mut device, 2);
}

fn refuses_misaligned_offset<D: BlockDevice>(open: impl Fn(&OpenOptions) -> D) {
    let mut device = error_device(open);
    for (write, offset) in [(false, 512), (true, u64::from(BLOCK_BYTES) + 512)] {
        let mut buf = device.acquire_buffer().expect("a free buffer");
        buf.set_len(BLOCK_BYTES);
        let index = buf.index();
        let rejected = support::push_refused(&mut device, read_or_write(write, offset, buf));
        assert_misaligned(&rejected.error, Misalignment::Offset, offset, "offset");
        device.release_buffer(buffer_back(rejected, index, 0, BLOCK_BYTES));
    }
    let trim = Request { tag: 3, op: Op::Trim { offset: 512, len_bytes: 4096 } };
    let rejected = support::push_refused(&mut device, trim);
    assert_misaligned(&rejected.error, Misalignment::Offset, 512, "offset");
    support::assert_pool_full(&mut device, 2);
}

fn refuses_misaligned_length<D: BlockDevice>(open: impl Fn(&OpenOptions) -> D) {
    let mut device = error_device(open);
    for (write, len) in [(false, 512), (true, BLOCK_BYTES + 512)] {
        let mut buf = device.acquire_buffer().expect("a free buffer");
        buf.set_len(len);
        let index = buf.index();
        let rejected = support::push_refused(&mut device, read_or_write(write, 0, buf));
        assert_misaligned(&rejected.error, Misalignment::Length, u64::from(len), "length");
        device.release_buffer(buffer_back(rejected, index, 0, len));
    }
    let trim = Request { tag: 3, op: Op::Trim { offset: 0, len_bytes: 512 } };
    let rejected = support::push_refused(&mut device, trim);
    assert_misaligned(&rejected.error, Misalignment::Length, 512, "length");
    support::assert_pool_full(&mut device, 2);
}

fn refuses_extents_out_of_range<D: BlockDevice>(open: impl Fn(&OpenOptions) -> D) {
    let mut device = error_device(open);
    let size = device.geometry().size_bytes;
    assert_eq!(size, SMALL_DEVICE_BYTES);
    let block = u64::from(BLOCK_BYTES);
    // The highest aligned offset: adding any length overflows u64.
    let last_aligned = u64::MAX - (block - 1);
    // (write, offset, length): one block past the end, straddling the end, overflowing.
    let cases =
        [(false, size, block), (true, size - block, 2 * block), (false, last_aligned, block)];
    for (write, offset, len) in cases {
        let mut buf = device.acquire_buffer().expect("a free buffer");
        buf.set_len(len as u32);
        let index = buf.index();
        let rejected = support::push_refused(&mut device, read_or_write(write, offset, buf));
        assert_out_of_range(&rejected.error, offset, len, size);
        device.release_buffer(buffer_back(rejected, index, 0, len as u32));
    }
    for (offset, len) in [(size - block, 2 * block), (block, last_aligned), (last_aligned, block)] {
        let trim = Request { tag: 7, op: Op::Trim { offset, len_bytes: len } };
        let rejected = support::push_refused(&mut device, trim);
        assert_out_of_range(&rejected.error, offset, len, size);
    }
    support::assert_pool_full(&mut device, 2);
}

fn refuses_zero_length<D: BlockDevice>(open: impl Fn(&OpenOptions) -> D) {
    let mut device = error_device(open);
    for write in [false, true] {
        let mut buf = device.acquire_buffer().expect("a free buffer");
        buf.set_len(0);
        let index = buf.index();
        let rejected = support::push_refused(&mut device, read_or_write(write, 0, buf));
        assert_bad_length_zero(&rejected.error);
        device.release_buffer(buffer_back(rejected, index, 0, 0));
    }
    let trim = Request { tag: 3, op: Op::Trim { offset: 0, len_bytes: 0 } };
    assert_bad_length_zero(&support::push_refused(&mut device, trim).error);
    support::assert_pool_full(&mut device, 2);
}

/// Fills every slot without reaping; the next push, with or without a buffer, is refused
/// until a reap frees a slot.
fn refuses_push_beyond_queue_depth<D: BlockDevice>(open: impl Fn(&OpenOptions) -> D) {
    const DEPTH: u32 = 4;
    let mut device = open(&support::options(SMALL_DEVICE_BYTES, DEPTH, DEPTH + 1, BLOCK_BYTES));
    assert_eq!(device.queue_depth(), DEPTH);
    for tag in 0..u64::from(DEPTH) {
        let buf = device.acquire_buffer().expect("a free buffer");
        let request = Request { tag, op: Op::Read { offset: tag * u64::from(BLOCK_BYTES), buf } };
        device.push(request).unwrap_or_else(|r| panic!("read {tag} of {DEPTH} refused: {r}"));
    }
    assert_eq!(device.in_flight(), DEPTH as usize);
    let buf = device.acquire_buffer().expect("the spare buffer");
    let index = buf.index();
    let rejected = support::push_refused(&mut device, read_or_write(false, 0, buf));
    let error = &rejected.error;
    assert!(matches!(error, DeviceError::QueueFull { queue_depth: DEPTH }), "{error:?}");
    assert_message(&rejected.error, &["all 4 request slots"]);
    let spare = buffer_back(rejected, index, 0, BLOCK_BYTES);
    let flush = support::push_refused(&mut device, Request { tag: 9, op: Op::Flush });
    let error = &flush.error;
    assert!(matches!(error, DeviceError::QueueFull { queue_depth: DEPTH }), "{error:?}");

    let mut completions = Vec::new();
    while device.in_flight() > 0 {
        device.submit_and_reap(1, &mut completions).expect("submit_and_reap");
    }
    assert_eq!(completions.len(), DEPTH as usize);
    for completion in completions {
        let buf = expect_done(completion.kind, completion.result, completion.buf, 0);
        device.release_buffer(buf);
    }
    let request = Request { tag: 5, op: Op::Read { offset: 0, buf: spare } };
    let completion = support::run_one(&mut device, request);
    device.release_buffer(expect_done(completion.kind, completion.result, completion.buf, 0));
    support::assert_pool_full(&mut device, DEPTH + 1);
}

fn read_only_refuses_changes_and_serves_reads<D: BlockDevice>(open: impl Fn(&OpenOptions) -> D) {
    let options =
        OpenOptions { read_only: true, ..support::options(SMALL_DEVICE_BYTES, 4, 2, BLOCK_BYTES) };
    let mut device = open(&options);
    let mut buf = device.acquire_buffer().expect("a free buffer");
    buf.as_mut_slice().fill(0xee);
    let index = buf.index();
    let rejected = support::push_refused(&mut device, read_or_write(true, 0, buf));
    assert!(matches!(rejected.error, DeviceError::ReadOnly { .. }), "{:?}", rejected.error);
    assert_message(&rejected.error, &["read-only"]);
    device.release_buffer(buffer_back(rejected, index, 0, BLOCK_BYTES));
    let changes = [Op::Flush, Op::Trim { offset: 0, len_bytes: u64::from(BLOCK_BYTES) }];
    for op in changes {
        let rejected = support::push_refused(&mut device, Request { tag: 1, op });
        assert!(matches!(rejected.error, DeviceError::ReadOnly { .. }), "{:?}", rejected.error);
    }
    let data = support::read_at(&mut device, 0, BLOCK_BYTES);
    assert!(data.iter().all(|&b| b == 0), "the refused write changed nothing");
    support::assert_pool_full(&mut device, 2);
}

fn read_or_write(write: bool, offset: u64, buf: DmaBuf) -> Request {
    let op = if write { Op::Write { offset, buf } } else { Op::Read { offset, buf } };
    Request { tag: offset ^ 0x7a6, op }
}

/// Takes the buffer back out of a refused read or write and checks it is the one pushed,
/// window unchanged.
fn buffer_back(rejected: Rejected, index: u32, start: u32, len: u32) -> DmaBuf {
    let kind = rejected.request.op.kind();
    let buf = rejected
        .request
        .op
        .into_buf()
        .unwrap_or_else(|| panic!("a refused {kind} keeps its buffer"));
    assert_eq!(buf.index(), index, "the refused {kind} hands back the buffer it was given");
    assert_eq!((buf.start(), buf.len()), (start, len), "with its window unchanged");
    buf
}

fn assert_misaligned(error: &DeviceError, what: Misalignment, value: u64, word: &str) {
    assert!(
        matches!(
            error,
            DeviceError::Misaligned { what: w, value: v, alignment_bytes: 4096 }
                if *w == what && *v == value
        ),
        "expected misaligned {what} {value}: {error:?}"
    );
    assert_message(error, &[word, "4096", &format!("{value:#x}")]);
}

fn assert_out_of_range(error: &DeviceError, offset: u64, len: u64, size: u64) {
    assert!(
        matches!(
            error,
            DeviceError::OutOfRange { offset: o, len_bytes: l, size_bytes: s }
                if (*o, *l, *s) == (offset, len, size)
        ),
        "expected out of range {offset}+{len}: {error:?}"
    );
    assert_message(error, &["outside the device", &offset.to_string(), &size.to_string()]);
}

fn assert_bad_length_zero(error: &DeviceError) {
    assert!(matches!(error, DeviceError::BadLength { len_bytes: 0, .. }), "{error:?}");
    assert_message(error, &["length 0"]);
}
