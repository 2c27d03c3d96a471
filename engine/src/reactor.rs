//! Thread-per-core: reactors that own shards, and the `EngineHandle` front ends call.
//!
//! Each reactor is one thread, pinned to its core, that opens its shard (and so its device,
//! ring and DMA pool) itself and never shares it. Requests reach it only through a bounded
//! crossbeam channel; a full channel answers `EngineError::Busy` at once, it never grows.
//! The reactor sleeps in exactly one place, its device's `submit_and_reap`, with a doorbell
//! armed in the ring: a sender rings it only when the reactor said it may sleep, so a busy
//! reactor costs senders no system call. Replies travel on tokio oneshots, so callers await
//! them from async code or block on them from plain threads.
//!
//! Typed at this boundary: a front end puts an [`Envelope`] (made only by sealing or by a
//! checked parse, so plaintext cannot be stored by mistake) and gets one back; the bytes a
//! get reads must parse as an envelope naming the chunk id asked for, or the read is an
//! integrity error (a CRC-clean extent holding another chunk's envelope is a bug or an
//! attack, never data to hand out).
//!
//! Routing: a chunk belongs to shard `u64::from_le_bytes(chunk_id[..8]) % shards`; chunk ids
//! are SHA-256 or HMAC outputs, so the low bytes are uniform.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use kiseki_devices::{BlockDevice, Doorbell, DoorbellRinger, affinity};
use kiseki_security::Envelope;
use tokio::sync::oneshot;

use crate::constants::{LIST_CHUNK_IDS_MAX, REACTOR_COMMAND_BATCH, REACTOR_QUEUE_CAPACITY};
use crate::{Ack, ChunkId, EngineError, Outcome, Shard, Stats, Ticket};

/// Opens reactor `index`'s shard, on that reactor's own thread.
pub type ShardOpener<D> = dyn Fn(usize) -> Result<Shard<D>, EngineError> + Send + Sync;

/// The running engine: its handle and its reactor threads.
#[derive(Debug)]
pub struct Engine {
    handle: EngineHandle,
    reactors: Vec<JoinHandle<Result<(), EngineError>>>,
}

/// What front ends hold: cheap to clone, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    lanes: Arc<[Lane]>,
}

/// The way into one reactor.
#[derive(Debug)]
struct Lane {
    commands: Sender<Command>,
    ringer: DoorbellRinger,
    /// Set by the reactor just before it may sleep; a sender that takes it rings.
    may_sleep: Arc<AtomicBool>,
}

enum Command {
    Put { envelope: Envelope, reply: oneshot::Sender<Result<(), EngineError>> },
    Get { chunk_id: ChunkId, reply: oneshot::Sender<Result<Envelope, EngineError>> },
    Release { chunk_id: ChunkId, reply: oneshot::Sender<Result<(), EngineError>> },
    Replace { envelope: Envelope, reply: oneshot::Sender<Result<(), EngineError>> },
    List { after: Option<ChunkId>, max: usize, reply: oneshot::Sender<Vec<ChunkId>> },
    Contains { chunk_id: ChunkId, reply: oneshot::Sender<bool> },
    Stats { reply: oneshot::Sender<Stats> },
    Stop,
}

