//! `kiseki-bench raft` as a user runs it: a short run against a 3-node metadata cluster it
//! starts itself (real fsync'd redb files, Raft over mTLS on 127.0.0.1), read back as JSON;
//! and refusals of flags that cannot work.

use std::process::{Command, Output};

fn raft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiseki-bench"))
        .arg("raft")
        .args(args)
        .output()
        .expect("kiseki-bench runs")
}

#[test]
fn three_nodes_commit_puts_and_report_them_as_fio_json() {
    let dir = tempfile::tempdir().unwrap();
    let output = raft(&[
        "--nodes=3",
        "--concurrency=8",
        "--runtime=1",
        "--ramp_time=200ms",
        "--bs=128",
        "--output-format=json",
        "--directory",
        dir.path().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "kiseki-bench raft failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let write = &report["jobs"][0]["write"];
    assert!(write["iops"].as_f64().unwrap() > 0.0, "{write}");
    assert_eq!(write["errors"].as_u64(), Some(0), "{write}");
    let p99 = write["clat_ns"]["percentile"]["99.000000"].as_u64().unwrap();
    let p50 = write["clat_ns"]["percentile"]["50.000000"].as_u64().unwrap();
    assert!(p50 > 0 && p50 <= p99, "p50 {p50} p99 {p99}");
    let target = report["jobs"][0]["job options"]["target"].as_str().unwrap();
    assert!(target.starts_with("kiseki (3 node(s)"), "{target}");
    // The temporary cluster is gone with the run.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn flags_that_cannot_work_are_refused() {
    for (args, says) in [
        (&["--bs=0"][..], "--bs=0"),
        (&["--bs=8k"][..], "--bs=8192"),
        (&["--concurrency=0"][..], "--concurrency=0"),
        (&["--target=etcd"][..], "needs --endpoints"),
        (&["--connect=127.0.0.1:1"][..], "needs --tls-dir"),
        (&["--nodes=2"][..], "1 or 3"),
    ] {
        let output = raft(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
