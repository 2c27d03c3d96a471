//! The client jobs of `kiseki-bench fabric --connect`; see the parent module's notes.
//!
//! A job, on its own pinned thread: builds a single-threaded tokio runtime, seals its working
//! set, connects (one Ping, so a refused certificate or an absent listener is an error
//! before the run, not a failed request in it), puts the working set first when it measures
//! gets, then waits for the other jobs and keeps `--iodepth` requests in flight until its
//! window ends. Every request is a task on the job's runtime; its latency runs from just
//! before the task is spawned to the moment its answer is checked.

use std::io::{self, IsTerminal};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use kiseki_devices::rng::SplitMix64;
use kiseki_fabric::{
    BreakerConfig, ChunkClient, ClientError, Endpoint, FabricSelector, TcpConfig, TcpTransport,
};
use kiseki_security::{ChunkId, Dek, Envelope, MasterKey, OrgId, Role, SealParams, TlsContext};
use tokio::runtime::Runtime;
use tokio::task::{JoinError, JoinSet};

use super::ClientPlan;
use super::certs::{self, Side};
use crate::device::{JobCounters, Pattern};
use crate::stats::{JobStats, Window};

/// How long a request answered `Busy` (an engine listener's queue full) waits before it
/// goes again: tokio's timer granularity.
const BUSY_RETRY_DELAY: Duration = Duration::from_millis(1);

/// How long a request keeps retrying `Busy`: past this the listener is stuck, not busy.
const BUSY_RETRY_FOR: Duration = Duration::from_secs(10);

/// How long a finished job lets its connections send their TLS close_notify before its
/// runtime stops: a few loop turns of the writer tasks.
const CLOSE_GRACE: Duration = Duration::from_millis(20);

/// Runs the client jobs; one `JobStats` per job.
pub fn run(plan: &ClientPlan) -> Result<Vec<JobStats>, String> {
    let tls = certs::load(&plan.tls_dir, Side::Client)?;
    if let Some(Role::Workload { org }) = tls.local_identity().role() {
        eprintln!("kiseki-bench: the certificate is tenant {org}'s; requests act for it");
    }
    let key = MasterKey::generate(1).map_err(|e| format!("master key: {e}"))?;
    crate::device::run_jobs(&plan.job, |index, start, counters| {
        Job { plan, index, tls: &tls, key: &key, counters }.run(start)
    })
}

struct Job<'a> {
    plan: &'a ClientPlan,
    index: usize,
    tls: &'a TlsContext,
    key: &'a MasterKey,
    counters: &'a JobCounters,
}

/// What a job's requests share: the client, the listener, the sealed working set.
struct Target {
    transport: Arc<TcpTransport>,
    client: ChunkClient,
    endpoint: Endpoint,
    /// The org a tenant certificate acts for (the chunk service lets a tenant name only its
    /// own); `None` with a node's certificate, whose calls are node-to-node.
    tenant: Option<OrgId>,
    /// Shared, so a put sends the envelope from where it lies (as a gateway would).
    envelopes: Vec<Arc<Envelope>>,
}

/// A request answered (or failed), as the job's loop records it.
struct Done {
    result: Result<(), String>,
    latency_ns: u64,
    timed: bool,
}

