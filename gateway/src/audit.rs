//! The data path's audit records (issue 7, point 5): S3 data accesses (sampled) and S3
//! requests refused for an unknown access key (rate-limited), appended to the key manager's
//! hash-chained audit log.
//!
//! - Off the request path: a request hands its record to a bounded queue and goes on; one
//!   writer task takes every record waiting (up to `AUDIT_RUN_MAX`) and appends them in
//!   order as one run: chained in memory and proposed together, so a run usually costs one
//!   commit where a record each took one (the queue then overflowed under load). The writer has a root sealer and a store handle of its own,
//!   never the key manager's lock: holding that lock across a proposal would block every
//!   request that seals or opens (they take it on the runtime's threads) while the
//!   proposal waits for those same threads (seen: a dev node stuck under 16 writers). Its
//!   appends and the key manager's chain onto one log; a race is retried by the log. A full queue drops the record and counts it; the writer then
//!   appends one record saying how many were dropped, so a gap is never silent.
//! - Sampling: one data access in `data_access_every` is recorded (1 = all). Refused
//!   credentials are never sampled but are rate-limited (a token bucket): a flood of bad
//!   keys must not flood the log; what the bucket refuses is counted the same way.
//! - What a record holds: the access key id (never its secret), the S3 operation's name, the
//!   tenant, the outcome. No bucket or object name: the log is readable by whoever holds
//!   the root key, and names are the tenant's data.
//!
//! The gRPC front (`crate::grpc`) records through the same sink: every call's
//! authorization decision ([`AuditSink::decision`]) and every TLS handshake
//! ([`AuditSink::handshake`]); its records hold API paths whose data-path argument is `*`,
//! never a bucket or key.
//!
//! [`AuditAccess`] is the hook `s3s` calls for every signed request, after the signature
//! checked out and before the operation runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kiseki_security::TenantId;
use kiseki_security::authz::{AuditEvent, Caller};
use kiseki_security::keymanager::{
    AuditEntry, AuditKind, AuditLog, AuditOutcome, KeyStoreBackend, RootSealer,
};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::{S3ErrorCode, S3Result};
use tokio::sync::mpsc;

use crate::s3::S3Credentials;

/// Audit records waiting for the writer at most; past this they are dropped and counted.
pub const AUDIT_QUEUE_MAX: usize = 4096;

/// Records the writer appends as one run at most (a proposal batch holds 256 commands).
const AUDIT_RUN_MAX: usize = 256;

/// How often the writer, with nothing queued, writes how many records were dropped.
const DROPPED_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// How the data path's records are kept.
#[derive(Debug, Clone, Copy)]
pub struct AuditConfig {
    /// Record one data access in this many (1 = every one).
    pub data_access_every: u64,
    /// Refused-credential records per second, sustained.
    pub auth_failures_per_s: u32,
    /// Refused-credential records in a burst.
    pub auth_failures_burst: u32,
}

impl Default for AuditConfig {
    fn default() -> AuditConfig {
        AuditConfig { data_access_every: 1, auth_failures_per_s: 10, auth_failures_burst: 100 }
    }
}

/// Hands records to the writer task; see the module's notes.
#[derive(Debug)]
pub struct AuditSink {
    queue: mpsc::Sender<AuditEntry>,
    config: AuditConfig,
    data_accesses: AtomicU64,
    failures: Mutex<TokenBucket>,
    dropped: Arc<Dropped>,
}

/// Records not written, by kind, since the writer last said so.
#[derive(Debug, Default)]
struct Dropped {
    data_access: AtomicU64,
    auth_failure: AtomicU64,
    /// Admin operations and successful handshakes of the gRPC front.
    other: AtomicU64,
}

