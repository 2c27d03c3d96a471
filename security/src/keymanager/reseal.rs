//! The re-sealer: moves chunks sealed under older master-key epochs to a target epoch,
//! a batch at a time, from a cursor, so it can be paused, resumed (also after a restart,
//! from a saved cursor and progress) and run in the background without holding anything
//! for long.
//!
//! Each chunk is opened with its old DEK and sealed again with the target epoch's DEK; an
//! isolated tenant's chunk keeps its tenancy and tenant wrapping. A chunk of a shredded
//! tenant cannot be opened any more and is counted (`unreadable`), not moved; a chunk that
//! cannot be read or opened for another reason (a failed checksum, an epoch already
//! retired) is counted as `failed` and passed over. Anything transient (a busy store, a key
//! store that does not answer) stops the step with an error and leaves the cursor before
//! the chunk, so the next step tries it again.
//!
//! Once a pass is done with no `failed` chunk, no live chunk names an epoch older than the
//! target except a shredded tenant's (which nothing can open anyway), and the older epochs
//! can be retired: chunks stored after the pass started are sealed under the current epoch,
//! and a cursor in the store's stable order passes every chunk stored for the whole pass.
//!
//! The keys come through [`ResealKeys`], so a caller whose key manager sits behind a lock
//! holds it per key, never across the chunk store's I/O.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::envelope::{Envelope, SealParams};
use crate::ids::{ChunkId, Tenancy, TenantId};
use crate::keymanager::error::KeyManagerError;
use crate::keymanager::manager::KeyManager;
use crate::keymanager::store::{KeyScope, KeyStoreBackend};
use crate::keys::{Dek, MasterKey, TenantSecret};

/// Where the chunks are (the engine's chunk store in a node).
pub trait ChunkSource {
    /// Up to `max` chunk ids after `after` (from the start if `None`), in a stable order.
    fn chunks_after(
        &mut self,
        after: Option<ChunkId>,
        max: usize,
    ) -> Result<Vec<ChunkId>, ChunkSourceError>;
    /// The chunk's envelope; `None` when it is no longer stored.
    fn read(&mut self, id: &ChunkId) -> Result<Option<Envelope>, ChunkSourceError>;
    /// Replaces a chunk's envelope (same id, same plaintext). A chunk gone meanwhile is no
    /// error: nothing names its old epoch any more.
    fn replace(&mut self, id: &ChunkId, envelope: Envelope) -> Result<(), ChunkSourceError>;
}

/// Why a chunk source could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChunkSourceError {
    /// This chunk cannot be read (it fails its checksum, or is not an envelope): counted
    /// as failed and passed over.
    Unreadable { problem: String },
    /// The store cannot answer now (busy, stopped, full): the step stops and is retried.
    Unavailable { problem: String },
}

/// The keys a re-seal needs. Implemented by [`KeyManager`] and by a key manager behind a
/// [`Mutex`] (locked for each key only).
pub trait ResealKeys {
    fn master_key(&mut self, epoch: u32) -> Result<MasterKey, KeyManagerError>;
    fn tenant_secret(&mut self, tenant: TenantId) -> Result<TenantSecret, KeyManagerError>;
}

impl<S: KeyStoreBackend> ResealKeys for KeyManager<S> {
    fn master_key(&mut self, epoch: u32) -> Result<MasterKey, KeyManagerError> {
        KeyManager::master_key(self, epoch)
    }

    fn tenant_secret(&mut self, tenant: TenantId) -> Result<TenantSecret, KeyManagerError> {
        KeyManager::tenant_secret(self, tenant)
    }
}

impl<S: KeyStoreBackend> ResealKeys for &Mutex<KeyManager<S>> {
    fn master_key(&mut self, epoch: u32) -> Result<MasterKey, KeyManagerError> {
        self.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).master_key(epoch)
    }

    fn tenant_secret(&mut self, tenant: TenantId) -> Result<TenantSecret, KeyManagerError> {
        self.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).tenant_secret(tenant)
    }
}

/// Why a step stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResealError {
    /// The key manager failed (not for one chunk: its store, the target epoch).
    Keys(KeyManagerError),
    /// The chunk store could not answer; `problem` says why.
    Chunks { problem: String },
}

/// How far a pass got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResealProgress {
    pub examined: u64,
    pub resealed: u64,
    /// Chunks of shredded tenants, which cannot be opened.
    pub unreadable: u64,
    /// Chunks that could not be read or opened otherwise (checksum, retired epoch).
    pub failed: u64,
    pub done: bool,
}

/// One re-seal pass towards `target_epoch`.
#[derive(Debug)]
pub struct Resealer {
    target_epoch: u32,
    cursor: Option<ChunkId>,
    paused: Arc<AtomicBool>,
    progress: ResealProgress,
}

impl Resealer {
    pub fn new(target_epoch: u32) -> Resealer {
        Resealer::resume_from(target_epoch, None, ResealProgress::default())
    }

