//! `kiseki-server metadata` as an operator runs it: three real processes on 127.0.0.1 with
//! certificates of a throwaway CA, written to by a `MetadataClient` over the fabric's mTLS.
//! The leader is SIGKILLed during writes: a new one is elected within the bound and every
//! acknowledged write is on the survivors; the old leader is restarted on its data dir and
//! catches up; a fourth node joins and a voter leaves while writes go on, none failing; every
//! node then stops on SIGTERM with exit code 0.

mod process;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use kiseki_consensus::client::{Answer, GroupStatus, MembershipChange, Query};
use kiseki_consensus::command::{
    Command as Meta, DedupMode, ETag, Manifest, ObjectBody, Sealed, TenantId,
};
use kiseki_consensus::constants::{ELECTION_TIMEOUT_MAX, LEADER_FAILOVER_MAX};
use kiseki_consensus::{Applied, MetadataClient, ShardId, ShardMap};
use kiseki_fabric::{TcpConfig, TcpTransport};
use kiseki_security::{
    CA_CERT_FILE, CRL_FILE, CertificateAuthority, IssueRequest, Role, SubjectAltName, TlsBuilder,
    TlsPaths, Validity,
};

use process::{lines_of, wait};

const BIN: &str = env!("CARGO_BIN_EXE_kiseki-server");

/// Longest a node may take to print its ready line or to exit.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest from the leader's death to a survivor that knows a new leader elected in the
/// first term after the old one: the 0.6 s issue 6 asks for. The group's own bound
/// (`LEADER_FAILOVER_MAX`: lease, election timeout, one timer tick) leaves the rest for the
/// vote's round trip with its two fsyncs and for our status polls.
const NEW_LEADER_BOUND: Duration = Duration::from_millis(600);
const _: () = assert!(LEADER_FAILOVER_MAX.as_millis() < NEW_LEADER_BOUND.as_millis());

/// What each further term costs when the first campaign fails (a split vote: both survivors
/// campaigned within a round trip; CI once saw 824 ms): the candidate's election timeout
/// again, and the vote's round trip.
const FAILED_CAMPAIGN_BOUND: Duration =
    Duration::from_millis(ELECTION_TIMEOUT_MAX.as_millis() as u64 + 100);

const TENANT: TenantId = TenantId([0x42; 16]);
const BUCKET: &str = "writes";

/// The throwaway CA and its leaves, as files.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::init(
            &dir.path().join("ca"),
            "Metadata Cluster Test CA",
            Validity::days_from_now(2),
        )
        .unwrap();
        Pki { dir, ca }
    }

    /// A server-role leaf for 127.0.0.1: its TLS paths.
    fn leaf(&self, stem: &str) -> TlsPaths {
        let request = IssueRequest {
            role: Role::Server,
            common_name: stem.to_owned(),
            spiffe_id: None,
            subject_alt_names: vec![SubjectAltName::parse("127.0.0.1").unwrap()],
            validity: Validity::days_from_now(1),
        };
        let issued = self.ca.issue(&request).unwrap();
        let (cert, key) = issued.write_files(&self.dir.path().join("leaves"), stem).unwrap();
        let ca_dir = self.dir.path().join("ca");
        TlsPaths { ca: ca_dir.join(CA_CERT_FILE), cert, key, crl: Some(ca_dir.join(CRL_FILE)) }
    }
}

/// A running `kiseki-server metadata`.
struct Node {
    id: u64,
    addr: SocketAddr,
    child: Child,
    lines: mpsc::Receiver<String>,
}

/// How to start node `id` again: its address, data dir and peers.
#[derive(Clone)]
struct Spec {
    id: u64,
    addr: SocketAddr,
    data_dir: PathBuf,
    peers: Vec<(u64, SocketAddr)>,
    tls: TlsPaths,
}