impl AuditSink {
    /// Starts the writer on the current tokio runtime, appending with `root` (the key
    /// manager's root key, loaded again) to `store` (a handle on the key manager's store);
    /// it ends when the sink is dropped, after appending what was queued.
    pub fn start<S: KeyStoreBackend + Send + 'static>(
        root: Box<dyn RootSealer>,
        store: S,
        config: AuditConfig,
    ) -> (Arc<AuditSink>, tokio::task::JoinHandle<()>) {
        let (queue, records) = mpsc::channel(AUDIT_QUEUE_MAX);
        let dropped = Arc::new(Dropped::default());
        let writer = Writer { root, store, log: AuditLog::default() };
        let writer = tokio::spawn(write_records(writer, records, Arc::clone(&dropped)));
        let failures = TokenBucket::new(config.auth_failures_per_s, config.auth_failures_burst);
        let sink = AuditSink {
            queue,
            config,
            data_accesses: AtomicU64::new(0),
            failures: Mutex::new(failures),
            dropped,
        };
        (Arc::new(sink), writer)
    }

    /// A signed request of `tenant`'s, about to run `operation` (sampled).
    pub fn data_access(&self, tenant: TenantId, access_key: &str, operation: &str) {
        let seen = self.data_accesses.fetch_add(1, Ordering::Relaxed);
        if !seen.is_multiple_of(self.config.data_access_every.max(1)) {
            return;
        }
        let entry = AuditEntry {
            time_unix_s: now_unix_s(),
            kind: AuditKind::DataAccess,
            actor: format!("s3 access key {access_key}"),
            actor_key: String::new(),
            role: "s3".to_owned(),
            action: format!("s3 {operation}"),
            target: format!("tenant {tenant}"),
            tenant: Some(tenant.to_string()),
            outcome: AuditOutcome::Allowed,
        };
        self.enqueue(entry, &self.dropped.data_access);
    }

    /// A request signed with an access key nobody holds (rate-limited).
    pub fn unknown_access_key(&self, access_key: &str) {
        let admitted = lock_bucket(&self.failures).take(Instant::now());
        if !admitted {
            self.dropped.auth_failure.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let entry = AuditEntry {
            time_unix_s: now_unix_s(),
            kind: AuditKind::AuthFailure,
            actor: format!("s3 access key {access_key}"),
            actor_key: String::new(),
            role: String::new(),
            action: "s3 request".to_owned(),
            target: "cluster".to_owned(),
            tenant: None,
            outcome: AuditOutcome::Failed { reason: "InvalidAccessKeyId".to_owned() },
        };
        self.enqueue(entry, &self.dropped.auth_failure);
    }

    /// A gRPC call's authorization decision, recorded as `kind`: a data access is sampled
    /// as S3's are, a refusal (`AuthFailure`) rate-limited as refused credentials are,
    /// anything else always queued.
    pub fn decision(&self, kind: AuditKind, event: &AuditEvent) {
        match kind {
            AuditKind::DataAccess => {
                let seen = self.data_accesses.fetch_add(1, Ordering::Relaxed);
                if !seen.is_multiple_of(self.config.data_access_every.max(1)) {
                    return;
                }
                self.enqueue(AuditEntry::from_event(kind, event), &self.dropped.data_access);
            }
            AuditKind::AuthFailure => {
                if !lock_bucket(&self.failures).take(Instant::now()) {
                    self.dropped.auth_failure.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.enqueue(AuditEntry::from_event(kind, event), &self.dropped.auth_failure);
            }
            _ => self.enqueue(AuditEntry::from_event(kind, event), &self.dropped.other),
        }
    }

    /// A TLS handshake on a front end: `Ok(caller)` for a verified peer, `Err(reason)` for
    /// a refused one (rate-limited; no identity then, `remote` is its address).
    pub fn handshake(&self, outcome: Result<&Caller, &str>, remote: &str) {
        if outcome.is_err() && !lock_bucket(&self.failures).take(Instant::now()) {
            self.dropped.auth_failure.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let entry = AuditEntry::handshake(outcome, remote, now_unix_s());
        let dropped = match entry.kind {
            AuditKind::AuthFailure => &self.dropped.auth_failure,
            _ => &self.dropped.other,
        };
        self.enqueue(entry, dropped);
    }

    fn enqueue(&self, entry: AuditEntry, dropped: &AtomicU64) {
        if self.queue.try_send(entry).is_err() {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn lock_bucket(bucket: &Mutex<TokenBucket>) -> std::sync::MutexGuard<'_, TokenBucket> {
    bucket.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the writer appends with. Sampling happened in the sink: its log records every
/// entry it is given.
struct Writer<S> {
    root: Box<dyn RootSealer>,
    store: S,
    log: AuditLog,
}

/// Appends queued records in runs, on a blocking thread (the store waits on consensus),
/// and after each says how many were dropped since the last time.
async fn write_records<S: KeyStoreBackend + Send + 'static>(
    writer: Writer<S>,
    mut records: mpsc::Receiver<AuditEntry>,
    dropped: Arc<Dropped>,
) {
    let writer = Arc::new(Mutex::new(writer));
    let mut open = true;
    while open {
        // A record, or a look at the counts of the dropped every so often (a flood that
        // ends leaves its count written), or the sink gone: a last look, then the end.
        let next = tokio::time::timeout(DROPPED_REPORT_INTERVAL, records.recv()).await;
        let mut batch = match next {
            Ok(Some(entry)) => {
                let mut run = Vec::with_capacity(AUDIT_RUN_MAX);
                run.push(entry);
                while run.len() < AUDIT_RUN_MAX {
                    let Ok(entry) = records.try_recv() else { break };
                    run.push(entry);
                }
                run
            }
            Ok(None) => {
                open = false;
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        for (kind, count) in [
            (AuditKind::DataAccess, dropped.data_access.swap(0, Ordering::Relaxed)),
            (AuditKind::AuthFailure, dropped.auth_failure.swap(0, Ordering::Relaxed)),
            (AuditKind::AdminOperation, dropped.other.swap(0, Ordering::Relaxed)),
        ] {
            if count > 0 {
                batch.push(dropped_entry(kind, count));
            }
        }
        if batch.is_empty() {
            continue;
        }
        let writer = Arc::clone(&writer);
        let appended = tokio::task::spawn_blocking(move || {
            // Only this task takes this lock, one batch at a time.
            let mut writer = writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let Writer { root, store, log } = &mut *writer;
            log.append_all(root.as_ref(), store, batch).map(|_| ())
        })
        .await;
        match appended {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "audit: a data-path record was not written"),
            Err(_) => tracing::error!("audit: the writer's blocking task failed"),
        }
    }
}

fn dropped_entry(kind: AuditKind, count: u64) -> AuditEntry {
    let why = match kind {
        AuditKind::AuthFailure => "over the rate limit or the queue full",
        _ => "the queue full",
    };
    AuditEntry {
        time_unix_s: now_unix_s(),
        kind,
        actor: "kiseki-server".to_owned(),
        actor_key: String::new(),
        role: String::new(),
        action: format!("{count} records not written: {why}"),
        target: "cluster".to_owned(),
        tenant: None,
        outcome: AuditOutcome::Failed { reason: "audit records dropped".to_owned() },
    }
}

/// Seconds since the Unix epoch (0 for a clock before it), as audit records and
/// authorization decisions take time.
pub(crate) fn now_unix_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

/// Admits events at a token bucket's rate and counts the rest, for a record that says how
/// many were left out.
#[derive(Debug)]
pub(crate) struct RateLimited {
    bucket: Mutex<TokenBucket>,
    refused: AtomicU64,
}

impl RateLimited {
    pub(crate) fn new(per_s: u32, burst: u32) -> RateLimited {
        RateLimited {
            bucket: Mutex::new(TokenBucket::new(per_s, burst)),
            refused: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: record this event, and say that `n` before it were not; `None`: over
    /// the rate, counted.
    pub(crate) fn admit(&self) -> Option<u64> {
        if lock_bucket(&self.bucket).take(Instant::now()) {
            Some(self.refused.swap(0, Ordering::Relaxed))
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// A token bucket: `per_s` tokens a second, at most `burst` saved.
#[derive(Debug)]
struct TokenBucket {
    per_s: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    fn new(per_s: u32, burst: u32) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket { per_s: f64::from(per_s), burst, tokens: burst, last: None }
    }

    fn take(&mut self, now: Instant) -> bool {
        let since = self.last.map_or(Duration::ZERO, |last| now.saturating_duration_since(last));
        self.last = Some(now);
        self.tokens = (self.tokens + since.as_secs_f64() * self.per_s).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The `s3s` access hook: anonymous requests are refused (as `s3s` does without a hook);
/// a signed one is recorded as a data access of its key's tenant, and its owner
/// ([`crate::s3::KeyOwner`]) travels with the request to the operation.
pub struct AuditAccess<S> {
    credentials: Arc<S3Credentials<S>>,
    sink: Arc<AuditSink>,
}

impl<S> AuditAccess<S> {
    pub fn new(credentials: Arc<S3Credentials<S>>, sink: Arc<AuditSink>) -> AuditAccess<S> {
        AuditAccess { credentials, sink }
    }
}

impl<S> std::fmt::Debug for AuditAccess<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditAccess").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl<S: KeyStoreBackend + Send + 'static> S3Access for AuditAccess<S> {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        if let Some(slot) = cx.extensions_mut().get::<crate::s3_front::OpSlot>().cloned() {
            slot.set(cx.s3_op().name());
        }
        let Some(credentials) = cx.credentials() else {
            return Err(s3s::s3_error!(AccessDenied, "anonymous requests are not served"));
        };
        // The operation itself answers for a key that vanished since the signature check.
        if let Ok(Some(owner)) = self.credentials.owner(&credentials.access_key) {
            self.sink.data_access(owner.tenant, &credentials.access_key, cx.s3_op().name());
            // Handed to the operation with the request, so it does not look the owner up
            // again.
            cx.extensions_mut().insert(owner);
        }
        Ok(())
    }
}

/// An `s3s` authenticator that records the requests `inner` refuses for an unknown access
/// key (InvalidAccessKeyId) as authentication failures.
pub struct AuditedAuth<A> {
    inner: A,
    sink: Arc<AuditSink>,
}

impl<A> AuditedAuth<A> {
    pub fn new(inner: A, sink: Arc<AuditSink>) -> AuditedAuth<A> {
        AuditedAuth { inner, sink }
    }
}

impl<A> std::fmt::Debug for AuditedAuth<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditedAuth").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl<A: S3Auth> S3Auth for AuditedAuth<A> {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        let secret = self.inner.get_secret_key(access_key).await;
        if let Err(error) = &secret
            && *error.code() == S3ErrorCode::InvalidAccessKeyId
        {
            self.sink.unknown_access_key(access_key);
        }
        secret
    }
}

#[cfg(test)]
mod tests {
    use kiseki_security::keymanager::{LocalRootKey, MemoryKeyStore, MemoryLocking};
    use zeroize::Zeroizing;

    use super::*;

    type Store = Arc<Mutex<MemoryKeyStore>>;

    fn root() -> Box<dyn RootSealer> {
        let root = Zeroizing::new([7u8; 32]);
        Box::new(LocalRootKey::from_bytes("test", &root, MemoryLocking::BestEffort).unwrap())
    }

    /// Drops the sink and waits for the writer to append what was queued.
    async fn finish(sink: Arc<AuditSink>, writer: tokio::task::JoinHandle<()>) {
        drop(sink);
        tokio::time::timeout(Duration::from_secs(10), writer).await.unwrap().unwrap();
    }

    fn records_of(
        store: &Store,
        tenant: TenantId,
    ) -> Vec<kiseki_security::keymanager::ExportedRecord> {
        AuditLog::verify(root().as_ref(), store).expect("an intact chain");
        AuditLog::export_tenant(root().as_ref(), store, tenant).unwrap()
    }

    #[tokio::test]
    async fn data_accesses_are_the_tenants_records_sampled_as_configured() {
        let store = Store::default();
        let config = AuditConfig { data_access_every: 2, ..AuditConfig::default() };
        let (sink, writer) = AuditSink::start(root(), Arc::clone(&store), config);
        let (alice, bob) = (TenantId::new([1; 16]).unwrap(), TenantId::new([2; 16]).unwrap());
        for _ in 0..3 {
            sink.data_access(alice, "KSKALICE", "GetObject");
        }
        sink.data_access(bob, "KSKBOB", "PutObject");
        finish(sink, writer).await;
        // Accesses 1 and 3 of the four are recorded (one in two): both alice's.
        let mine = records_of(&store, alice);
        let accesses: Vec<_> =
            mine.iter().filter(|record| record.entry.kind == AuditKind::DataAccess).collect();
        assert_eq!(accesses.len(), 2, "{mine:?}");
        assert!(accesses.iter().all(|record| record.entry.action == "s3 GetObject"));
        assert!(accesses.iter().all(|record| record.entry.actor.contains("KSKALICE")));
        // Bob's fourth access was sampled out; nothing of alice's is in bob's export.
        let theirs = records_of(&store, bob);
        assert!(theirs.iter().all(|record| !record.entry.actor.contains("KSKALICE")));
        assert!(!theirs.iter().any(|record| record.entry.kind == AuditKind::DataAccess));
    }

    #[tokio::test]
    async fn unknown_keys_are_recorded_up_to_the_rate_and_the_rest_counted() {
        let store = Store::default();
        let config = AuditConfig {
            auth_failures_per_s: 1,
            auth_failures_burst: 3,
            ..AuditConfig::default()
        };
        let (sink, writer) = AuditSink::start(root(), Arc::clone(&store), config);
        for _ in 0..50 {
            sink.unknown_access_key("KSKNOBODY");
        }
        // One more after the writer is idle, so the count of the dropped is written.
        tokio::time::sleep(Duration::from_millis(200)).await;
        sink.unknown_access_key("KSKNOBODY");
        finish(sink, writer).await;
        let (system, tenant_records) =
            AuditLog::cluster_view(root().as_ref(), &store).expect("the cluster view");
        assert_eq!(tenant_records, 0);
        let failures: Vec<_> =
            system.iter().filter(|record| record.entry.kind == AuditKind::AuthFailure).collect();
        let refused = failures.iter().filter(|r| r.entry.action == "s3 request").count();
        assert!((3..=4).contains(&refused), "the burst (and one token back): {failures:?}");
        let counted: u64 = failures
            .iter()
            .filter_map(|r| r.entry.action.split_once(" records not written"))
            .map(|(count, _)| count.parse::<u64>().unwrap())
            .sum();
        assert_eq!(refused as u64 + counted, 51, "every refusal recorded or counted");
    }

    #[test]
    fn a_rate_limit_counts_what_it_refuses_for_the_next_admitted() {
        let limited = RateLimited::new(0, 2);
        assert_eq!(limited.admit(), Some(0));
        assert_eq!(limited.admit(), Some(0));
        assert_eq!(limited.admit(), None);
        assert_eq!(limited.admit(), None);
        assert_eq!(limited.refused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn the_bucket_admits_a_burst_then_its_rate() {
        let mut bucket = TokenBucket::new(10, 3);
        let start = Instant::now();
        let admitted = (0..10).filter(|_| bucket.take(start)).count();
        assert_eq!(admitted, 3, "the burst, then nothing at the same instant");
        // 0.25 s later: 2.5 tokens back, so two more.
        let later = start + Duration::from_millis(250);
        let admitted = (0..10).filter(|_| bucket.take(later)).count();
        assert_eq!(admitted, 2);
        // Never more than the burst, however long the pause.
        let much_later = later + Duration::from_secs(3600);
        let admitted = (0..10).filter(|_| bucket.take(much_later)).count();
        assert_eq!(admitted, 3);
    }
}
