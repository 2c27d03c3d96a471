//! `kiseki-bench device`: fio's job model on Kiseki's `BlockDevice`s.
//!
//! Each job is one thread, pinned to a core, that opens its own device (its own ring and
//! registered buffers, as an engine reactor does), keeps `iodepth` requests in flight and
//! records every completion's latency in an hdrhistogram. One clock read per loop turn
//! timestamps both the completions it reaped and the requests it issues, so timing costs
//! nothing per I/O.

use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use kiseki_devices::constants::{BLOCK_SIZE_MIN_BYTES, IO_SIZE_MAX_BYTES};
use kiseki_devices::rng::SplitMix64;
use kiseki_devices::{
    BlockDevice, Completion, DeviceError, DmaBuf, IoUringDevice, MemoryDevice, Op, OpKind,
    OpenOptions, Request,
};

use crate::layout;
use crate::progress::Progress;
use crate::stats::{JobStats, Window};
use crate::units::{parse_duration, parse_size};

/// Flags with fio's names and meanings.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Example, as fio would run it:\n  kiseki-bench device --name=randread \
    --filename=./kiseki-bench.dat --size=1G --rw=randread --bs=4k --iodepth=64 \
    --runtime=4 --time_based")]
pub struct DeviceArgs {
    /// Job name, shown in the output
    #[arg(long, default_value = "kiseki")]
    pub name: String,
    /// File or block device to test; created and filled when missing, as fio does. With
    /// --ioengine=spdk, the SPDK bdev name
    #[arg(long)]
    pub filename: Option<PathBuf>,
    /// Bytes of the file to use (4k, 1M, 2G...); defaults to the file's size
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// I/O pattern
    #[arg(long, value_enum, default_value_t = Pattern::Read)]
    pub rw: Pattern,
    /// Percentage of reads in mixed workloads (randrw, readwrite)
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rwmixread: u8,
    /// Block size of each I/O, a multiple of 4k
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    pub bs: u64,
    /// I/Os in flight per job
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub iodepth: u32,
    /// Jobs, each one thread pinned to a core with its own ring
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub numjobs: u32,
    /// Stop after this long (seconds unless suffixed: 500ms, 2m)
    #[arg(long, value_parser = parse_duration)]
    pub runtime: Option<Duration>,
    /// Run for --runtime even after --size bytes were done, looping over the file
    #[arg(long = "time_based")]
    pub time_based: bool,
    /// Run this long before measuring
    #[arg(long = "ramp_time", value_parser = parse_duration)]
    pub ramp_time: Option<Duration>,
    /// Device backend
    #[arg(long, value_enum, default_value_t = Engine::IoUring)]
    pub ioengine: Engine,
    /// Output format
    #[arg(long = "output-format", value_enum, default_value_t = OutputFormat::Normal)]
    pub output_format: OutputFormat,
    /// O_DIRECT; always 1 (the device layer never goes through the page cache)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=1))]
    pub direct: u8,
    /// Report all jobs as one
    #[arg(long = "group_reporting")]
    pub group_reporting: bool,
    /// Let a kernel thread poll the submission queue (io_uring SQPOLL); burns a core
    #[arg(long = "sqthread_poll")]
    pub sqthread_poll: bool,
    /// Seed for offsets and data, so runs repeat
    #[arg(long, default_value_t = 0x6b69_7365_6b69)]
    pub randseed: u64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Read,
    Write,
    #[value(name = "randread")]
    RandRead,
    #[value(name = "randwrite")]
    RandWrite,
    #[value(name = "randrw")]
    RandRw,
    #[value(name = "readwrite", alias = "rw")]
    ReadWrite,
    /// `kiseki-bench fabric` only: put chunks to a listener
    Put,
    /// `kiseki-bench fabric` only: get chunks from a listener
    Get,
}

