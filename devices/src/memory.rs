//! The memory backend: the io_uring backend's semantics in RAM, for tests and for measuring
//! the harness itself (`kiseki-bench device --ioengine memory`).
//!
//! Durability is modelled: the device keeps, for every block written or trimmed since the
//! last flush, the block's durable contents (its pre-image). A power cut restores each one or
//! keeps the new contents, chosen per block by a seeded coin, so a multi-block write can tear
//! at any block boundary. Blocks not changed since the last flush never change at a power cut.
//!
//! A flush makes durable only what completed before it was pushed: the writes of earlier
//! batches. A write in the flush's own batch is in flight beside it (io_uring does not order
//! the two), so its block keeps as durable contents what it held when the batch began. The memory itself never fails; wrap it in a
//! [`FaultyDevice`](crate::FaultyDevice) for failures and bit flips.

use std::collections::{HashMap, VecDeque};

use crate::constants::BLOCK_SIZE_MIN_BYTES;
use crate::rng::SplitMix64;
use crate::{
    BlockDevice, BufferPool, Completion, DeviceError, DmaBuf, Doorbell, Geometry, Op, OpenOptions,
    Rejected, Request, validate,
};

/// A device in memory. Requests complete in the order they were pushed, at the next reap.
#[derive(Debug)]
pub struct MemoryDevice {
    geometry: Geometry,
    live: Vec<u8>,
    /// Block number → offset of its durable contents in `pre_image_bytes`.
    pre_images: HashMap<u64, usize>,
    pre_image_bytes: Vec<u8>,
    /// Block number → offset in `batch_start_bytes` of its contents when the current batch
    /// (one `submit_and_reap`) began, for blocks the batch changed.
    batch_start: HashMap<u64, usize>,
    batch_start_bytes: Vec<u8>,
    queue: VecDeque<Request>,
    queue_depth: u32,
    pool: BufferPool,
    read_only: bool,
    doorbell: Option<Doorbell>,
    /// Whether pre-images are kept for `power_cut` (off for benchmarks: see `volatile`).
    tracks_durability: bool,
}

impl MemoryDevice {
    /// A zeroed device of `size_bytes` (a non-zero multiple of 4 KiB). `options` gives the
    /// queue depth, the pool and read-only; `size_bytes`, `create` and SQPOLL do not apply.
    pub fn new(size_bytes: u64, options: &OpenOptions) -> Result<MemoryDevice, DeviceError> {
        let block = u64::from(BLOCK_SIZE_MIN_BYTES);
        if size_bytes < block {
            return Err(DeviceError::TooSmall {
                device: "memory".to_owned(),
                size_bytes,
                required_bytes: block,
            });
        }
        if !size_bytes.is_multiple_of(block) {
            return Err(DeviceError::InvalidOptions {
                reason: format!("memory device size {size_bytes} is not a multiple of {block}"),
            });
        }
        options.check_queue_and_pool()?;
        let depth = options.queue_depth;
        let len = usize::try_from(size_bytes).map_err(|_| DeviceError::InvalidOptions {
            reason: format!("memory device of {size_bytes} bytes does not fit in memory"),
        })?;
        Ok(MemoryDevice {
            geometry: Geometry { size_bytes, block_size_bytes: BLOCK_SIZE_MIN_BYTES },
            live: vec![0; len],
            pre_images: HashMap::new(),
            pre_image_bytes: Vec::new(),
            batch_start: HashMap::new(),
            batch_start_bytes: Vec::new(),
            queue: VecDeque::with_capacity(depth as usize),
            queue_depth: depth,
            pool: BufferPool::new(options.buffer_count, options.buffer_size_bytes),
            read_only: options.read_only,
            doorbell: None,
            tracks_durability: true,
        })
    }

    /// A memory device that keeps no pre-images: every write costs one copy instead of
    /// three, for benchmarks that measure what runs above the device. It cannot simulate a
    /// power cut (`power_cut` panics).
    pub fn volatile(size_bytes: u64, options: &OpenOptions) -> Result<MemoryDevice, DeviceError> {
        let mut device = MemoryDevice::new(size_bytes, options)?;
        device.tracks_durability = false;
        Ok(device)
    }

