//! The background re-seal of a node's chunks after a master-key rotation.
//!
//! After `kiseki-server keys rotate`, chunks sealed under older epochs still open (the old
//! epochs stay stored) until they are re-sealed under the current epoch; only then may
//! `keys retire` drop an old epoch. A running node does that in the background:
//! [`ResealTask`] walks the engine's chunks in id order
//! ([`kiseki_engine::EngineHandle::chunk_ids_after`]) with the key manager's
//! [`Resealer`], a small batch at a time with a pause between batches, and replaces each
//! old envelope in place ([`kiseki_engine::EngineHandle::replace`]: the new envelope is
//! durable before the old one is given up, so a crash never loses a chunk).
//!
//! What it keeps, in the metadata dir (`DATA/meta/`):
//! - `reseal.json` ([`ResealState`]): the pass's target epoch, cursor and counts, written
//!   after every batch (a new file renamed over the old one, then the directory synced), so
//!   a restart resumes where the last batch ended; `keys reseal --status` prints it and
//!   `keys retire` reads it ([`check_retire`]);
//! - `reseal.paused`: while this file exists the pass stops between batches
//!   (`keys reseal --pause` makes it, `--resume` removes it; the node polls for it).
//!
//! What it does not do: re-seal another node's chunks (one node's engine), or retire an
//! epoch itself (an operator does, once the status says the pass is done).
//!
//! Invariants: a pass counts as done only when a walk from the first id to the last met
//! no transient error (a transient error stops the batch before its chunk); `keys retire`
//! of an epoch is refused unless a done pass towards a later epoch with no failed chunk is
//! recorded. Keys are locked per key, never across engine I/O. Progress goes to the log
//! and to [`ResealCounters`] (the admin endpoint's metrics); no key or plaintext does.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiseki_engine::{EngineError, EngineHandle};
use kiseki_security::keymanager::{
    ChunkSource, ChunkSourceError, KeyManager, KeyManagerError, KeyStoreBackend, ResealProgress,
    Resealer,
};
use kiseki_security::{ChunkId, Envelope};
use serde::{Deserialize, Serialize};

use crate::constants::{
    RESEAL_BATCH_CHUNKS, RESEAL_BATCH_INTERVAL_MS, RESEAL_BUSY_RETRIES, RESEAL_ERROR_BACKOFF_SECS,
    RESEAL_IDLE_CHECK_SECS, RESEAL_LOG_EVERY_BATCHES,
};

/// The state file, in the metadata dir.
pub const STATE_FILE: &str = "reseal.json";
/// The pause flag, in the metadata dir.
pub const PAUSE_FILE: &str = "reseal.paused";
/// The state file's format; another is refused, never guessed at.
const STATE_VERSION: u32 = 1;

/// A pass's persisted state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResealState {
    pub version: u32,
    /// The epoch the pass moves chunks to (the current one when it started).
    pub target_epoch: u32,
    /// Lower-case hex of the last chunk id handled; absent before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    pub examined: u64,
    pub resealed: u64,
    /// Chunks of crypto-shredded tenants: nothing can open them; not moved.
    pub unreadable: u64,
    /// Chunks that could not be read or opened (checksum, a retired epoch): not moved.
    pub failed: u64,
    pub done: bool,
}

/// How the task paces itself; [`ResealConfig::default`] is the node's.
#[derive(Debug, Clone, Copy)]
pub struct ResealConfig {
    pub batch_chunks: usize,
    /// Pause after each batch, so the data path keeps the engine.
    pub batch_interval: Duration,
    /// How often an idle task (or a paused one) looks again for work or a resume.
    pub idle_check: Duration,
    pub error_backoff: Duration,
    pub log_every_batches: u64,
}

impl Default for ResealConfig {
    fn default() -> ResealConfig {
        ResealConfig {
            batch_chunks: RESEAL_BATCH_CHUNKS,
            batch_interval: Duration::from_millis(RESEAL_BATCH_INTERVAL_MS),
            idle_check: Duration::from_secs(RESEAL_IDLE_CHECK_SECS),
            error_backoff: Duration::from_secs(RESEAL_ERROR_BACKOFF_SECS),
            log_every_batches: RESEAL_LOG_EVERY_BATCHES,
        }
    }
}