impl Pattern {
    pub fn fio_name(self) -> &'static str {
        match self {
            Pattern::Read => "read",
            Pattern::Write => "write",
            Pattern::RandRead => "randread",
            Pattern::RandWrite => "randwrite",
            Pattern::RandRw => "randrw",
            Pattern::ReadWrite => "readwrite",
            Pattern::Put => "put",
            Pattern::Get => "get",
        }
    }

    pub(crate) fn is_random(self) -> bool {
        matches!(self, Pattern::RandRead | Pattern::RandWrite | Pattern::RandRw)
    }

    /// Percentage of reads.
    pub(crate) fn read_percent(self, rwmixread: u8) -> u8 {
        match self {
            Pattern::Read | Pattern::RandRead | Pattern::Get => 100,
            Pattern::Write | Pattern::RandWrite | Pattern::Put => 0,
            Pattern::RandRw | Pattern::ReadWrite => rwmixread,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    #[value(name = "io_uring")]
    IoUring,
    Memory,
    Spdk,
    /// What a `kiseki-bench fabric` client reports: chunks over TCP and TLS 1.3 with mutual
    /// authentication. Not a device backend, so not a value of --ioengine.
    #[value(skip)]
    FabricTcp,
}

impl Engine {
    pub fn fio_name(self) -> &'static str {
        match self {
            Engine::IoUring => "io_uring",
            Engine::Memory => "memory",
            Engine::Spdk => "spdk",
            Engine::FabricTcp => "kiseki-fabric-tcp-mtls",
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Normal,
    Json,
}

/// A checked job description, the same for every job of the run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub args: DeviceArgs,
    pub size_bytes: u64,
    pub bs_bytes: u32,
    pub read_percent: u8,
    pub ramp: Duration,
    /// Bytes each job moves before it stops (None: time-based).
    pub io_limit_bytes: Option<u64>,
    /// Job options the reports show besides fio's (the fabric's transport and peer).
    pub extra_options: Vec<(&'static str, String)>,
}

/// Checks the flags, lays the file out when it is missing or short, and returns the plan.
pub fn plan(args: DeviceArgs) -> Result<Plan, String> {
    let bs = args.bs;
    if bs == 0 || !bs.is_multiple_of(u64::from(BLOCK_SIZE_MIN_BYTES)) {
        return Err(format!("--bs={bs}: must be a multiple of {BLOCK_SIZE_MIN_BYTES} bytes"));
    }
    if bs > u64::from(IO_SIZE_MAX_BYTES) {
        return Err(format!("--bs={bs}: at most {IO_SIZE_MAX_BYTES} bytes"));
    }
    if matches!(args.rw, Pattern::Put | Pattern::Get) {
        let rw = args.rw.fio_name();
        return Err(format!("--rw={rw} is for `kiseki-bench fabric`; a device reads and writes"));
    }
    if args.time_based && args.runtime.is_none() {
        return Err("--time_based needs --runtime".to_owned());
    }
    let size_bytes = match args.ioengine {
        Engine::IoUring => layout::prepare(required_filename(&args)?, args.size)?,
        Engine::Memory => args.size.ok_or("--ioengine=memory needs --size")?,
        Engine::Spdk => {
            required_filename(&args)?;
            args.size.unwrap_or(0)
        }
        Engine::FabricTcp => unreachable!("--ioengine has no fabric value"),
    };
    if args.ioengine != Engine::Spdk && size_bytes < bs {
        return Err(format!("--size={size_bytes} is smaller than --bs={bs}"));
    }
    let io_limit_bytes = (!args.time_based).then_some(size_bytes);
    Ok(Plan {
        size_bytes: size_bytes - size_bytes % bs,
        bs_bytes: bs as u32,
        read_percent: args.rw.read_percent(args.rwmixread),
        ramp: args.ramp_time.unwrap_or(Duration::ZERO),
        io_limit_bytes,
        extra_options: Vec::new(),
        args,
    })
}

fn required_filename(args: &DeviceArgs) -> Result<&Path, String> {
    let engine = args.ioengine.fio_name();
    args.filename.as_deref().ok_or_else(|| format!("--ioengine={engine} needs --filename"))
}

/// Runs every job on its own pinned thread; returns one `JobStats` per job.
pub fn run(plan: &Plan) -> Result<Vec<JobStats>, String> {
    run_jobs(plan, |index, start, counters| run_job(plan, index, start, counters))
}

/// Starts `numjobs` threads, each pinned to its core, running `job(index, start, counters)`;
/// `start` is a barrier every job passes once set up (and the caller too), so all start
/// measuring together. Shows the progress line while they run.
pub(crate) fn run_jobs(
    plan: &Plan,
    job: impl Fn(usize, &Barrier, &JobCounters) -> Result<JobStats, String> + Sync,
) -> Result<Vec<JobStats>, String> {
    let jobs = plan.args.numjobs as usize;
    let counters: Vec<JobCounters> = (0..jobs).map(|_| JobCounters::default()).collect();
    let start = Barrier::new(jobs + 1);
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs)
            .map(|index| {
                let (start, counters, job) = (&start, &counters[index], &job);
                std::thread::Builder::new()
                    .name(format!("{}-{index}", plan.args.name))
                    .spawn_scoped(scope, move || {
                        if kiseki_devices::affinity::pin_current_thread(index).is_none() {
                            eprintln!("kiseki-bench: could not pin job {index}; running unpinned");
                        }
                        let outcome = job(index, start, counters);
                        counters.done.store(true, Ordering::Release);
                        outcome
                    })
                    .expect("spawning a job thread")
            })
            .collect();
        start.wait();
        let mut progress = Progress::new(plan, &counters);
        while !handles.iter().all(|handle| handle.is_finished()) {
            progress.tick();
            std::thread::sleep(Duration::from_millis(100));
        }
        progress.finish();
        handles.into_iter().map(|h| h.join().expect("job thread panicked")).collect::<Vec<_>>()
    });
    results.into_iter().collect()
}

