//! `kiseki-bench device` as a user runs it: fio-compatible JSON (read by a Python check that
//! does the lookups fio's parsers do), the normal report, and clear refusals of bad input.

use std::path::Path;
use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiseki-bench"))
        .arg("device")
        .args(args)
        .output()
        .expect("kiseki-bench runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs a short job and checks its JSON with the Python fio-parser check.
fn json_is_read_as_fio(engine_args: &[&str], rw: &str) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let mut args = vec!["--name=check", "--bs=4k", "--iodepth=8", "--runtime=300ms"];
    args.push("--time_based");
    args.push("--output-format=json");
    let rw_flag = format!("--rw={rw}");
    args.push(&rw_flag);
    args.extend_from_slice(engine_args);
    let output = bench(&args);
    assert!(output.status.success(), "kiseki-bench failed: {}", stderr(&output));
    std::fs::write(&report, &output.stdout).unwrap();
    let check = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fio_json_check.py");
    let checked = Command::new("python3").arg(check).arg(&report).arg(rw).output();
    let checked = checked.expect("python3 is installed (scripts/test.sh installs it)");
    assert!(
        checked.status.success(),
        "fio JSON check failed: {}\nreport:\n{}",
        stderr(&checked),
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn memory_json_reads_as_fio_json() {
    json_is_read_as_fio(&["--ioengine=memory", "--size=16M"], "randrw");
}

#[test]
fn io_uring_json_reads_as_fio_json() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = dir.path().join("bench.dat");
    let filename = format!("--filename={}", file.display());
    json_is_read_as_fio(&[&filename, "--size=8M"], "randread");
    // The file was created and laid out at the asked size.
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 8 << 20);
    json_is_read_as_fio(&[&filename], "write");
}

#[test]
fn fio_json_check_rejects_a_report_missing_fields() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    std::fs::write(&report, r#"{"fio version": "x", "timestamp": 1, "jobs": [{"jobname": "j"}]}"#)
        .unwrap();
    let check = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fio_json_check.py");
    let checked = Command::new("python3").arg(check).arg(&report).arg("read").output().unwrap();
    assert!(!checked.status.success(), "the check must fail on a report without fields");
}

