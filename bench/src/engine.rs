//! `kiseki-bench engine`: the whole chunk path with fio's job model.
//!
//! Each job is one pinned thread that owns one shard (its own region of the file, or its own
//! memory device) and does everything a front end and a reactor will do for a chunk, on its
//! core: writes compute the chunk id (SHA-256), derive the DEK (HKDF), seal (AES-256-GCM),
//! then put (CRC32C, durable extent and journal record, index); reads get (lookup, read,
//! CRC32C), parse and open the envelope. Latency runs from the first step to the last, and
//! the CPU per chunk is the job thread's whole cost.
//!
//! Writes keep the store at its working set: once `window` chunks are stored, each put is
//! followed by the release of the oldest (an overwrite workload); `--dedup_percentage` puts
//! repeat a recent chunk (a refcount increment, no data write). Reads need a filled store: a
//! read job first puts whatever chunks of its working set are missing, with a progress line.
//! Their master key lives in `FILE.bench-key` (0600) so that a later run can open them.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use kiseki_devices::constants::BLOCK_SIZE_MIN_BYTES;
use kiseki_devices::rng::SplitMix64;
use kiseki_devices::{BlockDevice, IoUringDevice, MemoryDevice, OpenOptions as DeviceOptions};
use kiseki_engine::store_file;
use kiseki_engine::{Ack, DeviceIds, EngineError, Outcome, Shard, Ticket};
use kiseki_security::{ChunkId, Dek, Envelope, MasterKey, SealParams};
use zeroize::Zeroizing;

use crate::device::{DeviceArgs, Engine as Backend, JobCounters, Pattern, Plan};
use crate::stats::{JobStats, Window};

/// `kiseki-bench engine` flags: fio's, with `--bs` the chunk size.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    #[command(flatten)]
    pub job: DeviceArgs,
    /// Percentage of writes that repeat a recent chunk (stored once, referenced twice)
    #[arg(long = "dedup_percentage", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub dedup_percentage: u8,
}

/// Share of a shard's data area a job's working set fills: well under the 85 % Critical
/// threshold, with room for the chunks of a write window in flight.
const WORKING_SET_PERCENT: u64 = 50;
/// Fill level a write job stays under, below the 75 % Warning threshold: releases of the
/// oldest chunks trail the puts by up to a queue's worth.
const WRITE_CEILING_PERCENT: u64 = 70;
/// The bench's identity on the device (a benchmark store is its own cluster).
pub(crate) const BENCH_IDS: DeviceIds =
    DeviceIds { cluster_id: *b"kiseki-bench-clu", node_id: [1; 16], device_id: [2; 16] };

/// Checks the flags and returns the plan the reports read.
pub fn plan(args: &EngineArgs) -> Result<Plan, String> {
    let job = &args.job;
    if !matches!(job.rw, Pattern::Write | Pattern::Read | Pattern::RandRead | Pattern::RandRw) {
        return Err(format!(
            "--rw={}: the engine bench runs write, read, randread or randrw",
            job.rw.fio_name()
        ));
    }
    let bs = job.bs;
    if bs == 0 || bs > u64::from(kiseki_engine::constants::CHUNK_SIZE_MAX_BYTES) - 4096 {
        return Err(format!("--bs={bs}: a chunk is 1 byte to 4 MiB less a block"));
    }
    if job.time_based && job.runtime.is_none() {
        return Err("--time_based needs --runtime".to_owned());
    }
    let size_bytes = match job.ioengine {
        Backend::Spdk | Backend::FabricTcp => {
            return Err("--ioengine=spdk: the engine bench runs on io_uring or memory".into());
        }
        Backend::Memory => job.size.ok_or("--ioengine=memory needs --size")?,
        Backend::IoUring => {
            let path = job.filename.as_deref().ok_or("--ioengine=io_uring needs --filename")?;
            match (fs::metadata(path), job.size) {
                (Ok(metadata), size) => size.unwrap_or(metadata.len()),
                (Err(_), Some(size)) => size,
                (Err(e), None) => {
                    return Err(format!("{}: {e}; give --size to create it", path.display()));
                }
            }
        }
    };
    let region = store_file::region_bytes(size_bytes, job.numjobs as usize);
    if region < 8 << 20 {
        return Err(format!("--size={size_bytes} gives each job under 8 MiB; give more"));
    }
    Ok(Plan {
        size_bytes: region * u64::from(job.numjobs),
        bs_bytes: bs as u32,
        read_percent: job.rw.read_percent(job.rwmixread),
        ramp: job.ramp_time.unwrap_or(Duration::ZERO),
        io_limit_bytes: (!job.time_based).then_some(region),
        extra_options: Vec::new(),
        args: job.clone(),
    })
}