    /// A pass that continues after `cursor` with the counts so far (both saved from
    /// [`Resealer::cursor`] and [`Resealer::progress`]).
    pub fn resume_from(
        target_epoch: u32,
        cursor: Option<ChunkId>,
        progress: ResealProgress,
    ) -> Resealer {
        Resealer { target_epoch, cursor, paused: Arc::new(AtomicBool::new(false)), progress }
    }

    /// A flag another thread can set to pause the pass (and clear to resume it).
    pub fn pause_handle(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.paused)
    }

    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub fn target_epoch(&self) -> u32 {
        self.target_epoch
    }

    pub fn cursor(&self) -> Option<ChunkId> {
        self.cursor
    }

    pub fn progress(&self) -> ResealProgress {
        self.progress
    }

    /// Re-seals up to `batch` chunks after the cursor; does nothing while paused.
    pub fn step(
        &mut self,
        keys: &mut dyn ResealKeys,
        chunks: &mut dyn ChunkSource,
        batch: usize,
    ) -> Result<ResealProgress, ResealError> {
        if self.is_paused() || self.progress.done {
            return Ok(self.progress);
        }
        let ids = chunks.chunks_after(self.cursor, batch.max(1)).map_err(chunk_error)?;
        if ids.is_empty() {
            self.progress.done = true;
            return Ok(self.progress);
        }
        for id in ids {
            self.one(keys, chunks, &id)?;
            self.progress.examined += 1;
            self.cursor = Some(id);
        }
        Ok(self.progress)
    }

    /// Moves one chunk if it names an older epoch; counts what it could not move.
    fn one(
        &mut self,
        keys: &mut dyn ResealKeys,
        chunks: &mut dyn ChunkSource,
        id: &ChunkId,
    ) -> Result<(), ResealError> {
        let envelope = match chunks.read(id) {
            Ok(Some(envelope)) => envelope,
            Ok(None) => return Ok(()),
            Err(ChunkSourceError::Unreadable { .. }) => {
                self.progress.failed += 1;
                return Ok(());
            }
            Err(error) => return Err(chunk_error(error)),
        };
        if envelope.key_epoch() >= self.target_epoch {
            return Ok(());
        }
        match self.reseal_one(keys, &envelope) {
            Ok(resealed) => {
                chunks.replace(id, resealed).map_err(chunk_error)?;
                self.progress.resealed += 1;
            }
            Err(KeyManagerError::TenantKeysDestroyed { .. }) => self.progress.unreadable += 1,
            // The chunk's own epoch retired already, or its tag does not check out.
            Err(KeyManagerError::UnknownEpoch { scope: KeyScope::System, epoch })
                if epoch == envelope.key_epoch() =>
            {
                self.progress.failed += 1;
            }
            Err(KeyManagerError::Crypto(_)) => self.progress.failed += 1,
            Err(error) => return Err(ResealError::Keys(error)),
        }
        Ok(())
    }

    fn reseal_one(
        &self,
        keys: &mut dyn ResealKeys,
        envelope: &Envelope,
    ) -> Result<Envelope, KeyManagerError> {
        let secret = match envelope.tenant() {
            Tenancy::Shared => None,
            Tenancy::Isolated(tenant) => Some(keys.tenant_secret(tenant)?),
        };
        let id = envelope.chunk_id();
        let old = keys.master_key(envelope.key_epoch())?;
        let plaintext = envelope.open(&Dek::derive(&old, &id, secret.as_ref()))?;
        let new = keys.master_key(self.target_epoch)?;
        let dek = Dek::derive(&new, &id, secret.as_ref());
        let params = match envelope.tenant() {
            Tenancy::Shared => SealParams::new(&dek),
            Tenancy::Isolated(_) => SealParams::new(&dek)
                .with_tenant_wrapping(envelope.tenant_kek_epoch(), envelope.wrapped_params()),
        };
        Ok(Envelope::seal(&plaintext, &params)?)
    }
}

fn chunk_error(error: ChunkSourceError) -> ResealError {
    match error {
        ChunkSourceError::Unreadable { problem } | ChunkSourceError::Unavailable { problem } => {
            ResealError::Chunks { problem }
        }
    }
}

impl From<KeyManagerError> for ResealError {
    fn from(error: KeyManagerError) -> ResealError {
        ResealError::Keys(error)
    }
}

impl fmt::Display for ChunkSourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkSourceError::Unreadable { problem } => write!(f, "chunk unreadable: {problem}"),
            ChunkSourceError::Unavailable { problem } => {
                write!(f, "chunk store unavailable: {problem}")
            }
        }
    }
}

impl fmt::Display for ResealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResealError::Keys(error) => write!(f, "re-seal: {error}"),
            ResealError::Chunks { problem } => write!(f, "re-seal: chunk store: {problem}"),
        }
    }
}

impl std::error::Error for ChunkSourceError {}
impl std::error::Error for ResealError {}
