//! Results in fio's shapes: the normal text report and the JSON that fio's parsers read
//! (`jobs[].read.iops`, `.bw_bytes`, `.clat_ns.percentile["99.000000"]`, `usr_cpu`, ...).

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

use crate::device::Plan;
use crate::stats::{DirectionStats, JobStats};
use crate::units::{binary_size, count, decimal_size};

/// fio's default completion-latency percentiles.
const PERCENTILES: [f64; 17] = [
    1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95,
    99.99,
];

pub const VERSION: &str = concat!("kiseki-bench-", env!("CARGO_PKG_VERSION"));

pub fn json(plan: &Plan, jobs: &[JobStats]) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let report = json!({
        "fio version": VERSION,
        "timestamp": now.as_secs(),
        "timestamp_ms": now.as_millis() as u64,
        "time": crate::clock::utc_string(now.as_secs()),
        "global options": job_options(plan),
        "jobs": jobs.iter().map(|job| job_json(plan, job)).collect::<Vec<_>>(),
        "disk_util": [],
    });
    serde_json::to_string_pretty(&report).expect("a JSON value always serializes")
}

fn job_options(plan: &Plan) -> Value {
    let args = &plan.args;
    let mut options = Map::new();
    let mut put = |key: &str, value: String| options.insert(key.to_owned(), Value::String(value));
    put("name", args.name.clone());
    if let Some(filename) = &args.filename {
        put("filename", filename.display().to_string());
    }
    put("size", plan.size_bytes.to_string());
    put("rw", args.rw.fio_name().to_owned());
    put("rwmixread", args.rwmixread.to_string());
    put("bs", plan.bs_bytes.to_string());
    put("iodepth", args.iodepth.to_string());
    put("numjobs", args.numjobs.to_string());
    put("ioengine", args.ioengine.fio_name().to_owned());
    put("direct", "1".to_owned());
    if let Some(runtime) = args.runtime {
        put("runtime", runtime.as_secs_f64().to_string());
    }
    if args.time_based {
        put("time_based", "1".to_owned());
    }
    put("ramp_time", plan.ramp.as_secs_f64().to_string());
    for (key, value) in &plan.extra_options {
        put(key, value.clone());
    }
    Value::Object(options)
}

fn job_json(plan: &Plan, job: &JobStats) -> Value {
    let (usr, sys) = job.cpu_percent();
    let runtime_ms = job.runtime.as_millis() as u64;
    json!({
        "jobname": job.name,
        "groupid": 0,
        "error": job.error.as_ref().map_or(0, |(errno, _)| *errno),
        "job options": job_options(plan),
        "read": direction_json(&job.read, job),
        "write": direction_json(&job.write, job),
        "trim": direction_json(&DirectionStats::new(), job),
        "job_runtime": runtime_ms,
        "usr_cpu": usr,
        "sys_cpu": sys,
        "ctx": job.usage.context_switches,
        "majf": job.usage.major_faults,
        "minf": job.usage.minor_faults,
    })
}

pub fn direction_json(direction: &DirectionStats, job: &JobStats) -> Value {
    let seconds = job.runtime.as_secs_f64();
    let rate = |value: u64| if seconds > 0.0 { value as f64 / seconds } else { 0.0 };
    let bw_bytes = rate(direction.io_bytes);
    let latency = latency_json(&direction.latency_ns, direction.ios);
    let mut clat = latency.clone();
    if direction.ios > 0 {
        let percentiles: Map<String, Value> = PERCENTILES
            .iter()
            .map(|p| (format!("{p:.6}"), json!(direction.latency_ns.value_at_quantile(p / 100.0))))
            .collect();
        clat["percentile"] = Value::Object(percentiles);
    }
    json!({
        "io_bytes": direction.io_bytes,
        "io_kbytes": direction.io_bytes / 1024,
        "bw_bytes": bw_bytes as u64,
        "bw": (bw_bytes / 1024.0) as u64,
        "iops": rate(direction.ios),
        "runtime": if direction.ios > 0 { job.runtime.as_millis() as u64 } else { 0 },
        "total_ios": direction.ios,
        "short_ios": 0,
        "drop_ios": 0,
        "clat_ns": clat,
        // Kiseki times a request from its push to its reaping: that is the whole latency,
        // so lat equals clat and there is no separate submission latency to report.
        "lat_ns": latency,
    })
}

fn latency_json(histogram: &Histogram<u64>, ios: u64) -> Value {
    if ios == 0 {
        return json!({ "min": 0, "max": 0, "mean": 0.0, "stddev": 0.0, "N": 0 });
    }
    json!({
        "min": histogram.min(),
        "max": histogram.max(),
        "mean": histogram.mean(),
        "stddev": histogram.stdev(),
        "N": ios,
    })
}

