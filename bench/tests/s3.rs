//! `kiseki-bench s3` as a user runs it, against a real `kiseki-server dev` (its command
//! line, run in a child process: this test binary, re-executed for this test alone; a
//! temporary data dir; every address on a free port of 127.0.0.1): a short mixed run read
//! back as JSON, then the refusals a wrong secret and a wrong CA must give.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Set in the child: the data dir its `kiseki-server dev` runs on.
const CHILD_ENV: &str = "KISEKI_BENCH_S3_DEV_CHILD";

/// How long the node may take to come up (a first start writes and formats its device).
const START_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn bench_runs_against_kiseki_server_dev_and_refuses_bad_credentials() {
    if let Ok(data_dir) = std::env::var(CHILD_ENV) {
        return dev_node(&data_dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("kiseki-data");
    let node = Node::start(&data_dir);

    // A mixed run: the key space is PUT first, then GETs and PUTs of 64 KiB (chunked, not
    // inline) objects for about a second. A 503 (the engine's buffers all in use) is
    // retried, as S3 clients do; what still fails counts as an error.
    let output = bench(&node, &node.secret, &node.ca, &["--rw=mixed", "--bs=64k", "--retries=20"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "kiseki-bench s3 failed: {stderr}");
    assert!(stderr.contains("populated: 8 object(s)"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let job = &report["jobs"][0];
    assert_eq!(job["errors"].as_u64(), Some(0), "{job}");
    for direction in ["read", "write"] {
        let stats = &job[direction];
        assert!(stats["iops"].as_f64().unwrap() > 0.0, "{direction}: {stats}");
        assert_eq!(stats["io_bytes"].as_u64().unwrap(), stats["total_ios"].as_u64().unwrap() << 16);
        let p50 = stats["clat_ns"]["percentile"]["50.000000"].as_u64().unwrap();
        let p99 = stats["clat_ns"]["percentile"]["99.000000"].as_u64().unwrap();
        assert!(p50 > 0 && p50 <= p99, "{direction}: p50 {p50} p99 {p99}");
    }

    // A wrong secret: every request is refused, the run says so and exits non-zero.
    let output = bench(&node, "not-the-secret", &node.ca, &["--rw=put", "--bs=4k"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a wrong secret passed: {stderr}");
    assert!(stderr.contains("403 Forbidden (SignatureDoesNotMatch)"), "{stderr}");

    // A CA bundle without the node's CA (its own leaf certificate): no TLS, no request.
    let leaf = data_dir.join("tls/clients/node/client.crt");
    let output = bench(&node, &node.secret, leaf.to_str().unwrap(), &["--rw=put"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a wrong CA passed: {stderr}");
    assert!(stderr.contains("TLS to 127.0.0.1:"), "{stderr}");
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");

    node.stop();
}

fn bench(node: &Node, secret: &str, ca: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiseki-bench"))
        .args(["s3", "--endpoint", &node.endpoint, "--ca", ca, "--access-key", &node.access_key])
        .args(["--secret-key", secret, "--bucket", "bench-test", "--objects=8"])
        .args(["--concurrency=4", "--runtime=1", "--ramp_time=0", "--output-format=json"])
        .args(extra)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .expect("kiseki-bench runs")
}

/// The child: `kiseki-server dev` until SIGTERM.
fn dev_node(data_dir: &str) {
    let argv = [
        "kiseki-server",
        "dev",
        "--data-dir",
        data_dir,
        "--s3-addr=127.0.0.1:0",
        "--admin-addr=127.0.0.1:0",
        "--fabric-addr=127.0.0.1:0",
        "--device-size=64M",
        "--cores=1",
    ];
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let code = kiseki_gateway::cli::main(argv, &mut out, &mut err);
    assert_eq!(code, ExitCode::SUCCESS, "kiseki-server dev failed");
}

/// A running dev node and what it printed.
struct Node {
    child: Child,
    endpoint: String,
    ca: String,
    access_key: String,
    secret: String,
}

impl Node {
    fn start(data_dir: &Path) -> Node {
        let name = "bench_runs_against_kiseki_server_dev_and_refuses_bad_credentials";
        let mut child = Command::new(std::env::current_exe().expect("the test binary's path"))
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, data_dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the child test starts");
        let stdout = child.stdout.take().expect("piped");
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end, after the start too: the node's stop lines need a reader.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = lines.send(line);
            }
        });
        let mut node = Node {
            child,
            endpoint: String::new(),
            ca: String::new(),
            access_key: String::new(),
            secret: String::new(),
        };
        let mut printed = String::new();
        loop {
            let line = match received.recv_timeout(START_TIMEOUT) {
                Ok(line) => line,
                Err(error) => panic!("kiseki-server dev did not get ready ({error}):\n{printed}"),
            };
            printed.push_str(&line);
            printed.push('\n');
            let value = |label: &str| {
                line.trim_start()
                    .strip_prefix(label)
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(str::to_owned)
            };
            if let Some(url) = value("S3:") {
                node.endpoint = url;
            } else if let Some(path) = value("CA bundle:") {
                node.ca = path;
            } else if let Some(key) = value("access key:") {
                node.access_key = key;
            } else if let Some(secret) = value("secret key:") {
                node.secret = secret;
            } else if line.starts_with("ready:") {
                break;
            }
        }
        for (what, value) in [
            ("S3 URL", &node.endpoint),
            ("CA bundle", &node.ca),
            ("access key", &node.access_key),
            ("secret", &node.secret),
        ] {
            assert!(!value.is_empty(), "no {what} printed:\n{printed}");
        }
        assert!(node.endpoint.starts_with("https://127.0.0.1:"), "{printed}");
        node
    }

    /// SIGTERM, and the node's clean stop.
    fn stop(mut self) {
        terminate(&self.child);
        let status = self.child.wait().expect("waiting for the node");
        assert!(status.success(), "kiseki-server dev did not stop cleanly: {status}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A failed assertion still stops the node (a clean stop already reaped it).
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn terminate(child: &Child) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: kill(2) with a pid this test spawned and has not reaped yet; it only sends a
    // signal.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill(SIGTERM)");
}