impl Job<'_> {
    /// Prepares, waits for every other job (each reaches the barrier, prepared or not, so
    /// none waits forever), then measures.
    fn run(&self, start: &Barrier) -> Result<JobStats, String> {
        let prepared = self.prepare();
        start.wait();
        let (runtime, target) = prepared?;
        let stats = runtime.block_on(self.measure(&target));
        runtime.block_on(async {
            target.transport.close();
            tokio::time::sleep(CLOSE_GRACE).await;
        });
        Ok(stats)
    }

    fn prepare(&self) -> Result<(Runtime, Arc<Target>), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let envelopes = self.seal()?;
        let target = runtime.block_on(self.connect(envelopes))?;
        if self.plan.job.args.rw == Pattern::Get {
            runtime.block_on(self.fill(&target))?;
        }
        Ok((runtime, target))
    }

    /// Seals the job's working set: random chunks, each stamped with its number and the
    /// job's, so no two chunks of a run share an id.
    fn seal(&self) -> Result<Vec<Arc<Envelope>>, String> {
        let args = &self.plan.job.args;
        let mut rng = SplitMix64::new(args.randseed ^ (self.index as u64).wrapping_mul(0x9E37));
        let mut plaintext = vec![0u8; self.plan.job.bs_bytes as usize];
        rng.fill(&mut plaintext);
        let chunks = self.plan.working_set_chunks;
        let mut envelopes = Vec::with_capacity(chunks as usize);
        for key in 0..chunks {
            let stamp = (key ^ ((self.index as u64) << 48)).to_le_bytes();
            let n = stamp.len().min(plaintext.len());
            plaintext[..n].copy_from_slice(&stamp[..n]);
            let chunk_id = ChunkId::of_plaintext(&plaintext);
            let dek = Dek::derive(self.key, &chunk_id, None);
            let envelope = Envelope::seal(&plaintext, &SealParams::new(&dek));
            envelopes.push(Arc::new(envelope.map_err(|e| format!("sealing: {e}"))?));
        }
        Ok(envelopes)
    }

    async fn connect(&self, envelopes: Vec<Arc<Envelope>>) -> Result<Arc<Target>, String> {
        let addr = self.plan.addr;
        let config =
            TcpConfig { max_per_endpoint: self.plan.connections as usize, ..TcpConfig::default() };
        let transport = TcpTransport::new(self.tls, config).map_err(|e| format!("TLS: {e}"))?;
        let transport = Arc::new(transport);
        let selector = FabricSelector::new(transport.clone(), BreakerConfig::default())
            .map_err(|e| e.to_string())?;
        let client = ChunkClient::new(Arc::new(selector));
        let endpoint =
            Endpoint { node: "listener".to_owned(), addr, server_name: addr.ip().to_string() };
        client.ping(&endpoint).await.map_err(|e| format!("--connect={addr}: {e}"))?;
        let tenant = match self.tls.local_identity().role() {
            Some(Role::Workload { org }) => Some(org.clone()),
            _ => None,
        };
        Ok(Arc::new(Target { transport, client, endpoint, tenant, envelopes }))
    }

    /// Puts the working set, `--iodepth` at a time, with a progress line from job 0.
    async fn fill(&self, target: &Arc<Target>) -> Result<(), String> {
        let total = target.envelopes.len();
        let depth = self.plan.job.args.iodepth as usize;
        let terminal = self.index == 0 && io::stderr().is_terminal();
        if self.index == 0 {
            eprintln!(
                "kiseki-bench: putting each job's working set first: {total} chunks of {} bytes",
                self.plan.job.bs_bytes
            );
        }
        let mut in_flight = JoinSet::new();
        let (mut next, mut done, mut shown) = (0, 0, Instant::now());
        while done < total {
            while next < total && in_flight.len() < depth {
                let target = Arc::clone(target);
                in_flight.spawn(async move { target.call(next, false).await });
                next += 1;
            }
            let finished = in_flight.join_next().await.expect("a request is in flight");
            finished.map_err(|e| e.to_string())?.map_err(|e| format!("filling: {e}"))?;
            done += 1;
            if terminal && shown.elapsed() > Duration::from_millis(250) {
                shown = Instant::now();
                eprint!("\rfilling: {:5.1}%", done as f64 * 100.0 / total as f64);
            }
        }
        if terminal {
            eprint!("\r\x1b[2K");
        }
        Ok(())
    }

    /// The measured loop: `--iodepth` requests in flight, cycling over the working set.
    async fn measure(&self, target: &Arc<Target>) -> JobStats {
        let plan = &self.plan.job;
        let depth = plan.args.iodepth as usize;
        let get = plan.args.rw == Pattern::Get;
        let mut stats = JobStats::new(&plan.args.name);
        let mut window = Window::new(plan.ramp, plan.args.runtime, plan.io_limit_bytes);
        let mut in_flight: JoinSet<Done> = JoinSet::new();
        let (mut issued_bytes, mut next) = (0u64, 0usize);
        loop {
            let over = window.turn(Instant::now(), issued_bytes, &mut stats);
            let stopping = over || stats.error.is_some();
            if stopping && in_flight.is_empty() {
                break;
            }
            while !stopping && in_flight.len() < depth {
                let (shared, timed, started) =
                    (Arc::clone(target), window.measuring(), Instant::now());
                in_flight.spawn(async move {
                    let result = shared.call(next, get).await;
                    Done { result, latency_ns: started.elapsed().as_nanos() as u64, timed }
                });
                next = (next + 1) % target.envelopes.len();
                issued_bytes += u64::from(plan.bs_bytes);
            }
            let finished = in_flight.join_next().await.expect("a request is in flight");
            self.record(finished, get, &mut stats);
        }
        window.finish(Instant::now(), &mut stats);
        stats
    }

    fn record(&self, finished: Result<Done, JoinError>, get: bool, stats: &mut JobStats) {
        let done = match finished {
            Ok(done) => done,
            Err(error) => Done { result: Err(error.to_string()), latency_ns: 0, timed: false },
        };
        if let Err(message) = done.result {
            stats.error.get_or_insert((libc::EIO, message));
            return;
        }
        let bs = self.plan.job.bs_bytes;
        let direction = if get { &mut stats.read } else { &mut stats.write };
        if done.timed {
            direction.record(bs, done.latency_ns);
        }
        let bytes = if get { &self.counters.read_bytes } else { &self.counters.write_bytes };
        bytes.fetch_add(u64::from(bs), Ordering::Relaxed);
        self.counters.ios.fetch_add(1, Ordering::Relaxed);
    }
}

impl Target {
    /// Puts or gets chunk `index` of the working set; a got envelope must have the length
    /// of the one put (the chunk client already checked it parses and names the chunk).
    /// `Busy` answers are retried for a while.
    async fn call(&self, index: usize, get: bool) -> Result<(), String> {
        let envelope = &self.envelopes[index];
        let deadline = Instant::now() + BUSY_RETRY_FOR;
        loop {
            let result = if get {
                let chunk_id = envelope.chunk_id();
                match self.client.get_chunk(&self.endpoint, self.tenant.as_ref(), &chunk_id).await {
                    Ok(got) if got.len() != envelope.len() => {
                        return Err(format!(
                            "chunk {chunk_id} came back as {} bytes, not {}",
                            got.len(),
                            envelope.len()
                        ));
                    }
                    other => other.map(drop),
                }
            } else {
                self.client.put_chunk(&self.endpoint, self.tenant.as_ref(), envelope).await
            };
            match result {
                Err(ClientError::Busy { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(BUSY_RETRY_DELAY).await;
                }
                other => return other.map_err(|e| e.to_string()),
            }
        }
    }
}
