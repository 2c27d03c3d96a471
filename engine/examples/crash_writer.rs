//! The writer that `scripts/crash-test.sh` kills: puts chunks into a shard on an io_uring
//! device file until SIGKILL, logging every acknowledged put to an ack log; in verify mode it
//! reopens the device (recovery) and checks every acknowledged chunk.
//!
//! ```text
//! crash_writer format --device PATH --size-mib N
//! crash_writer write  --device PATH --ack-log PATH --seed N [--max-seconds N]
//! crash_writer verify --device PATH --ack-log PATH
//! ```
//!
//! Chunks are deterministic: a chunk's id holds its key and length, and its bytes are a
//! seeded stream of both, so the verifier recomputes every chunk from its id alone.
//!
//! The ack log has one line per event, each written with one `write` call:
//! - `put <key> <len>` after the put's ack, so a logged put is a durable one (the engine
//!   acknowledges only what is durable); a durable put the writer died before logging is
//!   fine, it is simply not required;
//! - `release <key> <len>` before the release is issued (an intent), so every durable
//!   release is logged.
//!
//! So for each chunk, logged puts minus logged releases is a lower bound of its durable
//! reference count, and the verifier checks it. The log is not fsynced: the test kills the
//! process, not the machine, and a completed `write` survives the process in the page cache.
//!
//! The writer keeps the device from filling: it releases the chunks it found at start-up
//! (oldest first) while the data area is past half full, and it never releases or dedups
//! onto a chunk acknowledged before this run, so every put acknowledged in a run is
//! verified by the verify that follows it. Writer runs are bounded by `--max-seconds`.
//!
//! Exit status: 0 ok; 1 a lost or corrupt chunk (verify); 2 a usage, device or engine error.

#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions as FileOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kiseki_devices::rng::SplitMix64;
use kiseki_devices::{BlockDevice, IoUringDevice, OpenOptions as DeviceOptions};
use kiseki_engine::{
    Ack, ChunkId, DeviceIds, EngineError, FormatOptions, OpenOptions, Outcome, Shard, Ticket,
};

/// Pool buffer size, and so the largest chunk: 24 buffers of 256 KiB register 6 MiB, inside
/// the default 8 MiB locked-memory limit.
const BUFFER_SIZE_BYTES: u32 = 256 << 10;
const BUFFER_COUNT: u32 = 24;
const QUEUE_DEPTH: u32 = 64;

/// Puts in flight at once: enough for group commits of several records, fewer than the
/// buffers so that reads and the journal always find one.
const PUTS_IN_FLIGHT_MAX: usize = 16;

/// The writer releases start-up chunks while the data area is at least this full, and stops
/// putting at the second value (well below the engine's Critical threshold of 85 %).
const RELEASE_FROM_PERCENT: u8 = 50;
const PUT_UNTIL_PERCENT: u8 = 75;

/// One in this many puts is a duplicate of a chunk acknowledged earlier in the run (dedup).
const DEDUP_ONE_IN: u64 = 8;

/// Bytes 16..24 of every chunk id the writer makes; anything else in the shard is foreign.
const ID_MARKER: &[u8; 8] = b"crashwr!";

const IDS: DeviceIds =
    DeviceIds { cluster_id: [0xC7; 16], node_id: [0x17; 16], device_id: [0xD7; 16] };

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("format") => Args::parse(&args[1..]).and_then(|a| format(&a)),
        Some("write") => Args::parse(&args[1..]).and_then(|a| write(&a)),
        Some("verify") => Args::parse(&args[1..]).and_then(|a| verify(&a)),
        _ => Err(Failure::Usage(USAGE.to_owned())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Lost(count)) => {
            eprintln!("crash_writer verify: {count} acknowledged chunks lost or corrupt");
            ExitCode::from(1)
        }
        Err(Failure::Usage(message) | Failure::Setup(message)) => {
            eprintln!("crash_writer: {message}");
            ExitCode::from(2)
        }
    }
}

const USAGE: &str = "usage: crash_writer format --device PATH --size-mib N\n       \
    crash_writer write --device PATH --ack-log PATH --seed N [--max-seconds N]\n       \
    crash_writer verify --device PATH --ack-log PATH";

