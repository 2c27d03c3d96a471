//! `kiseki-bench raft`: committed metadata operations per second and their latency, against
//! a Kiseki metadata cluster or, with the same load generator, against etcd.
//!
//! Targets:
//! - `--target kiseki --nodes 1|3` (the default): starts that many metadata nodes in this
//!   process, on 127.0.0.1, each with its own redb files (fsync'd on every append and vote)
//!   in a temporary directory, talking Raft over the fabric's TCP+mTLS with a throwaway CA;
//! - `--target kiseki --connect ADDR,...`: running `kiseki-server metadata` nodes, with the
//!   server-role client identity of `--tls-dir` (`ca.crt`, `client.crt`, `client.key`,
//!   optionally `crl.pem`);
//! - `--target etcd --endpoints http://IP:PORT,...`: an etcd v3 cluster over gRPC; puts go
//!   to the leader (found with the Maintenance Status call), as ours go to our leader.
//!
//! The load: `--concurrency` workers, each with one operation in flight, for `--runtime`
//! after a `--ramp_time`. One operation is one committed write of a `--bs`-byte value under a
//! new key: for Kiseki a `PutObject` whose body is that many sealed inline bytes (keys
//! spread over 16 tenants, each with one bucket), for etcd a `Put`. Latency runs from the
//! call to its committed answer. A failed operation is counted and its first error shown;
//! any failure makes the exit code non-zero.

mod etcd;
mod kiseki;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::device::OutputFormat;
use crate::units::{parse_duration, parse_size};

/// Largest --bs: Kiseki's largest inline object body (sealed bytes); etcd takes far more,
/// but a metadata value is small.
const BS_MAX_BYTES: u64 = 4096;

/// Most workers: each holds one operation in flight; 4,096 is far past what one client
/// machine needs to saturate a group and bounds the memory of the run.
const CONCURRENCY_MAX: u32 = 4096;

/// fio's default latency percentiles.
const PERCENTILES: [f64; 17] = [
    1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95,
    99.99,
];

/// `kiseki-bench raft` flags.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  kiseki-bench raft --nodes 3 --concurrency 64 --runtime 5 \
    --bs 256\n  kiseki-bench raft --connect 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103 \
    --tls-dir ./bench-tls --concurrency 64\n  kiseki-bench raft --target etcd --endpoints \
    http://127.0.0.1:2379,http://127.0.0.1:22379 --concurrency 64")]
pub struct RaftArgs {
    /// What to drive
    #[arg(long, value_enum, default_value_t = Target::Kiseki)]
    pub target: Target,
    /// Metadata nodes to start in this process (1 or 3) when --connect is not given
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
    pub nodes: u8,
    /// Running `kiseki-server metadata` nodes (comma-separated IP:PORT)
    #[arg(long, value_delimiter = ',')]
    pub connect: Vec<SocketAddr>,
    /// With --connect: the directory of ca.crt, client.crt, client.key (and crl.pem)
    #[arg(long = "tls-dir")]
    pub tls_dir: Option<PathBuf>,
    /// Metadata shards of the --connect cluster
    #[arg(long, default_value_t = 1)]
    pub shards: u32,
    /// etcd's client URLs (comma-separated http://IP:PORT, or https:// with --etcd-tls-dir)
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// etcd over TLS with a client certificate: the directory of ca.crt, client.crt and
    /// client.key (the --tls-dir layout), so both sides pay for mutual TLS
    #[arg(long = "etcd-tls-dir")]
    pub etcd_tls_dir: Option<PathBuf>,
    /// Workers, each with one operation in flight
    #[arg(long, default_value_t = 16)]
    pub concurrency: u32,
    /// Measure this long (seconds unless suffixed: 500ms, 2m)
    #[arg(long, value_parser = parse_duration, default_value = "5")]
    pub runtime: Duration,
    /// Run this long before measuring
    #[arg(long = "ramp_time", value_parser = parse_duration, default_value = "1")]
    pub ramp_time: Duration,
    /// Value size of each put (bytes unless suffixed: 1k)
    #[arg(long, value_parser = parse_size, default_value = "256")]
    pub bs: u64,
    /// Where in-process nodes keep their files (a temporary directory under it)
    #[arg(long = "directory")]
    pub directory: Option<PathBuf>,
    /// Output format
    #[arg(long = "output-format", value_enum, default_value_t = OutputFormat::Normal)]
    pub output_format: OutputFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Kiseki,
    Etcd,
}