/// What a running job shows the progress line, each on its own cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct JobCounters {
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub ios: AtomicU64,
    pub done: AtomicBool,
}

fn run_job(
    plan: &Plan,
    index: usize,
    start: &Barrier,
    counters: &JobCounters,
) -> Result<JobStats, String> {
    let options = OpenOptions {
        size_bytes: Some(plan.size_bytes),
        queue_depth: plan.args.iodepth,
        buffer_count: plan.args.iodepth,
        buffer_size_bytes: plan.bs_bytes,
        sqpoll_idle_ms: plan.args.sqthread_poll.then_some(1000),
        read_only: plan.read_percent == 100,
        ..OpenOptions::default()
    };
    let name = plan.args.filename.as_deref().unwrap_or(Path::new("")).to_owned();
    match plan.args.ioengine {
        Engine::IoUring => {
            open_then_drive(|| IoUringDevice::open(&name, &options), plan, index, start, counters)
        }
        Engine::Memory => {
            let open = || MemoryDevice::volatile(plan.size_bytes, &options);
            open_then_drive(open, plan, index, start, counters)
        }
        #[cfg(feature = "spdk")]
        Engine::Spdk => {
            let bdev = name.to_string_lossy();
            let open = || kiseki_devices::SpdkDevice::open(&bdev, &options);
            open_then_drive(open, plan, index, start, counters)
        }
        #[cfg(not(feature = "spdk"))]
        Engine::Spdk => {
            let open = || Err::<MemoryDevice, _>(spdk_not_built());
            open_then_drive(open, plan, index, start, counters)
        }
        Engine::FabricTcp => unreachable!("device::plan admits no fabric value"),
    }
}

/// Opens the job's device on the job's own thread, then waits for every other job so that
/// all start together (every job reaches the barrier, opened or not, so none waits forever).
fn open_then_drive<D: BlockDevice>(
    open: impl FnOnce() -> Result<D, DeviceError>,
    plan: &Plan,
    index: usize,
    start: &Barrier,
    counters: &JobCounters,
) -> Result<JobStats, String> {
    let opened = open();
    start.wait();
    let device = opened.map_err(|e| format!("{}: {e}", plan.args.name))?;
    drive(device, plan, index, counters)
}

#[cfg(not(feature = "spdk"))]
fn spdk_not_built() -> DeviceError {
    DeviceError::BackendUnavailable {
        backend: "spdk",
        reason: "this kiseki-bench was built without the `spdk` feature; rebuild with \
                 `cargo build --release -p kiseki-bench --features spdk` on a machine with SPDK"
            .to_owned(),
    }
}

