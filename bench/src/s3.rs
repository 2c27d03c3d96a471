//! `kiseki-bench s3`: PUT and GET throughput and latency against an S3 endpoint (Kiseki's,
//! or a peer's with the same load: `scripts/bench-s3-vs-peer.sh`).
//!
//! The load: `--concurrency` workers, each with its own kept-alive HTTP/1.1 connection and
//! one request in flight, for `--runtime` after a `--ramp_time`. Objects are `--bs` bytes,
//! under `kiseki-bench/<bs>/<index>` in `--bucket` (made if absent), the index drawn at
//! random from `--objects`. `--rw get` and `--rw mixed` first PUT every object of that key
//! space (a progress line on stderr). Every PUT body is new: random bytes with a stamp (run,
//! worker, sequence) every 4 KiB, so a deduplicating store writes each one as a peer
//! without dedup does. A GET must answer 200 with `--bs` bytes.
//!
//! Latency runs from the signing of a request to the last byte of its answer. A failed
//! request (a transport error, a non-2xx answer, a short body) is counted and the first
//! one shown; any failure makes the exit code non-zero. Requests are signed with SigV4
//! ([`client`]).

mod client;
mod report;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hyper::Method;
use hyper::body::Bytes;

use crate::device::OutputFormat;
use crate::stats::DirectionStats;
use crate::units::{parse_duration, parse_size};
use client::{Connection, Secret, Target};

/// Largest --bs: Kiseki's largest single PUT (`S3_OBJECT_MAX_BYTES`, held in memory).
const BS_MAX_BYTES: u64 = 256 << 20;

/// Most workers: Kiseki's S3 front end serves 1,024 connections at once
/// (`S3_CONNECTIONS_MAX`); more would wait in its backlog and measure the queue.
const CONCURRENCY_MAX: u32 = 1024;

/// Most bytes of PUT bodies in flight (--bs x --concurrency): each worker holds a copy.
const IN_FLIGHT_MAX_BYTES: u64 = 4 << 30;

/// Largest key space; a GET run PUTs all of it first.
const OBJECTS_MAX: u64 = 1 << 24;

/// A PUT body carries its stamp every this many bytes, so every chunk of a chunking store
/// (Kiseki's are 1 MiB; any size from 4 KiB up) differs from every other PUT's.
const STAMP_INTERVAL_BYTES: usize = 4096;

/// How often a terminal's populate line is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// A worker whose connection failed waits this long before connecting again, so that a
/// down endpoint gives a count of errors, not a busy loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// A 503 answer (S3's SlowDown: Kiseki's engine queues or buffers are full) is retried
/// after this pause, doubled at each retry up to [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE_MIN: Duration = Duration::from_millis(1);
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(100);

/// Retries of a 503 while populating (not measured; a GET run needs every object).
const POPULATE_RETRIES: u32 = 50;

/// `kiseki-bench s3` flags.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  kiseki-bench s3 --ca ./kiseki-data/tls/ca/ca.crt \
    --access-key KSK... --secret-key ... --rw put --bs 64k --concurrency 16 --runtime 5\n  \
    AWS_ACCESS_KEY_ID=ak AWS_SECRET_ACCESS_KEY=sk kiseki-bench s3 --endpoint \
    http://127.0.0.1:8014 --rw get --bs 4m --objects 32")]
