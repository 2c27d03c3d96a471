//! The re-sealer: moves chunks sealed under older master-key epochs to a target epoch,
//! a batch at a time, from a cursor, so it can be paused, resumed (also after a restart,
//! from a saved cursor) and run in the background without holding anything for long.
//!
//! Each chunk is opened with its old DEK and sealed again with the target epoch's DEK; an
//! isolated tenant's chunk keeps its tenancy and tenant wrapping. A chunk of a shredded
//! tenant cannot be opened any more and is counted, not moved. Once a pass is done, no
//! live chunk names the old epochs and they can be retired.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::envelope::{Envelope, SealParams};
use crate::ids::{ChunkId, Tenancy};
use crate::keymanager::error::KeyManagerError;
use crate::keymanager::manager::KeyManager;
use crate::keymanager::store::KeyStoreBackend;
use crate::keys::Dek;

/// Where the chunks are (the engine's chunk store in a node).
pub trait ChunkSource {
    /// Up to `max` chunk ids after `after` (from the start if `None`), in a stable order.
    fn chunks_after(&self, after: Option<ChunkId>, max: usize) -> Vec<ChunkId>;
    fn read(&self, id: &ChunkId) -> Option<Envelope>;
    /// Replaces a chunk's envelope (same id, same plaintext).
    fn replace(&mut self, id: &ChunkId, envelope: Envelope) -> Result<(), String>;
}

/// How far a pass got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResealProgress {
    pub examined: u64,
    pub resealed: u64,
    /// Chunks of shredded tenants, which cannot be opened.
    pub unreadable: u64,
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
        Resealer::resume_from(target_epoch, None)
    }

    /// A pass that continues after `cursor` (saved from [`Resealer::cursor`]).
    pub fn resume_from(target_epoch: u32, cursor: Option<ChunkId>) -> Resealer {
        Resealer {
            target_epoch,
            cursor,
            paused: Arc::new(AtomicBool::new(false)),
            progress: ResealProgress::default(),
        }
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

    pub fn cursor(&self) -> Option<ChunkId> {
        self.cursor
    }

    pub fn progress(&self) -> ResealProgress {
        self.progress
    }

    /// Re-seals up to `batch` chunks after the cursor; does nothing while paused.
    pub fn step<S: KeyStoreBackend>(
        &mut self,
        keys: &mut KeyManager<S>,
        chunks: &mut dyn ChunkSource,
        batch: usize,
    ) -> Result<ResealProgress, KeyManagerError> {
        if self.is_paused() || self.progress.done {
            return Ok(self.progress);
        }
        let ids = chunks.chunks_after(self.cursor, batch.max(1));
        if ids.is_empty() {
            self.progress.done = true;
            return Ok(self.progress);
        }
        for id in ids {
            self.progress.examined += 1;
            if let Some(envelope) = chunks.read(&id)
                && envelope.key_epoch() < self.target_epoch
            {
                match self.reseal_one(keys, &envelope) {
                    Ok(resealed) => {
                        chunks.replace(&id, resealed).map_err(|_| {
                            KeyManagerError::CorruptRecord { what: "chunk store refused a re-seal" }
                        })?;
                        self.progress.resealed += 1;
                    }
                    Err(KeyManagerError::TenantKeysDestroyed { .. }) => {
                        self.progress.unreadable += 1;
                    }
                    Err(error) => return Err(error),
                }
            }
            self.cursor = Some(id);
        }
        Ok(self.progress)
    }

    fn reseal_one<S: KeyStoreBackend>(
        &self,
        keys: &mut KeyManager<S>,
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