#[derive(Debug)]
enum Failure {
    Usage(String),
    Setup(String),
    Lost(usize),
}

fn setup(context: &str) -> impl FnOnce(EngineError) -> Failure + '_ {
    move |error| Failure::Setup(format!("{context}: {error}"))
}

#[derive(Debug, Default)]
struct Args {
    device: Option<PathBuf>,
    ack_log: Option<PathBuf>,
    seed: u64,
    size_mib: u64,
    max_seconds: u64,
}

impl Args {
    fn parse(args: &[String]) -> Result<Args, Failure> {
        let mut parsed = Args { max_seconds: 10, size_mib: 64, ..Args::default() };
        for pair in args.chunks(2) {
            let [flag, value] = pair else {
                return Err(Failure::Usage(format!("{} needs a value\n{USAGE}", pair[0])));
            };
            let number = || {
                value.parse::<u64>().map_err(|_| Failure::Usage(format!("{flag}: not a number")))
            };
            match flag.as_str() {
                "--device" => parsed.device = Some(PathBuf::from(value)),
                "--ack-log" => parsed.ack_log = Some(PathBuf::from(value)),
                "--seed" => parsed.seed = number()?,
                "--size-mib" => parsed.size_mib = number()?,
                "--max-seconds" => parsed.max_seconds = number()?,
                other => return Err(Failure::Usage(format!("unknown flag {other}\n{USAGE}"))),
            }
        }
        Ok(parsed)
    }

    fn device(&self) -> Result<&Path, Failure> {
        self.device.as_deref().ok_or_else(|| Failure::Usage(format!("--device\n{USAGE}")))
    }

    fn ack_log(&self) -> Result<&Path, Failure> {
        self.ack_log.as_deref().ok_or_else(|| Failure::Usage(format!("--ack-log\n{USAGE}")))
    }
}

// ---------------------------------------------------------------------------------------
// format, write, verify
// ---------------------------------------------------------------------------------------

fn format(args: &Args) -> Result<(), Failure> {
    let size_bytes = args.size_mib << 20;
    let mut device = open_device(args.device()?, Some(size_bytes))?;
    let options = FormatOptions { ids: IDS, region_offset_bytes: 0, region_size_bytes: None };
    Shard::format(&mut device, &options).map_err(setup("format"))?;
    let shard = Shard::open(device, &OpenOptions::default()).map_err(setup("open"))?;
    let stats = shard.stats();
    println!(
        "crash_writer format: {} MiB device, {} MiB data area, largest chunk {} KiB",
        args.size_mib,
        stats.data_bytes_total >> 20,
        stats.max_chunk_bytes >> 10
    );
    Ok(())
}

/// Puts, dedups and releases until killed (or `--max-seconds` pass).
fn write(args: &Args) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let device = open_device(args.device()?, None)?;
    let shard = Shard::open(device, &OpenOptions::default()).map_err(setup("open (recovery)"))?;
    let (log, parsed) = AckLog::open_for_append(args.ack_log()?)?;
    let mut writer = Writer::new(shard, log, &parsed, args.seed);
    while Instant::now() < deadline {
        writer.turn()?;
    }
    writer.finish()
}

/// Recovers the shard and checks it against the ack log: every chunk the log says is
/// durable is there with at least its logged reference count, and every stored chunk (logged
/// or not) reads back intact, so no half-written chunk appears.
fn verify(args: &Args) -> Result<(), Failure> {
    let device = open_device(args.device()?, None)?;
    let mut shard =
        Shard::open(device, &OpenOptions::default()).map_err(setup("open (recovery)"))?;
    shard.check_consistency().map_err(|e| Failure::Setup(format!("inconsistent shard: {e}")))?;
    let log = AckLog::read(args.ack_log()?)?;
    let mut lost = 0;
    let mut live = 0;
    for (id, &logged_refs) in log.refs.iter().filter(|(_, refs)| **refs > 0) {
        live += 1;
        let refs = shard.refcount(id).unwrap_or(0);
        if i64::from(refs) < logged_refs {
            let (key, len) = decode_id(id).expect("the log holds only writer ids");
            eprintln!("LOST: chunk key {key} len {len}: refcount {refs}, {logged_refs} logged");
            lost += 1;
        }
    }
    let stored: Vec<ChunkId> = shard.chunks().map(|(id, _)| id).collect();
    lost += read_back(&mut shard, &stored)?;
    if lost > 0 {
        return Err(Failure::Lost(lost));
    }
    println!(
        "crash_writer verify: put_acks={} live_acked={live} stored={} lost=0",
        log.put_acks,
        stored.len()
    );
    Ok(())
}

