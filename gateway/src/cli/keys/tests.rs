//! `keys`, `tenant shred` and `audit` end to end through the command line, on a data dir
//! of their own: what they print, what they refuse, and that every refusal is audited.

use std::path::Path;
use std::process::ExitCode;

struct Outcome {
    code: ExitCode,
    out: String,
    err: String,
}

fn run(args: &[&str]) -> Outcome {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let argv = std::iter::once("kiseki-server").chain(args.iter().copied());
    let code = crate::cli::main(argv, &mut out, &mut err);
    Outcome { code, out: String::from_utf8(out).unwrap(), err: String::from_utf8(err).unwrap() }
}

fn ok(args: &[&str]) -> String {
    let outcome = run(args);
    assert_eq!(outcome.code, ExitCode::SUCCESS, "{args:?}: {}", outcome.err);
    outcome.out
}

fn fails(args: &[&str], code: u8, needle: &str) {
    let outcome = run(args);
    assert_eq!(outcome.code, ExitCode::from(code), "{args:?}: {}{}", outcome.out, outcome.err);
    assert!(outcome.err.contains(needle), "{args:?}: {:?} lacks {needle:?}", outcome.err);
}

fn path(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

/// `--ca --cert --key [--crl] [--policy-file --scope-file]` for the named holder.
fn creds(dir: &Path, holder: &str, scope: bool, crl: bool) -> Vec<String> {
    let mut args = vec![
        "--ca".into(),
        path(&dir.join("ca/ca.crt")),
        "--cert".into(),
        path(&dir.join(format!("{holder}/{holder}.crt"))),
        "--key".into(),
        path(&dir.join(format!("{holder}/{holder}.key"))),
    ];
    if crl {
        args.extend(["--crl".into(), path(&dir.join("ca/crl.pem"))]);
    }
    if scope {
        args.extend([
            "--policy-file".into(),
            path(&dir.join("policy.json")),
            "--scope-file".into(),
            path(&dir.join("scope.json")),
        ]);
    }
    args
}

fn with(base: &[&str], extra: &[String]) -> Vec<String> {
    base.iter().map(|s| (*s).to_owned()).chain(extra.iter().cloned()).collect()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn keys_retire_waits_for_the_reseal_which_pauses_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = path(&dir.path().join("data"));
    let meta = dir.path().join("data/meta");
    ok(&["keys", "init", "--data-dir", &data]);
    ok(&["keys", "rotate", "--data-dir", &data]);
    let status = ok(&["keys", "reseal", "--data-dir", &data]);
    assert!(status.contains("no re-seal has run") && status.contains("not paused"), "{status}");
    // A node with a device may hold chunks under epoch 1: no retire before a re-seal.
    let device = crate::dev::device_path(&dir.path().join("data"));
    std::fs::create_dir_all(device.parent().unwrap()).unwrap();
    std::fs::write(device, b"").unwrap();
    fails(&["keys", "retire", "--data-dir", &data, "--epoch", "1"], 1, "no re-seal");
    // A pass in progress (as a running node saves it), paused and resumed by flag file.
    let mut state = crate::reseal::ResealState {
        version: 1,
        target_epoch: 2,
        examined: 5,
        resealed: 4,
        ..Default::default()
    };
    crate::reseal::save_state(&meta, &state).unwrap();
    let paused = ok(&["keys", "reseal", "--data-dir", &data, "--pause"]);
    assert!(paused.contains("in progress; 5 chunk(s) examined, 4 re-sealed"), "{paused}");
    assert!(paused.contains("paused (resume with --resume)"), "{paused}");
    assert!(crate::reseal::is_paused(&meta));
    fails(&["keys", "retire", "--data-dir", &data, "--epoch", "1"], 1, "not done");
    let resumed = ok(&["keys", "reseal", "--data-dir", &data, "--resume"]);
    assert!(resumed.contains("not paused") && !crate::reseal::is_paused(&meta), "{resumed}");
    let conflicting = run(&["keys", "reseal", "--data-dir", &data, "--pause", "--resume"]);
    assert_eq!(conflicting.code, ExitCode::from(2), "{}", conflicting.err);
    // Done, but a chunk could not be read: still refused. Done and clean: retired.
    state.done = true;
    state.failed = 1;
    crate::reseal::save_state(&meta, &state).unwrap();
    fails(&["keys", "retire", "--data-dir", &data, "--epoch", "1"], 1, "could not read");
    state.failed = 0;
    crate::reseal::save_state(&meta, &state).unwrap();
    assert!(ok(&["keys", "reseal", "--data-dir", &data, "--status"]).contains(": done;"));
    ok(&["keys", "retire", "--data-dir", &data, "--epoch", "1"]);
    assert!(ok(&["keys", "status", "--data-dir", &data]).contains("epochs: [2]"));
    // Every refusal was audited.
    let verified = ok(&["audit", "verify", "--data-dir", &data]);
    assert!(verified.contains("audit log verified"), "{verified}");
}

#[test]
fn keys_shred_and_audit_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = path(&d.join("data"));
    let data_args = ["--data-dir", data.as_str()];

    // Keys: init (root key 0600), rotate, retire.
    fails(&["keys", "rotate", "--data-dir", &data], 1, "keys init");
    let init = ok(&["keys", "init", "--data-dir", &data]);
    assert!(init.contains("master key epoch 1 created"), "{init}");
    let root = d.join("data/meta/root.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&root).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert!(ok(&["keys", "init", "--data-dir", &data]).contains("already present"));
    assert!(ok(&["keys", "rotate", "--data-dir", &data]).contains("epoch 2 is current"));
    let status = ok(&["keys", "status", "--data-dir", &data]);
    assert!(status.contains("[1, 2]") && status.contains("non-dumpable: true"), "{status}");
    fails(&["keys", "retire", "--data-dir", &data, "--epoch", "2"], 1, "rotate before retiring");
    ok(&["keys", "retire", "--data-dir", &data, "--epoch", "1"]);
    assert!(ok(&["keys", "status", "--data-dir", &data]).contains("epochs: [2]"));

    // Certificates: two tenants' admins (by scope file) and a cluster admin.
    let ca = path(&d.join("ca"));
    ok(&["ca", "init", "--out", &ca]);
    for (holder, role, org) in [
        ("alice", "tenant", Some("acme-corp")),
        ("bob", "tenant", Some("globex")),
        ("ops", "admin", None),
    ] {
        let out = path(&d.join(holder));
        let mut args =
            vec!["cert", "issue", "--ca", &ca, "--role", role, "--name", holder, "--out", &out];
        if let Some(org) = org {
            args.extend(["--org", org]);
        }
        ok(&args);
    }
    std::fs::write(d.join("policy.json"), r#"{"auditor": {"Audit": ["Read"]}}"#).unwrap();
    std::fs::write(d.join("scope.json"), r#"{"tenant-admin": ["acme-corp/alice", "globex/bob"]}"#)
        .unwrap();

    // Shred: refused for another tenant's admin, the cluster admin, a plain workload
    // certificate, and a tenant under a retention hold.
    let shred = |tenant: &str| with(&["tenant", "shred", "--tenant", tenant], &[]);
    let shred_acme = with(&strs(&shred("acme-corp")), &data_args.map(str::to_owned));
    fails(&strs(&with(&strs(&shred_acme), &creds(d, "bob", true, false))), 2, "access denied");
    fails(&strs(&with(&strs(&shred_acme), &creds(d, "ops", true, false))), 2, "access denied");
    fails(&strs(&with(&strs(&shred_acme), &creds(d, "alice", false, false))), 2, "access denied");
    std::fs::write(d.join("data/meta/retention-holds"), "# legal hold\nglobex\n").unwrap();
    let shred_globex = with(&strs(&shred("globex")), &data_args.map(str::to_owned));
    fails(&strs(&with(&strs(&shred_globex), &creds(d, "bob", true, false))), 1, "retention hold");
    // The tenant's own admin shreds it, once.
    let by_alice = with(&strs(&shred_acme), &creds(d, "alice", true, true));
    assert!(ok(&strs(&by_alice)).contains("tenant acme-corp shredded"));
    fails(&strs(&by_alice), 1, "tenant keys destroyed");

    // Audit: verifies; acme's export has acme's records and no other tenant's.
    let verify = ok(&["audit", "verify", "--data-dir", &data]);
    assert!(verify.contains("audit log verified"), "{verify}");
    let export = with(
        &["audit", "export", "--tenant", "acme-corp", "--data-dir", &data],
        &creds(d, "alice", true, true),
    );
    let lines = ok(&strs(&export));
    assert!(lines.contains("/v1/key/delete/acme-corp") && lines.contains("keys rotate"), "{lines}");
    assert!(!lines.contains("globex") && !lines.contains("bob"), "{lines}");
    let by_bob = with(
        &["audit", "export", "--tenant", "acme-corp", "--data-dir", &data],
        &creds(d, "bob", true, false),
    );
    fails(&strs(&by_bob), 2, "access denied");
    // bob's attempts are bob's tenant's records; ops's attempt is acme's.
    let ops_in_acme = lines.contains("\"actor\":\"ops\"");
    assert!(ops_in_acme, "{lines}");

    // S3 credentials for a workload of globex: its admin only; bad ids refused first.
    let s3 = |workload: &str| {
        with(
            &["s3-credentials", "create", "--tenant-id", "globex", "--workload-id", workload],
            &data_args.map(str::to_owned),
        )
    };
    fails(&strs(&with(&strs(&s3("job-1")), &creds(d, "alice", true, false))), 2, "access denied");
    fails(&strs(&with(&strs(&s3("job-1")), &creds(d, "ops", true, false))), 2, "access denied");
    fails(&strs(&with(&strs(&s3("job/1")), &creds(d, "bob", true, false))), 2, "--workload-id");
    let made = ok(&strs(&with(&strs(&s3("job-1")), &creds(d, "bob", true, false))));
    let value = |label: &str| {
        let line = made.lines().find(|line| line.starts_with(label)).expect(label);
        line[label.len()..].trim().to_owned()
    };
    let (access_key, secret) = (value("access key:"), value("secret key:"));
    assert!(access_key.starts_with("KSK") && access_key.len() == 21, "{made}");
    assert_eq!(secret.len(), 40, "{made}");
    // A second key for the same workload is another key.
    let again = ok(&strs(&with(&strs(&s3("job-1")), &creds(d, "bob", true, false))));
    assert!(!again.contains(&access_key) && !again.contains(&secret));
    // The secret is nowhere in the data dir in the clear; the attempts are bob's records.
    for entry in std::fs::read_dir(d.join("data/meta")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
    let globex_export = with(
        &["audit", "export", "--tenant", "globex", "--data-dir", &data],
        &creds(d, "bob", true, false),
    );
    let lines = ok(&strs(&globex_export));
    assert!(lines.contains("/v1/s3-credentials/create/job-1"), "{lines}");

    // A revoked certificate acts on nothing.
    ok(&["cert", "revoke", "--ca", &ca, "--cert", &path(&d.join("alice/alice.crt"))]);
    fails(&strs(&export), 1, "");
}

#[test]
fn the_keyserver_serves_grpc_on_the_nodes_store_until_told_to_stop() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = path(&d.join("data"));
    ok(&["keys", "init", "--data-dir", &data]);
    let ca = path(&d.join("ca"));
    ok(&["ca", "init", "--out", &ca]);
    let keyserver = path(&d.join("keyserver"));
    ok(&[
        "cert",
        "issue",
        "--ca",
        &ca,
        "--role",
        "keyserver",
        "--name",
        "keyserver",
        "--san",
        "localhost",
        "--san",
        "127.0.0.1",
        "--out",
        &keyserver,
    ]);
    ok(&[
        "cert",
        "issue",
        "--ca",
        &ca,
        "--role",
        "admin",
        "--name",
        "ops",
        "--out",
        &path(&d.join("ops")),
    ]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let args = super::KeyserverArgs {
        data: super::DataDir { data_dir: d.join("data") },
        listen: format!("127.0.0.1:{port}"),
        ca: Some(d.join("ca/ca.crt")),
        cert: Some(d.join("keyserver/keyserver.crt")),
        key: Some(d.join("keyserver/keyserver.key")),
        crl: Some(d.join("ca/crl.pem")),
        kes_policy_file: None,
        policy_file: None,
        scope_file: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let mut out = Vec::new();
        let result = super::keyserver_until(args, &mut out, async {
            let _ = stopped.await;
        });
        (result.map_err(|error| error.to_string()), String::from_utf8(out).unwrap())
    });

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let epoch = runtime.block_on(async {
        let mut ops = None;
        for _ in 0..100 {
            if let Ok(client) = crate::keys_grpc::tests::client(d, "ops", port).await {
                ops = Some(client);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let mut ops = ops.expect("the key server came up");
        let name = kiseki_proto::keys::KeyName { name: "master".into() };
        let rotated = ops.rotate_key(name).await.unwrap().into_inner().epoch;
        let acme = kiseki_proto::keys::KeyName { name: "acme-corp".into() };
        let denied = ops.generate_data_key(acme).await.unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        rotated
    });
    assert_eq!(epoch, 2);
    // The client stays connected (its runtime still holds the connection): the server
    // stops anyway, within its drain timeout.
    let stopping = std::time::Instant::now();
    stop.send(()).unwrap();
    let (result, out) = server.join().unwrap();
    assert_eq!(result, Ok(()), "{out}");
    assert!(out.contains("key service listening on") && out.contains("stopped"), "{out}");
    assert!(
        stopping.elapsed()
            < std::time::Duration::from_secs(crate::constants::GRPC_DRAIN_TIMEOUT_SECS) * 2
    );
    drop(runtime);
    // The rotation went through consensus into the node's store, audited.
    assert!(ok(&["keys", "status", "--data-dir", &data]).contains("[1, 2]"));
    assert!(ok(&["audit", "verify", "--data-dir", &data]).contains("audit log verified"));
}
