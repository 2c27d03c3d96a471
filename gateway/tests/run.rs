//! `kiseki-server run --config` as an operator runs it: the real binary on certificates made
//! by `ca init` and `cert issue`, a small device file and loopback ports; a tenant and its S3
//! key made by the admin subcommands on the stopped node's data dir; a multi-chunk object
//! put and read back over HTTPS with SigV4 (boto3); SIGTERM, a restart that does not
//! reformat, and the object read again. Then what a start must refuse (another cluster's
//! device, a store it has no record of, a changed shard count, a missing certificate, a port
//! in use), and three nodes whose metadata groups span them.

mod process;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use process::{lines_of, wait};

const BIN: &str = env!("CARGO_BIN_EXE_kiseki-server");

/// Longest a node may take to print its ready line or to exit, and a cluster to elect a
/// leader: generous for a loaded CI machine; a hung node fails the test instead of hanging.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// The object's chunks: small, so a 250 KiB object spans four of them.
const CHUNK_SIZE: &str = "64K";

/// A running `kiseki-server run`.
struct Node {
    child: Child,
    /// Stdout up to and including the ready line.
    printed: String,
    lines: mpsc::Receiver<String>,
    errors: mpsc::Receiver<String>,
}

impl Node {
    /// Starts `run --config config` and waits for its ready line.
    fn start(config: &Path) -> Node {
        let mut child = command(&["run", "--config", path(config)])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = lines_of(child.stdout.take().unwrap());
        let errors = lines_of(child.stderr.take().unwrap());
        let mut printed = String::new();
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    printed.push_str(&line);
                    printed.push('\n');
                    if line.starts_with("ready: serving the fabric on ") {
                        return Node { child, printed, lines, errors };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let err: Vec<String> = errors.try_iter().collect();
                    panic!("no ready line; stdout:\n{printed}\nstderr:\n{}", err.join("\n"));
                }
            }
        }
    }

    /// The address after `label` in the summary (`S3:`, `gRPC:`, `admin:`).
    fn addr(&self, label: &str) -> SocketAddr {
        let line = self.printed.lines().find(|line| line.trim_start().starts_with(label));
        let value = line.unwrap_or_else(|| panic!("no {label} in:\n{}", self.printed));
        let value = value.trim_start()[label.len()..].split_whitespace().next().unwrap();
        value.trim_start_matches("https://").trim_start_matches("http://").parse().unwrap()
    }

    /// Sends SIGTERM and waits for the exit; returns the status and the rest of stdout.
    fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = wait(&mut self.child, PROCESS_TIMEOUT);
        let mut rest: Vec<String> = self.lines.iter().collect();
        rest.extend(self.errors.try_iter());
        (status, rest.join("\n"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A failed assertion must not leave a node running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kiseki-server` with `args`, with no `KISEKI_*` variable of the test's environment.
fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KISEKI_") {
            command.env_remove(name);
        }
    }
    command
}

/// Runs `kiseki-server` with `args` to its exit: the status, stdout and stderr.
fn run_to_exit(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let out = lines_of(child.stdout.take().unwrap());
    let err = lines_of(child.stderr.take().unwrap());
    let status = wait(&mut child, PROCESS_TIMEOUT);
    let join = |lines: mpsc::Receiver<String>| lines.iter().collect::<Vec<_>>().join("\n");
    (status, join(out), join(err))
}

/// Runs `kiseki-server` with `args`, which must succeed; returns stdout.
fn ok(args: &[&str]) -> String {
    let (status, out, err) = run_to_exit(args);
    assert!(status.success(), "{args:?}: {status}\n{out}\n{err}");
    out
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The value after `label` on the line that starts with it.
fn printed_value<'a>(printed: &'a str, label: &str) -> &'a str {
    let line = printed.lines().find(|line| line.trim_start().starts_with(label));
    let line = line.unwrap_or_else(|| panic!("no {label} in:\n{printed}"));
    line.trim_start()[label.len()..].split_whitespace().next().unwrap()
}

/// A cluster CA and what the tests issue from it, under `dir`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        ok(&["ca", "init", "--out", path(&dir.join("ca"))]);
        Pki { dir: dir.to_owned() }
    }

    fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca/ca.crt")
    }

    /// Issues a certificate; returns its certificate and key files.
    fn issue(&self, name: &str, role: &str, org: Option<&str>) -> (PathBuf, PathBuf) {
        let out = self.dir.join("certs");
        let ca = self.dir.join("ca");
        let mut args = vec!["cert", "issue", "--ca", path(&ca), "--role", role, "--name", name];
        args.extend(["--out", path(&out)]);
        if let Some(org) = org {
            args.extend(["--org", org]);
        }
        if role == "server" {
            args.extend(["--san", "127.0.0.1", "--san", "localhost"]);
        }
        ok(&args);
        (out.join(format!("{name}.crt")), out.join(format!("{name}.key")))
    }
}

/// A node's configuration file under `dir`; `extra` lines are appended.
fn write_config(dir: &Path, pki: &Pki, node: &str, extra: &str) -> PathBuf {
    let (cert, key) = pki.issue(node, "server", None);
    let text = format!(
        "data_dir = {data:?}\nca_path = {ca:?}\ncert_path = {cert:?}\nkey_path = {key:?}\n\
         crl_path = {crl:?}\ndevice_path = {device:?}\ndevice_size = \"64M\"\ncores = 1\n\
         chunk_size = \"{CHUNK_SIZE}\"\ns3_addr = \"127.0.0.1:0\"\ngrpc_addr = \"127.0.0.1:0\"\n\
         admin_addr = \"127.0.0.1:0\"\n{extra}",
        data = dir.join("data"),
        ca = pki.ca_cert(),
        crl = pki.dir.join("ca/crl.pem"),
        device = dir.join("dev0.img"),
    );
    let config = dir.join("kiseki.toml");
    fs::write(&config, text).unwrap();
    config
}

/// Runs a boto3 snippet: `ops` is Python with `s3` a client of `endpoint` with the key.
fn boto3(endpoint: SocketAddr, key: (&str, &str), ca: &Path, ops: &str) -> String {
    let script = format!(
        "import boto3, random, sys\nfrom botocore.config import Config\n\
         s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id=sys.argv[2], \
         aws_secret_access_key=sys.argv[3], region_name='us-east-1', verify=sys.argv[4], \
         config=Config(s3={{'addressing_style': 'path'}}, \
         retries={{'mode': 'standard', 'max_attempts': 10}}))\n\
         random.seed(7)\nbody = random.randbytes(250 * 1024 + 7)\n{ops}"
    );
    let output = Command::new("python3")
        .args(["-c", &script, &format!("https://{endpoint}"), key.0, key.1, path(ca)])
        .output()
        .expect("python3 with boto3 (scripts/test.sh installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[test]
fn run_serves_s3_from_a_config_stops_on_sigterm_and_restarts_without_reformatting() {
    let temp = tempfile::tempdir().unwrap();
    let d = temp.path();
    let pki = Pki::new(d);
    let config = write_config(d, &pki, "node1", "");
    let data = d.join("data");

    // Tenant and key first, on the stopped node's data dir (they open its metadata store).
    ok(&["keys", "init", "--data-dir", path(&data)]);
    let (admin_cert, admin_key) = pki.issue("acme-admin", "tenant", Some("acme"));
    fs::write(d.join("policy.json"), "{}").unwrap();
    fs::write(d.join("scope.json"), r#"{"tenant-admin": ["acme/acme-admin"]}"#).unwrap();
    let created = ok(&[
        "s3-credentials",
        "create",
        "--data-dir",
        path(&data),
        "--tenant-id",
        "acme",
        "--workload-id",
        "app",
        "--ca",
        path(&pki.ca_cert()),
        "--cert",
        path(&admin_cert),
        "--key",
        path(&admin_key),
        "--policy-file",
        path(&d.join("policy.json")),
        "--scope-file",
        path(&d.join("scope.json")),
    ]);
    let access_key = printed_value(&created, "access key:").to_owned();
    let secret = printed_value(&created, "secret key:").to_owned();

    // First start: the device file is made and formatted; no key is made or printed.
    let node = Node::start(&config);
    assert!(node.printed.contains("(first start: device formatted)"), "{}", node.printed);
    assert!(node.printed.contains("a one-member group"), "{}", node.printed);
    assert!(
        !node.printed.contains(&secret) && !node.printed.contains("secret"),
        "{}",
        node.printed
    );
    assert_eq!(fs::metadata(d.join("dev0.img")).unwrap().len(), 64 << 20);
    let put = "s3.create_bucket(Bucket='photos')\n\
               s3.put_object(Bucket='photos', Key='big', Body=body)\n\
               got = s3.get_object(Bucket='photos', Key='big')['Body'].read()\n\
               print(got == body, len(got))";
    let key = (access_key.as_str(), secret.as_str());
    assert_eq!(boto3(node.addr("S3:"), key, &pki.ca_cert(), put).trim(), "True 256007");
    let (status, rest) = node.terminate();
    assert_eq!(status.code(), Some(0), "{rest}");
    assert!(rest.contains("SIGTERM: stopping") && rest.contains("stopped: served"), "{rest}");

    // The device as formatted: a start that must refuse it leaves it as it is.
    let superblock = || fs::read(d.join("dev0.img")).unwrap()[..4096].to_vec();
    let formatted = superblock();
    refusals_of_a_formatted_device(d, &pki, &config);
    assert_eq!(superblock(), formatted, "a refused start wrote to the device");

    // Second start: nothing formatted, the four chunks recovered, the object whole.
    let node = Node::start(&config);
    assert!(node.printed.contains("(reused; 4 chunk(s) recovered)"), "{}", node.printed);
    let get = "got = s3.get_object(Bucket='photos', Key='big')['Body'].read()\n\
               print(got == body, [b['Name'] for b in s3.list_buckets()['Buckets']])";
    let got = boto3(node.addr("S3:"), key, &pki.ca_cert(), get);
    assert_eq!(got.trim(), "True ['photos']");
    let (status, rest) = node.terminate();
    assert_eq!(status.code(), Some(0), "{rest}");
    assert_eq!(superblock(), formatted, "the second start reformatted the device");
}

/// What must be refused once `config`'s node has formatted its device.
fn refusals_of_a_formatted_device(d: &Path, pki: &Pki, config: &Path) {
    let device = d.join("dev0.img");

    // The same device under another cluster's CA: refused before anything is written.
    let other = d.join("other");
    fs::create_dir(&other).unwrap();
    let other_pki = Pki::new(&other);
    let foreign = write_config(&other, &other_pki, "stranger", "");
    let text = fs::read_to_string(&foreign).unwrap();
    let pointed = text.replace(&format!("{:?}", other.join("dev0.img")), &format!("{device:?}"));
    fs::write(&foreign, pointed).unwrap();
    let (status, _, err) = run_to_exit(&["run", "--config", path(&foreign)]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("device_path") && err.contains("belongs to cluster"), "{err}");

    // The same cluster, but a data dir with no record of the device: not formatted either.
    let stray = d.join("stray");
    fs::create_dir(&stray).unwrap();
    let copy = write_config(&stray, pki, "node1b", "");
    let text = fs::read_to_string(&copy).unwrap();
    fs::write(
        &copy,
        text.replace(&format!("{:?}", stray.join("dev0.img")), &format!("{device:?}")),
    )
    .unwrap();
    let (status, _, err) = run_to_exit(&["run", "--config", path(&copy)]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("of this cluster") && err.contains("no record"), "{err}");

    // The node itself with another shard count: the configuration's fault (exit code 2).
    let (status, _, err) = run_to_exit(&["run", "--config", path(config), "--cores", "2"]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("cores") && err.contains("does not reshard"), "{err}");
}

#[test]
fn a_missing_certificate_and_a_port_in_use_are_refused_naming_the_field() {
    let temp = tempfile::tempdir().unwrap();
    let d = temp.path();
    let pki = Pki::new(d);
    let config = write_config(d, &pki, "node1", "");

    // A certificate file that is not there: exit code 2, the field named, nothing made.
    let gone = d.join("certs/gone.crt");
    let text = fs::read_to_string(&config).unwrap();
    let cert = d.join("certs/node1.crt");
    fs::write(&config, text.replace(&format!("{cert:?}"), &format!("{gone:?}"))).unwrap();
    let (status, _, err) = run_to_exit(&["run", "--config", path(&config)]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("cert_path") && err.contains("no such file"), "{err}");
    assert!(!d.join("data").exists() && !d.join("dev0.img").exists());
    fs::write(&config, text).unwrap();

    // An address in use: exit code 1, the field named, nothing made.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, _, err) = run_to_exit(&["run", "--config", path(&config), "--s3-addr", &addr]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("s3_addr {addr}")) && err.contains("in use"), "{err}");
    assert!(!d.join("data").exists() && !d.join("dev0.img").exists());

    // `--check` still only checks.
    let checked = ok(&["run", "--config", path(&config), "--check"]);
    assert!(checked.contains("configuration OK") && checked.contains("chunk_size"), "{checked}");
    assert!(!d.join("data").exists());
}

/// A free loopback port (bound, then released for the node to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Gauges of a node's `/metrics`, by name.
fn gauges(admin: SocketAddr) -> BTreeMap<String, u64> {
    use std::io::Write as _;
    let Ok(mut stream) = std::net::TcpStream::connect(admin) else { return BTreeMap::new() };
    stream.set_read_timeout(Some(PROCESS_TIMEOUT)).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .lines()
        .filter(|line| line.starts_with("kiseki_raft_"))
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Waits until exactly one of `nodes` leads a group of `voters` that all of them see;
/// returns its index.
fn leader_of(nodes: &[&Node], voters: u64) -> usize {
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    loop {
        let seen: Vec<_> = nodes.iter().map(|node| gauges(node.addr("admin:"))).collect();
        let agreed = seen.iter().all(|gauges| {
            gauges.get("kiseki_raft_voters") == Some(&voters)
                && gauges.get("kiseki_raft_leader_known") == Some(&1)
        });
        let leaders: Vec<usize> = (0..seen.len())
            .filter(|&index| seen[index].get("kiseki_raft_is_leader") == Some(&1))
            .collect();
        if agreed && leaders.len() == 1 {
            return leaders[0];
        }
        assert!(Instant::now() < deadline, "no single leader of {voters}: {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the tests ask of a node's gRPC control service.
#[derive(Clone, Copy)]
enum Call<'a> {
    CreateTenant(&'a str),
    ListTenants,
    /// An S3 key for a workload of the caller's tenant.
    CreateS3Key(&'a str),
}

/// Calls the node's gRPC control service as the certificate in `identity`: the new
/// tenant's id, the tenants' ids, or the new S3 key and its secret.
/// As [`control`], for a call that must succeed on a leader: retried while the node answers
/// UNAVAILABLE (a leader just elected serves once its term's first entry is committed, as a
/// client retries), up to `PROCESS_TIMEOUT`.
fn control_on_leader(
    grpc: SocketAddr,
    pki: &Pki,
    identity: &(PathBuf, PathBuf),
    call: Call<'_>,
) -> Vec<String> {
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    loop {
        match control(grpc, pki, identity, call) {
            Ok(answer) => return answer,
            Err(status)
                if status.code() == tonic::Code::Unavailable && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(status) => panic!("{grpc}: {status:?}"),
        }
    }
}

fn control(
    grpc: SocketAddr,
    pki: &Pki,
    identity: &(PathBuf, PathBuf),
    call: Call<'_>,
) -> Result<Vec<String>, tonic::Status> {
    use kiseki_proto::control::control_service_client::ControlServiceClient;
    use kiseki_proto::control::{
        CreateS3CredentialRequest, CreateTenantRequest, ListTenantsRequest,
    };
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

    let read = |path: &Path| fs::read_to_string(path).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&pki.ca_cert())))
            .identity(Identity::from_pem(read(&identity.0), read(&identity.1)))
            .domain_name("localhost");
        let channel = Channel::from_shared(format!("https://{grpc}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = ControlServiceClient::new(channel);
        match call {
            Call::CreateTenant(org) => {
                let request = CreateTenantRequest { org: org.into(), isolated: false };
                Ok(vec![client.create_tenant(request).await?.into_inner().tenant_id])
            }
            Call::ListTenants => {
                let request = ListTenantsRequest { start_after: String::new(), limit: 0 };
                let reply = client.list_tenants(request).await?.into_inner();
                Ok(reply.tenants.into_iter().map(|tenant| tenant.tenant_id).collect())
            }
            Call::CreateS3Key(workload) => {
                let request = CreateS3CredentialRequest { workload: workload.into() };
                let key = client.create_s3_credential(request).await?.into_inner();
                Ok(vec![key.access_key, key.secret_key])
            }
        }
    })
}

#[test]
fn three_run_nodes_share_their_metadata_and_a_new_leader_serves_it() {
    let temp = tempfile::tempdir().unwrap();
    let d = temp.path();
    let pki = Pki::new(d);
    let ops = pki.issue("ops", "admin", None);
    let acme_admin = pki.issue("acme-admin", "tenant", Some("acme"));
    fs::write(d.join("policy.json"), "{}").unwrap();
    fs::write(d.join("scope.json"), r#"{"tenant-admin": ["acme/acme-admin"]}"#).unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let configs: Vec<PathBuf> = (1..=3)
        .map(|id: usize| {
            let dir = d.join(format!("n{id}"));
            fs::create_dir(&dir).unwrap();
            let peers: Vec<String> = (1..=3)
                .filter(|&peer| peer != id)
                .map(|peer| format!("\"{peer}=127.0.0.1:{}\"", ports[peer - 1]))
                .collect();
            let extra = format!(
                "node_id = {id}\nfabric_addr = \"127.0.0.1:{}\"\npeers = [{}]\n\
                 policy_file = {:?}\nscope_file = {:?}\n{}",
                ports[id - 1],
                peers.join(", "),
                d.join("policy.json"),
                d.join("scope.json"),
                if id == 1 { "init = true\n" } else { "" }
            );
            write_config(&dir, &pki, &format!("node{id}"), &extra)
        })
        .collect();

    // Node 1 makes the groups' first voters and the cluster's root key; a member started
    // without that key is refused before its device is made.
    let first = Node::start(&configs[0]);
    assert!(first.printed.contains("node 1 of 1=127.0.0.1:"), "{}", first.printed);
    assert!(first.printed.contains("initialized the groups"), "{}", first.printed);
    let (status, _, err) = run_to_exit(&["run", "--config", path(&configs[1])]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("root.key is missing"), "{err}");
    assert!(!d.join("n2/dev0.img").exists(), "a refused member made its device");
    let root_key = fs::read(d.join("n1/data/meta/root.key")).unwrap();
    for id in [2, 3] {
        let meta = d.join(format!("n{id}/data/meta"));
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&meta).unwrap();
        fs::write(meta.join("root.key"), &root_key).unwrap();
        fs::set_permissions(meta.join("root.key"), fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut nodes =
        vec![Some(first), Some(Node::start(&configs[1])), Some(Node::start(&configs[2]))];
    let leader = leader_of(&nodes.iter().flatten().collect::<Vec<_>>(), 3);
    let at = |index: usize, nodes: &[Option<Node>], label: &str| {
        nodes[index].as_ref().unwrap().addr(label)
    };

    // Through the leader: a tenant (cluster admin), its S3 key (its admin, by the scope
    // file), an object put and read over S3 (the first master key was made by the leader).
    // A follower's front end cannot propose: it answers "unavailable".
    let made =
        control_on_leader(at(leader, &nodes, "gRPC:"), &pki, &ops, Call::CreateTenant("acme"));
    let follower = (leader + 1) % 3;
    let refused = control(at(follower, &nodes, "gRPC:"), &pki, &ops, Call::CreateTenant("globex"));
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unavailable);
    let key =
        control_on_leader(at(leader, &nodes, "gRPC:"), &pki, &acme_admin, Call::CreateS3Key("app"));
    let key = (key[0].as_str(), key[1].as_str());
    let put = "s3.create_bucket(Bucket='shared')\n\
               s3.put_object(Bucket='shared', Key='big', Body=body)\n\
               print(s3.get_object(Bucket='shared', Key='big')['Body'].read() == body)";
    assert_eq!(boto3(at(leader, &nodes, "S3:"), key, &pki.ca_cert(), put).trim(), "True");

    // The leader stops; the other two elect one of them, which serves what was made
    // through the old one: the tenant, the key, the bucket, and the object, whose chunks
    // the old leader replicated to every member (R = 3, W = 2) and which now reads from
    // the two left.
    let (status, rest) = nodes[leader].take().unwrap().terminate();
    assert_eq!(status.code(), Some(0), "{rest}");
    let left: Vec<usize> = (0..3).filter(|&index| nodes[index].is_some()).collect();
    let next =
        left[leader_of(&left.iter().map(|&i| nodes[i].as_ref().unwrap()).collect::<Vec<_>>(), 3)];
    let tenants = control_on_leader(at(next, &nodes, "gRPC:"), &pki, &ops, Call::ListTenants);
    assert!(tenants.contains(&made[0]), "{tenants:?} lacks {made:?}");
    let list = "print([b['Name'] for b in s3.list_buckets()['Buckets']])";
    assert_eq!(boto3(at(next, &nodes, "S3:"), key, &pki.ca_cert(), list).trim(), "['shared']");
    let read = "print(s3.get_object(Bucket='shared', Key='big')['Body'].read() == body)";
    assert_eq!(boto3(at(next, &nodes, "S3:"), key, &pki.ca_cert(), read).trim(), "True");
    // And a new object is written with one member down: two replicas make its quorum.
    let again = "s3.put_object(Bucket='shared', Key='again', Body=body)\n\
                 print(s3.get_object(Bucket='shared', Key='again')['Body'].read() == body)";
    assert_eq!(boto3(at(next, &nodes, "S3:"), key, &pki.ca_cert(), again).trim(), "True");
    for index in left {
        let (status, rest) = nodes[index].take().unwrap().terminate();
        assert_eq!(status.code(), Some(0), "{rest}");
    }
}

#[test]
fn a_cluster_member_is_refused_a_single_nodes_metadata_store() {
    let temp = tempfile::tempdir().unwrap();
    let d = temp.path();
    let pki = Pki::new(d);
    let extra = format!(
        "fabric_addr = \"127.0.0.1:{}\"\npeers = [\"2=127.0.0.1:{}\"]\ninit = true\n",
        free_port(),
        free_port()
    );
    let config = write_config(d, &pki, "node1", &extra);
    // `keys init` opens the data dir as a single node's, one-member group and all.
    ok(&["keys", "init", "--data-dir", path(&d.join("data"))]);
    let (status, _, err) = run_to_exit(&["run", "--config", path(&config)]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("holds a single node's metadata"), "{err}");
}