/// Where a running task is, for metrics and tests.
#[derive(Debug, Default)]
pub struct ResealCounters {
    pub target_epoch: AtomicU64,
    pub examined: AtomicU64,
    pub resealed: AtomicU64,
    pub unreadable: AtomicU64,
    pub failed: AtomicU64,
    /// Batches run since the node started.
    pub batches: AtomicU64,
    /// 0 idle (nothing to do), 1 running, 2 paused, 3 done (older epochs may be retired).
    pub phase: AtomicU64,
}

pub const PHASE_IDLE: u64 = 0;
pub const PHASE_RUNNING: u64 = 1;
pub const PHASE_PAUSED: u64 = 2;
pub const PHASE_DONE: u64 = 3;

/// Why the state could not be read or written.
#[derive(Debug)]
#[non_exhaustive]
pub enum ResealStateError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// Not a state file this build reads.
    Format {
        path: PathBuf,
        reason: String,
    },
}

/// The running background re-seal of a node.
#[derive(Debug)]
pub struct ResealTask {
    stop: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
    counters: Arc<ResealCounters>,
    handle: tokio::task::JoinHandle<()>,
}

impl ResealTask {
    /// Starts the task on the current tokio runtime; see the module's notes.
    pub fn spawn<S: KeyStoreBackend + Send + 'static>(
        meta: PathBuf,
        engine: EngineHandle,
        keys: Arc<Mutex<KeyManager<S>>>,
        config: ResealConfig,
    ) -> ResealTask {
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(tokio::sync::Notify::new());
        let counters = Arc::new(ResealCounters::default());
        let run = Run {
            meta,
            engine,
            keys,
            config,
            stop: Arc::clone(&stop),
            wake: Arc::clone(&wake),
            counters: Arc::clone(&counters),
        };
        let handle = tokio::spawn(run.main());
        ResealTask { stop, wake, counters, handle }
    }

    pub fn counters(&self) -> Arc<ResealCounters> {
        Arc::clone(&self.counters)
    }

    /// Stops after the batch in flight (its state is saved) and waits for the task.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        if let Err(error) = self.handle.await {
            tracing::warn!(%error, "re-seal: the task ended abnormally");
        }
    }
}

/// The chunks of an engine, through its blocking calls (call from a blocking thread).
/// `Busy` is retried a few times with a short sleep before it counts as unavailable.
#[derive(Debug, Clone)]
pub struct EngineChunks {
    engine: EngineHandle,
}

impl EngineChunks {
    pub fn new(engine: EngineHandle) -> EngineChunks {
        EngineChunks { engine }
    }

    fn retrying<T>(
        &self,
        mut call: impl FnMut() -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let mut tries = 0;
        loop {
            match call() {
                Err(EngineError::Busy { .. }) if tries < RESEAL_BUSY_RETRIES => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(2 << tries));
                }
                other => return other,
            }
        }
    }
}

impl ChunkSource for EngineChunks {
    fn chunks_after(
        &mut self,
        after: Option<ChunkId>,
        max: usize,
    ) -> Result<Vec<ChunkId>, ChunkSourceError> {
        let after = after.map(|id| *id.as_bytes());
        let ids = self.retrying(|| self.engine.chunk_ids_after_blocking(after, max));
        Ok(ids.map_err(unavailable)?.into_iter().map(ChunkId::from_bytes).collect())
    }

    fn read(&mut self, id: &ChunkId) -> Result<Option<Envelope>, ChunkSourceError> {
        match self.retrying(|| self.engine.get_blocking(*id.as_bytes())) {
            Ok(envelope) => Ok(Some(envelope)),
            Err(EngineError::NotFound { .. }) => Ok(None),
            Err(
                error @ (EngineError::Integrity { .. }
                | EngineError::NotAnEnvelope { .. }
                | EngineError::ChunkIdMismatch { .. }),
            ) => Err(ChunkSourceError::Unreadable { problem: error.to_string() }),
            Err(error) => Err(unavailable(error)),
        }
    }

    fn replace(&mut self, _id: &ChunkId, envelope: Envelope) -> Result<(), ChunkSourceError> {
        match self.retrying(|| self.engine.replace_blocking(envelope.clone())) {
            Ok(()) | Err(EngineError::NotFound { .. }) => Ok(()),
            Err(error) => Err(unavailable(error)),
        }
    }
}

fn unavailable(error: EngineError) -> ChunkSourceError {
    ChunkSourceError::Unavailable { problem: error.to_string() }
}