/// One operation of the load: a put of `value` under a key no other operation uses.
pub trait PutTarget: Send + Sync + 'static {
    fn put(
        &self,
        worker: u32,
        sequence: u64,
        value: &[u8],
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    pub target: String,
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub measured: Duration,
    pub latency_ns: Histogram<u64>,
}

/// Runs the benchmark and prints its report; an error or a failed operation is an `Err`.
pub fn run(args: &RaftArgs) -> Result<(), String> {
    check(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kiseki-bench-raft")
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let outcome = runtime.block_on(async {
        match args.target {
            Target::Etcd => {
                let tls = args.etcd_tls_dir.as_deref().map(etcd::tls_config).transpose()?;
                let mtls = if tls.is_some() { "mTLS" } else { "plaintext" };
                let etcd = etcd::Etcd::connect(&args.endpoints, args.concurrency, tls).await?;
                let target = Arc::new(etcd);
                let name = format!(
                    "etcd ({} endpoint(s), {mtls}, puts at the leader)",
                    args.endpoints.len()
                );
                Ok::<_, String>(drive(target, name, args).await)
            }
            Target::Kiseki => {
                let cluster = kiseki::Cluster::start(args).await?;
                let name = cluster.describe();
                let target = Arc::new(cluster.target(args.concurrency).await?);
                let outcome = drive(target, name, args).await;
                cluster.shutdown().await;
                Ok(outcome)
            }
        }
    })?;
    match args.output_format {
        OutputFormat::Normal => print!("{}", normal(args, &outcome)),
        OutputFormat::Json => println!("{}", json(args, &outcome)),
    }
    match outcome.first_error {
        Some(error) => Err(format!("{} operation(s) failed; the first: {error}", outcome.errors)),
        None => Ok(()),
    }
}

fn check(args: &RaftArgs) -> Result<(), String> {
    if args.bs == 0 || args.bs > BS_MAX_BYTES {
        return Err(format!("--bs={}: from 1 to {BS_MAX_BYTES} bytes", args.bs));
    }
    if args.concurrency == 0 || args.concurrency > CONCURRENCY_MAX {
        return Err(format!("--concurrency={}: from 1 to {CONCURRENCY_MAX}", args.concurrency));
    }
    if args.runtime.is_zero() {
        return Err("--runtime must be more than 0".to_owned());
    }
    match args.target {
        Target::Etcd if args.endpoints.is_empty() => {
            Err("--target etcd needs --endpoints http://IP:PORT,...".to_owned())
        }
        Target::Kiseki if !args.connect.is_empty() && args.tls_dir.is_none() => {
            Err("--connect needs --tls-dir (ca.crt, client.crt, client.key)".to_owned())
        }
        Target::Kiseki if args.nodes == 2 => Err("--nodes: 1 or 3".to_owned()),
        _ => Ok(()),
    }
}

/// Runs `--concurrency` workers against `target` for the ramp and the runtime.
async fn drive<T: PutTarget>(target: Arc<T>, name: String, args: &RaftArgs) -> Outcome {
    let start = Instant::now();
    let measure_from = start + args.ramp_time;
    let end = measure_from + args.runtime;
    let value: Arc<[u8]> = vec![0x5a; args.bs as usize].into();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..args.concurrency {
        let target = target.clone();
        let value = value.clone();
        workers.spawn(async move {
            let mut latency_ns = new_histogram();
            let (mut ops, mut errors, mut first_error) = (0u64, 0u64, None);
            let mut sequence = 0u64;
            loop {
                let issued = Instant::now();
                if issued >= end {
                    break;
                }
                let result = target.put(worker, sequence, &value).await;
                sequence += 1;
                let done = Instant::now();
                if issued < measure_from || done > end {
                    if let Err(error) = result {
                        errors += 1;
                        first_error.get_or_insert(error);
                    }
                    continue;
                }
                match result {
                    Ok(()) => {
                        ops += 1;
                        let ns = u64::try_from((done - issued).as_nanos()).unwrap_or(u64::MAX);
                        latency_ns.saturating_record(ns.max(1));
                    }
                    Err(error) => {
                        errors += 1;
                        first_error.get_or_insert(error);
                    }
                }
            }
            (ops, errors, first_error, latency_ns)
        });
    }
    let mut outcome = Outcome {
        target: name,
        ops: 0,
        errors: 0,
        first_error: None,
        measured: args.runtime,
        latency_ns: new_histogram(),
    };
    while let Some(joined) = workers.join_next().await {
        let Ok((ops, errors, first_error, latency_ns)) = joined else {
            outcome.errors += 1;
            outcome.first_error.get_or_insert_with(|| "a worker panicked".to_owned());
            continue;
        };
        outcome.ops += ops;
        outcome.errors += errors;
        if outcome.first_error.is_none() {
            outcome.first_error = first_error;
        }
        let _ = outcome.latency_ns.add(&latency_ns);
    }
    outcome
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns to 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

impl Outcome {
    pub fn ops_per_second(&self) -> f64 {
        self.ops as f64 / self.measured.as_secs_f64()
    }

    fn percentile_us(&self, percentile: f64) -> f64 {
        self.latency_ns.value_at_quantile(percentile / 100.0) as f64 / 1000.0
    }
}

/// fio's normal report, for one job of writes.
fn normal(args: &RaftArgs, outcome: &Outcome) -> String {
    use std::fmt::Write as _;
    let h = &outcome.latency_ns;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "raft: (g=0): rw=write, bs=(W) {}B, target={}, concurrency={}",
        args.bs, outcome.target, args.concurrency
    );
    let _ = writeln!(
        text,
        "  write: IOPS={:.0}, ops={}, errors={}, runtime={}msec",
        outcome.ops_per_second(),
        outcome.ops,
        outcome.errors,
        outcome.measured.as_millis()
    );
    let us = |ns: f64| ns / 1000.0;
    let _ = writeln!(
        text,
        "    clat (usec): min={:.0}, max={:.0}, avg={:.2}, stdev={:.2}",
        us(h.min() as f64),
        us(h.max() as f64),
        us(h.mean()),
        us(h.stdev())
    );
    let _ = writeln!(text, "    clat percentiles (usec):");
    for row in PERCENTILES.chunks(4) {
        let cells: Vec<String> = row
            .iter()
            .map(|p| format!("{:>6.2}th=[{:>6.0}]", p, outcome.percentile_us(*p)))
            .collect();
        let _ = writeln!(text, "     | {}", cells.join(", "));
    }
    if let Some(error) = &outcome.first_error {
        let _ = writeln!(text, "  errors: {} (first: {error})", outcome.errors);
    }
    text
}

/// fio's JSON shape for one job of writes (`jobs[0].write.iops`,
/// `.clat_ns.percentile["99.000000"]`), with the target named in the job options.
fn json(args: &RaftArgs, outcome: &Outcome) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let h = &outcome.latency_ns;
    let percentiles: serde_json::Map<String, serde_json::Value> = PERCENTILES
        .iter()
        .map(|p| (format!("{p:.6}"), json!(h.value_at_quantile(p / 100.0))))
        .collect();
    let options = json!({
        "name": "raft",
        "rw": "write",
        "bs": args.bs.to_string(),
        "iodepth": "1",
        "numjobs": args.concurrency.to_string(),
        "runtime": args.runtime.as_secs_f64().to_string(),
        "ramp_time": args.ramp_time.as_secs_f64().to_string(),
        "target": outcome.target,
    });
    let report = json!({
        "fio version": crate::report::VERSION,
        "timestamp": now.as_secs(),
        "time": crate::clock::utc_string(now.as_secs()),
        "global options": options,
        "jobs": [{
            "jobname": "raft",
            "groupid": 0,
            "error": u64::from(outcome.errors > 0),
            "job options": options,
            "write": {
                "io_bytes": outcome.ops * args.bs,
                "bw_bytes": (outcome.ops_per_second() * args.bs as f64) as u64,
                "iops": outcome.ops_per_second(),
                "runtime": outcome.measured.as_millis() as u64,
                "total_ios": outcome.ops,
                "errors": outcome.errors,
                "clat_ns": {
                    "min": h.min(),
                    "max": h.max(),
                    "mean": h.mean(),
                    "stddev": h.stdev(),
                    "N": h.len(),
                    "percentile": percentiles,
                },
            },
            "job_runtime": outcome.measured.as_millis() as u64,
        }],
    });
    serde_json::to_string_pretty(&report).expect("a JSON value always serializes")
}