#[test]
fn normal_output_reads_like_fio() {
    let output = bench(&["--name=seq", "--ioengine=memory", "--size=4M", "--rw=write", "--bs=64k"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("seq: (g=0): rw=write, bs=(R) 65536B-65536B"), "{text}");
    assert!(text.contains("  write: IOPS="), "{text}");
    assert!(text.contains("clat percentiles"), "{text}");
    assert!(text.contains("99.00th=["), "{text}");
    // Without --time_based a job stops after --size bytes: 4 MiB = 64 writes of 64 KiB.
    assert!(text.contains("io=4096KiB"), "{text}");
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("--filename={}", dir.path().join("none.dat").display());
    let cases: [(&[&str], &str); 6] = [
        (&["--ioengine=memory", "--size=4M", "--bs=1000"], "multiple of 4096"),
        (&["--ioengine=memory", "--size=4M", "--time_based"], "needs --runtime"),
        (&["--ioengine=memory"], "needs --size"),
        (&[&missing], "give --size"),
        (&["--ioengine=memory", "--size=4M", "--bs=4x"], "suffix"),
        (&["--ioengine=memory", "--size=4M", "--direct=0"], "direct"),
    ];
    for (args, expected) in cases {
        let output = bench(args);
        assert!(!output.status.success(), "{args:?} must fail");
        let message = stderr(&output);
        assert!(message.contains(expected), "{args:?}: expected {expected:?} in {message}");
        assert!(!message.contains("panicked"), "{args:?} panicked: {message}");
    }
}

#[test]
fn spdk_without_spdk_says_so() {
    let output = bench(&["--ioengine=spdk", "--filename=Nvme0n1", "--runtime=1"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("spdk"), "{message}");
    assert!(message.contains("unavailable"), "{message}");
}

#[test]
fn directory_is_not_a_device() {
    let dir = tempfile::tempdir().unwrap();
    let filename = format!("--filename={}", dir.path().display());
    let output = bench(&[&filename, "--size=4M"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("neither a regular file nor a block device"));
}

fn engine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiseki-bench"))
        .arg("engine")
        .args(args)
        .output()
        .expect("kiseki-bench runs")
}

fn check_fio_json(output: &Output, rw: &str) {
    assert!(output.status.success(), "kiseki-bench engine failed: {}", stderr(output));
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    std::fs::write(&report, &output.stdout).unwrap();
    let check = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fio_json_check.py");
    let checked = Command::new("python3").arg(check).arg(&report).arg(rw).output().unwrap();
    assert!(checked.status.success(), "fio JSON check failed: {}", stderr(&checked));
}

#[test]
fn engine_write_and_read_report_as_fio_json() {
    let common = ["--ioengine=memory", "--size=32M", "--iodepth=4", "--output-format=json"];
    let mut write = common.to_vec();
    write.extend(["--rw=write", "--bs=64k", "--runtime=300ms", "--time_based"]);
    write.push("--dedup_percentage=20");
    check_fio_json(&engine(&write), "write");
    let mut read = common.to_vec();
    read.extend(["--rw=randread", "--bs=4k", "--runtime=300ms", "--time_based"]);
    let output = engine(&read);
    check_fio_json(&output, "randread");
    assert!(stderr(&output).contains("filling the store"), "a read job fills the store first");
}

/// On a file, the store persists: a second read job finds its chunks and fills nothing, and
/// opens them with the key kept beside the store.
#[test]
fn engine_store_on_a_file_is_reused() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = dir.path().join("engine.dat");
    let filename = format!("--filename={}", file.display());
    let args = [&filename, "--size=16M", "--rw=randread", "--bs=16k", "--runtime=200ms"];
    let first = engine(&[args.as_slice(), &["--time_based"]].concat());
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(stderr(&first).contains("filling the store"));
    let key = dir.path().join("engine.dat.bench-key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the bench key is private");
    let second = engine(&[args.as_slice(), &["--time_based"]].concat());
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(!stderr(&second).contains("filling the store"), "{}", stderr(&second));
}

#[test]
fn engine_refuses_what_it_cannot_run() {
    let cases: [(&[&str], &str); 4] = [
        (&["--ioengine=memory", "--size=32M", "--rw=randwrite"], "write, read, randread"),
        (&["--ioengine=spdk", "--filename=x"], "io_uring or memory"),
        (&["--ioengine=memory", "--size=4M"], "under 8 MiB"),
        (&["--ioengine=memory", "--size=32M", "--dedup_percentage=101"], "dedup_percentage"),
    ];
    for (args, expected) in cases {
        let output = engine(args);
        assert!(!output.status.success(), "{args:?} must fail");
        let message = stderr(&output);
        assert!(message.contains(expected), "{args:?}: expected {expected:?} in {message}");
        assert!(!message.contains("panicked"), "{args:?} panicked: {message}");
    }
}

// ---------------------------------------------------------------------------------------
// `kiseki-bench fabric`: a listener process and client runs against it.

/// A `--listen` process on 127.0.0.1, stopped with SIGTERM (or killed if a test fails
/// first).
struct Listener {
    child: Option<std::process::Child>,
    addr: String,
}

impl Listener {
    /// Serves from memory, or with `store_args` from what they say.
    fn start(tls_dir: &Path, store_args: &[&str]) -> Listener {
        use std::io::BufRead;
        let store_args = if store_args.is_empty() { &["--memory"] } else { store_args };
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiseki-bench"))
            .args(["fabric", "--listen", "127.0.0.1:0", "--runtime", "60"])
            .args(store_args)
            .arg(format!("--tls-dir={}", tls_dir.display()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kiseki-bench runs");
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
        let mut listener = Listener { child: Some(child), addr: String::new() };
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let output = listener.stop();
            panic!("no 'listening on' line: {line:?}; stderr: {}", stderr(&output));
        };
        listener.addr = addr.to_owned();
        listener
    }

    /// SIGTERM, then the listener's exit status and stderr.
    fn stop(&mut self) -> Output {
        let child = self.child.take().expect("stopped once");
        let pid = child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        child.wait_with_output().unwrap()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn fabric_client(listener: &Listener, tls_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiseki-bench"))
        .args(["fabric", "--connect", &listener.addr])
        .arg(format!("--tls-dir={}", tls_dir.display()))
        .args(args)
        .output()
        .expect("kiseki-bench runs")
}

#[test]
fn fabric_puts_and_gets_report_as_fio_json() {
    let temp = tempfile::tempdir().unwrap();
    let tls_dir = temp.path().join("tls");
    let mut listener = Listener::start(&tls_dir, &[]);
    let common = ["--bs=64k", "--iodepth=4", "--runtime=1", "--time_based", "--size=2M"];
    for rw in ["put", "get"] {
        let rw_flag = format!("--rw={rw}");
        let args = [common.as_slice(), &[&rw_flag, "--output-format=json"]].concat();
        let output = fabric_client(&listener, &tls_dir, &args);
        check_fio_json(&output, rw);
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let job = &report["jobs"][0];
        let direction = if rw == "put" { "write" } else { "read" };
        assert!(job[direction]["iops"].as_f64().unwrap() > 0.0, "{job}");
        assert_eq!(job["error"], 0);
        assert_eq!(job["job options"]["ioengine"], "kiseki-fabric-tcp-mtls");
        if rw == "get" {
            assert!(stderr(&output).contains("working set first"), "{}", stderr(&output));
        }
    }
    let stopped = listener.stop();
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    let message = stderr(&stopped);
    assert!(message.contains("SIGTERM; stopping"), "{message}");
    // 32 chunks of 64 KiB: the get run's fill found what the put run stored.
    assert!(message.contains("memory store: 32 chunks"), "{message}");
}

#[test]
fn fabric_client_refuses_clearly() {
    let temp = tempfile::tempdir().unwrap();
    let (ours, theirs) = (temp.path().join("ours"), temp.path().join("theirs"));
    let mut other = Listener::start(&theirs, &[]);
    other.stop();
    let listener = Listener::start(&ours, &[]);
    let args = ["--rw=put", "--bs=4k", "--runtime=1", "--time_based"];
    // Certificates of another CA: the handshake fails before the run.
    let output = fabric_client(&listener, &theirs, &args);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("--connect=") && message.contains("TLS handshake"), "{message}");
    assert!(!message.contains("panicked"), "{message}");
    // A directory without certificates.
    let output = fabric_client(&listener, temp.path(), &args);
    assert!(stderr(&output).contains("ca.crt is missing"), "{}", stderr(&output));
    // Nobody listening.
    drop(listener);
    let closed = Listener { child: None, addr: "127.0.0.1:1".to_owned() };
    let output = fabric_client(&closed, &ours, &args);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("--connect=127.0.0.1:1") && message.contains("refused"), "{message}");
    assert!(!message.contains("panicked"), "{message}");
}

/// Without --memory the listener serves a chunk service over an engine, as a node does.
#[test]
fn fabric_listener_serves_an_engine() {
    let temp = tempfile::tempdir().unwrap();
    let tls_dir = temp.path().join("tls");
    let engine = ["--ioengine=memory", "--size=32M", "--bs=64k", "--iodepth=8"];
    let mut listener = Listener::start(&tls_dir, &engine);
    let args = ["--rw=get", "--bs=64k", "--size=1M", "--iodepth=4", "--runtime=500ms"];
    let output = fabric_client(&listener, &tls_dir, &[&args[..], &["--time_based"]].concat());
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("  read: IOPS="));
    let stopped = listener.stop();
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    assert!(!stderr(&stopped).contains("memory store"), "{}", stderr(&stopped));
}