/// Runs the jobs, one pinned thread and one shard each.
pub fn run(plan: &Plan, dedup_percentage: u8) -> Result<Vec<JobStats>, String> {
    let key = bench_key(plan)?;
    if let (Backend::IoUring, Some(path)) = (plan.args.ioengine, &plan.args.filename) {
        create_file(path, plan.size_bytes)?;
    }
    crate::device::run_jobs(plan, |index, start, counters| {
        let job = Job { plan, index, key: &key, dedup_percentage, counters };
        job.open_and_run(start)
    })
}

/// The master key the bench seals with: from `FILE.bench-key` when the store has one, else
/// new (and saved there, 0600, for io_uring stores).
fn bench_key(plan: &Plan) -> Result<MasterKey, String> {
    let Some(path) =
        plan.args.filename.as_deref().filter(|_| plan.args.ioengine == Backend::IoUring)
    else {
        return MasterKey::generate(1).map_err(|e| e.to_string());
    };
    let key_path = key_path(path);
    let mut bytes = Zeroizing::new([0u8; 32]);
    match fs::File::open(&key_path) {
        Ok(mut file) => {
            file.read_exact(&mut *bytes).map_err(|e| format!("{}: {e}", key_path.display()))?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fill_random(&mut *bytes)?;
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_path)
                .map_err(|e| format!("{}: {e}", key_path.display()))?;
            file.write_all(&*bytes).map_err(|e| format!("{}: {e}", key_path.display()))?;
        }
        Err(e) => return Err(format!("{}: {e}", key_path.display())),
    }
    Ok(MasterKey::from_bytes(1, bytes))
}

fn key_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".bench-key");
    PathBuf::from(name)
}

fn fill_random(bytes: &mut [u8]) -> Result<(), String> {
    let mut urandom = fs::File::open("/dev/urandom").map_err(|e| format!("/dev/urandom: {e}"))?;
    urandom.read_exact(bytes).map_err(|e| format!("/dev/urandom: {e}"))
}

/// Creates a missing store file, every block written with zeros (see `layout`); a shorter
/// one is refused.
pub(crate) fn create_file(path: &Path, size_bytes: u64) -> Result<(), String> {
    match fs::metadata(path) {
        Ok(metadata) if metadata.len() >= size_bytes => Ok(()),
        Ok(metadata) => Err(format!(
            "{} holds {} bytes, less than --size={size_bytes}",
            path.display(),
            metadata.len()
        )),
        Err(_) => crate::layout::create_store(path, size_bytes),
    }
}

struct Job<'a> {
    plan: &'a Plan,
    index: usize,
    key: &'a MasterKey,
    dedup_percentage: u8,
    counters: &'a JobCounters,
}

/// What the job remembers of a chunk operation in flight.
struct InFlight {
    started: Instant,
    chunk_id: ChunkId,
    timed: bool,
}