    /// Simulates losing power: requests not yet reaped are lost (their buffers go back to
    /// the pool), each block changed since the last flush keeps its new contents or reverts
    /// to its durable ones by a coin seeded with `seed`.
    pub fn power_cut(&mut self, seed: u64) {
        assert!(self.tracks_durability, "a volatile memory device cannot simulate a power cut");
        let mut rng = SplitMix64::new(seed);
        while let Some(request) = self.queue.pop_front() {
            if let Some(buf) = request.op.into_buf() {
                self.pool.release(buf);
            }
        }
        let block = self.geometry.block_size_bytes as usize;
        let mut blocks: Vec<(u64, usize)> = self.pre_images.drain().collect();
        blocks.sort_unstable();
        for (number, at) in blocks {
            if rng.chance(1, 2) {
                let start = number as usize * block;
                let durable = &self.pre_image_bytes[at..at + block];
                self.live[start..start + block].copy_from_slice(durable);
            }
        }
        self.pre_image_bytes.clear();
        self.batch_start.clear();
        self.batch_start_bytes.clear();
    }

    /// Bytes changed since the last flush (what a power cut may lose).
    pub fn unflushed_bytes(&self) -> u64 {
        self.pre_images.len() as u64 * u64::from(self.geometry.block_size_bytes)
    }

    fn execute(&mut self, request: Request) -> Completion {
        let kind = request.op.kind();
        let (result, buf) = match request.op {
            Op::Read { offset, mut buf } => {
                let start = offset as usize;
                let len = buf.len() as usize;
                buf.as_mut_slice().copy_from_slice(&self.live[start..start + len]);
                (Ok(buf.len()), Some(buf))
            }
            Op::Write { offset, buf } => {
                self.keep_pre_images(offset, u64::from(buf.len()));
                let start = offset as usize;
                self.live[start..start + buf.len() as usize].copy_from_slice(buf.as_slice());
                (Ok(buf.len()), Some(buf))
            }
            Op::Flush => {
                self.flush_earlier_batches();
                (Ok(0), None)
            }
            Op::Trim { offset, len_bytes } => {
                self.keep_pre_images(offset, len_bytes);
                self.live[offset as usize..(offset + len_bytes) as usize].fill(0);
                (Ok(0), None)
            }
        };
        Completion { tag: request.tag, kind, result, buf }
    }

    /// Saves, for every block of the extent, its durable contents (if not yet changed since
    /// the last flush) and its contents at the start of this batch (if not yet changed in it).
    fn keep_pre_images(&mut self, offset: u64, len_bytes: u64) {
        if !self.tracks_durability {
            return;
        }
        let block = self.geometry.block_size_bytes as usize;
        for number in offset / block as u64..(offset + len_bytes) / block as u64 {
            let start = number as usize * block;
            let contents = &self.live[start..start + block];
            if !self.pre_images.contains_key(&number) {
                self.pre_images.insert(number, self.pre_image_bytes.len());
                self.pre_image_bytes.extend_from_slice(contents);
            }
            if !self.batch_start.contains_key(&number) {
                self.batch_start.insert(number, self.batch_start_bytes.len());
                self.batch_start_bytes.extend_from_slice(contents);
            }
        }
    }

    /// A flush: blocks changed only in earlier batches become durable as they are; blocks
    /// this batch changed become durable as they were when the batch began.
    fn flush_earlier_batches(&mut self) {
        // The arenas keep their capacity: a busy device allocates nothing per flush.
        let block = self.geometry.block_size_bytes as usize;
        self.pre_images.clear();
        self.pre_image_bytes.clear();
        for (&number, &at) in &self.batch_start {
            self.pre_images.insert(number, self.pre_image_bytes.len());
            self.pre_image_bytes.extend_from_slice(&self.batch_start_bytes[at..at + block]);
        }
    }
}

impl BlockDevice for MemoryDevice {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn acquire_buffer(&mut self) -> Option<DmaBuf> {
        self.pool.acquire()
    }

    fn release_buffer(&mut self, buf: DmaBuf) {
        self.pool.release(buf);
    }

    fn check(&self, op: &Op) -> Result<(), DeviceError> {
        validate(self.geometry, self.read_only, None, op, "memory")
    }

