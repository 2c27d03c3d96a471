//! The io_uring backend: one ring per device, owned by one thread.
//!
//! Shape (measured at 0.99x fio on this class of machine, see bench/README.md):
//! - the file is registered (fixed file 0) and every pool buffer is registered, so a read or
//!   write is `READ_FIXED`/`WRITE_FIXED` naming a buffer index: no page pinning per I/O;
//! - `user_data` is the index of a preallocated slot that holds the request's tag and buffer
//!   while the kernel owns it; no allocation per I/O;
//! - `push` only fills a submission entry; `submit_and_reap` makes one `io_uring_enter` that
//!   submits the whole batch and waits, then drains the completion ring without a syscall;
//! - COOP_TASKRUN (completions run at our next enter, not by interrupting us) with the
//!   taskrun flag so an idle reap knows when an enter is needed; SQPOLL only on request.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use io_uring::{IoUring, opcode, squeue, types};

use crate::file::{self, DeviceKind, OpenOptions, OpenedFile};
use crate::{
    BlockDevice, BufferPool, Completion, DeviceError, DmaBuf, Doorbell, Geometry, Op, OpKind,
    Rejected, Request, validate,
};

/// The registered file's index in the ring's file table.
const FIXED_FILE: types::Fixed = types::Fixed(0);

/// `user_data` of the doorbell's armed read; slots are numbered below `QUEUE_DEPTH_MAX`.
const DOORBELL_USER_DATA: u64 = u64::MAX;

/// A preallocated file or block device driven through io_uring with O_DIRECT.
pub struct IoUringDevice {
    ring: IoUring,
    file: OpenedFile,
    pool: BufferPool,
    slots: Box<[Slot]>,
    free_slots: Vec<u32>,
    in_flight: u32,
    read_only: bool,
    registered_buffers: bool,
    poisoned: Option<OpKind>,
    doorbell: Option<ArmedDoorbell>,
}

/// A doorbell and the 8 bytes its armed read lands in (boxed: the kernel holds the address).
struct ArmedDoorbell {
    doorbell: Doorbell,
    count: Box<u64>,
    armed: bool,
}

/// What the device remembers of a request while the kernel has it.
#[derive(Default)]
struct Slot {
    tag: u64,
    kind: Option<OpKind>,
    expected_bytes: u32,
    buf: Option<DmaBuf>,
}