/// Reads the pass's state; `None` when no pass ever ran.
pub fn load_state(meta: &Path) -> Result<Option<ResealState>, ResealStateError> {
    let path = meta.join(STATE_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(source) if source.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ResealStateError::Io { path, source }),
    };
    let state: ResealState = serde_json::from_str(&text).map_err(|error| {
        ResealStateError::Format { path: path.clone(), reason: error.to_string() }
    })?;
    if state.version != STATE_VERSION {
        let reason = format!("version {} (this build reads {STATE_VERSION})", state.version);
        return Err(ResealStateError::Format { path, reason });
    }
    if state.cursor.as_deref().is_some_and(|hex| crate::hex::decode::<32>(hex).is_none()) {
        return Err(ResealStateError::Format { path, reason: "cursor is not a chunk id".into() });
    }
    Ok(Some(state))
}

/// Writes the state crash-safely: a new 0600 file, synced, renamed over the old one, and
/// the directory synced.
pub fn save_state(meta: &Path, state: &ResealState) -> Result<(), ResealStateError> {
    let path = meta.join(STATE_FILE);
    let text = serde_json::to_string_pretty(state).expect("the state serializes");
    kiseki_security::replace_file_atomically(&path, text.as_bytes(), 0o600).map_err(|error| {
        let source = match error {
            kiseki_security::PkiError::Io { source, .. } => source,
            other => io::Error::other(other.to_string()),
        };
        ResealStateError::Io { path, source }
    })
}

/// Whether an operator paused the pass.
pub fn is_paused(meta: &Path) -> bool {
    meta.join(PAUSE_FILE).exists()
}

