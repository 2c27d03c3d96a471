//! After a failed write, flush or trim a device refuses to change its data (`Poisoned`)
//! until reopened, and still serves reads. A failed read poisons nothing.
//!
//! Checked with injected failures (`FaultyDevice`) over both backends, and with a real
//! failed write on io_uring: a child process lowers its file-size limit (RLIMIT_FSIZE) so
//! that the kernel fails a write past it with EFBIG.

use std::process::Command;

use kiseki_devices::{
    BlockDevice, DeviceError, FaultPlan, FaultyDevice, IoUringDevice, Op, OpKind, OpenOptions,
    Request,
};

use crate::support::{self, BLOCK_BYTES, assert_message};

const DEVICE_BYTES: u64 = 1 << 20;

#[test]
fn injected_write_failure_poisons_memory() {
    injected_failure_poisons(support::open_memory, OpKind::Write);
}

#[test]
fn injected_write_failure_poisons_uring() {
    injected_failure_poisons(support::open_uring, OpKind::Write);
}

#[test]
fn injected_flush_and_trim_failures_poison_memory() {
    injected_failure_poisons(support::open_memory, OpKind::Flush);
    injected_failure_poisons(support::open_memory, OpKind::Trim);
}

#[test]
fn injected_flush_and_trim_failures_poison_uring() {
    injected_failure_poisons(support::open_uring, OpKind::Flush);
    injected_failure_poisons(support::open_uring, OpKind::Trim);
}

#[test]
fn injected_read_failure_does_not_poison() {
    read_failure_does_not_poison(support::open_memory);
    read_failure_does_not_poison(support::open_uring);
}

/// Request 1 writes block 0; request 2 (`failing`) fails with EIO; then every change is
/// refused with `Poisoned` naming `failing`, and reads still work.
fn injected_failure_poisons<D: BlockDevice>(open: impl Fn(&OpenOptions) -> D, failing: OpKind) {
    let block = u64::from(BLOCK_BYTES);
    let plan = FaultPlan { fail_request_number: Some(2), ..FaultPlan::default() };
    let inner = open(&support::options(DEVICE_BYTES, 4, 2, BLOCK_BYTES));
    let mut device = FaultyDevice::new(inner, plan);
    let first = vec![0x11; BLOCK_BYTES as usize];
    support::write_at(&mut device, 0, &first);

    let op = match failing {
        OpKind::Write => {
            let mut buf = device.acquire_buffer().expect("a free buffer");
            buf.as_mut_slice().fill(0x22);
            Op::Write { offset: block, buf }
        }
        OpKind::Flush => Op::Flush,
        OpKind::Trim => Op::Trim { offset: 0, len_bytes: block },
        OpKind::Read => unreachable!("a failed read does not poison"),
    };
    let completion = support::run_one(&mut device, Request { tag: 2, op });
    let failed = &completion.result;
    assert!(
        matches!(failed, Err(DeviceError::Io { op, source })
            if *op == failing && source.raw_os_error() == Some(libc::EIO)),
        "the injected {failing}: {failed:?}"
    );
    if let Some(buf) = completion.buf {
        device.release_buffer(buf);
    }

    assert_refuses_changes(&mut device, failing);
    assert_eq!(support::read_at(&mut device, 0, BLOCK_BYTES), first, "reads still work");
    let second = support::read_at(&mut device, block, BLOCK_BYTES);
    assert!(second.iter().all(|&b| b == 0), "the failed write never reached the device");

    device.reopen();
    support::write_at(&mut device, block, &first);
    assert_eq!(support::read_at(&mut device, block, BLOCK_BYTES), first, "reopened");
    support::assert_pool_full(&mut device, 2);
}

/// Every write, flush and trim is refused with `Poisoned { failed }`, buffers handed back.
fn assert_refuses_changes<D: BlockDevice>(device: &mut D, failed: OpKind) {
    let buf = device.acquire_buffer().expect("a free buffer");
    let index = buf.index();
    let changes = [
        Op::Write { offset: 0, buf },
        Op::Flush,
        Op::Trim { offset: 0, len_bytes: u64::from(BLOCK_BYTES) },
    ];
    for op in changes {
        let kind = op.kind();
        let rejected = support::push_refused(device, Request { tag: 3, op });
        let error = &rejected.error;
        assert!(
            matches!(error, DeviceError::Poisoned { failed: f } if *f == failed),
            "a {kind} after a failed {failed}: {error:?}"
        );
        assert_message(error, &[&format!("after a failed {failed}")]);
        if let Some(buf) = rejected.request.op.into_buf() {
            assert_eq!(buf.index(), index, "the refused write hands back its buffer");
            device.release_buffer(buf);
        }
    }
}

