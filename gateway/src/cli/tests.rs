//! The command line end to end, through [`super::main`] as the binary calls it: what each
//! subcommand writes and prints, and that bad input gives an error line and a non-zero
//! exit code, never a panic.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;

use kiseki_security::{CertificateAuthority, IdentityRules, PeerIdentity, Role, read_certificates};

struct Outcome {
    code: ExitCode,
    out: String,
    err: String,
}

fn run(args: &[&str]) -> Outcome {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let argv = std::iter::once("kiseki-server").chain(args.iter().copied());
    let code = super::main(argv, &mut out, &mut err);
    Outcome { code, out: String::from_utf8(out).unwrap(), err: String::from_utf8(err).unwrap() }
}

fn ok(args: &[&str]) -> String {
    let outcome = run(args);
    assert_eq!(outcome.code, ExitCode::SUCCESS, "{args:?}: {}", outcome.err);
    outcome.out
}

/// Runs `args`, expects `code` and an error line containing `needle`.
fn fails(args: &[&str], code: u8, needle: &str) {
    let outcome = run(args);
    assert_eq!(outcome.code, ExitCode::from(code), "{args:?}: {}{}", outcome.out, outcome.err);
    assert!(outcome.err.contains(needle), "{args:?}: {:?} lacks {needle:?}", outcome.err);
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn help_explains_every_tool() {
    let help = ok(&["--help"]);
    for needle in ["ca init", "cert issue", "cert revoke", "identity of", "KISEKI_CRL_PATH"] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
    let issue = ok(&["cert", "issue", "--help"]);
    for needle in ["server", "keyserver", "admin", "sre", "tenant", "--org", "--spiffe", "--san"] {
        assert!(issue.contains(needle), "{needle}: {issue}");
    }
    assert!(ok(&["ca", "init", "--help"]).contains("0600"));
    assert!(ok(&["identity", "of", "--help"]).contains("KES identity"));
}

#[test]
fn ca_init_writes_a_private_ca_once() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("ca");
    let out = ok(&["ca", "init", "--out", path(&dir)]);
    assert!(out.contains("ca.key (mode 0600)"), "{out}");
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    assert!(dir.join("crl.pem").exists());
    let before = fs::read(dir.join("ca.key")).unwrap();
    fails(&["ca", "init", "--out", path(&dir)], 1, "already exists");
    assert_eq!(fs::read(dir.join("ca.key")).unwrap(), before, "nothing overwritten");
    CertificateAuthority::load(&dir).unwrap();
    // The CA certificate is no peer's identity.
    fails(&["identity", "of", path(&dir.join("ca.crt"))], 1, "CA certificate");
}

#[test]
fn cert_issue_writes_each_role_with_its_identity() {
    let temp = tempfile::tempdir().unwrap();
    let ca = temp.path().join("ca");
    ok(&["ca", "init", "--out", path(&ca)]);
    let tls = temp.path().join("tls");
    let cases: [(&[&str], &str, Role); 5] = [
        (&["--role", "server", "--san", "node1.example.com", "10.0.0.1"], "node1", Role::Server),
        (&["--role", "keyserver"], "kms", Role::KeyServer),
        (&["--role", "admin"], "alice", Role::ClusterAdmin),
        (&["--role", "sre"], "bob", Role::Sre),
        (
            &["--role", "tenant", "--org", "acme-corp"],
            "workload-1",
            Role::Workload { org: kiseki_security::OrgId::parse("acme-corp").unwrap() },
        ),
    ];
    for (extra, name, role) in cases {
        let mut args = vec!["cert", "issue", "--ca", path(&ca), "--name", name, "--out"];
        args.push(path(&tls));
        args.extend_from_slice(extra);
        let out = ok(&args);
        let cert = tls.join(format!("{name}.crt"));
        let key = tls.join(format!("{name}.key"));
        assert_eq!(mode(&key), 0o600, "{name}");
        let der = &read_certificates(&cert).unwrap()[0];
        let identity = PeerIdentity::from_der(der, &IdentityRules::default()).unwrap();
        assert_eq!(identity.role(), Some(&role), "{name}");
        assert_eq!(identity.common_name(), Some(name));
        assert!(out.contains(&identity.kes_identity().to_string()), "{out}");
        fails(&args, 1, "already exists");
    }
}

#[test]
fn cert_issue_with_a_spiffe_id_and_identity_of_it() {
    let temp = tempfile::tempdir().unwrap();
    let ca = temp.path().join("ca");
    ok(&["ca", "init", "--out", path(&ca)]);
    let uri = "spiffe://kiseki.example.com/tenant/acme/project/p1/workload/train";
    let out_dir = temp.path().join("acme");
    ok(&[
        "cert",
        "issue",
        "--ca",
        path(&ca),
        "--role",
        "tenant",
        "--org",
        "acme",
        "--name",
        "train",
        "--spiffe",
        uri,
        "--days",
        "7",
        "--out",
        path(&out_dir),
    ]);
    let cert = out_dir.join("train.crt");
    let shown = ok(&["identity", "of", path(&cert), "--trust-domain", "kiseki.example.com"]);
    for line in [
        &format!("spiffe-id: {uri}"),
        "identity-from: spiffe",
        "role: workload(acme)",
        "org: acme",
        "project: p1",
        "workload: train",
        "common-name: train",
    ] {
        assert!(shown.lines().any(|shown| shown == line), "{line}: {shown}");
    }
    // Without the trust domain the SVID cannot be checked: the KES identity still prints.
    let outcome = run(&["identity", "of", path(&cert), "--trust-domain", "other.example"]);
    assert_eq!(outcome.code, ExitCode::from(1));
    assert!(outcome.out.starts_with("kes-identity: "), "{}", outcome.out);
    assert!(outcome.err.contains("trust domain"), "{}", outcome.err);
}