impl std::fmt::Debug for IoUringDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoUringDevice")
            .field("name", &self.file.name)
            .field("geometry", &self.file.geometry)
            .field("in_flight", &self.in_flight)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl IoUringDevice {
    /// Opens `path` (a regular file or block device) with O_DIRECT and sets up its ring and
    /// registered buffers. Fails, never falls back, when registration is refused.
    pub fn open(path: &Path, options: &OpenOptions) -> Result<IoUringDevice, DeviceError> {
        options.check_queue_and_pool()?;
        let file = file::open(path, options)?;
        if !options.buffer_size_bytes.is_multiple_of(file.geometry.block_size_bytes) {
            return Err(DeviceError::InvalidOptions {
                reason: format!(
                    "buffer size {} is not a multiple of the block size {}",
                    options.buffer_size_bytes, file.geometry.block_size_bytes
                ),
            });
        }
        let ring = build_ring(options)?;
        ring.submitter()
            .register_files(&[file.fd.as_raw_fd()])
            .map_err(|source| DeviceError::Setup { what: "registering the file", source })?;
        let pool = BufferPool::new(options.buffer_count, options.buffer_size_bytes);
        if options.register_buffers {
            register_buffers(&ring, &pool)?;
        }
        let depth = options.queue_depth;
        Ok(IoUringDevice {
            ring,
            file,
            pool,
            slots: (0..depth).map(|_| Slot::default()).collect(),
            free_slots: (0..depth).rev().collect(),
            in_flight: 0,
            read_only: options.read_only,
            registered_buffers: options.register_buffers,
            poisoned: None,
            doorbell: None,
        })
    }

    pub fn kind(&self) -> DeviceKind {
        self.file.kind
    }

    pub fn name(&self) -> &str {
        &self.file.name
    }

    fn entry_for(&mut self, op: &mut Op) -> (squeue::Entry, u32) {
        let fixed = self.registered_buffers;
        match op {
            Op::Read { offset, buf } => {
                let (ptr, len, index) = (buf.as_mut_ptr(), buf.len(), buffer_index(buf));
                let entry = if fixed {
                    opcode::ReadFixed::new(FIXED_FILE, ptr, len, index).offset(*offset).build()
                } else {
                    opcode::Read::new(FIXED_FILE, ptr, len).offset(*offset).build()
                };
                (entry, len)
            }
            Op::Write { offset, buf } => {
                let (ptr, len, index) = (buf.as_ptr(), buf.len(), buffer_index(buf));
                let entry = if fixed {
                    opcode::WriteFixed::new(FIXED_FILE, ptr, len, index).offset(*offset).build()
                } else {
                    opcode::Write::new(FIXED_FILE, ptr, len).offset(*offset).build()
                };
                (entry, len)
            }
            Op::Flush => {
                let flags = types::FsyncFlags::DATASYNC;
                (opcode::Fsync::new(FIXED_FILE).flags(flags).build(), 0)
            }
            Op::Trim { offset, len_bytes } => {
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                let entry =
                    opcode::Fallocate::new(FIXED_FILE, *len_bytes).offset(*offset).mode(mode);
                (entry.build(), 0)
            }
        }
    }

    fn enter(&mut self, want: usize) -> Result<(), DeviceError> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The completion ring is full: reaping makes room, so this is not an error.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(source) => {
                    return Err(DeviceError::Setup { what: "io_uring_enter", source });
                }
            }
        }
    }

    /// Puts the doorbell's read back in the submission queue after it fired.
    fn arm_doorbell(&mut self) {
        let Some(bell) = self.doorbell.as_mut().filter(|bell| !bell.armed) else { return };
        let fd = types::Fd(bell.doorbell.raw_fd());
        let target: *mut u64 = &mut *bell.count;
        let entry = opcode::Read::new(fd, target.cast(), 8).build().user_data(DOORBELL_USER_DATA);
        // SAFETY: the read lands in `bell.count`, a heap box that lives as long as the device;
        // `Drop` closes the ring (cancelling the read) before the box is freed.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        assert!(pushed.is_ok(), "submission ring has a spare entry for the doorbell");
        bell.armed = true;
    }

    fn reap(&mut self, completions: &mut Vec<Completion>) -> usize {
        let mut reaped = 0;
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            if cqe.user_data() == DOORBELL_USER_DATA {
                if let Some(bell) = self.doorbell.as_mut() {
                    bell.armed = false;
                }
                continue;
            }
            let index = cqe.user_data() as usize;
            assert!(index < self.slots.len(), "completion for unknown slot {index}");
            let slot = &mut self.slots[index];
            let kind = slot.kind.take().expect("completion for an idle slot");
            let result = completion_result(kind, cqe.result(), slot.expected_bytes);
            if result.is_err() && kind != OpKind::Read {
                self.poisoned.get_or_insert(kind);
            }
            completions.push(Completion { tag: slot.tag, kind, result, buf: slot.buf.take() });
            self.free_slots.push(index as u32);
            self.in_flight -= 1;
            reaped += 1;
        }
        reaped
    }
}

impl BlockDevice for IoUringDevice {
    fn geometry(&self) -> Geometry {
        self.file.geometry
    }

    fn acquire_buffer(&mut self) -> Option<DmaBuf> {
        self.pool.acquire()
    }

    fn release_buffer(&mut self, buf: DmaBuf) {
        self.pool.release(buf);
    }

    fn check(&self, op: &Op) -> Result<(), DeviceError> {
        validate(self.geometry(), self.read_only, self.poisoned, op, self.name())
    }

    fn push(&mut self, mut request: Request) -> Result<(), Rejected> {
        if let Err(error) = self.check(&request.op) {
            return Err(Rejected { error, request });
        }
        if let Op::Read { buf, .. } | Op::Write { buf, .. } = &request.op {
            assert!(self.pool.owns(buf), "buffer from another device's pool");
        }
        let Some(index) = self.free_slots.pop() else {
            let error = DeviceError::QueueFull { queue_depth: self.queue_depth() };
            return Err(Rejected { error, request });
        };
        let (entry, expected_bytes) = self.entry_for(&mut request.op);
        let entry = entry.user_data(u64::from(index));
        // SAFETY: the entry points at the request's buffer window (or at no memory). The
        // buffer moves into the slot below and stays there, untouched, until the completion
        // for this slot hands it back; its memory lives while the pool's region does, which
        // the slot's `DmaBuf` keeps alive; and `Drop` waits for every in-flight request.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        assert!(pushed.is_ok(), "submission ring smaller than the slot table");
        let slot = &mut self.slots[index as usize];
        slot.tag = request.tag;
        slot.kind = Some(request.op.kind());
        slot.expected_bytes = expected_bytes;
        slot.buf = request.op.into_buf();
        self.in_flight += 1;
        Ok(())
    }