fn read_failure_does_not_poison<D: BlockDevice>(open: impl Fn(&OpenOptions) -> D) {
    let plan = FaultPlan { fail_request_number: Some(2), ..FaultPlan::default() };
    let inner = open(&support::options(DEVICE_BYTES, 4, 2, BLOCK_BYTES));
    let mut device = FaultyDevice::new(inner, plan);
    let data = vec![0x33; BLOCK_BYTES as usize];
    support::write_at(&mut device, 0, &data);
    let buf = device.acquire_buffer().expect("a free buffer");
    let completion =
        support::run_one(&mut device, Request { tag: 2, op: Op::Read { offset: 0, buf } });
    assert!(
        matches!(&completion.result, Err(DeviceError::Io { op: OpKind::Read, source })
            if source.raw_os_error() == Some(libc::EIO)),
        "the injected read: {:?}",
        completion.result
    );
    device.release_buffer(completion.buf.expect("a failed read hands back its buffer"));
    support::write_at(&mut device, 0, &data);
    assert!(matches!(support::run_op(&mut device, Op::Flush), Ok(0)));
    assert_eq!(support::read_at(&mut device, 0, BLOCK_BYTES), data);
}

/// Marks the child process and names the test it must run.
const CHILD_ENV: &str = "KISEKI_IT_POISON_CHILD";
/// The child's last line when every check passed.
const CHILD_DONE: &str = "child: EFBIG poisoned the device; reads worked; reopened";
/// The child's file-size limit, and where its failing write lands (past the limit, inside
/// the preallocated file).
const FSIZE_LIMIT_BYTES: u64 = 256 << 10;
const FAILING_OFFSET: u64 = 512 << 10;

