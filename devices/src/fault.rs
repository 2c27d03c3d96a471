//! A fault-injecting wrapper for tests: fails the Nth request, flips bits in reads, and (over
//! the memory backend) cuts power. Every choice comes from the plan's seed, so a failing test
//! replays from the seed it prints.

use std::collections::VecDeque;
use std::io;

use crate::rng::SplitMix64;
use crate::{
    BlockDevice, Completion, DeviceError, DmaBuf, Doorbell, Geometry, MemoryDevice, Op, OpKind,
    Rejected, Request,
};

/// What to inject. `Default` injects nothing.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// Seeds every random choice (which bit flips, which blocks survive a power cut).
    pub seed: u64,
    /// The request with this number (counting pushes from 1) fails with EIO and never
    /// reaches the device. A failed write, flush or trim poisons the device, as a real one.
    pub fail_request_number: Option<u64>,
    /// The read with this number (counting read completions from 1) comes back with one
    /// bit flipped.
    pub flip_bit_in_read_number: Option<u64>,
    /// Every read comes back with one bit flipped with this chance, in parts per million.
    pub flip_bit_per_million_reads: u32,
}

/// A device that injects the faults of a [`FaultPlan`] into another device.
#[derive(Debug)]
pub struct FaultyDevice<D> {
    inner: D,
    plan: FaultPlan,
    rng: SplitMix64,
    requests_pushed: u64,
    reads_completed: u64,
    /// Failed requests waiting to be reaped; never longer than the queue depth.
    injected: VecDeque<Completion>,
    poisoned: Option<OpKind>,
    bits_flipped: u64,
}

impl<D: BlockDevice> FaultyDevice<D> {
    pub fn new(inner: D, plan: FaultPlan) -> FaultyDevice<D> {
        let rng = SplitMix64::new(plan.seed);
        let depth = inner.queue_depth() as usize;
        FaultyDevice {
            inner,
            plan,
            rng,
            requests_pushed: 0,
            reads_completed: 0,
            injected: VecDeque::with_capacity(depth),
            poisoned: None,
            bits_flipped: 0,
        }
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    /// The plan, to arm a fault at a chosen moment (e.g. after a store was opened).
    pub fn plan_mut(&mut self) -> &mut FaultPlan {
        &mut self.plan
    }

    /// Requests accepted so far (the numbering `fail_request_number` uses).
    pub fn requests_pushed(&self) -> u64 {
        self.requests_pushed
    }

    /// How many reads came back with a flipped bit.
    pub fn bits_flipped(&self) -> u64 {
        self.bits_flipped
    }

    /// Clears the poisoned state, as reopening the device would.
    pub fn reopen(&mut self) {
        self.poisoned = None;
    }

    fn maybe_flip(&mut self, completion: &mut Completion) {
        if completion.kind != OpKind::Read || completion.result.is_err() {
            return;
        }
        self.reads_completed += 1;
        let by_number = self.plan.flip_bit_in_read_number == Some(self.reads_completed);
        let by_chance = self.plan.flip_bit_per_million_reads > 0
            && self.rng.chance(u64::from(self.plan.flip_bit_per_million_reads), 1_000_000);
        let Some(buf) = completion.buf.as_mut() else { return };
        if (by_number || by_chance) && !buf.is_empty() {
            let bit = self.rng.below(u64::from(buf.len()) * 8);
            buf.as_mut_slice()[(bit / 8) as usize] ^= 1 << (bit % 8);
            self.bits_flipped += 1;
        }
    }
}

impl FaultyDevice<MemoryDevice> {
    /// Cuts power under the memory device (see [`MemoryDevice::power_cut`]) with a seed
    /// drawn from the plan's generator; injected failures not yet reaped are lost too, and
    /// the device comes back unpoisoned, as after a restart.
    pub fn power_cut(&mut self) {
        while let Some(completion) = self.injected.pop_front() {
            if let Some(buf) = completion.buf {
                self.inner.release_buffer(buf);
            }
        }
        let seed = self.rng.next_u64();
        self.inner.power_cut(seed);
        self.poisoned = None;
    }
}

impl<D: BlockDevice> BlockDevice for FaultyDevice<D> {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }

    fn acquire_buffer(&mut self) -> Option<DmaBuf> {
        self.inner.acquire_buffer()
    }

    fn release_buffer(&mut self, buf: DmaBuf) {
        self.inner.release_buffer(buf);
    }

    fn check(&self, op: &Op) -> Result<(), DeviceError> {
        if op.mutates()
            && let Some(failed) = self.poisoned
        {
            return Err(DeviceError::Poisoned { failed });
        }
        self.inner.check(op)
    }

    /// Counts only accepted requests: a refused push is not an I/O and takes no number.
    fn push(&mut self, request: Request) -> Result<(), Rejected> {
        if let Err(error) = self.check(&request.op) {
            return Err(Rejected { error, request });
        }
        if self.plan.fail_request_number != Some(self.requests_pushed + 1) {
            self.inner.push(request)?;
            self.requests_pushed += 1;
            return Ok(());
        }
        if self.in_flight() >= self.queue_depth() as usize {
            let error = DeviceError::QueueFull { queue_depth: self.queue_depth() };
            return Err(Rejected { error, request });
        }
        self.requests_pushed += 1;
        let kind = request.op.kind();
        let source = io::Error::from_raw_os_error(libc::EIO);
        self.injected.push_back(Completion {
            tag: request.tag,
            kind,
            result: Err(DeviceError::Io { op: kind, source }),
            buf: request.op.into_buf(),
        });
        Ok(())
    }

    /// Injected failures come back first. A failed write, flush or trim poisons the device
    /// when its completion is handed out, as a real device's does, so requests pushed beside
    /// it in the same batch still go through.
    fn submit_and_reap(
        &mut self,
        min_complete: usize,
        completions: &mut Vec<Completion>,
    ) -> Result<usize, DeviceError> {
        let injected = self.injected.len();
        for completion in self.injected.drain(..) {
            if completion.kind != OpKind::Read {
                self.poisoned.get_or_insert(completion.kind);
            }
            completions.push(completion);
        }
        let first_inner = completions.len();
        let wanted = min_complete.saturating_sub(injected);
        let reaped = self.inner.submit_and_reap(wanted, completions)?;
        for completion in &mut completions[first_inner..] {
            self.maybe_flip(completion);
        }
        Ok(injected + reaped)
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.injected.len()
    }

    fn queue_depth(&self) -> u32 {
        self.inner.queue_depth()
    }

    fn attach_doorbell(&mut self, doorbell: Doorbell) -> Result<(), DeviceError> {
        self.inner.attach_doorbell(doorbell)
    }
}