/// The normal report, laid out like fio's.
pub fn normal(plan: &Plan, jobs: &[JobStats]) -> String {
    let args = &plan.args;
    let mut out = String::new();
    let bs = plan.bs_bytes;
    let _ = writeln!(
        out,
        "{}: (g=0): rw={}, bs=(R) {bs}B-{bs}B, (W) {bs}B-{bs}B, (T) {bs}B-{bs}B, ioengine={}, \
         iodepth={}",
        args.name,
        args.rw.fio_name(),
        args.ioengine.fio_name(),
        args.iodepth
    );
    let _ = writeln!(out, "{VERSION}");
    let _ = writeln!(
        out,
        "Starting {} thread{}",
        args.numjobs,
        if args.numjobs == 1 { "" } else { "s" }
    );
    for job in jobs {
        job_normal(&mut out, job);
    }
    run_status(&mut out, jobs);
    out
}

/// fio's closing "Run status group" lines: per direction the jobs' bandwidth and I/O.
pub fn run_status(out: &mut String, jobs: &[JobStats]) {
    let _ = writeln!(out, "\nRun status group 0 (all jobs):");
    for (label, pick) in [("READ", 0), ("WRITE", 1)] {
        let direction =
            |job: &JobStats| if pick == 0 { job.read.clone() } else { job.write.clone() };
        let total: u64 = jobs.iter().map(|job| direction(job).io_bytes).sum();
        if total == 0 {
            continue;
        }
        let runtimes: Vec<u64> = jobs.iter().map(|job| job.runtime.as_millis() as u64).collect();
        let (min_ms, max_ms) = (
            runtimes.iter().min().copied().unwrap_or(0),
            runtimes.iter().max().copied().unwrap_or(0),
        );
        let bw = if max_ms > 0 { total as f64 * 1000.0 / max_ms as f64 } else { 0.0 };
        let _ = writeln!(
            out,
            "{label:>6}: bw={}/s ({}/s), io={} ({}), run={min_ms}-{max_ms}msec",
            binary_size(bw),
            decimal_size(bw),
            binary_size(total as f64),
            decimal_size(total as f64)
        );
    }
}

fn job_normal(out: &mut String, job: &JobStats) {
    let pid = std::process::id();
    let err = job.error.as_ref().map_or(0, |(errno, _)| *errno);
    let _ = writeln!(out, "{}: (groupid=0, jobs={}): err={err:2}: pid={pid}", job.name, job.jobs);
    if let Some((_, message)) = &job.error {
        let _ = writeln!(out, "  error: {message}");
    }
    for (label, direction) in [("read", &job.read), ("write", &job.write)] {
        if direction.ios == 0 {
            continue;
        }
        direction_normal(out, label, direction, job);
    }
    let (usr, sys) = job.cpu_percent();
    let _ = writeln!(
        out,
        "  cpu          : usr={usr:.2}%, sys={sys:.2}%, ctx={}, majf={}, minf={}",
        job.usage.context_switches, job.usage.major_faults, job.usage.minor_faults
    );
}

pub fn direction_normal(out: &mut String, label: &str, direction: &DirectionStats, job: &JobStats) {
    let runtime_ms = job.runtime.as_millis() as u64;
    let seconds = job.runtime.as_secs_f64().max(f64::MIN_POSITIVE);
    let bw = direction.io_bytes as f64 / seconds;
    let _ = writeln!(
        out,
        "  {label}: IOPS={}, BW={}/s ({}/s)({}/{runtime_ms}msec)",
        count(direction.ios as f64 / seconds),
        binary_size(bw),
        decimal_size(bw),
        binary_size(direction.io_bytes as f64),
    );
    let histogram = &direction.latency_ns;
    let (unit, divisor) = latency_unit(histogram.max());
    let _ = writeln!(
        out,
        "    clat ({unit}): min={}, max={}, avg={:.2}, stdev={:.2}",
        histogram.min() / divisor,
        histogram.max() / divisor,
        histogram.mean() / divisor as f64,
        histogram.stdev() / divisor as f64
    );
    let _ = writeln!(out, "    clat percentiles ({unit}):");
    for row in PERCENTILES.chunks(4) {
        let cells: Vec<String> = row
            .iter()
            .map(|p| {
                let value = histogram.value_at_quantile(p / 100.0) / divisor;
                format!("{p:5.2}th=[{value:5}]")
            })
            .collect();
        let _ = writeln!(out, "     | {}", cells.join(", "));
    }
}

/// fio's choice of unit: nanoseconds for sub-10µs maxima, then µs, then ms.
fn latency_unit(max_ns: u64) -> (&'static str, u64) {
    match max_ns {
        0..10_000 => ("nsec", 1),
        10_000..10_000_000 => ("usec", 1_000),
        _ => ("msec", 1_000_000),
    }
}
