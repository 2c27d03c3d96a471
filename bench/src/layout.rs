//! Laying out the test file, as fio does: a missing file is created at `--size` and filled
//! with random data (so reads hit the disk, not unwritten extents); a short one is extended
//! and the new part filled. Progress goes to stderr.
//!
//! An engine store's file is laid out with zeros instead (a blank store is formatted by the
//! engine), by `kiseki_engine::store_file`, which `kiseki-server dev` shares. Either way
//! every block is written once before it is measured: a preallocated but never-written file
//! has unwritten extents, and on ext4 the first write to each one converts it in the
//! filesystem journal, so every flush of a fresh file also commits a journal transaction. A
//! real device has no such cost; a benchmark must not pay it.

use std::fs;
use std::io::{self, IsTerminal, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::{Duration, Instant};

use kiseki_devices::constants::BLOCK_SIZE_MIN_BYTES;
use kiseki_devices::rng::SplitMix64;
use kiseki_devices::{BlockDevice, Completion, IoUringDevice, Op, OpenOptions, Request};

use crate::units::binary_size;

/// Size of each write while filling.
const FILL_IO_BYTES: u32 = 1 << 20;
/// Writes in flight while filling.
const FILL_DEPTH: u32 = 8;

/// Makes sure `path` exists with at least `size` bytes of data and returns the size to use.
pub fn prepare(path: &Path, size: Option<u64>) -> Result<u64, String> {
    let shown = path.display();
    let metadata = match fs::metadata(path) {
        Ok(metadata) => Some(metadata),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{shown}: {e}")),
    };
    let Some(metadata) = metadata else {
        let size =
            size.ok_or_else(|| format!("{shown} does not exist; give --size to create it"))?;
        let size = round_up_to_block(size);
        create(path, size)?;
        return Ok(size);
    };
    let file_type = metadata.file_type();
    if file_type.is_block_device() {
        // The device layer refuses a --size beyond the device's own.
        return size.map_or_else(|| device_size(path), Ok);
    }
    if !file_type.is_file() {
        return Err(format!("{shown}: neither a regular file nor a block device"));
    }
    let current = metadata.len();
    let wanted = size.unwrap_or(current);
    if wanted == 0 {
        return Err(format!("{shown} is empty; give --size to fill it"));
    }
    if wanted > current {
        let wanted = round_up_to_block(wanted);
        let from = current - current % u64::from(BLOCK_SIZE_MIN_BYTES);
        let file =
            fs::OpenOptions::new().write(true).open(path).map_err(|e| format!("{shown}: {e}"))?;
        file.set_len(wanted).map_err(|e| format!("{shown}: extending: {e}"))?;
        drop(file);
        fill(path, from, wanted)?;
        return Ok(wanted);
    }
    Ok(wanted)
}

fn round_up_to_block(size: u64) -> u64 {
    size.next_multiple_of(u64::from(BLOCK_SIZE_MIN_BYTES))
}

fn device_size(path: &Path) -> Result<u64, String> {
    let options =
        OpenOptions { read_only: true, queue_depth: 1, buffer_count: 1, ..Default::default() };
    let device = IoUringDevice::open(path, &options).map_err(|e| e.to_string())?;
    Ok(device.geometry().size_bytes)
}

/// Creates `path` with `size` bytes of random data, written and flushed; on failure the
/// partial file is removed.
pub fn create(path: &Path, size: u64) -> Result<(), String> {
    let options = OpenOptions { create: true, size_bytes: Some(size), ..Default::default() };
    drop(IoUringDevice::open(path, &options).map_err(|e| e.to_string())?);
    fill(path, 0, size).inspect_err(|_| {
        let _ = fs::remove_file(path);
    })
}

/// Creates an engine store's file: `size` bytes of zeros (see `store_file::create_zeroed`),
/// with the same progress line as a random fill.
pub fn create_store(path: &Path, size: u64) -> Result<(), String> {
    let mut progress = FillProgress::new(path, size);
    kiseki_engine::store_file::create_zeroed(path, size, &mut |written| progress.show(written))
        .map_err(|e| e.to_string())?;
    progress.done();
    Ok(())
}

/// Writes random data over `from..to` through io_uring and flushes it.
fn fill(path: &Path, from: u64, to: u64) -> Result<(), String> {
    let options = OpenOptions {
        queue_depth: FILL_DEPTH,
        buffer_count: FILL_DEPTH,
        buffer_size_bytes: FILL_IO_BYTES,
        ..OpenOptions::default()
    };
    let mut device = IoUringDevice::open(path, &options).map_err(|e| e.to_string())?;
    let mut rng = SplitMix64::new(from ^ to);
    let mut buffers = Vec::with_capacity(FILL_DEPTH as usize);
    while let Some(mut buf) = device.acquire_buffer() {
        rng.fill(buf.as_mut_slice());
        buffers.push(buf);
    }
    let mut progress = FillProgress::new(path, to - from);
    let mut completions: Vec<Completion> = Vec::with_capacity(FILL_DEPTH as usize);
    let mut offset = from;
    let mut written = 0;
    while offset < to || device.in_flight() > 0 {
        while offset < to {
            let Some(mut buf) = buffers.pop() else { break };
            let len = (to - offset).min(u64::from(FILL_IO_BYTES)) as u32;
            buf.set_len(len);
            device
                .push(Request { tag: 0, op: Op::Write { offset, buf } })
                .map_err(|rejected| rejected.error.to_string())?;
            offset += u64::from(len);
        }
        device.submit_and_reap(1, &mut completions).map_err(|e| e.to_string())?;
        for completion in completions.drain(..) {
            written += u64::from(completion.result.map_err(|e| e.to_string())?);
            buffers.extend(completion.buf);
        }
        progress.show(written);
    }
    device
        .push(Request { tag: 0, op: Op::Flush })
        .map_err(|rejected| rejected.error.to_string())?;
    device.submit_and_reap(1, &mut completions).map_err(|e| e.to_string())?;
    for completion in completions.drain(..) {
        completion.result.map_err(|e| e.to_string())?;
    }
    progress.done();
    Ok(())
}

struct FillProgress {
    total: u64,
    terminal: bool,
    last: Instant,
}

impl FillProgress {
    fn new(path: &Path, total: u64) -> FillProgress {
        eprintln!(
            "kiseki-bench: laying out IO file {} ({})",
            path.display(),
            binary_size(total as f64)
        );
        FillProgress { total, terminal: io::stderr().is_terminal(), last: Instant::now() }
    }

    fn show(&mut self, written: u64) {
        if !self.terminal || self.last.elapsed() < Duration::from_millis(250) {
            return;
        }
        self.last = Instant::now();
        let percent = written as f64 * 100.0 / self.total as f64;
        eprint!("\rlaying out: {percent:5.1}% of {}", binary_size(self.total as f64));
        let _ = io::stderr().flush();
    }

    fn done(&self) {
        if self.terminal {
            eprint!("\r\x1b[2K");
        }
    }
}