#[test]
fn identity_of_prints_the_kes_identity_and_the_derived_one() {
    let temp = tempfile::tempdir().unwrap();
    let ca = temp.path().join("ca");
    ok(&["ca", "init", "--out", path(&ca)]);
    let args = ["--ca", path(&ca), "--out", path(temp.path()), "--name", "n"];
    ok(&[&["cert", "issue", "--role", "server"][..], &args].concat());
    let cert = temp.path().join("n.crt");
    let shown = ok(&["identity", "of", path(&cert)]);
    let der = &read_certificates(&cert).unwrap()[0];
    let identity = PeerIdentity::from_der(der, &IdentityRules::default()).unwrap();
    let expected_kes = format!("kes-identity: {}", identity.kes_identity());
    assert_eq!(shown.lines().next(), Some(expected_kes.as_str()), "{shown}");
    let kes_hex = expected_kes.trim_start_matches("kes-identity: ");
    assert_eq!(kes_hex.len(), 64);
    assert!(shown.contains(&format!("fingerprint-uuid: {}", identity.fingerprint_uuid())));
    assert!(shown.contains("identity-from: ou\nrole: server\n"), "{shown}");
}

#[test]
fn cert_revoke_updates_the_crl() {
    let temp = tempfile::tempdir().unwrap();
    let ca = temp.path().join("ca");
    ok(&["ca", "init", "--out", path(&ca)]);
    let args = ["--ca", path(&ca), "--out", path(temp.path()), "--role", "sre", "--name"];
    ok(&[&["cert", "issue"][..], &args, &["a"]].concat());
    ok(&[&["cert", "issue"][..], &args, &["b"]].concat());
    let revoke = |name: &str| {
        let cert = temp.path().join(format!("{name}.crt"));
        ok(&["cert", "revoke", "--ca", path(&ca), "--cert", path(&cert)])
    };
    assert!(revoke("a").contains("CRL number 2 listing 1 certificate"));
    assert!(revoke("a").contains("already revoked"));
    assert!(revoke("b").contains("CRL number 3 listing 2 certificate"));
    let custom = temp.path().join("elsewhere.pem");
    let cert = temp.path().join("a.crt");
    let out =
        ok(&["cert", "revoke", "--ca", path(&ca), "--cert", path(&cert), "--crl", path(&custom)]);
    assert!(out.contains("CRL number 1"), "{out}");
    assert!(custom.exists());
}

#[test]
fn bad_input_fails_with_a_message_and_an_exit_code() {
    let temp = tempfile::tempdir().unwrap();
    let ca = temp.path().join("ca");
    ok(&["ca", "init", "--out", path(&ca)]);
    let out = path(temp.path());
    let issue = |extra: &[&'static str]| {
        let mut args = vec!["cert", "issue", "--ca", path(&ca), "--name", "x", "--out", out];
        args.extend_from_slice(extra);
        args
    };
    fails(&issue(&["--role", "tenant"]), 2, "--role tenant needs --org");
    fails(&issue(&["--role", "admin", "--org", "acme"]), 2, "--org applies only");
    fails(&issue(&["--role", "tenant", "--org", "ACME"]), 2, "--org");
    fails(&issue(&["--role", "tenant", "--org", "acme", "--spiffe", "http://x"]), 2, "--spiffe");
    let wrong_org = "spiffe://td/tenant/other/workload/w";
    fails(&issue(&["--role", "tenant", "--org", "acme", "--spiffe", wrong_org]), 1, "SPIFFE");
    fails(&issue(&["--role", "server", "--san", "a b"]), 1, "neither an IP");
    fails(&issue(&["--role", "server", "--days", "0"]), 1, "days");
    fails(&issue(&["--role", "server", "--days", "99999"]), 1, "days");
    fails(&issue(&["--role", "wizard"]), 2, "wizard");
    fails(&issue(&[]), 2, "--role");
    let missing = temp.path().join("missing");
    fails(
        &["cert", "issue", "--ca", path(&missing), "--role", "sre", "--name", "x", "--out", out],
        1,
        "missing",
    );
    fails(&["identity", "of", path(&missing)], 1, "missing");
    let junk = temp.path().join("junk.crt");
    fs::write(&junk, b"junk").unwrap();
    fails(&["identity", "of", path(&junk)], 1, "no certificate");
    fails(&["cert", "revoke", "--ca", path(&ca), "--cert", path(&junk)], 1, "no certificate");
    fails(
        &["cert", "revoke", "--ca", path(&ca), "--cert", path(&ca.join("ca.crt"))],
        1,
        "CA certificate",
    );
    fails(&["ca", "init", "--out", path(&temp.path().join("c2")), "--days", "0"], 2, "--days");
    fails(&["frobnicate"], 2, "frobnicate");
    fails(&[], 2, "Usage");
}