pub struct S3Args {
    /// The S3 endpoint: https://HOST:PORT (trusting only --ca), or http:// for a peer
    #[arg(long, default_value = "https://127.0.0.1:9000")]
    pub endpoint: String,
    /// Access key id
    #[arg(long = "access-key", env = "AWS_ACCESS_KEY_ID")]
    pub access_key: Option<String>,
    /// Secret access key
    #[arg(long = "secret-key", env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub secret_key: Option<Secret>,
    /// The PEM bundle of the CA(s) an https endpoint's certificate must chain to
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The bucket (created if absent)
    #[arg(long, default_value = "kiseki-bench")]
    pub bucket: String,
    /// What each request is
    #[arg(long, value_enum, default_value_t = Rw::Put)]
    pub rw: Rw,
    /// With --rw mixed: the percentage of GETs
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rwmixread: u8,
    /// Object size (bytes unless suffixed: 4k, 64k, 4m)
    #[arg(long, value_parser = parse_size, default_value = "64k")]
    pub bs: u64,
    /// Workers, each with its own connection and one request in flight
    #[arg(long, default_value_t = 16)]
    pub concurrency: u32,
    /// Measure this long (seconds unless suffixed: 500ms, 2m)
    #[arg(long, value_parser = parse_duration, default_value = "5")]
    pub runtime: Duration,
    /// Run this long before measuring
    #[arg(long = "ramp_time", value_parser = parse_duration, default_value = "1")]
    pub ramp_time: Duration,
    /// Retry a request answered 503 (SlowDown) up to this many times, as S3 clients do,
    /// after 1 ms, 2 ms, ... (at most 100 ms); retries are counted and shown, and the
    /// request's latency includes them. 0: a 503 is an error
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// Objects in the key space; GET and mixed runs PUT them all first
    #[arg(long, default_value_t = 256)]
    pub objects: u64,
    /// The region requests are signed for
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Sign each PUT body by its SHA-256 instead of UNSIGNED-PAYLOAD (what the AWS CLI
    /// sends over HTTPS); the server then hashes every body too
    #[arg(long = "sign-payload")]
    pub sign_payload: bool,
    /// Output format
    #[arg(long = "output-format", value_enum, default_value_t = OutputFormat::Normal)]
    pub output_format: OutputFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rw {
    Put,
    Get,
    Mixed,
}

impl Rw {
    fn name(self) -> &'static str {
        match self {
            Rw::Put => "put",
            Rw::Get => "get",
            Rw::Mixed => "mixed",
        }
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    /// GETs.
    pub read: DirectionStats,
    /// PUTs.
    pub write: DirectionStats,
    pub read_errors: u64,
    pub write_errors: u64,
    /// 503 answers retried (in requests that succeeded or failed).
    pub read_retries: u64,
    pub write_retries: u64,
    pub first_error: Option<String>,
    pub measured: Duration,
}

impl Outcome {
    /// Nothing yet, over `measured` (a worker's own share leaves it zero).
    fn empty(measured: Duration) -> Outcome {
        Outcome {
            read: DirectionStats::new(),
            write: DirectionStats::new(),
            read_errors: 0,
            write_errors: 0,
            read_retries: 0,
            write_retries: 0,
            first_error: None,
            measured,
        }
    }

    /// Adds a worker's share (its first error counts if none came before).
    fn merge(&mut self, worker: Outcome) {
        self.read.merge(&worker.read);
        self.write.merge(&worker.write);
        self.read_errors += worker.read_errors;
        self.write_errors += worker.write_errors;
        self.read_retries += worker.read_retries;
        self.write_retries += worker.write_retries;
        if self.first_error.is_none() {
            self.first_error = worker.first_error;
        }
    }

    pub fn errors(&self) -> u64 {
        self.read_errors + self.write_errors
    }
}

/// Runs the benchmark and prints its report; a setup error or a failed request is an `Err`.
pub fn run(args: &S3Args) -> Result<(), String> {
    let plan = plan(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kiseki-bench-s3")
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let outcome = runtime.block_on(async {
        let target = Arc::new(plan.target);
        ensure_bucket(&target, &args.bucket).await?;
        if args.rw != Rw::Put {
            populate(&target, args).await?;
        }
        drive(&target, args).await
    })?;
    match args.output_format {
        OutputFormat::Normal => print!("{}", report::normal(args, &outcome)),
        OutputFormat::Json => println!("{}", report::json(args, &outcome)),
    }
    match &outcome.first_error {
        Some(error) => Err(format!("{} request(s) failed; the first: {error}", outcome.errors())),
        None => Ok(()),
    }
}

/// A checked run.
#[derive(Debug)]
struct Plan {
    target: Target,
}

fn plan(args: &S3Args) -> Result<Plan, String> {
    if args.bs == 0 || args.bs > BS_MAX_BYTES {
        return Err(format!("--bs={}: from 1 byte to {} MiB", args.bs, BS_MAX_BYTES >> 20));
    }
    if args.concurrency == 0 || args.concurrency > CONCURRENCY_MAX {
        return Err(format!("--concurrency={}: from 1 to {CONCURRENCY_MAX}", args.concurrency));
    }
    if args.bs.saturating_mul(u64::from(args.concurrency)) > IN_FLIGHT_MAX_BYTES {
        return Err(format!(
            "--bs x --concurrency: at most {} GiB of bodies in flight",
            IN_FLIGHT_MAX_BYTES >> 30
        ));
    }
    if args.objects == 0 || args.objects > OBJECTS_MAX {
        return Err(format!("--objects={}: from 1 to {OBJECTS_MAX}", args.objects));
    }
    if args.runtime.is_zero() {
        return Err("--runtime must be more than 0".to_owned());
    }
    check_bucket_name(&args.bucket)?;
    let endpoint = client::parse_endpoint(&args.endpoint)?;
    let (Some(access_key), Some(secret)) = (&args.access_key, &args.secret_key) else {
        return Err("needs --access-key and --secret-key (or AWS_ACCESS_KEY_ID and \
                    AWS_SECRET_ACCESS_KEY)"
            .to_owned());
    };
    let target = Target::new(
        &endpoint,
        args.ca.as_deref(),
        access_key,
        secret,
        &args.region,
        args.sign_payload,
    )?;
    Ok(Plan { target })
}

/// S3's bucket-name rules that matter in a path: 3-63 of `a-z 0-9 . -`.
fn check_bucket_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-';
    if !(3..=63).contains(&name.len()) || !name.chars().all(allowed) {
        return Err(format!("--bucket {name:?}: 3 to 63 of a-z, 0-9, '.' and '-'"));
    }
    Ok(())
}

/// Makes the bucket unless it is there (HeadBucket first: some servers answer a second
/// CreateBucket of one's own bucket with an error). A HeadBucket refused otherwise than
/// 404 is followed by a CreateBucket, whose answer says why.
async fn ensure_bucket(target: &Arc<Target>, bucket: &str) -> Result<(), String> {
    let mut connection = target.connect().await?;
    let path = format!("/{bucket}");
    let head = connection.call(Method::HEAD, &path, Bytes::new()).await?;
    if head.status.is_success() {
        return Ok(());
    }
    let create = connection.call(Method::PUT, &path, Bytes::new()).await?;
    if head.status == hyper::StatusCode::NOT_FOUND {
        return create.check(&Method::PUT, &path);
    }
    // A HEAD answer has no body to name its S3 error code; the CreateBucket answer does
    // (SignatureDoesNotMatch, AccessDenied, BucketAlreadyExists, ...).
    let head_error = format!("HEAD {path}: {}", head.status);
    match create.check(&Method::PUT, &path) {
        Ok(()) => Err(head_error),
        Err(create_error) => Err(format!("{head_error}; {create_error}")),
    }
}

fn object_path(args: &S3Args, index: u64) -> String {
    format!("/{}/kiseki-bench/{}/{index:08}", args.bucket, args.bs)
}

/// PUTs every object of the key space, `--concurrency` at a time; the first failure ends
/// it (a GET run without its objects would measure errors).
async fn populate(target: &Arc<Target>, args: &S3Args) -> Result<(), String> {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let bodies = Arc::new(Bodies::new(args.bs as usize));
    let terminal = std::io::stderr().is_terminal();
    let total = args.objects;
    let size = crate::units::binary_size((total * args.bs) as f64);
    eprintln!("populating: {total} object(s) of {} bytes ({size}) in {}", args.bs, args.bucket);
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..args.concurrency.min(u32::try_from(total).unwrap_or(u32::MAX)) {
        let (target, next, done, bodies) =
            (Arc::clone(target), Arc::clone(&next), Arc::clone(&done), Arc::clone(&bodies));
        let args = args.clone();
        workers.spawn(async move {
            let mut connection = target.connect().await?;
            let mut sequence = 0u64;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= args.objects {
                    return Ok::<_, String>(());
                }
                let path = object_path(&args, index);
                let body = bodies.next(worker | 1 << 31, sequence);
                sequence += 1;
                let mut retries = 0;
                call_retrying(
                    &mut connection,
                    Method::PUT,
                    &path,
                    body,
                    POPULATE_RETRIES,
                    &mut retries,
                )
                .await?
                .check(&Method::PUT, &path)?;
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    let result = loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                None => break Ok(()),
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(error))) => break Err(format!("populating: {error}")),
                Some(Err(error)) => break Err(format!("populating: a worker failed: {error}")),
            },
            _ = ticker.tick(), if terminal => {
                eprint!("\rpopulating: {}/{total}\x1b[K", done.load(Ordering::Relaxed));
            }
        }
    };
    if terminal {
        eprint!("\r\x1b[2K");
    }
    result?;
    eprintln!("populated: {total} object(s) in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// One request, sent again after a pause while it is answered 503 and `max_retries` allow;
/// `retries` counts the retries. The last answer is returned, whatever its status.
async fn call_retrying(
    connection: &mut Connection,
    method: Method,
    path: &str,
    body: Bytes,
    max_retries: u32,
    retries: &mut u64,
) -> Result<client::Answer, String> {
    let mut pause = RETRY_PAUSE_MIN;
    for _ in 0..max_retries {
        let answer = connection.call(method.clone(), path, body.clone()).await?;
        if answer.status != hyper::StatusCode::SERVICE_UNAVAILABLE {
            return Ok(answer);
        }
        *retries += 1;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_PAUSE_MAX);
    }
    connection.call(method, path, body).await
}

/// PUT bodies: one random template, copied and stamped for each PUT.
#[derive(Debug)]
struct Bodies {
    template: Vec<u8>,
    run: u64,
}

impl Bodies {
    fn new(size_bytes: usize) -> Bodies {
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        let mut random = XorShift::new(run);
        let mut template = Vec::with_capacity(size_bytes + 8);
        while template.len() < size_bytes {
            template.extend_from_slice(&random.next().to_le_bytes());
        }
        template.truncate(size_bytes);
        Bodies { template, run }
    }

