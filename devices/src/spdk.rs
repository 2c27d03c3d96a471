//! The SPDK bdev backend (feature `spdk`): a bdev driven through SPDK's bdev API, with SPDK
//! loaded at run time.
//!
//! Compile-checked only; never run against SPDK on the machines this was written on (SPDK is
//! not installed there and cannot be). The SPDK signatures below are declared by hand from
//! SPDK's public headers (`include/spdk/bdev.h`, `include/spdk/thread.h`); a mismatch with
//! the SPDK found at run time would show only then.
//!
//! Shape:
//! - nothing links against SPDK: `open` looks for SPDK's functions in the program, else
//!   `dlopen`s `libspdk_bdev.so` and `libspdk_thread.so`, and resolves the functions it calls
//!   with `dlsym`. Without them it fails with `BackendUnavailable` saying what is missing;
//!   no code path pretends to do I/O without SPDK;
//! - SPDK must already run in this process: its env initialized, the bdev subsystem up with
//!   the bdev configured, and an `spdk_thread` current on the OS thread that opens the device.
//!   The device drives that thread itself (`spdk_thread_poll`), so no reactor may poll it too,
//!   and the device must not be used from inside an SPDK poller or message;
//! - `push` checks the request (the crate's `validate`, as every backend) and parks it in a
//!   preallocated slot; `submit_and_reap` hands parked requests to the bdev in order, polls
//!   the SPDK thread until `min_complete` have finished, and turns them into completions;
//! - each slot has a preallocated ticket (its index and the address of the device's inbox),
//!   passed as the bdev's `cb_arg`; the completion callback frees the `spdk_bdev_io` and
//!   appends (slot, status) to a ring of `queue_depth` entries. No allocation per I/O;
//! - when the bdev is out of `spdk_bdev_io`s (`-ENOMEM`) the rest of the batch stays parked,
//!   in order, until a later poll has freed some;
//! - trim is `spdk_bdev_write_zeroes`, not `spdk_bdev_unmap`: SPDK documents unmapped blocks
//!   as reading indeterminate data, and this crate promises zeros. Flush is `spdk_bdev_flush`
//!   of the whole device, or completes at once when the bdev has neither flush nor a volatile
//!   write cache (its completed writes are then already durable).
//!
//! Buffers: the pool's region comes from `spdk_dma_zmalloc` (SPDK's pinned, DMA-able memory)
//! and goes back with `spdk_dma_free` when the pool and its last buffer are gone; no I/O is
//! ever copied through a bounce buffer.
//!
//! Compile-checked only: SPDK was never installed on the machines this was written on, so
//! every path past loading the libraries has run only in the unit tests' stand-ins.

use std::cell::Cell;
use std::collections::VecDeque;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io;
use std::marker::{PhantomData, PhantomPinned};
use std::ptr::{self, NonNull};
use std::sync::OnceLock;

use crate::constants::{BLOCK_SIZE_MIN_BYTES, BUFFER_ALIGNMENT_BYTES};
use crate::{
    BlockDevice, BufferPool, Completion, DeviceError, DmaBuf, Geometry, Op, OpKind, OpenOptions,
    Rejected, Request, validate,
};

const BACKEND: &str = "spdk";

/// The shared libraries holding the functions this backend calls, as SPDK's `make install`
/// names them (`--with-shared`). SPDK's combined `libspdk.so` is a linker script (`GROUP
/// (...)`), which `dlopen` cannot load, so it is not tried. `libspdk_bdev.so` is required;
/// `libspdk_thread.so` is also among its dependencies, so failing to open it by this name
/// alone is not an error.
const BDEV_LIBRARY: &str = "libspdk_bdev.so";
const THREAD_LIBRARY: &str = "libspdk_thread.so";
/// SPDK's env (DPDK-based), holding `spdk_dma_zmalloc` and `spdk_dma_free`.
const ENV_LIBRARY: &str = "libspdk_env_dpdk.so";

/// `enum spdk_bdev_event_type` and `enum spdk_bdev_io_type` values used here (bdev.h).
const SPDK_BDEV_EVENT_REMOVE: c_int = 0;
const SPDK_BDEV_IO_TYPE_FLUSH: c_int = 4;

/// A bdev from SPDK's configuration, driven through SPDK's bdev API on the SPDK thread that
/// was current when it was opened.
pub struct SpdkDevice {
    api: &'static Api,
    thread: NonNull<SpdkThread>,
    /// Declared before `inbox`: the descriptor is closed before the inbox it reports to is
    /// freed, and `Drop` has waited for every request first.
    bdev: OpenBdev,
    inbox: InboxBox,
    /// One per slot, passed as `cb_arg`; never moves (a boxed slice is never reallocated).
    tickets: Box<[Ticket]>,
    slots: Box<[Slot]>,
    free_slots: Vec<u32>,
    /// Slots pushed and not yet accepted by the bdev, in push order.
    parked: VecDeque<u32>,
    pool: BufferPool,
    name: String,
    geometry: Geometry,
    flush: FlushMode,
    /// Requests parked or with SPDK, not yet reaped.
    in_flight: u32,
    read_only: bool,
    poisoned: Option<OpKind>,
}

/// A request while the device or SPDK has it.
#[derive(Default)]
struct Slot {
    tag: u64,
    op: Option<Op>,
}

/// How a flush reaches the bdev.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlushMode {
    /// `spdk_bdev_flush` over the whole device.
    Bdev,
    /// The bdev has no flush and no volatile write cache: completed writes are durable, so a
    /// flush completes without reaching the bdev.
    WritesAlreadyDurable,
}

