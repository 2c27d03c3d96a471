//! What the test modules share: device factories, seeds, and blocking helpers over
//! `push` + `submit_and_reap`.
//!
//! A factory is a `Fn(&OpenOptions) -> D`; tests always give `size_bytes`, which is the
//! device's size for every backend (the memory device takes it from there too).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use kiseki_devices::constants::BLOCK_SIZE_MIN_BYTES;
use kiseki_devices::{
    BlockDevice, Completion, DeviceError, FaultPlan, FaultyDevice, IoUringDevice, MemoryDevice, Op,
    OpKind, OpenOptions, Rejected, Request,
};

/// Block size of every test device: files and memory devices use the minimum.
pub const BLOCK_BYTES: u32 = BLOCK_SIZE_MIN_BYTES;

/// First seed of randomised tests when `KISEKI_TEST_SEED` is not set.
const DEFAULT_FIRST_SEED: u64 = 0x4b15_e4c1;

/// Options for a test device of `size_bytes` with the given queue and pool.
pub fn options(
    size_bytes: u64,
    queue_depth: u32,
    buffer_count: u32,
    buffer_size_bytes: u32,
) -> OpenOptions {
    OpenOptions {
        size_bytes: Some(size_bytes),
        queue_depth,
        buffer_count,
        buffer_size_bytes,
        ..OpenOptions::default()
    }
}

/// `count` consecutive seeds, from `KISEKI_TEST_SEED` when set (to replay a failure, which
/// then runs first), else from a fixed start so that CI runs the same cases every time.
pub fn seeds(count: u64) -> std::ops::Range<u64> {
    let first = match std::env::var("KISEKI_TEST_SEED") {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("KISEKI_TEST_SEED={text}: not a u64")),
        Err(_) => DEFAULT_FIRST_SEED,
    };
    first..first.saturating_add(count)
}

pub fn open_memory(options: &OpenOptions) -> MemoryDevice {
    let size_bytes = options.size_bytes.expect("test devices have a size");
    MemoryDevice::new(size_bytes, options).expect("opening a memory device")
}

/// An io_uring device on a fresh preallocated file in a directory that supports O_DIRECT.
/// The file is unlinked once open: the device's descriptor keeps it until the device drops.
pub fn open_uring(options: &OpenOptions) -> IoUringDevice {
    let dir = tempfile::tempdir_in(direct_io_dir()).expect("creating a temporary directory");
    let path = dir.path().join("device");
    let options = OpenOptions { create: true, ..options.clone() };
    IoUringDevice::open(&path, &options)
        .unwrap_or_else(|e| panic!("opening an io_uring device on {}: {e}", path.display()))
}

pub fn open_faulty_memory(options: &OpenOptions) -> FaultyDevice<MemoryDevice> {
    FaultyDevice::new(open_memory(options), FaultPlan::default())
}

pub fn open_faulty_uring(options: &OpenOptions) -> FaultyDevice<IoUringDevice> {
    FaultyDevice::new(open_uring(options), FaultPlan::default())
}

/// A directory on a file system that takes O_DIRECT: the system's temporary directory when
/// it does (a disk, or tmpfs since Linux 6.6), else Cargo's per-target scratch directory,
/// which lives on the disk that holds `target/`.
pub fn direct_io_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let candidates = [std::env::temp_dir(), PathBuf::from(env!("CARGO_TARGET_TMPDIR"))];
        let found = candidates.iter().find(|dir| takes_direct_io(dir));
        found.cloned().unwrap_or_else(|| {
            panic!("no directory supports O_DIRECT among {candidates:?}; set TMPDIR to one")
        })
    })
}

fn takes_direct_io(dir: &Path) -> bool {
    let Ok(probe) = tempfile::tempdir_in(dir) else { return false };
    let options =
        OpenOptions { create: true, ..options(u64::from(BLOCK_BYTES), 1, 1, BLOCK_BYTES) };
    !matches!(
        IoUringDevice::open(&probe.path().join("probe"), &options),
        Err(DeviceError::DirectIoUnsupported { .. })
    )
}