impl Job<'_> {
    fn open_and_run(&self, start: &Barrier) -> Result<JobStats, String> {
        let region = self.plan.size_bytes / u64::from(self.plan.args.numjobs);
        let offset = region * self.index as u64;
        let options = device_options(self.plan);
        let opened = match self.plan.args.ioengine {
            Backend::Memory => MemoryDevice::volatile(region, &options)
                .map_err(|e| e.to_string())
                .and_then(|device| format_and_open(device, 0, region, true))
                .map(JobShard::Memory),
            _ => {
                let path = self.plan.args.filename.clone().unwrap_or_default();
                let fresh = region_is_blank(&path, offset)?;
                IoUringDevice::open(&path, &options)
                    .map_err(|e| format!("{}: {e}", path.display()))
                    .and_then(|device| format_and_open(device, offset, region, fresh))
                    .map(JobShard::Uring)
            }
        };
        start.wait();
        match opened? {
            JobShard::Memory(shard) => self.run(shard),
            JobShard::Uring(shard) => self.run(shard),
        }
    }

    fn run<D: BlockDevice>(&self, mut shard: Shard<D>) -> Result<JobStats, String> {
        let stats = shard.stats();
        let envelope_bytes = Envelope::sealed_len(self.plan.bs_bytes as usize, 0) as u64;
        let blocks = envelope_bytes.div_ceil(u64::from(BLOCK_SIZE_MIN_BYTES));
        let working_set = (stats.data_bytes_total * WORKING_SET_PERCENT
            / 100
            / (blocks * u64::from(BLOCK_SIZE_MIN_BYTES)))
        .max(1);
        let mut driver = Driver::new(self, working_set);
        if self.plan.read_percent > 0 {
            driver.fill(&mut shard)?;
        }
        // Writes keep at most this many chunks of their own, in the room the store has left
        // below the Warning threshold (a read set from an earlier run may fill half of it).
        let stats = shard.stats();
        let room = (stats.data_bytes_total * WRITE_CEILING_PERCENT / 100)
            .saturating_sub(stats.data_bytes_used);
        driver.write_window =
            (room / (blocks * u64::from(BLOCK_SIZE_MIN_BYTES))).clamp(1, working_set);
        driver.measure(&mut shard)
    }
}

/// A shard's device for `plan`: room for `--iodepth` chunk operations of `--bs` bytes, and
/// the journal and index I/O beside them.
pub(crate) fn device_options(plan: &Plan) -> DeviceOptions {
    let depth = plan.args.iodepth;
    let envelope = Envelope::sealed_len(plan.bs_bytes as usize, 0) as u32;
    DeviceOptions {
        queue_depth: depth * 2 + 8,
        buffer_count: depth + 8,
        buffer_size_bytes: envelope.next_multiple_of(BLOCK_SIZE_MIN_BYTES),
        ..DeviceOptions::default()
    }
}

enum JobShard {
    Memory(Shard<MemoryDevice>),
    Uring(Shard<IoUringDevice>),
}

/// Whether the job's region starts with a zeroed block (a store never formatted).
fn region_is_blank(path: &Path, offset: u64) -> Result<bool, String> {
    store_file::region_is_blank(path, offset).map_err(|e| e.to_string())
}

/// Formats the job's region when `fresh` and opens it as a benchmark store.
pub(crate) fn format_and_open<D: BlockDevice>(
    device: D,
    offset: u64,
    region: u64,
    fresh: bool,
) -> Result<Shard<D>, String> {
    store_file::format_and_open(device, &BENCH_IDS, offset, region, fresh).map_err(|e| {
        format!(
            "the store's region at {offset} is not a benchmark store this build can open \
             ({e}); delete the file or give another --filename"
        )
    })
}

/// The I/O loop of one job over its shard.
struct Driver<'a> {
    job: &'a Job<'a>,
    rng: SplitMix64,
    plaintext: Vec<u8>,
    /// Chunks this job's reads use: the read set, keyed 0..working_set.
    working_set: u64,
    /// The read set's chunk ids, computed once by `fill` so that a measured read does not
    /// hash its chunk again.
    read_ids: Vec<ChunkId>,
    /// Chunks put by this run's writes, oldest first, released to stay within the window.
    written: VecDeque<ChunkId>,
    write_window: u64,
    in_flight: HashMap<Ticket, InFlight>,
    acks: Vec<Ack>,
    /// The last envelope's buffer, sealed into again (the shard copies a put's bytes).
    spare: Vec<u8>,
    next_write_key: u64,
    next_read_key: u64,
}

/// Keys of the read set and of writes live in separate ranges, so writes never release a
/// chunk that reads rely on.
const WRITE_KEY_BASE: u64 = 1 << 62;