/// A real failed write on io_uring poisons the device. Runs in a child process (this test
/// binary, re-executed for this test alone) because RLIMIT_FSIZE binds the whole process.
#[test]
fn real_failed_write_poisons_uring() {
    let module = module_path!().split_once("::").map_or("", |(_crate, module)| module);
    let name = &format!("{module}::real_failed_write_poisons_uring");
    if std::env::var(CHILD_ENV).as_deref() == Ok(name.as_str()) {
        return poisoned_by_efbig_child();
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .output()
        .expect("running the child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!("child {}\nstdout:\n{stdout}\nstderr:\n{stderr}", output.status);
    assert!(output.status.success(), "{report}");
    assert!(stdout.contains(CHILD_DONE), "{report}");
    assert!(stdout.contains("1 passed"), "the child ran exactly this test: {report}");
}

fn poisoned_by_efbig_child() {
    let dir = tempfile::tempdir_in(support::direct_io_dir()).expect("a temporary directory");
    let path = dir.path().join("device");
    let options = OpenOptions { create: true, ..support::options(DEVICE_BYTES, 4, 2, BLOCK_BYTES) };
    // Created (and preallocated) before the limit, which would refuse the fallocate.
    let mut device = IoUringDevice::open(&path, &options).expect("opening the device");
    limit_file_size(FSIZE_LIMIT_BYTES);

    let below = vec![0x44; BLOCK_BYTES as usize];
    support::write_at(&mut device, 0, &below);
    let mut buf = device.acquire_buffer().expect("a free buffer");
    buf.as_mut_slice().fill(0x55);
    let write = Request { tag: 1, op: Op::Write { offset: FAILING_OFFSET, buf } };
    let completion = support::run_one(&mut device, write);
    assert!(
        matches!(&completion.result, Err(DeviceError::Io { op: OpKind::Write, source })
            if source.raw_os_error() == Some(libc::EFBIG)),
        "a write past RLIMIT_FSIZE: {:?}",
        completion.result
    );
    device.release_buffer(completion.buf.expect("a failed write hands back its buffer"));

    assert_refuses_changes(&mut device, OpKind::Write);
    assert_eq!(support::read_at(&mut device, 0, BLOCK_BYTES), below, "reads still work");
    let past = support::read_at(&mut device, FAILING_OFFSET, BLOCK_BYTES);
    assert!(past.iter().all(|&b| b == 0), "the failed write changed nothing");

    drop(device);
    let reopen = OpenOptions { create: false, ..options };
    let mut device = IoUringDevice::open(&path, &reopen).expect("reopening the device");
    support::write_at(&mut device, BLOCK_BYTES.into(), &below);
    println!("{CHILD_DONE}");
}

/// Lowers RLIMIT_FSIZE and ignores SIGXFSZ, so a write past the limit fails with EFBIG
/// instead of killing the process.
fn limit_file_size(limit_bytes: u64) {
    // SAFETY: SIG_IGN is a valid disposition for SIGXFSZ; no handler code runs.
    let previous = unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    assert_ne!(previous, libc::SIG_ERR, "ignoring SIGXFSZ");
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit through the pointer, which points at `limit`.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    limit.rlim_cur = limit_bytes.min(limit.rlim_max);
    // SAFETY: setrlimit reads one rlimit through the pointer, which points at `limit`.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

fn write_request<D: BlockDevice>(device: &mut D, tag: u64, offset: u64, byte: u8) -> Request {
    let mut buf = device.acquire_buffer().expect("a free buffer");
    buf.as_mut_slice().fill(byte);
    Request { tag, op: Op::Write { offset, buf } }
}

/// A write pushed beside a failing one, before anything was reaped, still lands: a real
/// device poisons when the failure completes, not when the failing request is queued.
#[test]
fn injected_failure_poisons_at_completion_not_at_push() {
    let block = u64::from(BLOCK_BYTES);
    let plan = FaultPlan { fail_request_number: Some(1), ..FaultPlan::default() };
    let inner = support::open_memory(&support::options(DEVICE_BYTES, 4, 3, BLOCK_BYTES));
    let mut device = FaultyDevice::new(inner, plan);
    let failing = write_request(&mut device, 1, 0, 0x11);
    device.push(failing).expect("the failing write is accepted");
    let beside = write_request(&mut device, 2, block, 0x22);
    device.push(beside).expect("a write beside it is accepted: nothing has failed yet");
    let mut completions = Vec::new();
    device.submit_and_reap(2, &mut completions).unwrap();
    assert_eq!(completions.len(), 2);
    for completion in completions {
        match completion.tag {
            1 => assert!(matches!(completion.result, Err(DeviceError::Io { .. }))),
            _ => assert_eq!(completion.result.unwrap(), BLOCK_BYTES),
        }
        device.release_buffer(completion.buf.unwrap());
    }
    assert_eq!(support::read_at(&mut device, block, BLOCK_BYTES), vec![0x22; BLOCK_BYTES as usize]);
    let after = write_request(&mut device, 3, 0, 0x33);
    let rejected = support::push_refused(&mut device, after);
    assert!(matches!(rejected.error, DeviceError::Poisoned { failed: OpKind::Write }));
}

/// The injected failure is refused like any request the device would refuse: a write to a
/// read-only device is `ReadOnly`, not an EIO that poisons.
#[test]
fn injected_failure_respects_read_only() {
    let plan = FaultPlan { fail_request_number: Some(1), ..FaultPlan::default() };
    let options = OpenOptions { read_only: true, ..support::options(DEVICE_BYTES, 4, 2, 4096) };
    let mut device = FaultyDevice::new(support::open_memory(&options), plan);
    let write = write_request(&mut device, 1, 0, 0x11);
    let rejected = support::push_refused(&mut device, write);
    assert!(matches!(rejected.error, DeviceError::ReadOnly { .. }), "{:?}", rejected.error);
    // The refused write took no number: the first accepted request (this read) fails.
    let mut buf = device.acquire_buffer().unwrap();
    buf.set_len(BLOCK_BYTES);
    let completion =
        support::run_one(&mut device, Request { tag: 2, op: Op::Read { offset: 0, buf } });
    assert!(matches!(completion.result, Err(DeviceError::Io { op: OpKind::Read, .. })));
}

/// Refused pushes are not I/Os: with `fail_request_number = 2`, a misaligned push refused
/// first does not shift which accepted request fails.
#[test]
fn refused_pushes_take_no_request_number() {
    let plan = FaultPlan { fail_request_number: Some(2), ..FaultPlan::default() };
    let inner = support::open_memory(&support::options(DEVICE_BYTES, 4, 2, BLOCK_BYTES));
    let mut device = FaultyDevice::new(inner, plan);
    let misaligned = Request { tag: 0, op: Op::Trim { offset: 512, len_bytes: 4096 } };
    support::push_refused(&mut device, misaligned);
    assert_eq!(support::run_op(&mut device, Op::Flush).unwrap(), 0, "accepted request 1");
    let second = support::run_op(&mut device, Op::Flush);
    assert!(matches!(second, Err(DeviceError::Io { op: OpKind::Flush, .. })), "{second:?}");
}