    /// A body no other PUT of any run sends: the template with (run, worker, sequence)
    /// every [`STAMP_INTERVAL_BYTES`].
    fn next(&self, worker: u32, sequence: u64) -> Bytes {
        // The first 8 bytes mix all three, so that a body shorter than the stamp still
        // differs from the others as random bytes would; the other 16 make a body of 24
        // bytes or more unique within the run for certain.
        let mixed =
            XorShift::new(self.run ^ XorShift::new(u64::from(worker) << 40 ^ sequence).next())
                .next();
        let mut stamp = [0u8; 24];
        stamp[..8].copy_from_slice(&mixed.to_le_bytes());
        stamp[8..16].copy_from_slice(&u64::from(worker).to_le_bytes());
        stamp[16..].copy_from_slice(&sequence.to_le_bytes());
        let mut body = self.template.clone();
        for block in body.chunks_mut(STAMP_INTERVAL_BYTES) {
            let n = block.len().min(stamp.len());
            block[..n].copy_from_slice(&stamp[..n]);
        }
        Bytes::from(body)
    }
}

/// xorshift64*: cheap, seeded per worker; good enough to spread keys and fill bodies.
#[derive(Debug)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Runs `--concurrency` workers for the ramp and the runtime. Each connects before the
/// clock starts; a failed first connection fails the run.
async fn drive(target: &Arc<Target>, args: &S3Args) -> Result<Outcome, String> {
    let mut connections = Vec::with_capacity(args.concurrency as usize);
    for _ in 0..args.concurrency {
        connections.push(target.connect().await?);
    }
    let bodies = Arc::new(Bodies::new(args.bs as usize));
    let start = Instant::now();
    let measure_from = start + args.ramp_time;
    let end = measure_from + args.runtime;
    let mut workers = tokio::task::JoinSet::new();
    for (worker, connection) in (0u32..).zip(connections) {
        let worker_run = WorkerRun {
            target: Arc::clone(target),
            bodies: Arc::clone(&bodies),
            args: args.clone(),
            worker,
            measure_from,
            end,
        };
        workers.spawn(worker_run.run(connection));
    }
    let mut outcome = Outcome::empty(args.runtime);
    while let Some(joined) = workers.join_next().await {
        let Ok(worker) = joined else {
            outcome.write_errors += 1;
            outcome.first_error.get_or_insert_with(|| "a worker panicked".to_owned());
            continue;
        };
        outcome.merge(worker);
    }
    Ok(outcome)
}

/// One worker's share of a run.
struct WorkerRun {
    target: Arc<Target>,
    bodies: Arc<Bodies>,
    args: S3Args,
    worker: u32,
    measure_from: Instant,
    end: Instant,
}

impl WorkerRun {
    async fn run(self, connection: Connection) -> Outcome {
        let args = &self.args;
        let mut random = XorShift::new(u64::from(self.worker) + 1);
        let mut connection = Some(connection);
        let mut outcome = Outcome::empty(Duration::ZERO);
        let mut sequence = 0u64;
        loop {
            if Instant::now() >= self.end {
                break;
            }
            let get = match args.rw {
                Rw::Put => false,
                Rw::Get => true,
                Rw::Mixed => random.next() % 100 < u64::from(args.rwmixread),
            };
            let path = object_path(args, random.next() % args.objects);
            let body = if get { Bytes::new() } else { self.bodies.next(self.worker, sequence) };
            sequence += 1;
            let issued = Instant::now();
            let retries = if get { &mut outcome.read_retries } else { &mut outcome.write_retries };
            let result = self.request(&mut connection, get, &path, body, retries).await;
            let done = Instant::now();
            let counted = issued >= self.measure_from && done <= self.end;
            match result {
                Ok(()) if !counted => {}
                Ok(()) => {
                    let direction = if get { &mut outcome.read } else { &mut outcome.write };
                    let ns = u64::try_from((done - issued).as_nanos()).unwrap_or(u64::MAX);
                    direction.record(args.bs as u32, ns);
                }
                Err(error) => {
                    if get {
                        outcome.read_errors += 1;
                    } else {
                        outcome.write_errors += 1;
                    }
                    outcome.first_error.get_or_insert(error);
                }
            }
        }
        outcome
    }