impl std::fmt::Debug for SpdkDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpdkDevice")
            .field("name", &self.name)
            .field("geometry", &self.geometry)
            .field("in_flight", &self.in_flight)
            .field("parked", &self.parked.len())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl SpdkDevice {
    /// Opens the bdev named `bdev_name` on the calling thread's SPDK thread.
    ///
    /// `options` gives read-only, the size to use, the queue depth and the pool; `create` and
    /// SQPOLL cannot apply to a bdev and are refused; `register_buffers` is ignored. Fails
    /// with `BackendUnavailable` when SPDK's libraries cannot be loaded or no SPDK thread is
    /// current, and when SPDK cannot allocate the DMA pool (too few huge pages).
    pub fn open(bdev_name: &str, options: &OpenOptions) -> Result<SpdkDevice, DeviceError> {
        let c_name = check_bdev_name(bdev_name)?;
        check_options(options)?;
        let api = Api::get().map_err(unavailable)?;
        // SAFETY: spdk_get_thread takes nothing and reads a thread-local.
        let thread = NonNull::new(unsafe { (api.get_thread)() }).ok_or_else(|| {
            unavailable(
                "no SPDK thread is current on this OS thread: start SPDK's app (spdk_app_start) \
                 or create an spdk_thread and make it current (spdk_set_thread) before opening"
                    .to_owned(),
            )
        })?;
        let depth = options.queue_depth;
        let inbox = InboxBox::new(api.bdev_free_io, depth);
        let bdev = OpenBdev::open(api, thread, &c_name, bdev_name, options.read_only, &inbox)?;
        let (geometry, flush) = bdev.measure(bdev_name, options)?;
        let pool = dma_buffer_pool(api, options.buffer_count, options.buffer_size_bytes)?;
        let tickets = (0..depth).map(|index| Ticket { inbox: inbox.as_ptr(), index }).collect();
        Ok(SpdkDevice {
            api,
            thread,
            bdev,
            inbox,
            tickets,
            slots: (0..depth).map(|_| Slot::default()).collect(),
            free_slots: (0..depth).rev().collect(),
            parked: VecDeque::with_capacity(depth as usize),
            pool,
            name: bdev_name.to_owned(),
            geometry,
            flush,
            in_flight: 0,
            read_only: options.read_only,
            poisoned: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hands parked requests to the bdev in push order. Stops at the first the bdev has no
    /// `spdk_bdev_io` for; a request it refuses outright completes with that error.
    fn submit_parked(&mut self) {
        while let Some(&index) = self.parked.front() {
            let rc = self.submit(index);
            if rc == -libc::ENOMEM {
                break;
            }
            self.parked.pop_front();
            if rc != 0 {
                self.inbox().finish(index, if rc < 0 { rc } else { -libc::EIO });
            }
        }
    }

    /// Hands one slot's request to the bdev; returns SPDK's 0 or negated errno. Must run with
    /// the device's SPDK thread current (the channel belongs to it).
    fn submit(&mut self, index: u32) -> c_int {
        let api = self.api;
        let (desc, channel) = (self.bdev.desc.as_ptr(), self.bdev.channel.as_ptr());
        let ticket: *const Ticket = &self.tickets[index as usize];
        let cb_arg = ticket.cast_mut().cast::<c_void>();
        let callback: IoCompletionCallback = io_completion_callback;
        let op = self.slots[index as usize].op.as_mut().expect("parked slot without a request");
        match op {
            Op::Read { offset, buf } => {
                let (data, len) = (buf.as_mut_ptr().cast::<c_void>(), u64::from(buf.len()));
                // SAFETY: desc and channel are open and belong to the current SPDK thread;
                // `data` is `len` bytes of pool memory that stay in this slot, untouched, until
                // the completion for `cb_arg` is reaped (Drop waits for it); `cb_arg` is this
                // slot's ticket, which lives as long as the device.
                unsafe { (api.bdev_read)(desc, channel, data, *offset, len, callback, cb_arg) }
            }
            Op::Write { offset, buf } => {
                let data = buf.as_ptr().cast_mut().cast::<c_void>();
                let len = u64::from(buf.len());
                // SAFETY: as for a read; SPDK only reads the buffer of a write.
                unsafe { (api.bdev_write)(desc, channel, data, *offset, len, callback, cb_arg) }
            }
            Op::Flush => match self.flush {
                FlushMode::Bdev => {
                    let size = self.geometry.size_bytes;
                    // SAFETY: desc and channel as above; no memory is passed but the ticket.
                    unsafe { (api.bdev_flush)(desc, channel, 0, size, callback, cb_arg) }
                }
                FlushMode::WritesAlreadyDurable => {
                    self.inbox().finish(index, 0);
                    0
                }
            },
            Op::Trim { offset, len_bytes } => {
                let (offset, len) = (*offset, *len_bytes);
                // SAFETY: desc and channel as above; no memory is passed but the ticket.
                unsafe { (api.bdev_write_zeroes)(desc, channel, offset, len, callback, cb_arg) }
            }
        }
    }

    /// Runs one iteration of the SPDK thread: its pollers reap the bdev's completions and
    /// call `io_completion_callback` for each.
    fn poll(&mut self) -> Result<(), DeviceError> {
        let thread = self.thread.as_ptr();
        // SAFETY: `thread` is the live spdk_thread this device was opened on; an exited thread
        // stays allocated until its owner destroys it, which SPDK allows only once every I/O
        // channel on it, ours included, is released.
        if unsafe { (self.api.thread_is_exited)(thread) } {
            return Err(unavailable(
                "the SPDK thread this device was opened on has exited".to_owned(),
            ));
        }
        // SAFETY: as above; spdk_thread_poll makes `thread` current for the iteration and
        // restores the previous one. The callbacks it runs touch only the inbox (cells, on
        // this OS thread) and the bdev_io they are given.
        unsafe { (self.api.thread_poll)(thread, 0, 0) };
        Ok(())
    }

    /// Turns everything in the inbox into completions.
    fn reap(&mut self, completions: &mut Vec<Completion>) -> usize {
        let mut reaped = 0;
        while let Some(finished) = self.inbox().next() {
            let index = finished.index as usize;
            assert!(index < self.slots.len(), "completion for unknown slot {index}");
            let slot = &mut self.slots[index];
            let op = slot.op.take().expect("completion for an idle slot");
            let kind = op.kind();
            let moved_bytes = match &op {
                Op::Read { buf, .. } | Op::Write { buf, .. } => buf.len(),
                Op::Flush | Op::Trim { .. } => 0,
            };
            let result = completion_result(kind, finished.status, moved_bytes);
            if result.is_err() && kind != OpKind::Read {
                self.poisoned.get_or_insert(kind);
            }
            completions.push(Completion { tag: slot.tag, kind, result, buf: op.into_buf() });
            self.free_slots.push(finished.index);
            self.in_flight -= 1;
            reaped += 1;
        }
        reaped
    }

    fn inbox(&self) -> &Inbox {
        self.inbox.get()
    }

    /// Called when SPDK may still hold requests but can no longer be polled: keeps everything
    /// it could touch (buffers, tickets, inbox, descriptor) allocated for good.
    fn abandon(&mut self) {
        std::mem::forget(std::mem::take(&mut self.slots));
        std::mem::forget(std::mem::take(&mut self.tickets));
        self.inbox.abandoned = true;
        self.bdev.abandoned = true;
    }
}

impl BlockDevice for SpdkDevice {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn acquire_buffer(&mut self) -> Option<DmaBuf> {
        self.pool.acquire()
    }

    fn release_buffer(&mut self, buf: DmaBuf) {
        self.pool.release(buf);
    }

    fn check(&self, op: &Op) -> Result<(), DeviceError> {
        validate(self.geometry, self.read_only, self.poisoned, op, &self.name)?;
        if self.inbox().removed.get() {
            let source = io::Error::from_raw_os_error(libc::ENODEV);
            return Err(DeviceError::Io { op: op.kind(), source });
        }
        Ok(())
    }

    fn push(&mut self, request: Request) -> Result<(), Rejected> {
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
        let slot = &mut self.slots[index as usize];
        slot.tag = request.tag;
        slot.op = Some(request.op);
        self.parked.push_back(index);
        self.in_flight += 1;
        Ok(())
    }

    /// Submits what is parked, then polls the SPDK thread (at least once, since nothing
    /// completes unpolled) until `min_complete` requests (capped at what is in flight) have
    /// been reaped. Polling spins: SPDK is a polled-mode driver and makes no system call.
    fn submit_and_reap(
        &mut self,
        min_complete: usize,
        completions: &mut Vec<Completion>,
    ) -> Result<usize, DeviceError> {
        let want = min_complete.min(self.in_flight as usize);
        let _current = CurrentThread::enter(self.api, self.thread);
        let mut reaped = 0;
        loop {
            self.submit_parked();
            let polled = self.poll();
            // Requests the bdev refused at submission are in the inbox even when polling fails.
            reaped += self.reap(completions);
            match polled {
                Err(error) if reaped == 0 => return Err(error),
                Err(_) => return Ok(reaped),
                Ok(()) if reaped >= want => return Ok(reaped),
                Ok(()) => {}
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight as usize
    }

    fn queue_depth(&self) -> u32 {
        self.slots.len() as u32
    }
}

impl Drop for SpdkDevice {
    /// Gives back what SPDK never saw, then polls until SPDK has finished every request it
    /// has, so that no DMA lands in freed memory. If the SPDK thread has exited meanwhile,
    /// leaks instead of freeing.
    fn drop(&mut self) {
        while let Some(index) = self.parked.pop_front() {
            let op = self.slots[index as usize].op.take();
            if let Some(buf) = op.and_then(Op::into_buf) {
                self.pool.release(buf);
            }
            self.free_slots.push(index);
            self.in_flight -= 1;
        }
        let mut drained = Vec::with_capacity(self.in_flight as usize);
        while self.in_flight > 0 {
            if self.poll().is_err() {
                self.abandon();
                return;
            }
            self.reap(&mut drained);
            for completion in drained.drain(..) {
                if let Some(buf) = completion.buf {
                    self.pool.release(buf);
                }
            }
        }
    }
}

/// A pool whose memory SPDK can DMA into: one `spdk_dma_zmalloc` region (pinned huge pages
/// from SPDK's env), freed with `spdk_dma_free` after the last buffer.
fn dma_buffer_pool(
    api: &Api,
    buffer_count: u32,
    buffer_size_bytes: u32,
) -> Result<BufferPool, DeviceError> {
    let total = buffer_count as usize * buffer_size_bytes as usize;
    // SAFETY: spdk_dma_zmalloc takes a size, an alignment and an optional (null) out-pointer
    // for the physical address; it returns null or `total` zeroed bytes so aligned.
    let base = unsafe { (api.dma_zmalloc)(total, BUFFER_ALIGNMENT_BYTES, ptr::null_mut()) };
    let Some(base) = NonNull::new(base.cast::<u8>()) else {
        return Err(unavailable(format!(
            "spdk_dma_zmalloc could not allocate {total} bytes of DMA memory for \
             {buffer_count} buffers: reserve more huge pages (scripts/setup.sh in SPDK, \
             HUGEMEM=...) or lower the queue depth or block size"
        )));
    };
    // SAFETY: `base` holds `total` bytes aligned to BUFFER_ALIGNMENT_BYTES, owned by nothing
    // else, and spdk_dma_free releases exactly what spdk_dma_zmalloc returned.
    Ok(unsafe { BufferPool::from_external(base, buffer_count, buffer_size_bytes, api.dma_free) })
}

fn check_bdev_name(bdev_name: &str) -> Result<CString, DeviceError> {
    if bdev_name.is_empty() {
        return Err(DeviceError::InvalidOptions {
            reason: "no SPDK bdev was given: name a bdev from SPDK's configuration (e.g. \
                     Nvme0n1)"
                .to_owned(),
        });
    }
    CString::new(bdev_name).map_err(|_| DeviceError::InvalidOptions {
        reason: format!("SPDK bdev name {bdev_name:?} contains a NUL byte"),
    })
}

/// The same bounds as the io_uring backend, so that options valid for one are for the other.
fn check_options(options: &OpenOptions) -> Result<(), DeviceError> {
    let invalid = |reason: String| Err(DeviceError::InvalidOptions { reason });
    if options.create {
        return invalid(
            "SPDK bdevs are created by SPDK's configuration, not by opening them".to_owned(),
        );
    }
    if options.sqpoll_idle_ms.is_some() {
        return invalid("SQPOLL is an io_uring option; SPDK always polls".to_owned());
    }
    options.check_queue_and_pool()
}

fn completion_result(kind: OpKind, status: i32, moved_bytes: u32) -> Result<u32, DeviceError> {
    if status < 0 {
        return Err(DeviceError::Io { op: kind, source: io::Error::from_raw_os_error(-status) });
    }
    // The bdev API reports success or failure only: a successful read or write moved all.
    Ok(moved_bytes)
}

fn unavailable(reason: String) -> DeviceError {
    DeviceError::BackendUnavailable { backend: BACKEND, reason }
}

/// An open bdev descriptor and this thread's I/O channel on it; closes both when dropped.
struct OpenBdev {
    api: &'static Api,
    thread: NonNull<SpdkThread>,
    desc: NonNull<SpdkBdevDesc>,
    channel: NonNull<SpdkIoChannel>,
    /// SPDK may still use the descriptor: never close it.
    abandoned: bool,
}

impl OpenBdev {
    fn open(
        api: &'static Api,
        thread: NonNull<SpdkThread>,
        c_name: &CStr,
        bdev_name: &str,
        read_only: bool,
        inbox: &InboxBox,
    ) -> Result<OpenBdev, DeviceError> {
        let mut desc = ptr::null_mut();
        let event_ctx = inbox.as_ptr().cast_mut().cast::<c_void>();
        // SAFETY: the name is NUL-terminated; the event callback matches spdk_bdev_event_cb_t;
        // `event_ctx` points at the inbox, which outlives the descriptor (the device closes the
        // descriptor before freeing the inbox, and SPDK delivers no event after the close);
        // SPDK writes the descriptor through `&mut desc`.
        let rc = unsafe {
            (api.bdev_open_ext)(
                c_name.as_ptr(),
                !read_only,
                bdev_event_callback,
                event_ctx,
                &mut desc,
            )
        };
        if rc != 0 {
            return Err(open_error(bdev_name, rc));
        }
        let desc = NonNull::new(desc).expect("spdk_bdev_open_ext succeeded without a descriptor");
        // SAFETY: `desc` was just opened on the current SPDK thread.
        let channel = unsafe { (api.bdev_get_io_channel)(desc.as_ptr()) };
        let Some(channel) = NonNull::new(channel) else {
            // SAFETY: `desc` is open, on this thread, and not used after this.
            unsafe { (api.bdev_close)(desc.as_ptr()) };
            return Err(DeviceError::Setup {
                what: "getting an I/O channel for the SPDK bdev",
                source: io::Error::from_raw_os_error(libc::ENOMEM),
            });
        };
        Ok(OpenBdev { api, thread, desc, channel, abandoned: false })
    }

    /// The device's geometry and how it flushes, checked against `options`.
    fn measure(
        &self,
        bdev_name: &str,
        options: &OpenOptions,
    ) -> Result<(Geometry, FlushMode), DeviceError> {
        let api = self.api;
        // SAFETY: the descriptor is open; the bdev it names lives while it is.
        let bdev = unsafe { (api.bdev_desc_get_bdev)(self.desc.as_ptr()) };
        // SAFETY: `bdev` is the descriptor's live bdev; these only read its properties.
        let (logical_bytes, block_count, buf_align, flushes, write_cache) = unsafe {
            (
                (api.bdev_get_block_size)(bdev),
                (api.bdev_get_num_blocks)(bdev),
                (api.bdev_get_buf_align)(bdev),
                (api.bdev_io_type_supported)(bdev, SPDK_BDEV_IO_TYPE_FLUSH),
                (api.bdev_has_write_cache)(bdev),
            )
        };
        let invalid = |reason: String| Err(DeviceError::InvalidOptions { reason });
        if logical_bytes == 0 || !logical_bytes.is_power_of_two() {
            return invalid(format!(
                "SPDK bdev {bdev_name} has {logical_bytes}-byte blocks (interleaved metadata?); \
                 Kiseki needs a power of two"
            ));
        }
        if buf_align > BUFFER_ALIGNMENT_BYTES {
            return invalid(format!(
                "SPDK bdev {bdev_name} needs buffers aligned to {buf_align} bytes, more than \
                 the pool's {BUFFER_ALIGNMENT_BYTES}"
            ));
        }
        if !flushes && write_cache && !options.read_only {
            return invalid(format!(
                "SPDK bdev {bdev_name} has a volatile write cache but no flush: writes could \
                 never be made durable"
            ));
        }
        let block_size_bytes = logical_bytes.max(BLOCK_SIZE_MIN_BYTES);
        let actual_bytes = block_count.saturating_mul(u64::from(logical_bytes));
        let wanted_bytes = options.size_bytes.unwrap_or(actual_bytes);
        let size_bytes = wanted_bytes - wanted_bytes % u64::from(block_size_bytes);
        if wanted_bytes > actual_bytes || size_bytes == 0 {
            return Err(DeviceError::TooSmall {
                device: bdev_name.to_owned(),
                size_bytes: actual_bytes,
                required_bytes: wanted_bytes.max(u64::from(block_size_bytes)),
            });
        }
        let flush = if flushes { FlushMode::Bdev } else { FlushMode::WritesAlreadyDurable };
        Ok((Geometry { size_bytes, block_size_bytes }, flush))
    }
}

impl Drop for OpenBdev {
    fn drop(&mut self) {
        if self.abandoned {
            return;
        }
        let _current = CurrentThread::enter(self.api, self.thread);
        // SAFETY: channel and descriptor were opened on `thread`, now current; nothing uses
        // them after this (the device has waited for its requests, or is abandoned above).
        unsafe {
            (self.api.put_io_channel)(self.channel.as_ptr());
            (self.api.bdev_close)(self.desc.as_ptr());
        }
    }
}

fn open_error(bdev_name: &str, rc: c_int) -> DeviceError {
    let errno = rc.checked_neg().filter(|&errno| errno > 0).unwrap_or(libc::EIO);
    match errno {
        libc::ENODEV => DeviceError::InvalidOptions {
            reason: format!(
                "SPDK has no bdev named {bdev_name} (list them with `rpc.py bdev_get_bdevs`)"
            ),
        },
        libc::EPERM => DeviceError::InvalidOptions {
            reason: format!("SPDK bdev {bdev_name} is claimed by another module for writing"),
        },
        _ => DeviceError::Setup {
            what: "opening the SPDK bdev (spdk_bdev_open_ext)",
            source: io::Error::from_raw_os_error(errno),
        },
    }
}

/// Makes the device's SPDK thread current for a scope, and restores the previous one. SPDK
/// requires descriptor and channel calls on the thread that opened them.
struct CurrentThread {
    api: &'static Api,
    previous: *mut SpdkThread,
    switched: bool,
}

impl CurrentThread {
    fn enter(api: &'static Api, thread: NonNull<SpdkThread>) -> CurrentThread {
        // SAFETY: reads a thread-local.
        let previous = unsafe { (api.get_thread)() };
        let switched = previous != thread.as_ptr();
        if switched {
            // SAFETY: `thread` is live and belongs to this OS thread (the device is !Send);
            // `drop` puts the previous one back.
            unsafe { (api.set_thread)(thread.as_ptr()) };
        }
        CurrentThread { api, previous, switched }
    }
}

impl Drop for CurrentThread {
    fn drop(&mut self) {
        if self.switched {
            // SAFETY: restores what was current on entry (possibly none).
            unsafe { (self.api.set_thread)(self.previous) };
        }
    }
}

/// What SPDK's callbacks deliver to the device: finished requests and bdev removal. Touched
/// only through shared references, on the device's OS thread, hence cells.
struct Inbox {
    free_io: BdevFreeIo,
    /// A ring of `capacity` entries; every slot is in it at most once, so it never overflows.
    finished: Box<[Cell<Finished>]>,
    head: Cell<u32>,
    len: Cell<u32>,
    removed: Cell<bool>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Finished {
    index: u32,
    /// 0, or a negated errno.
    status: i32,
}

impl Inbox {
    fn finish(&self, index: u32, status: i32) {
        let capacity = self.finished.len() as u32;
        let len = self.len.get();
        assert!(len < capacity, "completion inbox overflow: slot {index} finished twice");
        let tail = (self.head.get() + len) % capacity;
        self.finished[tail as usize].set(Finished { index, status });
        self.len.set(len + 1);
    }

    fn next(&self) -> Option<Finished> {
        let len = self.len.get();
        if len == 0 {
            return None;
        }
        let head = self.head.get();
        self.head.set((head + 1) % self.finished.len() as u32);
        self.len.set(len - 1);
        Some(self.finished[head as usize].get())
    }
}

/// Owns an `Inbox` at a fixed address that SPDK holds (as `event_ctx`, and through tickets).
/// A raw allocation rather than a `Box` field, so that moving the device asserts no unique
/// access over memory SPDK's callbacks read.
struct InboxBox {
    inbox: NonNull<Inbox>,
    /// SPDK may still deliver into the inbox: never free it.
    abandoned: bool,
}

impl InboxBox {
    fn new(free_io: BdevFreeIo, capacity: u32) -> InboxBox {
        assert!(capacity > 0, "an inbox needs room for one completion");
        let inbox = Box::new(Inbox {
            free_io,
            finished: (0..capacity).map(|_| Cell::default()).collect(),
            head: Cell::new(0),
            len: Cell::new(0),
            removed: Cell::new(false),
        });
        InboxBox { inbox: NonNull::from(Box::leak(inbox)), abandoned: false }
    }

    fn as_ptr(&self) -> *const Inbox {
        self.inbox.as_ptr()
    }

    fn get(&self) -> &Inbox {
        // SAFETY: allocated in `new`, freed only in `drop`; only shared references are made.
        unsafe { self.inbox.as_ref() }
    }
}

impl Drop for InboxBox {
    fn drop(&mut self) {
        if !self.abandoned {
            // SAFETY: from `Box::leak` in `new`, freed once; the descriptor that could call
            // into it is closed and every request reaped (see `SpdkDevice`'s field order).
            drop(unsafe { Box::from_raw(self.inbox.as_ptr()) });
        }
    }
}

/// A slot's `cb_arg`: which slot finished, and where to say so.
struct Ticket {
    inbox: *const Inbox,
    index: u32,
}

/// `spdk_bdev_io_completion_cb`. Runs inside `spdk_thread_poll` on the device's thread.
unsafe extern "C" fn io_completion_callback(
    bdev_io: *mut SpdkBdevIo,
    success: bool,
    cb_arg: *mut c_void,
) {
    // SAFETY: `cb_arg` is the ticket `submit` passed; tickets live as long as the device,
    // which reaps (or abandons, leaking them) every request before they go.
    let ticket = unsafe { &*cb_arg.cast_const().cast::<Ticket>() };
    // SAFETY: the ticket's inbox lives at least as long as the tickets (freed after them).
    let inbox = unsafe { &*ticket.inbox };
    // SAFETY: SPDK hands us this bdev_io to free once its callback has run; we read nothing
    // from it and free it once, here.
    unsafe { (inbox.free_io)(bdev_io) };
    inbox.finish(ticket.index, if success { 0 } else { -libc::EIO });
}

/// `spdk_bdev_event_cb_t`. SPDK calls it on the thread that opened the descriptor.
unsafe extern "C" fn bdev_event_callback(
    event_type: c_int,
    _bdev: *mut SpdkBdev,
    event_ctx: *mut c_void,
) {
    if event_type == SPDK_BDEV_EVENT_REMOVE {
        // SAFETY: `event_ctx` is the inbox given to spdk_bdev_open_ext, which outlives the
        // descriptor; SPDK calls this only while the descriptor is open.
        let inbox = unsafe { &*event_ctx.cast_const().cast::<Inbox>() };
        // Requests in flight fail on their own; new ones are refused. The descriptor closes
        // when the device is dropped.
        inbox.removed.set(true);
    }
}

/// SPDK's opaque structs, only ever behind pointers.
macro_rules! opaque {
    ($($name:ident),*) => {$(
        #[repr(C)]
        struct $name {
            _opaque: [u8; 0],
            _not_send_sync_unpin: PhantomData<(*mut u8, PhantomPinned)>,
        }
    )*};
}
opaque!(SpdkBdev, SpdkBdevDesc, SpdkBdevIo, SpdkIoChannel, SpdkThread);

type IoCompletionCallback =
    unsafe extern "C" fn(bdev_io: *mut SpdkBdevIo, success: bool, cb_arg: *mut c_void);
type BdevEventCallback =
    unsafe extern "C" fn(event_type: c_int, bdev: *mut SpdkBdev, event_ctx: *mut c_void);
type BdevFreeIo = unsafe extern "C" fn(bdev_io: *mut SpdkBdevIo);

/// Declares `Api`, one field per SPDK function with its C signature, and its resolver.
macro_rules! spdk_api {
    ($($field:ident = $symbol:literal: fn($($arg:ident: $ty:ty),*) $(-> $ret:ty)?;)*) => {
        /// SPDK's functions, resolved once per process. Never unloaded: SPDK cannot be.
        struct Api {
            $($field: unsafe extern "C" fn($($arg: $ty),*) $(-> $ret)?,)*
        }

        impl Api {
            /// Resolves every function from `handles`, in order; `Err` names the first missing.
            fn resolve(handles: &[*mut c_void]) -> Result<Api, String> {
                Ok(Api {$($field: {
                    let address = symbol(handles, $symbol)?;
                    // SAFETY: `address` is the non-null address of SPDK's exported C function
                    // `$symbol`, and this type is its signature in SPDK's headers.
                    unsafe {
                        std::mem::transmute::<
                            *mut c_void,
                            unsafe extern "C" fn($($arg: $ty),*) $(-> $ret)?,
                        >(address)
                    }
                },)*})
            }
        }
    };
}

spdk_api! {
    bdev_open_ext = "spdk_bdev_open_ext": fn(
        bdev_name: *const c_char,
        write: bool,
        event_cb: BdevEventCallback,
        event_ctx: *mut c_void,
        desc: *mut *mut SpdkBdevDesc
    ) -> c_int;
    bdev_desc_get_bdev = "spdk_bdev_desc_get_bdev": fn(desc: *mut SpdkBdevDesc) -> *mut SpdkBdev;
    bdev_get_block_size = "spdk_bdev_get_block_size": fn(bdev: *const SpdkBdev) -> u32;
    bdev_get_num_blocks = "spdk_bdev_get_num_blocks": fn(bdev: *const SpdkBdev) -> u64;
    bdev_get_buf_align = "spdk_bdev_get_buf_align": fn(bdev: *const SpdkBdev) -> usize;
    bdev_io_type_supported = "spdk_bdev_io_type_supported": fn(
        bdev: *mut SpdkBdev,
        io_type: c_int
    ) -> bool;
    bdev_has_write_cache = "spdk_bdev_has_write_cache": fn(bdev: *const SpdkBdev) -> bool;
    bdev_get_io_channel = "spdk_bdev_get_io_channel": fn(
        desc: *mut SpdkBdevDesc
    ) -> *mut SpdkIoChannel;
    bdev_read = "spdk_bdev_read": fn(
        desc: *mut SpdkBdevDesc,
        ch: *mut SpdkIoChannel,
        buf: *mut c_void,
        offset: u64,
        nbytes: u64,
        cb: IoCompletionCallback,
        cb_arg: *mut c_void
    ) -> c_int;
    bdev_write = "spdk_bdev_write": fn(
        desc: *mut SpdkBdevDesc,
        ch: *mut SpdkIoChannel,
        buf: *mut c_void,
        offset: u64,
        nbytes: u64,
        cb: IoCompletionCallback,
        cb_arg: *mut c_void
    ) -> c_int;
    bdev_flush = "spdk_bdev_flush": fn(
        desc: *mut SpdkBdevDesc,
        ch: *mut SpdkIoChannel,
        offset: u64,
        length: u64,
        cb: IoCompletionCallback,
        cb_arg: *mut c_void
    ) -> c_int;
    bdev_write_zeroes = "spdk_bdev_write_zeroes": fn(
        desc: *mut SpdkBdevDesc,
        ch: *mut SpdkIoChannel,
        offset: u64,
        len: u64,
        cb: IoCompletionCallback,
        cb_arg: *mut c_void
    ) -> c_int;
    bdev_free_io = "spdk_bdev_free_io": fn(bdev_io: *mut SpdkBdevIo);
    bdev_close = "spdk_bdev_close": fn(desc: *mut SpdkBdevDesc);
    get_thread = "spdk_get_thread": fn() -> *mut SpdkThread;
    set_thread = "spdk_set_thread": fn(thread: *mut SpdkThread);
    thread_poll = "spdk_thread_poll": fn(
        thread: *mut SpdkThread,
        max_msgs: u32,
        now: u64
    ) -> c_int;
    thread_is_exited = "spdk_thread_is_exited": fn(thread: *mut SpdkThread) -> bool;
    put_io_channel = "spdk_put_io_channel": fn(ch: *mut SpdkIoChannel);
    dma_zmalloc = "spdk_dma_zmalloc": fn(
        size: usize,
        align: usize,
        phys_addr: *mut u64
    ) -> *mut c_void;
    dma_free = "spdk_dma_free": fn(buf: *mut c_void);
}

static API: OnceLock<Api> = OnceLock::new();

impl Api {
    /// SPDK's functions: from the program itself when it already has SPDK (linked in, or
    /// loaded by someone else), else from SPDK's shared libraries. A failure is not cached,
    /// so a later open retries.
    fn get() -> Result<&'static Api, String> {
        if let Some(api) = API.get() {
            return Ok(api);
        }
        let api = Api::load()?;
        Ok(API.get_or_init(|| api))
    }

    fn load() -> Result<Api, String> {
        if let Ok(api) = Api::resolve(&[libc::RTLD_DEFAULT]) {
            return Ok(api);
        }
        let bdev = open_library(BDEV_LIBRARY).map_err(|error| libraries_missing(&error))?;
        let mut handles = vec![bdev];
        // Found through libspdk_bdev.so's dependencies when not by this name.
        for also in [THREAD_LIBRARY, ENV_LIBRARY] {
            if let Ok(handle) = open_library(also) {
                handles.push(handle);
            }
        }
        Api::resolve(&handles).map_err(|missing| {
            format!(
                "{BDEV_LIBRARY} was loaded but has no {missing}: this backend needs SPDK \
                 20.04 or later, built with --with-shared"
            )
        })
    }
}

fn libraries_missing(loader_error: &str) -> String {
    format!(
        "SPDK's shared libraries were not found ({BDEV_LIBRARY}, {THREAD_LIBRARY}, \
         {ENV_LIBRARY}; the loader said: {loader_error}), and this program does not \
         contain SPDK's functions either. Install SPDK built with --with-shared, put the \
         directory holding its libraries on LD_LIBRARY_PATH, and initialize SPDK's env and \
         app (spdk_app_start, or spdk_env_init and spdk_thread_lib_init with the bdev \
         subsystem) before opening; a program that links SPDK statically must export its \
         symbols (-rdynamic)"
    )
}

/// `dlopen`s a library, never to be closed (SPDK does not support unloading).
fn open_library(name: &str) -> Result<*mut c_void, String> {
    let c_name = CString::new(name).expect("library names hold no NUL");
    // SAFETY: the name is NUL-terminated; dlopen runs the library's initializers, which for
    // SPDK only register log flags and the like.
    let handle = unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() { Err(loader_error(name)) } else { Ok(handle) }
}

/// Finds `name` in the first of `handles` that has it.
fn symbol(handles: &[*mut c_void], name: &str) -> Result<*mut c_void, String> {
    let c_name = CString::new(name).expect("symbol names hold no NUL");
    for &handle in handles {
        // SAFETY: `handle` is RTLD_DEFAULT or from a dlopen never closed; the name is
        // NUL-terminated.
        let address = unsafe { libc::dlsym(handle, c_name.as_ptr()) };
        if !address.is_null() {
            return Ok(address);
        }
    }
    Err(name.to_owned())
}

/// The dynamic loader's last error, or a plain sentence when it has none.
fn loader_error(name: &str) -> String {
    // SAFETY: dlerror returns a thread-local string or null.
    let message = unsafe { libc::dlerror() };
    if message.is_null() {
        return format!("{name} could not be loaded");
    }
    // SAFETY: non-null, so a NUL-terminated string valid until the next dl* call on this
    // thread; copied out at once.
    unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[test]
    fn empty_bdev_name_is_refused_before_spdk_is_looked_for() {
        let error = SpdkDevice::open("", &OpenOptions::default()).unwrap_err();
        let DeviceError::InvalidOptions { reason } = &error else {
            panic!("expected InvalidOptions, got {error:?}");
        };
        assert!(reason.contains("no SPDK bdev was given"), "{reason}");

        let error = SpdkDevice::open("Nvme0\0n1", &OpenOptions::default()).unwrap_err();
        assert!(matches!(error, DeviceError::InvalidOptions { .. }), "{error:?}");
    }

    #[test]
    fn open_without_spdk_is_unavailable_and_says_why() {
        let error = SpdkDevice::open("Nvme0n1", &OpenOptions::default()).unwrap_err();
        let message = error.to_string();
        let DeviceError::BackendUnavailable { backend, reason } = &error else {
            panic!("expected BackendUnavailable, got {error:?}");
        };
        assert_eq!(*backend, "spdk");
        assert!(message.starts_with("spdk backend unavailable: "), "{message}");
        if Api::get().is_err() {
            // The machines this was written on: no SPDK at all.
            assert!(reason.contains("SPDK's shared libraries were not found"), "{reason}");
            assert!(reason.contains("libspdk_bdev.so"), "{reason}");
            assert!(reason.contains("LD_LIBRARY_PATH"), "{reason}");
            assert!(reason.contains("initialize SPDK's env and app"), "{reason}");
        } else {
            // SPDK is installed, but a test thread has no SPDK thread.
            assert!(reason.contains("no SPDK thread"), "{reason}");
        }
    }

    #[test]
    fn options_a_bdev_cannot_honour_are_refused_before_loading() {
        let refused = |options: OpenOptions| match SpdkDevice::open("Nvme0n1", &options) {
            Err(DeviceError::InvalidOptions { reason }) => reason,
            other => panic!("expected InvalidOptions, got {other:?}"),
        };
        let create = refused(OpenOptions { create: true, ..OpenOptions::default() });
        assert!(create.contains("created by SPDK's configuration"), "{create}");
        let sqpoll = refused(OpenOptions { sqpoll_idle_ms: Some(10), ..OpenOptions::default() });
        assert!(sqpoll.contains("SQPOLL"), "{sqpoll}");
        let depth = refused(OpenOptions { queue_depth: 0, ..OpenOptions::default() });
        assert!(depth.contains("queue depth 0"), "{depth}");
        let size = refused(OpenOptions { buffer_size_bytes: 512, ..OpenOptions::default() });
        assert!(size.contains("buffer size 512"), "{size}");
    }

    thread_local! {
        static FREED: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    }

    /// Stands in for spdk_bdev_free_io: records which bdev_io was freed.
    unsafe extern "C" fn record_free_io(bdev_io: *mut SpdkBdevIo) {
        FREED.with(|freed| freed.borrow_mut().push(bdev_io as usize));
    }

    fn fake_bdev_io(address: usize) -> *mut SpdkBdevIo {
        ptr::without_provenance_mut(address)
    }

    #[test]
    fn completion_callback_frees_the_bdev_io_and_reports_the_slot_in_order() {
        let inbox = InboxBox::new(record_free_io, 4);
        let tickets: Vec<Ticket> =
            (0..4).map(|index| Ticket { inbox: inbox.as_ptr(), index }).collect();
        let complete = |index: usize, bdev_io: usize, success: bool| {
            let cb_arg = (&tickets[index] as *const Ticket).cast_mut().cast::<c_void>();
            // SAFETY: `cb_arg` is a live ticket whose inbox is live; `record_free_io` only
            // records the bdev_io address, never dereferences it.
            unsafe { io_completion_callback(fake_bdev_io(bdev_io), success, cb_arg) };
        };
        complete(2, 0x2000, true);
        complete(0, 0x1000, false);
        complete(3, 0x3000, true);

        FREED.with(|freed| assert_eq!(*freed.borrow(), [0x2000, 0x1000, 0x3000]));
        let inbox = inbox.get();
        assert_eq!(inbox.next(), Some(Finished { index: 2, status: 0 }));
        assert_eq!(inbox.next(), Some(Finished { index: 0, status: -libc::EIO }));
        assert_eq!(inbox.next(), Some(Finished { index: 3, status: 0 }));
        assert_eq!(inbox.next(), None);
    }

    #[test]
    fn inbox_wraps_around_and_holds_at_most_its_capacity() {
        let inbox = InboxBox::new(record_free_io, 2);
        let inbox = inbox.get();
        for round in 0..5 {
            inbox.finish(round, 0);
            inbox.finish(round + 100, -libc::EIO);
            assert_eq!(inbox.next().map(|f| f.index), Some(round));
            assert_eq!(inbox.next().map(|f| f.index), Some(round + 100));
            assert_eq!(inbox.next(), None);
        }
    }

    #[test]
    #[should_panic(expected = "completion inbox overflow")]
    fn inbox_overflow_is_a_programmer_error() {
        let inbox = InboxBox::new(record_free_io, 1);
        inbox.get().finish(0, 0);
        inbox.get().finish(0, 0);
    }

    #[test]
    fn only_a_remove_event_marks_the_bdev_removed() {
        let inbox = InboxBox::new(record_free_io, 1);
        let event_ctx = inbox.as_ptr().cast_mut().cast::<c_void>();
        let resize = SPDK_BDEV_EVENT_REMOVE + 1;
        // SAFETY: `event_ctx` is a live inbox; the bdev pointer is never read.
        unsafe { bdev_event_callback(resize, ptr::null_mut(), event_ctx) };
        assert!(!inbox.get().removed.get());
        // SAFETY: as above.
        unsafe { bdev_event_callback(SPDK_BDEV_EVENT_REMOVE, ptr::null_mut(), event_ctx) };
        assert!(inbox.get().removed.get());
    }

    #[test]
    fn status_becomes_bytes_moved_or_an_io_error() {
        assert_eq!(completion_result(OpKind::Read, 0, 8192).unwrap(), 8192);
        assert_eq!(completion_result(OpKind::Flush, 0, 0).unwrap(), 0);
        let error = completion_result(OpKind::Write, -libc::EIO, 4096).unwrap_err();
        let DeviceError::Io { op, source } = &error else {
            panic!("expected Io, got {error:?}");
        };
        assert_eq!(*op, OpKind::Write);
        assert_eq!(source.raw_os_error(), Some(libc::EIO));
    }

    #[test]
    fn open_errors_name_the_bdev() {
        let missing = open_error("Nvme9n1", -libc::ENODEV).to_string();
        assert!(missing.contains("no bdev named Nvme9n1"), "{missing}");
        let other = open_error("Nvme9n1", -libc::EINVAL);
        assert!(matches!(other, DeviceError::Setup { .. }), "{other:?}");
    }
}