/// The I/O loop of one job.
fn drive<D: BlockDevice>(
    mut device: D,
    plan: &Plan,
    index: usize,
    counters: &JobCounters,
) -> Result<JobStats, String> {
    let depth = plan.args.iodepth as usize;
    let mut rng = SplitMix64::new(plan.args.randseed ^ (index as u64).wrapping_mul(0x9E37));
    let mut offsets = Offsets::new(plan, rng.next_u64());
    let mut stats = JobStats::new(&plan.args.name);
    let mut completions: Vec<Completion> = Vec::with_capacity(depth);
    let mut issued_at = vec![Instant::now(); depth];
    let mut buffers: Vec<DmaBuf> = Vec::with_capacity(depth);
    for _ in 0..depth {
        let mut buf = device.acquire_buffer().ok_or("the device pool has fewer buffers")?;
        buf.set_len(plan.bs_bytes);
        rng.fill(buf.as_mut_slice());
        buffers.push(buf);
    }

    let mut window = Window::new(plan.ramp, plan.args.runtime, plan.io_limit_bytes);
    let mut issued_bytes = 0u64;
    let mut stopping = false;

    for (tag, buf) in buffers.drain(..).enumerate() {
        let op = next_op(&mut offsets, &mut rng, plan.read_percent, buf);
        push(&mut device, tag, op)?;
        issued_bytes += u64::from(plan.bs_bytes);
    }
    let mut now = Instant::now();
    while device.in_flight() > 0 {
        device.submit_and_reap(1, &mut completions).map_err(|e| e.to_string())?;
        now = Instant::now();
        stopping |= window.turn(now, issued_bytes, &mut stats);
        let (mut turn_ios, mut turn_read, mut turn_write) = (0, 0, 0);
        for completion in completions.drain(..) {
            let tag = completion.tag as usize;
            let buf = completion.buf.expect("reads and writes hand their buffer back");
            let bytes = match completion.result {
                Ok(bytes) => bytes,
                Err(e) => {
                    stats.error.get_or_insert((errno(&e), e.to_string()));
                    stopping = true;
                    device.release_buffer(buf);
                    continue;
                }
            };
            if window.measuring() {
                let latency_ns = now.duration_since(issued_at[tag]).as_nanos() as u64;
                match completion.kind {
                    OpKind::Read => stats.read.record(bytes, latency_ns),
                    _ => stats.write.record(bytes, latency_ns),
                }
            }
            turn_ios += 1;
            match completion.kind {
                OpKind::Read => turn_read += u64::from(bytes),
                _ => turn_write += u64::from(bytes),
            }
            if stopping {
                device.release_buffer(buf);
                continue;
            }
            issued_at[tag] = now;
            let op = next_op(&mut offsets, &mut rng, plan.read_percent, buf);
            push(&mut device, tag, op)?;
            issued_bytes += u64::from(plan.bs_bytes);
        }
        counters.ios.fetch_add(turn_ios, Ordering::Relaxed);
        counters.read_bytes.fetch_add(turn_read, Ordering::Relaxed);
        counters.write_bytes.fetch_add(turn_write, Ordering::Relaxed);
    }
    window.finish(now, &mut stats);
    Ok(stats)
}

fn push<D: BlockDevice>(device: &mut D, tag: usize, op: Op) -> Result<(), String> {
    device.push(Request { tag: tag as u64, op }).map_err(|rejected| rejected.error.to_string())
}

fn next_op(offsets: &mut Offsets, rng: &mut SplitMix64, read_percent: u8, buf: DmaBuf) -> Op {
    let offset = offsets.next();
    let read = match read_percent {
        100 => true,
        0 => false,
        percent => rng.below(100) < u64::from(percent),
    };
    if read { Op::Read { offset, buf } } else { Op::Write { offset, buf } }
}

fn errno(error: &DeviceError) -> i32 {
    match error {
        DeviceError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        _ => libc::EIO,
    }
}

/// Where the next I/O goes: uniform over the file's blocks of `bs`, or sequential, wrapping.
struct Offsets {
    rng: SplitMix64,
    random: bool,
    blocks: u64,
    next_block: u64,
    bs: u64,
}

impl Offsets {
    fn new(plan: &Plan, seed: u64) -> Offsets {
        let bs = u64::from(plan.bs_bytes);
        Offsets {
            rng: SplitMix64::new(seed),
            random: plan.args.rw.is_random(),
            blocks: (plan.size_bytes / bs).max(1),
            next_block: 0,
            bs,
        }
    }

    fn next(&mut self) -> u64 {
        let block = if self.random {
            self.rng.below(self.blocks)
        } else {
            let block = self.next_block;
            self.next_block = (block + 1) % self.blocks;
            block
        };
        block * self.bs
    }
}