    /// One request on the worker's connection (made again if the last one failed).
    async fn request(
        &self,
        connection: &mut Option<Connection>,
        get: bool,
        path: &str,
        body: Bytes,
        retries: &mut u64,
    ) -> Result<(), String> {
        if connection.as_ref().is_none_or(Connection::is_closed) {
            *connection = None;
            match self.target.connect().await {
                Ok(made) => *connection = Some(made),
                Err(error) => {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    return Err(error);
                }
            }
        }
        let Some(open) = connection.as_mut() else {
            unreachable!("a connection was just made");
        };
        let method = if get { Method::GET } else { Method::PUT };
        let called = call_retrying(open, method.clone(), path, body, self.args.retries, retries);
        let answer = match called.await {
            Ok(answer) => answer,
            Err(error) => {
                *connection = None;
                return Err(error);
            }
        };
        answer.check(&method, path)?;
        if get && answer.body_bytes != self.args.bs {
            return Err(format!("GET {path}: {} bytes, not {}", answer.body_bytes, self.args.bs));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: S3Args,
    }

    fn parse(line: &[&str]) -> Result<S3Args, String> {
        let argv = std::iter::once("s3").chain(line.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_units() {
        let args = parse(&["--access-key=ak", "--secret-key=sk"]).unwrap();
        assert_eq!(args.endpoint, "https://127.0.0.1:9000");
        assert_eq!((args.rw, args.bs, args.concurrency), (Rw::Put, 64 << 10, 16));
        assert_eq!(args.runtime, Duration::from_secs(5));
        let args = parse(&[
            "--access-key=ak",
            "--secret-key=sk",
            "--rw=mixed",
            "--bs=4m",
            "--runtime=500ms",
            "--objects=32",
            "--output-format=json",
        ])
        .unwrap();
        assert_eq!((args.rw, args.bs, args.objects), (Rw::Mixed, 4 << 20, 32));
        assert_eq!(args.runtime, Duration::from_millis(500));
        assert_eq!(args.output_format, OutputFormat::Json);
        assert!(parse(&["--bs=4x"]).unwrap_err().contains("suffix"));
        assert!(parse(&["--rw=delete"]).is_err());
        assert!(parse(&["--rwmixread=101"]).is_err());
    }

    #[test]
    fn plans_refuse_what_cannot_work() {
        let with = |extra: &[&str]| {
            let mut line = vec!["--access-key=ak", "--secret-key=sk"];
            if !extra.iter().any(|flag| flag.starts_with("--endpoint")) {
                line.push("--endpoint=http://127.0.0.1:1");
            }
            line.extend_from_slice(extra);
            plan(&parse(&line).unwrap())
        };
        assert!(with(&[]).is_ok());
        for (extra, says) in [
            (&["--bs=0"][..], "--bs=0"),
            (&["--bs=257m"][..], "256 MiB"),
            (&["--concurrency=0"][..], "--concurrency=0"),
            (&["--concurrency=1025"][..], "--concurrency=1025"),
            (&["--bs=8m", "--concurrency=1024"][..], "in flight"),
            (&["--objects=0"][..], "--objects=0"),
            (&["--runtime=0"][..], "--runtime"),
            (&["--bucket=No_Such"][..], "--bucket"),
            (&["--bucket=ab"][..], "--bucket"),
            (&["--endpoint=127.0.0.1:9000"][..], "scheme"),
            (&["--endpoint=https://127.0.0.1:9000"][..], "needs --ca"),
        ] {
            let error = with(extra).unwrap_err();
            assert!(error.contains(says), "{extra:?}: {error}");
        }
        let no_keys = parse(&["--endpoint=http://127.0.0.1:1"]).unwrap();
        if no_keys.access_key.is_none() {
            // (Unless the environment running the tests holds AWS keys.)
            assert!(plan(&no_keys).unwrap_err().contains("--access-key"));
        }
    }

    #[test]
    fn every_body_differs_in_every_block() {
        let bodies = Bodies::new(3 * STAMP_INTERVAL_BYTES + 100);
        let a = bodies.next(0, 0);
        let b = bodies.next(0, 1);
        let c = bodies.next(1, 0);
        assert_eq!(a.len(), 3 * STAMP_INTERVAL_BYTES + 100);
        for (x, y) in [(&a, &b), (&a, &c), (&b, &c)] {
            for (block_x, block_y) in
                x.chunks(STAMP_INTERVAL_BYTES).zip(y.chunks(STAMP_INTERVAL_BYTES))
            {
                assert_ne!(block_x, block_y);
            }
        }
        // Outside the stamps, the bytes are the template's, and not all alike.
        assert_eq!(a[24..STAMP_INTERVAL_BYTES], b[24..STAMP_INTERVAL_BYTES]);
        assert!(a[24..].iter().any(|&byte| byte != a[24]));
        // A body shorter than a stamp still gets what fits.
        let tiny = Bodies::new(5);
        assert_ne!(tiny.next(0, 0), tiny.next(0, 1));
        assert_ne!(tiny.next(0, 0), tiny.next(1, 0));
    }

    #[test]
    fn keys_stay_in_the_key_space_and_name_the_size() {
        let args = parse(&["--bs=4k", "--objects=3", "--bucket=bench"]).unwrap();
        assert_eq!(object_path(&args, 2), "/bench/kiseki-bench/4096/00000002");
        let mut random = XorShift::new(1);
        let mut seen = [false; 3];
        for _ in 0..100 {
            seen[(random.next() % args.objects) as usize] = true;
        }
        assert_eq!(seen, [true; 3]);
    }
}