impl Engine {
    /// Starts `reactors` reactor threads; reactor `i` pins itself to core `i` (wrapping) and
    /// opens its shard with `open(i)`. Returns once every reactor is ready, or the first
    /// error (the others are stopped).
    pub fn start<D: BlockDevice + 'static>(
        reactors: usize,
        open: Arc<ShardOpener<D>>,
    ) -> Result<Engine, EngineError> {
        assert!(reactors > 0, "an engine needs at least one reactor");
        let mut lanes = Vec::with_capacity(reactors);
        let mut threads = Vec::with_capacity(reactors);
        let mut first_error = None;
        for index in 0..reactors {
            let (commands, inbox) = crossbeam_channel::bounded(REACTOR_QUEUE_CAPACITY);
            let may_sleep = Arc::new(AtomicBool::new(false));
            let (ready_tx, ready_rx) = mpsc::sync_channel(1);
            let (open, flag) = (Arc::clone(&open), Arc::clone(&may_sleep));
            let thread = std::thread::Builder::new()
                .name(format!("kiseki-reactor-{index}"))
                .spawn(move || reactor_main(index, &*open, inbox, flag, ready_tx))
                .map_err(|source| EngineError::Reactor { index, reason: source.to_string() })?;
            match ready_rx.recv() {
                Ok(Ok(ringer)) => lanes.push(Lane { commands, ringer, may_sleep }),
                Ok(Err(error)) => first_error = Some(error),
                Err(_) => first_error = Some(reactor_died(index)),
            }
            threads.push(thread);
            if first_error.is_some() {
                break;
            }
        }
        let engine = Engine { handle: EngineHandle { lanes: lanes.into() }, reactors: threads };
        match first_error {
            None => Ok(engine),
            Some(error) => {
                let _ = engine.shutdown();
                Err(error)
            }
        }
    }

    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Stops taking requests, lets every reactor finish what it accepted (acknowledging or
    /// failing each), and joins them. Returns the first reactor error.
    pub fn shutdown(self) -> Result<(), EngineError> {
        for lane in self.handle.lanes.iter() {
            // A full queue still gets the stop: wait for room.
            let _ = lane.commands.send(Command::Stop);
            lane.ringer.ring();
        }
        let mut result = Ok(());
        for (index, thread) in self.reactors.into_iter().enumerate() {
            let outcome = thread.join().unwrap_or_else(|_| Err(reactor_died(index)));
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    }
}

impl EngineHandle {
    /// Stores `envelope` under its own chunk id; resolves once durable. Storing an id
    /// already present adds a reference.
    pub async fn put(&self, envelope: Envelope) -> Result<(), EngineError> {
        let chunk_id = *envelope.chunk_id().as_bytes();
        let reply = self.call(&chunk_id, |reply| Command::Put { envelope, reply })?;
        reply.await.map_err(|_| EngineError::Stopped)?
    }

    /// The stored envelope, CRC-checked, parsed and naming `chunk_id` (opening it, which
    /// checks the GCM tag, is the caller's: the engine holds no key).
    pub async fn get(&self, chunk_id: ChunkId) -> Result<Envelope, EngineError> {
        let reply = self.call(&chunk_id, |reply| Command::Get { chunk_id, reply })?;
        reply.await.map_err(|_| EngineError::Stopped)?
    }

    /// Drops one reference; the space comes back at zero. Resolves once durable.
    pub async fn release(&self, chunk_id: ChunkId) -> Result<(), EngineError> {
        let reply = self.call(&chunk_id, |reply| Command::Release { chunk_id, reply })?;
        reply.await.map_err(|_| EngineError::Stopped)?
    }

    pub async fn contains(&self, chunk_id: ChunkId) -> Result<bool, EngineError> {
        let reply = self.call(&chunk_id, |reply| Command::Contains { chunk_id, reply })?;
        reply.await.map_err(|_| EngineError::Stopped)
    }

    /// Replaces the stored envelope of `envelope`'s chunk id with `envelope` (a re-seal of
    /// the same plaintext; the engine cannot check that, the caller's open does); resolves
    /// once the new envelope is durable and in force. References are unchanged; a chunk not
    /// stored is `NotFound`. A crash before it resolves leaves the old envelope or the new
    /// one, never neither.
    pub async fn replace(&self, envelope: Envelope) -> Result<(), EngineError> {
        let chunk_id = *envelope.chunk_id().as_bytes();
        let reply = self.call(&chunk_id, |reply| Command::Replace { envelope, reply })?;
        reply.await.map_err(|_| EngineError::Stopped)?
    }

    /// Up to `max` (at most [`LIST_CHUNK_IDS_MAX`]) ids of stored chunks after `after`
    /// (from the first if `None`), in ascending byte order over every shard: each shard
    /// lists its next `max`, and the smallest `max` of them are the answer. So a caller that
    /// passes the last id it got as the next `after` walks every chunk stored for the whole
    /// walk exactly once, whatever else changes.
    pub async fn chunk_ids_after(
        &self,
        after: Option<ChunkId>,
        max: usize,
    ) -> Result<Vec<ChunkId>, EngineError> {
        let max = max.clamp(1, LIST_CHUNK_IDS_MAX);
        let replies = self.ask_every_shard(|reply| Command::List { after, max, reply })?;
        let mut lists = Vec::with_capacity(replies.len());
        for receiver in replies {
            lists.push(receiver.await.map_err(|_| EngineError::Stopped)?);
        }
        Ok(merge_smallest(lists, max))
    }

    /// Each shard's counters, in shard order.
    pub async fn stats(&self) -> Result<Vec<Stats>, EngineError> {
        let replies = self.ask_every_shard(|reply| Command::Stats { reply })?;
        let mut stats = Vec::with_capacity(replies.len());
        for receiver in replies {
            stats.push(receiver.await.map_err(|_| EngineError::Stopped)?);
        }
        Ok(stats)
    }

    /// Blocking forms, for threads outside an async runtime (tools, tests, the bench).
    pub fn put_blocking(&self, envelope: Envelope) -> Result<(), EngineError> {
        let chunk_id = *envelope.chunk_id().as_bytes();
        let reply = self.call(&chunk_id, |reply| Command::Put { envelope, reply })?;
        reply.blocking_recv().map_err(|_| EngineError::Stopped)?
    }

    pub fn get_blocking(&self, chunk_id: ChunkId) -> Result<Envelope, EngineError> {
        let reply = self.call(&chunk_id, |reply| Command::Get { chunk_id, reply })?;
        reply.blocking_recv().map_err(|_| EngineError::Stopped)?
    }

    pub fn release_blocking(&self, chunk_id: ChunkId) -> Result<(), EngineError> {
        let reply = self.call(&chunk_id, |reply| Command::Release { chunk_id, reply })?;
        reply.blocking_recv().map_err(|_| EngineError::Stopped)?
    }

    pub fn contains_blocking(&self, chunk_id: ChunkId) -> Result<bool, EngineError> {
        let reply = self.call(&chunk_id, |reply| Command::Contains { chunk_id, reply })?;
        reply.blocking_recv().map_err(|_| EngineError::Stopped)
    }

    pub fn replace_blocking(&self, envelope: Envelope) -> Result<(), EngineError> {
        let chunk_id = *envelope.chunk_id().as_bytes();
        let reply = self.call(&chunk_id, |reply| Command::Replace { envelope, reply })?;
        reply.blocking_recv().map_err(|_| EngineError::Stopped)?
    }

    pub fn chunk_ids_after_blocking(
        &self,
        after: Option<ChunkId>,
        max: usize,
    ) -> Result<Vec<ChunkId>, EngineError> {
        let max = max.clamp(1, LIST_CHUNK_IDS_MAX);
        let replies = self.ask_every_shard(|reply| Command::List { after, max, reply })?;
        let lists = replies
            .into_iter()
            .map(|receiver| receiver.blocking_recv().map_err(|_| EngineError::Stopped))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(merge_smallest(lists, max))
    }

    pub fn stats_blocking(&self) -> Result<Vec<Stats>, EngineError> {
        let replies = self.ask_every_shard(|reply| Command::Stats { reply })?;
        replies
            .into_iter()
            .map(|receiver| receiver.blocking_recv().map_err(|_| EngineError::Stopped))
            .collect()
    }

    /// Queues a get and returns its reply receiver without waiting (for pipelining callers
    /// and tests of back-pressure).
    pub fn get_nowait(
        &self,
        chunk_id: ChunkId,
    ) -> Result<oneshot::Receiver<Result<Envelope, EngineError>>, EngineError> {
        self.call(&chunk_id, |reply| Command::Get { chunk_id, reply })
    }

    /// The shard a chunk belongs to.
    pub fn shard_of(&self, chunk_id: &ChunkId) -> usize {
        shard_of(chunk_id, self.lanes.len())
    }

    /// Sends every shard the command `command` makes around a reply channel, all before
    /// any answer is awaited (the shards work at once); the replies come in shard order.
    fn ask_every_shard<T>(
        &self,
        command: impl Fn(oneshot::Sender<T>) -> Command,
    ) -> Result<Vec<oneshot::Receiver<T>>, EngineError> {
        let ask = |lane: &Lane| {
            let (reply, receiver) = oneshot::channel();
            lane.send(command(reply)).map(|()| receiver)
        };
        self.lanes.iter().map(ask).collect()
    }

    fn call<T>(
        &self,
        chunk_id: &ChunkId,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<oneshot::Receiver<T>, EngineError> {
        let (reply, receiver) = oneshot::channel();
        self.lanes[self.shard_of(chunk_id)].send(command(reply))?;
        Ok(receiver)
    }
}

impl Lane {
    fn send(&self, command: Command) -> Result<(), EngineError> {
        self.commands.try_send(command).map_err(|error| match error {
            TrySendError::Full(_) => EngineError::Busy { queue: "reactor queue" },
            TrySendError::Disconnected(_) => EngineError::Stopped,
        })?;
        // Pairs with the reactor's store-then-check: either it sees this command before it
        // sleeps, or this sees its flag and rings.
        if self.may_sleep.swap(false, Ordering::SeqCst) {
            self.ringer.ring();
        }
        Ok(())
    }
}

/// The bytes a get read, as the envelope of `chunk_id`: anything else is an integrity error.
fn as_envelope(chunk_id: ChunkId, bytes: Vec<u8>) -> Result<Envelope, EngineError> {
    let envelope = Envelope::parse_owned(bytes)
        .map_err(|source| EngineError::NotAnEnvelope { chunk_id, source })?;
    let found = *envelope.chunk_id().as_bytes();
    if found != chunk_id {
        return Err(EngineError::ChunkIdMismatch { chunk_id, found });
    }
    Ok(envelope)
}

/// The `max` smallest ids of the shards' lists (each ascending; no id is in two shards).
fn merge_smallest(lists: Vec<Vec<ChunkId>>, max: usize) -> Vec<ChunkId> {
    let mut all: Vec<ChunkId> = lists.into_iter().flatten().collect();
    all.sort_unstable();
    all.truncate(max);
    all
}

fn shard_of(chunk_id: &ChunkId, shards: usize) -> usize {
    let low = u64::from_le_bytes(chunk_id[..8].try_into().expect("8 bytes"));
    (low % shards as u64) as usize
}

fn reactor_died(index: usize) -> EngineError {
    EngineError::Reactor { index, reason: "the reactor thread panicked".to_owned() }
}

/// A reply waiting for its shard's acknowledgement.
enum Waiting {
    Done(oneshot::Sender<Result<(), EngineError>>),
    Envelope(ChunkId, oneshot::Sender<Result<Envelope, EngineError>>),
}

fn reactor_main<D: BlockDevice>(
    index: usize,
    open: &ShardOpener<D>,
    inbox: Receiver<Command>,
    may_sleep: Arc<AtomicBool>,
    ready: mpsc::SyncSender<Result<DoorbellRinger, EngineError>>,
) -> Result<(), EngineError> {
    let _ = affinity::pin_current_thread(index);
    let opened = open(index).and_then(|mut shard| {
        let doorbell = Doorbell::new()
            .map_err(|e| EngineError::Reactor { index, reason: format!("eventfd: {e}") })?;
        let ringer = doorbell.ringer();
        shard
            .device_mut()
            .attach_doorbell(doorbell)
            .map_err(|source| EngineError::Device { context: "attaching the doorbell", source })?;
        Ok((shard, ringer))
    });
    let mut shard = match opened {
        Ok((shard, ringer)) => {
            let _ = ready.send(Ok(ringer));
            shard
        }
        Err(error) => {
            let _ = ready.send(Err(error));
            return Ok(());
        }
    };
    Reactor { shard: &mut shard, waiting: HashMap::new(), acks: Vec::new() }.run(&inbox, &may_sleep)
}

struct Reactor<'a, D: BlockDevice> {
    shard: &'a mut Shard<D>,
    waiting: HashMap<Ticket, Waiting>,
    acks: Vec<Ack>,
}

impl<D: BlockDevice> Reactor<'_, D> {
    fn run(mut self, inbox: &Receiver<Command>, may_sleep: &AtomicBool) -> Result<(), EngineError> {
        loop {
            let mut stop = false;
            for _ in 0..REACTOR_COMMAND_BATCH {
                match inbox.try_recv() {
                    Ok(Command::Stop) | Err(TryRecvError::Disconnected) => {
                        stop = true;
                        break;
                    }
                    Ok(command) => self.accept(command),
                    Err(TryRecvError::Empty) => break,
                }
            }
            if stop {
                let drained = self.shard.run_until_idle(&mut self.acks);
                self.deliver();
                return drained.map(|_| ());
            }
            self.shard.poll(&mut self.acks)?;
            self.deliver();
            if inbox.is_empty() {
                may_sleep.store(true, Ordering::SeqCst);
                if inbox.is_empty() {
                    // Sleeps until a completion or the doorbell.
                    self.shard.poll_wait(&mut self.acks)?;
                }
                may_sleep.store(false, Ordering::SeqCst);
                self.deliver();
            }
        }
    }

    /// Starts a request on the shard; replies at once when it is refused or needs no I/O.
    /// A caller that went away is no error, so send results are ignored.
    fn accept(&mut self, command: Command) {
        let (started, reply) = match command {
            Command::Put { envelope, reply } => {
                let chunk_id = *envelope.chunk_id().as_bytes();
                (self.shard.put(chunk_id, envelope.as_bytes()), Waiting::Done(reply))
            }
            Command::Release { chunk_id, reply } => {
                (self.shard.release(chunk_id), Waiting::Done(reply))
            }
            Command::Replace { envelope, reply } => {
                let chunk_id = *envelope.chunk_id().as_bytes();
                (self.shard.replace(chunk_id, envelope.as_bytes()), Waiting::Done(reply))
            }
            Command::List { after, max, reply } => {
                let _ = reply.send(self.shard.chunk_ids_after(after.as_ref(), max));
                return;
            }
            Command::Get { chunk_id, reply } => {
                (self.shard.get(chunk_id), Waiting::Envelope(chunk_id, reply))
            }
            Command::Contains { chunk_id, reply } => {
                let _ = reply.send(self.shard.contains(&chunk_id));
                return;
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.shard.stats());
                return;
            }
            Command::Stop => unreachable!("handled by the loop"),
        };
        match (started, reply) {
            (Ok(ticket), waiting) => {
                self.waiting.insert(ticket, waiting);
            }
            (Err(error), Waiting::Done(reply)) => {
                let _ = reply.send(Err(error));
            }
            (Err(error), Waiting::Envelope(_, reply)) => {
                let _ = reply.send(Err(error));
            }
        }
    }

    /// Hands every acknowledgement to its waiting caller (a caller gone is no error).
    fn deliver(&mut self) {
        for ack in self.acks.drain(..) {
            let Some(waiting) = self.waiting.remove(&ack.ticket) else { continue };
            match (waiting, ack.outcome) {
                (
                    Waiting::Done(reply),
                    Outcome::Put(result) | Outcome::Release(result) | Outcome::Replace(result),
                ) => {
                    let _ = reply.send(result);
                }
                (Waiting::Envelope(chunk_id, reply), Outcome::Get(result)) => {
                    let _ = reply.send(result.and_then(|bytes| as_envelope(chunk_id, bytes)));
                }
                (_, outcome) => unreachable!("ack {outcome:?} for another kind of request"),
            }
        }
    }
}