/// Reads every chunk in `ids` (pipelined) and counts those that do not hold their bytes.
fn read_back(shard: &mut Shard<IoUringDevice>, ids: &[ChunkId]) -> Result<usize, Failure> {
    let mut bad = 0;
    let mut next = 0;
    let mut tickets: HashMap<Ticket, ChunkId> = HashMap::new();
    let mut acks = Vec::new();
    while next < ids.len() || !tickets.is_empty() {
        while let Some(&id) = ids.get(next) {
            match shard.get(id) {
                Ok(ticket) => tickets.insert(ticket, id),
                Err(EngineError::Busy { .. }) => break,
                Err(error) => return Err(Failure::Setup(format!("get: {error}"))),
            };
            next += 1;
        }
        acks.clear();
        poll(shard, &mut acks)?;
        for ack in acks.drain(..) {
            let id = tickets.remove(&ack.ticket).expect("a get's ack");
            if !chunk_reads_back(id, ack.outcome) {
                bad += 1;
            }
        }
    }
    Ok(bad)
}

fn chunk_reads_back(id: ChunkId, outcome: Outcome) -> bool {
    let Some((key, len)) = decode_id(&id) else {
        eprintln!("CORRUPT: a stored chunk id the writer never makes: {id:02x?}");
        return false;
    };
    match outcome {
        Outcome::Get(Ok(bytes)) if bytes == chunk_bytes(key, len) => true,
        Outcome::Get(Ok(_)) => {
            eprintln!("CORRUPT: chunk key {key} len {len} reads back other bytes");
            false
        }
        Outcome::Get(Err(error)) => {
            eprintln!("CORRUPT: chunk key {key} len {len}: {error}");
            false
        }
        other => panic!("a get acknowledged as {other:?}"),
    }
}

fn open_device(path: &Path, create_bytes: Option<u64>) -> Result<IoUringDevice, Failure> {
    let options = DeviceOptions {
        create: create_bytes.is_some(),
        size_bytes: create_bytes,
        queue_depth: QUEUE_DEPTH,
        buffer_count: BUFFER_COUNT,
        buffer_size_bytes: BUFFER_SIZE_BYTES,
        ..DeviceOptions::default()
    };
    IoUringDevice::open(path, &options)
        .map_err(|e| Failure::Setup(format!("opening {}: {e}", path.display())))
}

/// One poll: waits for a completion when anything is in flight.
fn poll(shard: &mut Shard<IoUringDevice>, acks: &mut Vec<Ack>) -> Result<usize, Failure> {
    let result =
        if shard.device().in_flight() > 0 { shard.poll_wait(acks) } else { shard.poll(acks) };
    result.map_err(setup("poll"))
}

// ---------------------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Writer {
    shard: Shard<IoUringDevice>,
    log: AckLog,
    rng: SplitMix64,
    next_key: u64,
    /// Chunks stored before this run, oldest first: the only ones released.
    startup: VecDeque<ChunkId>,
    /// Chunks whose put was acknowledged in this run: the only ones deduplicated onto.
    acked: Vec<ChunkId>,
    puts: HashMap<Ticket, ChunkId>,
    releases_in_flight: usize,
    acks: Vec<Ack>,
}