/// Pauses (makes the flag file) or resumes (removes it) the pass.
pub fn set_paused(meta: &Path, paused: bool) -> io::Result<()> {
    let path = meta.join(PAUSE_FILE);
    if paused {
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
        Ok(())
    } else {
        match fs::remove_file(&path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }
}

/// Whether master-key epoch `epoch` may be retired: only when a done pass towards a later
/// epoch, with no failed chunk, is recorded (a node that never stored a chunk has nothing
/// to check: `has_chunks` false). The `Err` says what to do instead.
pub fn check_retire(meta: &Path, epoch: u32, has_chunks: bool) -> Result<(), String> {
    if !has_chunks {
        return Ok(());
    }
    let state = load_state(meta).map_err(|error| error.to_string())?;
    match state {
        Some(state) if state.done && state.target_epoch > epoch && state.failed == 0 => Ok(()),
        Some(state) if state.done && state.target_epoch > epoch => Err(format!(
            "the re-seal to epoch {} passed over {} chunk(s) it could not read; they may \
             still name epoch {epoch} (see the log; repair them, then start the node for a new \
             pass)",
            state.target_epoch, state.failed
        )),
        Some(state) if state.target_epoch > epoch => Err(format!(
            "chunks may still name epoch {epoch}: the re-seal to epoch {} is not done ({} \
             chunk(s) examined); let the node run it to the end (`keys reseal --status`)",
            state.target_epoch, state.examined
        )),
        _ => Err(format!(
            "chunks may still name epoch {epoch}: no re-seal to a later epoch has run; start \
             the node so it re-seals, then retire (`keys reseal --status`)"
        )),
    }
}

/// The task's state between batches.
struct Run<S> {
    meta: PathBuf,
    engine: EngineHandle,
    keys: Arc<Mutex<KeyManager<S>>>,
    config: ResealConfig,
    stop: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
    counters: Arc<ResealCounters>,
}

/// What to do next: nothing, or a pass from where it stopped.
enum Plan {
    Idle,
    Pass { resealer: Resealer, state: ResealState },
}

impl<S: KeyStoreBackend + Send + 'static> Run<S> {
    async fn main(self) {
        while !self.stopped() {
            match self.plan().await {
                Ok(Plan::Pass { resealer, state }) => self.pass(resealer, state).await,
                Ok(Plan::Idle) => self.sleep(self.config.idle_check).await,
                Err(error) => {
                    tracing::warn!(%error, "re-seal: cannot plan a pass; trying again later");
                    self.sleep(self.config.error_backoff).await;
                }
            }
        }
    }

    /// Reads the current epoch, the stored ones and the saved state: a pass to resume, a
    /// new one (an older epoch is stored and no pass towards the current one is done), or
    /// nothing.
    async fn plan(&self) -> Result<Plan, String> {
        let keys = Arc::clone(&self.keys);
        let epochs = tokio::task::spawn_blocking(move || {
            let keys = crate::objects::lock(&keys);
            Ok::<_, KeyManagerError>((keys.master_epoch()?, keys.master_epochs()?))
        })
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())?;
        let (current, stored) = epochs;
        let saved = load_state(&self.meta).map_err(|error| error.to_string())?;
        let plan = match saved {
            Some(state) if state.target_epoch == current && state.done => {
                self.show(&state, PHASE_DONE);
                Plan::Idle
            }
            Some(state) if state.target_epoch == current => {
                let cursor = state
                    .cursor
                    .as_deref()
                    .and_then(crate::hex::decode::<32>)
                    .map(ChunkId::from_bytes);
                let progress = ResealProgress {
                    examined: state.examined,
                    resealed: state.resealed,
                    unreadable: state.unreadable,
                    failed: state.failed,
                    done: false,
                };
                tracing::info!(
                    target_epoch = current,
                    examined = state.examined,
                    "re-seal: resuming the pass from its saved cursor"
                );
                Plan::Pass { resealer: Resealer::resume_from(current, cursor, progress), state }
            }
            _ if stored.iter().any(|&epoch| epoch < current) => {
                tracing::info!(
                    target_epoch = current,
                    older = ?stored.iter().filter(|&&e| e < current).collect::<Vec<_>>(),
                    "re-seal: older master-key epochs are stored; re-sealing chunks to the \
                     current epoch"
                );
                let state = ResealState {
                    version: STATE_VERSION,
                    target_epoch: current,
                    ..ResealState::default()
                };
                Plan::Pass { resealer: Resealer::new(current), state }
            }
            _ => {
                self.counters.phase.store(PHASE_IDLE, Ordering::Relaxed);
                Plan::Idle
            }
        };
        Ok(plan)
    }

    /// Runs a pass batch by batch until it is done or the task stops; pauses while the
    /// flag file exists.
    async fn pass(&self, mut resealer: Resealer, mut state: ResealState) {
        self.show(&state, PHASE_RUNNING);
        let mut chunks = EngineChunks::new(self.engine.clone());
        let mut paused_logged = false;
        while !self.stopped() {
            if is_paused(&self.meta) {
                if !paused_logged {
                    tracing::info!(examined = state.examined, "re-seal: paused");
                    paused_logged = true;
                }
                self.show(&state, PHASE_PAUSED);
                self.sleep(self.config.batch_interval.max(Duration::from_millis(50))).await;
                continue;
            }
            if paused_logged {
                tracing::info!(examined = state.examined, "re-seal: resumed");
                paused_logged = false;
                self.show(&state, PHASE_RUNNING);
            }
            let keys = Arc::clone(&self.keys);
            let batch = self.config.batch_chunks;
            let stepped = tokio::task::spawn_blocking(move || {
                let result = resealer.step(&mut &*keys, &mut chunks, batch);
                (resealer, chunks, result)
            })
            .await;
            let result;
            (resealer, chunks, result) = match stepped {
                Ok(parts) => parts,
                Err(error) => {
                    tracing::warn!(%error, "re-seal: a batch panicked; the pass stops");
                    return;
                }
            };
            state = saved_state(&state, &resealer);
            if let Err(error) = save_state(&self.meta, &state) {
                tracing::warn!(%error, "re-seal: cannot save the cursor; a restart repeats work");
            }
            let batches = self.counters.batches.fetch_add(1, Ordering::Relaxed) + 1;
            match result {
                Ok(progress) if progress.done => {
                    self.show(&state, PHASE_DONE);
                    tracing::info!(
                        target_epoch = state.target_epoch,
                        examined = state.examined,
                        resealed = state.resealed,
                        unreadable = state.unreadable,
                        failed = state.failed,
                        "re-seal: pass done; older epochs may be retired (`keys retire`)"
                    );
                    return;
                }
                Ok(_) => {
                    self.show(&state, PHASE_RUNNING);
                    if batches.is_multiple_of(self.config.log_every_batches.max(1)) {
                        tracing::info!(
                            target_epoch = state.target_epoch,
                            examined = state.examined,
                            resealed = state.resealed,
                            "re-seal: progress"
                        );
                    }
                    self.sleep(self.config.batch_interval).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "re-seal: batch stopped; trying again later");
                    self.sleep(self.config.error_backoff).await;
                }
            }
        }
    }

    fn show(&self, state: &ResealState, phase: u64) {
        let c = &self.counters;
        c.target_epoch.store(u64::from(state.target_epoch), Ordering::Relaxed);
        c.examined.store(state.examined, Ordering::Relaxed);
        c.resealed.store(state.resealed, Ordering::Relaxed);
        c.unreadable.store(state.unreadable, Ordering::Relaxed);
        c.failed.store(state.failed, Ordering::Relaxed);
        c.phase.store(phase, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps, or less when the task is stopped.
    async fn sleep(&self, duration: Duration) {
        if self.stopped() {
            return;
        }
        let _ = tokio::time::timeout(duration, self.wake.notified()).await;
    }
}

fn saved_state(before: &ResealState, resealer: &Resealer) -> ResealState {
    let progress = resealer.progress();
    ResealState {
        version: STATE_VERSION,
        target_epoch: before.target_epoch,
        cursor: resealer.cursor().map(|id| crate::hex::encode(id.as_bytes())),
        examined: progress.examined,
        resealed: progress.resealed,
        unreadable: progress.unreadable,
        failed: progress.failed,
        done: progress.done,
    }
}

impl fmt::Display for ResealState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = if self.done { "done" } else { "in progress" };
        write!(
            f,
            "re-seal to epoch {}: {phase}; {} chunk(s) examined, {} re-sealed, {} of shredded \
             tenants (unreadable, not moved), {} failed",
            self.target_epoch, self.examined, self.resealed, self.unreadable, self.failed
        )
    }
}