/// Serialises tests that register large buffer pools. io_uring charges registered buffers
/// to the user's locked-memory limit (8 MiB by default) unless the process has
/// CAP_IPC_LOCK; two 4 MiB pools plus anything else at once would exceed it.
pub fn large_pool_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Pushes one request and reaps until its completion comes back.
pub fn run_one<D: BlockDevice>(device: &mut D, request: Request) -> Completion {
    assert_eq!(device.in_flight(), 0, "run_one needs an idle device");
    let tag = request.tag;
    if let Err(rejected) = device.push(request) {
        panic!("{} refused: {rejected}", rejected.request.op.kind());
    }
    let mut completions = Vec::with_capacity(1);
    while completions.is_empty() {
        device.submit_and_reap(1, &mut completions).expect("submit_and_reap");
    }
    assert_eq!(completions.len(), 1, "one request in flight, several completions");
    assert_eq!(device.in_flight(), 0);
    let completion = completions.pop().expect("one completion");
    assert_eq!(completion.tag, tag, "completion carries its request's tag");
    completion
}

/// Writes `data` (a whole number of blocks, at most one buffer) at `offset`.
pub fn write_at<D: BlockDevice>(device: &mut D, offset: u64, data: &[u8]) {
    let mut buf = device.acquire_buffer().expect("a free buffer");
    buf.set_len(u32::try_from(data.len()).expect("data fits a buffer"));
    buf.as_mut_slice().copy_from_slice(data);
    let completion = run_one(device, Request { tag: offset, op: Op::Write { offset, buf } });
    assert_eq!(completion.kind, OpKind::Write);
    let moved = completion.result.unwrap_or_else(|e| panic!("write at {offset}: {e}"));
    assert_eq!(moved as usize, data.len(), "write at {offset} moved every byte");
    device.release_buffer(completion.buf.expect("a write's buffer comes back"));
}

/// Reads `len_bytes` at `offset`.
pub fn read_at<D: BlockDevice>(device: &mut D, offset: u64, len_bytes: u32) -> Vec<u8> {
    let mut buf = device.acquire_buffer().expect("a free buffer");
    buf.set_len(len_bytes);
    let completion = run_one(device, Request { tag: offset, op: Op::Read { offset, buf } });
    assert_eq!(completion.kind, OpKind::Read);
    let moved = completion.result.unwrap_or_else(|e| panic!("read at {offset}: {e}"));
    assert_eq!(moved, len_bytes, "read at {offset} moved every byte");
    let buf = completion.buf.expect("a read's buffer comes back");
    let data = buf.as_slice().to_vec();
    device.release_buffer(buf);
    data
}

/// Runs a flush or trim and returns its result.
pub fn run_op<D: BlockDevice>(device: &mut D, op: Op) -> Result<u32, DeviceError> {
    let kind = op.kind();
    let completion = run_one(device, Request { tag: 0, op });
    assert_eq!(completion.kind, kind);
    assert!(completion.buf.is_none(), "a {kind} has no buffer");
    completion.result
}

/// Pushes a request the device must refuse, and checks nothing was queued.
pub fn push_refused<D: BlockDevice>(device: &mut D, request: Request) -> Rejected {
    let before = device.in_flight();
    let (kind, tag) = (request.op.kind(), request.tag);
    let Err(rejected) = device.push(request) else {
        panic!("the device accepted a {kind} it must refuse");
    };
    assert_eq!(device.in_flight(), before, "a refused {kind} is not queued");
    assert_eq!(rejected.request.op.kind(), kind, "the refused request comes back");
    assert_eq!(rejected.request.tag, tag, "with its tag");
    rejected
}

/// Checks that every buffer of a pool of `buffer_count` is back, by taking them all.
pub fn assert_pool_full<D: BlockDevice>(device: &mut D, buffer_count: u32) {
    let taken: Vec<_> = (0..buffer_count).map_while(|_| device.acquire_buffer()).collect();
    assert_eq!(taken.len(), buffer_count as usize, "every buffer is back in the pool");
    assert!(device.acquire_buffer().is_none(), "the pool holds no more than its buffers");
    for buf in taken {
        device.release_buffer(buf);
    }
}

/// Checks that an error's message names the problem.
pub fn assert_message(error: &DeviceError, words: &[&str]) {
    let message = error.to_string();
    for word in words {
        assert!(message.contains(word), "message {message:?} does not say {word:?}");
    }
}