impl Writer {
    fn new(shard: Shard<IoUringDevice>, log: AckLog, parsed: &ParsedLog, seed: u64) -> Writer {
        let mut startup: Vec<(u64, ChunkId)> =
            shard.chunks().filter_map(|(id, _)| decode_id(&id).map(|(key, _)| (key, id))).collect();
        startup.sort_unstable();
        // A key is never reused once it reached the log or the device, so a released chunk's
        // id never comes back and the log's counts stay lower bounds.
        let stored_max = startup.last().map(|&(key, _)| key);
        let next_key = stored_max.max(parsed.max_key).map_or(0, |key| key + 1);
        Writer {
            shard,
            log,
            rng: SplitMix64::new(seed),
            next_key,
            startup: startup.into_iter().map(|(_, id)| id).collect(),
            acked: Vec::new(),
            puts: HashMap::new(),
            releases_in_flight: 0,
            acks: Vec::new(),
        }
    }

    fn turn(&mut self) -> Result<(), Failure> {
        self.release_if_full()?;
        let queued = self.queue_puts()?;
        if queued == 0 && self.puts.is_empty() && self.releases_in_flight == 0 {
            // Full, with nothing left to release: wait for the kill.
            std::thread::sleep(Duration::from_millis(5));
        }
        self.acks.clear();
        poll(&mut self.shard, &mut self.acks)?;
        let acks = std::mem::take(&mut self.acks);
        for ack in &acks {
            self.handle(ack)?;
        }
        self.acks = acks;
        Ok(())
    }

    fn finish(mut self) -> Result<(), Failure> {
        self.acks.clear();
        self.shard.run_until_idle(&mut self.acks).map_err(setup("run_until_idle"))?;
        let acks = std::mem::take(&mut self.acks);
        acks.iter().try_for_each(|ack| self.handle(ack))
    }

    /// Releases every reference of the oldest start-up chunk, one chunk at a time, while
    /// the data area is past `RELEASE_FROM_PERCENT`. Each release is logged before it is
    /// issued.
    fn release_if_full(&mut self) -> Result<(), Failure> {
        if self.releases_in_flight > 0 || self.shard.stats().fill_percent < RELEASE_FROM_PERCENT {
            return Ok(());
        }
        let Some(id) = self.startup.pop_front() else { return Ok(()) };
        let refs = self.shard.refcount(&id).expect("start-up chunks stay until released here");
        let (key, len) = decode_id(&id).expect("start-up chunks are the writer's");
        for _ in 0..refs {
            self.log.append(&format!("release {key} {len}\n"))?;
            self.shard.release(id).map_err(setup("release"))?;
            self.releases_in_flight += 1;
        }
        Ok(())
    }

    /// Queues puts up to `PUTS_IN_FLIGHT_MAX` while the data area has room. Returns how many.
    fn queue_puts(&mut self) -> Result<usize, Failure> {
        let mut queued = 0;
        while self.puts.len() < PUTS_IN_FLIGHT_MAX
            && self.shard.stats().fill_percent < PUT_UNTIL_PERCENT
        {
            let (id, bytes) = self.next_chunk();
            match self.shard.put(id, &bytes) {
                Ok(ticket) => {
                    self.puts.insert(ticket, id);
                    queued += 1;
                }
                Err(EngineError::Busy { .. } | EngineError::NoSpace { .. }) => break,
                Err(error) => return Err(Failure::Setup(format!("put: {error}"))),
            }
        }
        Ok(queued)
    }

    /// A duplicate of a chunk acknowledged in this run, or a new chunk: half of them small
    /// (up to 16 KiB, packing-sized), half up to the largest the shard stores.
    fn next_chunk(&mut self) -> (ChunkId, Vec<u8>) {
        if !self.acked.is_empty() && self.rng.chance(1, DEDUP_ONE_IN) {
            let id = self.acked[self.rng.below(self.acked.len() as u64) as usize];
            let (key, len) = decode_id(&id).expect("a writer id");
            return (id, chunk_bytes(key, len));
        }
        let key = self.next_key;
        self.next_key += 1;
        let max = if self.rng.chance(1, 2) { 16 << 10 } else { BUFFER_SIZE_BYTES };
        let len = 1 + self.rng.below(u64::from(max)) as u32;
        (chunk_id(key, len), chunk_bytes(key, len))
    }