    fn push(&mut self, request: Request) -> Result<(), Rejected> {
        if let Err(error) = self.check(&request.op) {
            return Err(Rejected { error, request });
        }
        if let Op::Read { buf, .. } | Op::Write { buf, .. } = &request.op {
            assert!(self.pool.owns(buf), "buffer from another device's pool");
        }
        if self.queue.len() >= self.queue_depth as usize {
            let error = DeviceError::QueueFull { queue_depth: self.queue_depth };
            return Err(Rejected { error, request });
        }
        self.queue.push_back(request);
        Ok(())
    }

    /// Executes everything queued. With nothing queued, a doorbell attached and
    /// `min_complete > 0`, sleeps until the doorbell rings.
    fn submit_and_reap(
        &mut self,
        min_complete: usize,
        completions: &mut Vec<Completion>,
    ) -> Result<usize, DeviceError> {
        if let Some(doorbell) = &self.doorbell
            && self.queue.is_empty()
            && min_complete > 0
        {
            doorbell
                .wait()
                .map_err(|source| DeviceError::Setup { what: "waiting on the doorbell", source })?;
        }
        let count = self.queue.len();
        while let Some(request) = self.queue.pop_front() {
            let completion = self.execute(request);
            completions.push(completion);
        }
        self.batch_start.clear();
        self.batch_start_bytes.clear();
        Ok(count)
    }

    fn in_flight(&self) -> usize {
        self.queue.len()
    }

    fn queue_depth(&self) -> u32 {
        self.queue_depth
    }

    fn attach_doorbell(&mut self, doorbell: Doorbell) -> Result<(), DeviceError> {
        self.doorbell = Some(doorbell);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(device: &mut MemoryDevice, offset: u64, byte: u8) {
        let mut buf = device.acquire_buffer().unwrap();
        buf.set_len(BLOCK_SIZE_MIN_BYTES);
        buf.as_mut_slice().fill(byte);
        device.push(Request { tag: 0, op: Op::Write { offset, buf } }).unwrap();
    }

    fn reap(device: &mut MemoryDevice) {
        let mut completions = Vec::new();
        device.submit_and_reap(0, &mut completions).unwrap();
        for completion in completions {
            assert!(completion.result.is_ok());
            if let Some(buf) = completion.buf {
                device.release_buffer(buf);
            }
        }
    }

    fn first_byte(device: &MemoryDevice, offset: u64) -> u8 {
        device.live[offset as usize]
    }

    fn device() -> MemoryDevice {
        MemoryDevice::new(4 * u64::from(BLOCK_SIZE_MIN_BYTES), &OpenOptions::default()).unwrap()
    }

    #[test]
    fn flush_in_a_later_batch_makes_the_write_durable() {
        for seed in 0..32 {
            let mut device = device();
            write(&mut device, 0, 0xA);
            reap(&mut device);
            device.push(Request { tag: 1, op: Op::Flush }).unwrap();
            reap(&mut device);
            device.power_cut(seed);
            assert_eq!(first_byte(&device, 0), 0xA, "seed {seed}");
        }
    }

    #[test]
    fn flush_in_the_same_batch_does_not_cover_the_write_beside_it() {
        let (mut kept, mut lost) = (0, 0);
        for seed in 0..64 {
            let mut device = device();
            write(&mut device, 0, 0xA);
            reap(&mut device);
            device.push(Request { tag: 1, op: Op::Flush }).unwrap();
            write(&mut device, 0, 0xB);
            device.push(Request { tag: 2, op: Op::Flush }).unwrap();
            reap(&mut device);
            device.power_cut(seed);
            match first_byte(&device, 0) {
                0xA => lost += 1,
                0xB => kept += 1,
                other => panic!("seed {seed}: block holds {other:#x}, neither A nor B"),
            }
        }
        assert!(kept > 0 && lost > 0, "kept {kept}, lost {lost}: both must happen");
    }

    #[test]
    fn volatile_device_reads_back_and_refuses_power_cuts() {
        let size = 4 * u64::from(BLOCK_SIZE_MIN_BYTES);
        let mut device = MemoryDevice::volatile(size, &OpenOptions::default()).unwrap();
        write(&mut device, 0, 0xC);
        reap(&mut device);
        assert_eq!(first_byte(&device, 0), 0xC);
        assert_eq!(device.unflushed_bytes(), 0, "no pre-images are kept");
        let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| device.power_cut(1)));
        assert!(cut.is_err(), "a volatile device cannot pretend to lose power");
    }
}
