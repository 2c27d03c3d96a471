//! `kiseki-bench s3`'s results in fio's shapes: GETs as reads, PUTs as writes, one job for
//! all workers; the errors counted per direction and the first one shown.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{Outcome, S3Args};
use crate::report::{VERSION, direction_json, direction_normal, run_status};
use crate::stats::{JobStats, ThreadUsage};

const JOB_NAME: &str = "s3";

/// fio's normal report.
pub fn normal(args: &S3Args, outcome: &Outcome) -> String {
    let job = job(args, outcome);
    let bs = args.bs;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{JOB_NAME}: (g=0): rw={}, bs=(R) {bs}B-{bs}B, (W) {bs}B-{bs}B, endpoint={}, \
         bucket={}, objects={}, concurrency={}",
        args.rw.name(),
        args.endpoint,
        args.bucket,
        args.objects,
        args.concurrency
    );
    let _ = writeln!(out, "{VERSION}");
    let _ = writeln!(out, "Starting {} worker(s), one connection each", args.concurrency);
    let err = u8::from(outcome.errors() > 0);
    let pid = std::process::id();
    let _ = writeln!(out, "{JOB_NAME}: (groupid=0, jobs={}): err={err:2}: pid={pid}", job.jobs);
    for (label, direction, errors, retries) in [
        ("read", &job.read, outcome.read_errors, outcome.read_retries),
        ("write", &job.write, outcome.write_errors, outcome.write_retries),
    ] {
        if direction.ios > 0 {
            direction_normal(&mut out, label, direction, &job);
        }
        if retries > 0 {
            let _ = writeln!(out, "  {label} retries: {retries} (503 SlowDown answers)");
        }
        if errors > 0 {
            let _ = writeln!(out, "  {label} errors: {errors}");
        }
    }
    let _ = writeln!(out, "  errors: {}", outcome.errors());
    if let Some(error) = &outcome.first_error {
        let _ = writeln!(out, "  first error: {error}");
    }
    run_status(&mut out, std::slice::from_ref(&job));
    out
}

/// fio's JSON (`jobs[0].read.iops`, `.bw_bytes`, `.clat_ns.percentile["99.000000"]`), with
/// `errors` in each direction and the job, and the endpoint in the job options.
pub fn json(args: &S3Args, outcome: &Outcome) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let job = job(args, outcome);
    let options = json!({
        "name": JOB_NAME,
        "rw": args.rw.name(),
        "rwmixread": args.rwmixread.to_string(),
        "bs": args.bs.to_string(),
        "iodepth": "1",
        "numjobs": args.concurrency.to_string(),
        "runtime": args.runtime.as_secs_f64().to_string(),
        "ramp_time": args.ramp_time.as_secs_f64().to_string(),
        "endpoint": args.endpoint,
        "bucket": args.bucket,
        "objects": args.objects.to_string(),
        "sign_payload": u8::from(args.sign_payload).to_string(),
        "retries": args.retries.to_string(),
    });
    let with_errors = |mut direction: Value, errors: u64, retries: u64| {
        direction["errors"] = json!(errors);
        direction["retries"] = json!(retries);
        direction
    };
    let report = json!({
        "fio version": VERSION,
        "timestamp": now.as_secs(),
        "timestamp_ms": now.as_millis() as u64,
        "time": crate::clock::utc_string(now.as_secs()),
        "global options": options,
        "jobs": [{
            "jobname": JOB_NAME,
            "groupid": 0,
            "error": u8::from(outcome.errors() > 0),
            "errors": outcome.errors(),
            "first_error": outcome.first_error,
            "job options": options,
            "read": with_errors(
                direction_json(&job.read, &job),
                outcome.read_errors,
                outcome.read_retries,
            ),
            "write": with_errors(
                direction_json(&job.write, &job),
                outcome.write_errors,
                outcome.write_retries,
            ),
            "job_runtime": job.runtime.as_millis() as u64,
        }],
    });
    serde_json::to_string_pretty(&report).expect("a JSON value always serializes")
}

/// The run as one fio job of `--concurrency` workers.
fn job(args: &S3Args, outcome: &Outcome) -> JobStats {
    JobStats {
        name: JOB_NAME.to_owned(),
        jobs: args.concurrency,
        read: outcome.read.clone(),
        write: outcome.write.clone(),
        runtime: outcome.measured,
        usage: ThreadUsage::default(),
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;
    use crate::stats::DirectionStats;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: S3Args,
    }

    fn outcome() -> Outcome {
        let mut read = DirectionStats::new();
        for latency_us in 1..=1000u64 {
            read.record(4096, latency_us * 1000);
        }
        Outcome {
            read,
            write: DirectionStats::new(),
            read_errors: 2,
            write_errors: 0,
            read_retries: 0,
            write_retries: 7,
            first_error: Some("GET /b/k: 403 Forbidden (AccessDenied)".to_owned()),
            measured: Duration::from_secs(2),
        }
    }

    #[test]
    fn json_has_rates_percentiles_and_errors() {
        let args = Cli::parse_from(["s3", "--rw=get", "--bs=4k"]).args;
        let report: Value = serde_json::from_str(&json(&args, &outcome())).unwrap();
        let job = &report["jobs"][0];
        assert_eq!(job["errors"], 2);
        assert_eq!(job["error"], 1);
        assert_eq!(job["first_error"], "GET /b/k: 403 Forbidden (AccessDenied)");
        let read = &job["read"];
        assert_eq!(read["iops"].as_f64(), Some(500.0));
        assert_eq!(read["bw_bytes"], 500 * 4096);
        assert_eq!(read["errors"], 2);
        assert_eq!(job["write"]["errors"], 0);
        assert_eq!(job["write"]["retries"], 7);
        assert_eq!(read["retries"], 0);
        assert_eq!(job["write"]["total_ios"], 0);
        let p50 = read["clat_ns"]["percentile"]["50.000000"].as_u64().unwrap();
        let p999 = read["clat_ns"]["percentile"]["99.900000"].as_u64().unwrap();
        assert!((499_000..=501_000).contains(&p50), "{p50}");
        assert!((998_000..=1_000_500).contains(&p999), "{p999}");
        assert_eq!(job["job options"]["rw"], "get");
    }

    #[test]
    fn normal_report_says_errors() {
        let args = Cli::parse_from(["s3", "--rw=get", "--bs=4k"]).args;
        let text = normal(&args, &outcome());
        assert!(text.contains("rw=get, bs=(R) 4096B-4096B"), "{text}");
        assert!(text.contains("read: IOPS=500, BW=2000KiB/s"), "{text}");
        assert!(text.contains("err= 1"), "{text}");
        assert!(text.contains("  read errors: 2\n"), "{text}");
        assert!(text.contains("  write retries: 7 (503 SlowDown answers)\n"), "{text}");
        assert!(!text.contains("read retries"), "{text}");
        assert!(text.contains("first error: GET /b/k: 403 Forbidden (AccessDenied)"), "{text}");
        assert!(text.contains("99.90th=["), "{text}");
        assert!(text.contains("READ: bw=2000KiB/s"), "{text}");
    }
}