impl fmt::Display for ResealStateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResealStateError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            ResealStateError::Format { path, reason } => {
                write!(f, "{}: not a re-seal state this build reads: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for ResealStateError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_round_trips_and_a_foreign_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_state(dir.path()).unwrap(), None);
        let state = ResealState {
            version: STATE_VERSION,
            target_epoch: 3,
            cursor: Some(crate::hex::encode(&[0xAB; 32])),
            examined: 7,
            resealed: 5,
            unreadable: 1,
            failed: 0,
            done: false,
        };
        save_state(dir.path(), &state).unwrap();
        assert_eq!(load_state(dir.path()).unwrap(), Some(state.clone()));
        assert_eq!(crate::hex::decode(state.cursor.as_deref().unwrap()), Some([0xAB; 32]));
        let mode = fs::metadata(dir.path().join(STATE_FILE)).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
        fs::write(dir.path().join(STATE_FILE), r#"{"version":9}"#).unwrap();
        assert!(matches!(load_state(dir.path()), Err(ResealStateError::Format { .. })));
        let bad_cursor = ResealState { cursor: Some("zz".into()), ..state };
        fs::write(dir.path().join(STATE_FILE), serde_json::to_string(&bad_cursor).unwrap())
            .unwrap();
        assert!(matches!(load_state(dir.path()), Err(ResealStateError::Format { .. })));
    }

    #[test]
    fn retire_needs_a_done_pass_to_a_later_epoch_without_failures() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path();
        assert!(check_retire(meta, 1, false).is_ok(), "no chunks: nothing names epoch 1");
        assert!(check_retire(meta, 1, true).unwrap_err().contains("no re-seal"));
        let mut state =
            ResealState { version: STATE_VERSION, target_epoch: 2, ..ResealState::default() };
        save_state(meta, &state).unwrap();
        assert!(check_retire(meta, 1, true).unwrap_err().contains("not done"));
        state.done = true;
        state.failed = 2;
        save_state(meta, &state).unwrap();
        assert!(check_retire(meta, 1, true).unwrap_err().contains("could not read"));
        state.failed = 0;
        save_state(meta, &state).unwrap();
        assert!(check_retire(meta, 1, true).is_ok());
        assert!(check_retire(meta, 2, true).is_err(), "a pass to 2 says nothing about 2");
    }

    #[test]
    fn the_pause_flag_is_a_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_paused(dir.path()));
        set_paused(dir.path(), true).unwrap();
        assert!(is_paused(dir.path()));
        set_paused(dir.path(), true).unwrap();
        set_paused(dir.path(), false).unwrap();
        set_paused(dir.path(), false).unwrap();
        assert!(!is_paused(dir.path()));
    }
}