impl<'a> Driver<'a> {
    fn new(job: &'a Job<'a>, working_set: u64) -> Driver<'a> {
        let mut rng = SplitMix64::new(job.plan.args.randseed ^ job.index as u64);
        let mut plaintext = vec![0u8; job.plan.bs_bytes as usize];
        rng.fill(&mut plaintext);
        let depth = job.plan.args.iodepth as usize;
        Driver {
            job,
            rng,
            plaintext,
            working_set,
            read_ids: Vec::new(),
            written: VecDeque::with_capacity(working_set.min(1 << 20) as usize),
            write_window: working_set,
            in_flight: HashMap::with_capacity(depth),
            acks: Vec::with_capacity(depth * 2),
            spare: Vec::new(),
            next_write_key: WRITE_KEY_BASE,
            next_read_key: 0,
        }
    }

    /// The plaintext of chunk `key`: the job's random block with the key and job stamped in.
    fn chunk(&mut self, key: u64) -> ChunkId {
        let stamp = (key ^ ((self.job.index as u64) << 48)).to_le_bytes();
        let n = stamp.len().min(self.plaintext.len());
        self.plaintext[..n].copy_from_slice(&stamp[..n]);
        ChunkId::of_plaintext(&self.plaintext)
    }

    fn seal(&mut self, key: u64) -> Result<(ChunkId, Envelope), String> {
        let chunk_id = self.chunk(key);
        let dek = Dek::derive(self.job.key, &chunk_id, None);
        let spare = std::mem::take(&mut self.spare);
        let envelope = Envelope::seal_into(&self.plaintext, &SealParams::new(&dek), spare);
        Ok((chunk_id, envelope.map_err(|e| e.to_string())?))
    }

    /// Puts every chunk of the read set the store lacks.
    fn fill<D: BlockDevice>(&mut self, shard: &mut Shard<D>) -> Result<(), String> {
        self.read_ids = (0..self.working_set).map(|key| self.chunk(key)).collect();
        let missing: Vec<u64> = (0..self.working_set)
            .filter(|&key| !shard.contains(self.read_ids[key as usize].as_bytes()))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let terminal = io::stderr().is_terminal();
        eprintln!(
            "kiseki-bench: job {}: filling the store with {} chunks of {} bytes",
            self.job.index,
            missing.len(),
            self.job.plan.bs_bytes
        );
        let depth = self.job.plan.args.iodepth as usize;
        let mut last = Instant::now();
        for (done, &key) in missing.iter().enumerate() {
            while shard.stats().pending_ops >= depth {
                self.reap(shard)?;
            }
            let (chunk_id, envelope) = self.seal(key)?;
            shard.put(*chunk_id.as_bytes(), envelope.as_bytes()).map_err(|e| e.to_string())?;
            self.spare = envelope.into_bytes();
            if terminal && last.elapsed() > Duration::from_millis(250) {
                last = Instant::now();
                eprint!("\rfilling: {:5.1}%", done as f64 * 100.0 / missing.len() as f64);
            }
        }
        self.settle(shard).map_err(|e| format!("filling the store: {e}"))?;
        if terminal {
            eprint!("\r\x1b[2K");
        }
        Ok(())
    }

    fn measure<D: BlockDevice>(&mut self, shard: &mut Shard<D>) -> Result<JobStats, String> {
        let plan = self.job.plan;
        let depth = plan.args.iodepth as usize;
        let mut stats = JobStats::new(&plan.args.name);
        let mut window = Window::new(plan.ramp, plan.args.runtime, plan.io_limit_bytes);
        let mut issued_bytes = 0u64;
        loop {
            let over = window.turn(Instant::now(), issued_bytes, &mut stats);
            let stopping = over || stats.error.is_some();
            let measuring = window.measuring();
            if stopping && self.in_flight.is_empty() {
                break;
            }
            // At most `depth` issues per turn, so the clock is read between them even when
            // every poll frees a slot.
            for _ in 0..depth {
                if stopping || self.in_flight.len() >= depth {
                    break;
                }
                let read = match plan.read_percent {
                    100 => true,
                    0 => false,
                    percent => self.rng.below(100) < u64::from(percent),
                };
                let issued = if read {
                    self.issue_get(shard, measuring)
                } else {
                    self.issue_put(shard, measuring)
                };
                match issued {
                    Ok(()) => {
                        issued_bytes += u64::from(plan.bs_bytes);
                        // Submits the chunk's data write now, and starts the next journal
                        // group when the last one is durable, instead of after the whole
                        // batch is sealed: sealing a batch takes longer than a flush.
                        shard.poll(&mut self.acks).map_err(|e| e.to_string())?;
                        // Counts what finished at once, so its slot takes the next chunk
                        // instead of waiting for the whole depth to be in flight.
                        self.absorb_acks(&mut stats);
                    }
                    Err(EngineError::Busy { .. }) => break,
                    Err(e) => {
                        stats.error = Some((libc::EIO, e.to_string()));
                        break;
                    }
                }
            }
            let full = stopping || self.in_flight.len() >= depth;
            self.reap_into(shard, full, &mut stats)?;
        }
        self.release_written(shard)?;
        window.finish(Instant::now(), &mut stats);
        Ok(stats)
    }

    fn issue_put<D: BlockDevice>(
        &mut self,
        shard: &mut Shard<D>,
        timed: bool,
    ) -> Result<(), EngineError> {
        let started = Instant::now();
        let dedup =
            !self.written.is_empty() && self.rng.below(100) < u64::from(self.job.dedup_percentage);
        let key = if dedup {
            self.next_write_key - 1 - self.rng.below(self.written.len().min(64) as u64)
        } else {
            self.next_write_key += 1;
            self.next_write_key - 1
        };
        let (chunk_id, ticket) = if dedup {
            // A writer seals before it knows the chunk is stored: the seal is on the path.
            let (chunk_id, envelope) = self
                .seal(key)
                .map_err(|reason| EngineError::Reactor { index: self.job.index, reason })?;
            let ticket = shard.put(*chunk_id.as_bytes(), envelope.as_bytes());
            self.spare = envelope.into_bytes();
            (chunk_id, ticket)
        } else {
            // Sealed straight into the device's write buffer: one copy of the chunk fewer.
            let chunk_id = self.chunk(key);
            let dek = Dek::derive(self.job.key, &chunk_id, None);
            let len = Envelope::sealed_len(self.plaintext.len(), 0);
            let plaintext = &self.plaintext;
            let ticket = shard.put_with(*chunk_id.as_bytes(), len, |window| {
                Envelope::seal_to_slice(plaintext, &SealParams::new(&dek), window).map(drop)
            });
            (chunk_id, ticket)
        };
        self.in_flight.insert(ticket?, InFlight { started, chunk_id, timed });
        self.written.push_back(chunk_id);
        if self.written.len() as u64 > self.write_window {
            let oldest = self.written.pop_front().expect("not empty");
            shard.release(*oldest.as_bytes())?;
        }
        Ok(())
    }

    fn issue_get<D: BlockDevice>(
        &mut self,
        shard: &mut Shard<D>,
        timed: bool,
    ) -> Result<(), EngineError> {
        let started = Instant::now();
        let key = if self.job.plan.args.rw.is_random() {
            self.rng.below(self.working_set)
        } else {
            self.next_read_key = (self.next_read_key + 1) % self.working_set;
            self.next_read_key
        };
        let chunk_id = self.read_ids[key as usize];
        let ticket = shard.get(*chunk_id.as_bytes())?;
        self.in_flight.insert(ticket, InFlight { started, chunk_id, timed });
        Ok(())
    }

    /// One unmeasured turn of the shard (filling, cleaning up): waits for a completion and
    /// fails on the first put or release that failed.
    fn reap<D: BlockDevice>(&mut self, shard: &mut Shard<D>) -> Result<(), String> {
        shard.poll_wait(&mut self.acks).map_err(|e| e.to_string())?;
        self.check_acks()
    }

    /// Runs the shard until nothing is in flight, failing on any put or release that failed.
    fn settle<D: BlockDevice>(&mut self, shard: &mut Shard<D>) -> Result<(), String> {
        shard.run_until_idle(&mut self.acks).map_err(|e| e.to_string())?;
        self.check_acks()
    }

    fn check_acks(&mut self) -> Result<(), String> {
        for ack in self.acks.drain(..) {
            if let Outcome::Put(Err(e)) | Outcome::Release(Err(e)) = ack.outcome {
                return Err(format!("chunk {}: {e}", ChunkId::from_bytes(ack.chunk_id)));
            }
        }
        Ok(())
    }

    /// One measured turn of the shard: waits for a completion when `wait` (every slot in
    /// flight, or stopping), else only polls; then counts what finished.
    fn reap_into<D: BlockDevice>(
        &mut self,
        shard: &mut Shard<D>,
        wait: bool,
        stats: &mut JobStats,
    ) -> Result<(), String> {
        if wait && self.acks.is_empty() {
            shard.poll_wait(&mut self.acks).map_err(|e| e.to_string())?;
        } else {
            shard.poll(&mut self.acks).map_err(|e| e.to_string())?;
        }
        self.absorb_acks(stats);
        Ok(())
    }

    /// Counts and times the acknowledgements gathered so far, opening what reads returned.
    fn absorb_acks(&mut self, stats: &mut JobStats) {
        let bs = self.job.plan.bs_bytes;
        let (mut read_bytes, mut write_bytes, mut ios) = (0, 0, 0);
        let mut acks = std::mem::take(&mut self.acks);
        for ack in acks.drain(..) {
            let Some(op) = self.in_flight.remove(&ack.ticket) else {
                // Releases that keep the store at its window are not timed, but may fail.
                if let Outcome::Release(Err(e)) = ack.outcome {
                    stats.error.get_or_insert((libc::EIO, format!("release: {e}")));
                }
                continue;
            };
            let result = match ack.outcome {
                Outcome::Put(result) => result.map(|()| false).map_err(|e| e.to_string()),
                Outcome::Get(result) => result
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| self.open(op.chunk_id, bytes).map(|()| true)),
                // The bench never replaces.
                Outcome::Release(_) | Outcome::Replace(_) => continue,
            };
            let read = match result {
                Ok(read) => read,
                Err(message) => {
                    stats.error.get_or_insert((libc::EIO, message));
                    continue;
                }
            };
            ios += 1;
            if read {
                read_bytes += u64::from(bs)
            } else {
                write_bytes += u64::from(bs)
            }
            if op.timed {
                let latency_ns = op.started.elapsed().as_nanos() as u64;
                let direction = if read { &mut stats.read } else { &mut stats.write };
                direction.record(bs, latency_ns);
            }
        }
        self.acks = acks;
        self.job.counters.ios.fetch_add(ios, Ordering::Relaxed);
        self.job.counters.read_bytes.fetch_add(read_bytes, Ordering::Relaxed);
        self.job.counters.write_bytes.fetch_add(write_bytes, Ordering::Relaxed);
    }

    /// Parses and opens a chunk read back, and checks it is the chunk asked for.
    fn open(&self, chunk_id: ChunkId, bytes: Vec<u8>) -> Result<(), String> {
        let envelope = Envelope::parse_owned(bytes).map_err(|e| e.to_string())?;
        let dek = Dek::derive(self.job.key, &chunk_id, None);
        let plaintext = envelope.open(&dek).map_err(|e| e.to_string())?;
        if plaintext.len() != self.job.plan.bs_bytes as usize {
            return Err(format!("chunk {chunk_id} opened to {} bytes", plaintext.len()));
        }
        Ok(())
    }

    /// Returns the store to the read set: releases what this run's writes put.
    fn release_written<D: BlockDevice>(&mut self, shard: &mut Shard<D>) -> Result<(), String> {
        while let Some(chunk_id) = self.written.pop_front() {
            loop {
                match shard.release(*chunk_id.as_bytes()) {
                    Ok(_) => break,
                    Err(EngineError::Busy { .. }) => self.reap(shard)?,
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        self.settle(shard)
    }
}