impl Node {
    fn start(spec: &Spec, init: bool, log_dir: &Path) -> Node {
        let log = File::create(log_dir.join(format!("node-{}.log", spec.id))).unwrap();
        let mut command = Command::new(BIN);
        command
            .arg("metadata")
            .args(["--node-id", &spec.id.to_string(), "--listen", &spec.addr.to_string()])
            .args(["--data-dir", spec.data_dir.to_str().unwrap()])
            .args(["--ca", spec.tls.ca.to_str().unwrap()])
            .args(["--cert", spec.tls.cert.to_str().unwrap()])
            .args(["--key", spec.tls.key.to_str().unwrap()])
            .args(["--crl", spec.tls.crl.as_ref().unwrap().to_str().unwrap()])
            .env("RUST_LOG", "warn,kiseki::metadata=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (id, addr) in &spec.peers {
            command.args(["--peer", &format!("{id}={addr}")]);
        }
        if init {
            command.arg("--init");
        }
        let mut child = command.spawn().unwrap();
        let lines = lines_of(child.stdout.take().unwrap());
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with("ready: metadata node") => {
                    return Node { id: spec.id, addr: spec.addr, child, lines };
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let mut log = String::new();
                    let path = log_dir.join(format!("node-{}.log", spec.id));
                    let _ = File::open(path).and_then(|mut f| f.read_to_string(&mut log));
                    panic!("node {} printed no ready line; its log:\n{log}", spec.id);
                }
            }
        }
    }

    /// SIGTERM, then the exit status and the rest of stdout.
    fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = wait(&mut self.child, PROCESS_TIMEOUT);
        assert!(status.code().is_some(), "node {} ended by a signal: {status}", self.id);
        // The pipe closed with the process: the reader ends after the last line.
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(PROCESS_TIMEOUT) {
            rest.push(line);
        }
        (status, rest.join("\n"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Free loopback ports, picked by binding and letting go.
fn free_addrs(count: usize) -> Vec<SocketAddr> {
    let listeners: Vec<_> =
        (0..count).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|listener| listener.local_addr().unwrap()).collect()
}

/// Writers proposing puts of fresh keys until stopped; what they saw acknowledged.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Vec<u8>>>>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(client: &Arc<MetadataClient>, phase: &str, count: u32) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = (0..count)
            .map(|writer| {
                let (client, stop) = (client.clone(), stop.clone());
                let (acked, failed) = (acked.clone(), failed.clone());
                let phase = phase.to_owned();
                tokio::spawn(async move {
                    let mut sequence = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("{phase}/{writer}/{sequence}").into_bytes();
                        sequence += 1;
                        match client.propose(put(&key)).await {
                            Ok(Applied::Done) => acked.lock().unwrap().push(key),
                            Ok(other) => panic!("a put answered {other:?}"),
                            Err(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Writers { stop, acked, failed, tasks }
    }

    /// Stops the writers; the acknowledged keys and the count of failed writes.
    async fn stop(self) -> (Vec<Vec<u8>>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        (acked, self.failed.load(Ordering::Relaxed))
    }
}

fn put(key: &[u8]) -> Meta {
    Meta::PutObject {
        tenant: TENANT,
        bucket: BUCKET.to_owned(),
        key: key.to_vec(),
        manifest: Manifest {
            size_bytes: 8,
            body: ObjectBody::Inline(Sealed(vec![7; 8])),
            sealed_user_metadata: Sealed(Vec::new()),
            etag: ETag([1; 16]),
        },
    }
}

/// Every key in `keys` reads back through the leader.
async fn assert_present(client: &Arc<MetadataClient>, keys: &[Vec<u8>], what: &str) {
    let mut reads = tokio::task::JoinSet::new();
    for slice in keys.chunks(keys.len().div_ceil(8).max(1)) {
        let (client, slice) = (client.clone(), slice.to_vec());
        reads.spawn(async move {
            for key in slice {
                let query = Query::Object { tenant: TENANT, bucket: BUCKET.to_owned(), key };
                let answer = client.read(query.clone()).await.expect("a linearizable read");
                assert!(matches!(answer, Answer::Object(Some(_))), "{query:?} lost: {answer:?}");
            }
        });
    }
    while let Some(done) = reads.join_next().await {
        done.unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

/// The leader each node at `addrs` knows, asked at once.
/// Each node's status, asked of all at once.
async fn statuses(client: &Arc<MetadataClient>, addrs: &[SocketAddr]) -> Vec<Option<GroupStatus>> {
    let asks: Vec<_> = addrs
        .iter()
        .map(|addr| {
            let (client, addr) = (client.clone(), *addr);
            tokio::spawn(async move { status(&client, addr).await })
        })
        .collect();
    let mut seen = Vec::new();
    for ask in asks {
        seen.push(ask.await.unwrap());
    }
    seen
}

async fn leaders_known(client: &Arc<MetadataClient>, addrs: &[SocketAddr]) -> Vec<Option<u64>> {
    statuses(client, addrs).await.into_iter().map(|s| s.and_then(|s| s.leader)).collect()
}

async fn status(client: &MetadataClient, addr: SocketAddr) -> Option<GroupStatus> {
    client.status_at(addr, ShardId(0)).await.ok()
}

/// Waits until the node at `addr` holds exactly what the node at `reference` holds.
async fn caught_up(
    client: &MetadataClient,
    addr: SocketAddr,
    reference: SocketAddr,
    what: &str,
    logs: &Path,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (node, other) = (status(client, addr).await, status(client, reference).await);
        if let (Some(node), Some(other)) = (&node, &other)
            && node.last_applied_index == other.last_applied_index
            && node.digest == other.digest
        {
            assert_eq!(node.rows, other.rows);
            return;
        }
        if Instant::now() > deadline {
            for entry in std::fs::read_dir(logs).into_iter().flatten().flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                eprintln!("---- {}\n{}", entry.path().display(), text);
            }
            panic!("{what}: not caught up: {node:?} vs {other:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_survive_a_killed_leader_a_restart_and_a_membership_change() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let addrs = free_addrs(4);
    let spec = |id: u64| {
        let peers: Vec<(u64, SocketAddr)> = (1..=3)
            .filter(|peer| *peer != id)
            .map(|peer| (peer, addrs[peer as usize - 1]))
            .collect();
        Spec {
            id,
            addr: addrs[id as usize - 1],
            data_dir: dir.path().join(format!("node-{id}")),
            peers,
            tls: pki.leaf(&format!("node-{id}")),
        }
    };
    let specs: BTreeMap<u64, Spec> = (1..=4).map(|id| (id, spec(id))).collect();
    let mut nodes: BTreeMap<u64, Node> =
        (1..=3).map(|id| (id, Node::start(&specs[&id], id == 1, dir.path()))).collect();

    let tls = TlsBuilder::new(pki.leaf("client")).build().unwrap();
    let transport = TcpTransport::new(&tls, TcpConfig::default()).unwrap();
    let client = Arc::new(
        MetadataClient::new(Arc::new(transport), addrs[..3].to_vec(), ShardMap::new(1).unwrap())
            .unwrap(),
    );
    let tenant = Meta::CreateTenant {
        tenant: TENANT,
        dedup: DedupMode::CrossTenant,
        sealed_config: Sealed(vec![1; 16]),
    };
    assert_eq!(client.propose(tenant).await, Ok(Applied::Done));
    let bucket = Meta::CreateBucket { tenant: TENANT, bucket: BUCKET.to_owned() };
    assert_eq!(client.propose(bucket).await, Ok(Applied::Done));

    // Writes run; the leader dies.
    let writers = Writers::start(&client, "failover", 4);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = status(&client, addrs[0]).await.expect("node 1's status");
    let old_leader = before.leader.expect("a leader");
    nodes.remove(&old_leader).expect("the leader runs"); // Drop sends SIGKILL and reaps.
    let killed = Instant::now();
    let survivors: Vec<SocketAddr> = nodes.values().map(|node| node.addr).collect::<Vec<_>>();
    // The first survivor to know a new leader marks the election's end.
    let elected = loop {
        let seen = statuses(&client, &survivors).await;
        let new = seen.iter().flatten().find(|s| s.leader.is_some_and(|l| l != old_leader));
        if let Some(seen) = new {
            break (seen.leader.expect("checked"), seen.term, killed.elapsed());
        }
        assert!(killed.elapsed() < Duration::from_secs(10), "no new leader: {seen:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let (new_leader, term, election) = elected;
    let campaigns = term.saturating_sub(before.term).max(1);
    eprintln!(
        "new leader {new_leader} {} ms after node {old_leader} was killed, term {} -> {term}",
        election.as_millis(),
        before.term
    );
    let failed = u32::try_from(campaigns - 1).unwrap_or(u32::MAX);
    let bound = NEW_LEADER_BOUND + FAILED_CAMPAIGN_BOUND.saturating_mul(failed);
    assert!(
        election <= bound,
        "a new leader took {election:?} over {campaigns} term(s), more than {bound:?}"
    );
    // Both survivors agree on it.
    loop {
        let seen = leaders_known(&client, &survivors).await;
        if seen.iter().all(|leader| *leader == Some(new_leader)) {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(10), "no agreement: {seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (acked, failed) = writers.stop().await;
    eprintln!("failover: {} writes acknowledged, {failed} not", acked.len());
    assert!(acked.len() > 20, "writes went on: {}", acked.len());
    assert_present(&client, &acked, "after the failover").await;
    let new_leader_addr = addrs[new_leader as usize - 1];
    for addr in &survivors {
        caught_up(&client, *addr, new_leader_addr, "a survivor", dir.path()).await;
    }

    // The old leader comes back on its data dir and catches up.
    let restarted = Node::start(&specs[&old_leader], false, dir.path());
    nodes.insert(old_leader, restarted);
    caught_up(
        &client,
        addrs[old_leader as usize - 1],
        new_leader_addr,
        "the old leader",
        dir.path(),
    )
    .await;
    let rejoined = status(&client, addrs[old_leader as usize - 1]).await.unwrap();
    assert_eq!(rejoined.leader, Some(new_leader));

    // A fourth node joins and a voter leaves while writes go on.
    let fourth = Node::start(&specs[&4], false, dir.path());
    nodes.insert(4, fourth);
    let writers = Writers::start(&client, "membership", 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let change = |change| client.change_membership(ShardId(0), change);
    change(MembershipChange::AddLearner { node: 4, addr: addrs[3].to_string() }).await.unwrap();
    change(MembershipChange::Promote { nodes: vec![4] }).await.unwrap();
    let leaving = old_leader;
    change(MembershipChange::Remove { nodes: vec![leaving] }).await.unwrap();
    // A removed node is stopped, as Raft's removal procedure has it: left running, it hears
    // no leader, campaigns with ever higher terms, and openraft 0.9 has no pre-vote to keep
    // it from disturbing a member that has no leader lease yet (seen here once: the new
    // node took its term and never caught up).
    let (exit, _) = nodes.remove(&leaving).expect("the leaving node runs").terminate();
    assert!(exit.success(), "the removed node exited {exit:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (acked, failed) = writers.stop().await;
    eprintln!("membership change: {} writes acknowledged, {failed} failed", acked.len());
    assert_eq!(failed, 0, "no write fails while the membership changes");
    assert!(acked.len() > 20, "writes went on: {}", acked.len());
    assert_present(&client, &acked, "after the membership change").await;
    let leader_status = status(&client, new_leader_addr).await.unwrap();
    assert!(leader_status.voters.contains(&4), "{leader_status:?}");
    assert!(!leader_status.voters.contains(&leaving), "{leader_status:?}");
    caught_up(&client, addrs[3], new_leader_addr, "the fourth node", dir.path()).await;

    for (id, node) in std::mem::take(&mut nodes) {
        let (exit, rest) = node.terminate();
        assert!(exit.success(), "node {id} exited {exit:?} on SIGTERM");
        assert!(rest.contains("stopped: metadata node"), "node {id} said: {rest}");
    }
}