    fn submit_and_reap(
        &mut self,
        min_complete: usize,
        completions: &mut Vec<Completion>,
    ) -> Result<usize, DeviceError> {
        self.arm_doorbell();
        let waitable = self.in_flight as usize + usize::from(self.doorbell.is_some());
        let want = min_complete.min(waitable);
        let queued = !self.ring.submission().is_empty();
        let ready = self.ring.completion().len();
        let task_work_pending = self.in_flight > 0 && self.ring.submission().taskrun();
        if queued || want > ready || (ready == 0 && task_work_pending) {
            self.enter(want)?;
        }
        Ok(self.reap(completions))
    }

    fn in_flight(&self) -> usize {
        self.in_flight as usize
    }

    fn queue_depth(&self) -> u32 {
        self.slots.len() as u32
    }

    fn attach_doorbell(&mut self, doorbell: Doorbell) -> Result<(), DeviceError> {
        if self.doorbell.is_some() {
            return Err(DeviceError::InvalidOptions { reason: "a doorbell is attached".into() });
        }
        self.doorbell = Some(ArmedDoorbell { doorbell, count: Box::new(0), armed: false });
        Ok(())
    }
}

impl Drop for IoUringDevice {
    /// Waits for every request the kernel still has, so that no DMA lands in freed memory,
    /// then unregisters buffers and file: the kernel returns registered memory to
    /// RLIMIT_MEMLOCK only lazily after a ring closes, so without this a device reopened at
    /// once (the way out of `Poisoned`) can fail with `MemlockLimit`.
    fn drop(&mut self) {
        let mut drained = Vec::with_capacity(self.in_flight as usize);
        while self.in_flight > 0 {
            let want = self.in_flight as usize;
            if self.enter(want).is_err() {
                break;
            }
            self.reap(&mut drained);
            for completion in drained.drain(..) {
                if let Some(buf) = completion.buf {
                    self.pool.release(buf);
                }
            }
        }
        let submitter = self.ring.submitter();
        if self.registered_buffers {
            let _ = submitter.unregister_buffers();
        }
        let _ = submitter.unregister_files();
    }
}

fn build_ring(options: &OpenOptions) -> Result<IoUring, DeviceError> {
    let mut builder = IoUring::builder();
    match options.sqpoll_idle_ms {
        // COOP_TASKRUN together with SQPOLL is EINVAL.
        Some(idle_ms) => builder.setup_sqpoll(idle_ms),
        None => builder.setup_coop_taskrun().setup_taskrun_flag(),
    };
    builder.setup_submit_all();
    // One entry beyond the slots for the doorbell's read.
    let entries = (options.queue_depth + 1).next_power_of_two();
    builder.build(entries).map_err(|source| DeviceError::Setup {
        what: "creating the io_uring (is io_uring disabled by sysctl kernel.io_uring_disabled?)",
        source,
    })
}

fn register_buffers(ring: &IoUring, pool: &BufferPool) -> Result<(), DeviceError> {
    let iovecs = pool.iovecs();
    // SAFETY: every iovec points into the pool's region, which outlives the ring: the device
    // drops its ring before its pool (field order), and unregisters nothing earlier.
    let registered = unsafe { ring.submitter().register_buffers(&iovecs) };
    match registered {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => Err(DeviceError::MemlockLimit {
            requested_bytes: pool.total_bytes(),
            limit_bytes: memlock_limit_bytes(),
        }),
        Err(source) => Err(DeviceError::Setup { what: "registering I/O buffers", source }),
    }
}

fn memlock_limit_bytes() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit through the pointer, which points at `limit`.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if rc == 0 { limit.rlim_cur } else { 0 }
}

fn buffer_index(buf: &DmaBuf) -> u16 {
    // REGISTERED_BUFFERS_MAX (16384) fits in u16; checked at open.
    buf.index() as u16
}

fn completion_result(kind: OpKind, res: i32, expected_bytes: u32) -> Result<u32, DeviceError> {
    if res < 0 {
        return Err(DeviceError::Io { op: kind, source: io::Error::from_raw_os_error(-res) });
    }
    let actual_bytes = res as u32;
    match kind {
        OpKind::Read | OpKind::Write if actual_bytes != expected_bytes => {
            Err(DeviceError::ShortTransfer { op: kind, expected_bytes, actual_bytes })
        }
        _ => Ok(actual_bytes),
    }
}