    fn handle(&mut self, ack: &Ack) -> Result<(), Failure> {
        match &ack.outcome {
            Outcome::Put(Ok(())) => {
                let id = self.puts.remove(&ack.ticket).expect("a put's ack");
                let (key, len) = decode_id(&id).expect("a writer id");
                self.log.append(&format!("put {key} {len}\n"))?;
                self.acked.push(id);
            }
            Outcome::Release(Ok(())) => self.releases_in_flight -= 1,
            other => return Err(Failure::Setup(format!("unexpected ack {other:?}"))),
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Chunks and the ack log
// ---------------------------------------------------------------------------------------

/// Bytes 0..8 the key, 8..12 the length (both little-endian), 16..24 the marker, 24..32 a
/// check of both, so that no stray bytes decode as an id.
fn chunk_id(key: u64, len: u32) -> ChunkId {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&key.to_le_bytes());
    id[8..12].copy_from_slice(&len.to_le_bytes());
    id[16..24].copy_from_slice(ID_MARKER);
    id[24..].copy_from_slice(&id_check(key, len).to_le_bytes());
    id
}

fn decode_id(id: &ChunkId) -> Option<(u64, u32)> {
    let key = u64::from_le_bytes(id[..8].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(id[8..12].try_into().expect("4 bytes"));
    (*id == chunk_id(key, len)).then_some((key, len))
}

fn id_check(key: u64, len: u32) -> u64 {
    SplitMix64::new(key.rotate_left(17) ^ u64::from(len)).next_u64()
}

fn chunk_bytes(key: u64, len: u32) -> Vec<u8> {
    let mut bytes = vec![0u8; len as usize];
    SplitMix64::new(key ^ u64::from(len).rotate_left(40)).fill(&mut bytes);
    bytes
}

/// The ack log, open for appending; one `write` per line.
#[derive(Debug)]
struct AckLog {
    file: File,
}

/// What the log says: per chunk, logged puts minus logged releases (a lower bound of its
/// durable reference count); the number of put lines; the largest key named.
#[derive(Debug, Default)]
struct ParsedLog {
    refs: HashMap<ChunkId, i64>,
    put_acks: u64,
    max_key: Option<u64>,
}

impl AckLog {
    /// Opens (or creates) the log, first cutting a line a killed writer left half-written
    /// (a `write` of a few bytes to a file is not torn by SIGKILL, but nothing is assumed).
    fn open_for_append(path: &Path) -> Result<(AckLog, ParsedLog), Failure> {
        let parsed = AckLog::read(path)?;
        let file = FileOptions::new().create(true).append(true).open(path);
        let file = file.map_err(|e| Failure::Setup(format!("{}: {e}", path.display())))?;
        let text = std::fs::read(path).map_err(|e| Failure::Setup(format!("{e}")))?;
        let whole_lines = text.iter().rposition(|&b| b == b'\n').map_or(0, |at| at + 1);
        file.set_len(whole_lines as u64).map_err(|e| Failure::Setup(format!("{e}")))?;
        Ok((AckLog { file }, parsed))
    }

    fn append(&mut self, line: &str) -> Result<(), Failure> {
        self.file.write_all(line.as_bytes()).map_err(|e| Failure::Setup(format!("ack log: {e}")))
    }

    /// Parses the log's complete lines; a missing log is an empty one.
    fn read(path: &Path) -> Result<ParsedLog, Failure> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Failure::Setup(format!("{}: {e}", path.display()))),
        };
        let mut parsed = ParsedLog::default();
        let complete = &text[..text.rfind('\n').map_or(0, |at| at + 1)];
        for line in complete.lines() {
            let bad = || Failure::Setup(format!("ack log: bad line {line:?}"));
            let mut words = line.split(' ');
            let (Some(event), Some(key), Some(len), None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                return Err(bad());
            };
            let key: u64 = key.parse().map_err(|_| bad())?;
            let len: u32 = len.parse().map_err(|_| bad())?;
            let refs = parsed.refs.entry(chunk_id(key, len)).or_insert(0);
            match event {
                "put" => {
                    *refs += 1;
                    parsed.put_acks += 1;
                }
                "release" => *refs -= 1,
                _ => return Err(bad()),
            }
            parsed.max_key = parsed.max_key.max(Some(key));
        }
        Ok(parsed)
    }
}
