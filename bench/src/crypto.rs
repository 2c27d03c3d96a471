//! `kiseki-bench crypto`: the crypto ceiling of the write path on this machine. Each job
//! (one pinned thread) computes the chunk id (SHA-256), derives the DEK (HKDF-SHA256) and
//! seals (AES-256-GCM) `--bs` chunks for `--runtime`; no storage, no copy beyond sealing.

use std::time::{Duration, Instant};

use clap::Args;
use kiseki_devices::rng::SplitMix64;
use kiseki_security::{ChunkId, Dek, Envelope, MasterKey, SealParams};
use serde_json::json;

use crate::units::{binary_size, parse_duration, parse_size};

#[derive(Args, Debug, Clone)]
pub struct CryptoArgs {
    /// Chunk size
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    pub bs: u64,
    /// Jobs, one pinned thread each
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub numjobs: u32,
    /// How long each job seals
    #[arg(long, default_value = "2", value_parser = parse_duration)]
    pub runtime: Duration,
    /// Print JSON instead of a line
    #[arg(long = "output-format", default_value = "normal",
          value_parser = ["normal", "json"])]
    pub output_format: String,
}

pub fn run(args: &CryptoArgs) -> Result<String, String> {
    if args.bs == 0 || args.bs > 64 << 20 {
        return Err(format!("--bs={}: a chunk is 1 byte to 64 MiB", args.bs));
    }
    let master = MasterKey::generate(1).map_err(|e| e.to_string())?;
    let per_job: Result<Vec<(u64, Duration)>, String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.numjobs as usize)
            .map(|index| {
                let master = &master;
                scope.spawn(move || seal_loop(index, master, args.bs as usize, args.runtime))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("crypto job panicked")).collect()
    });
    let per_job = per_job?;
    let bytes: u64 = per_job.iter().map(|(bytes, _)| bytes).sum();
    let seconds = per_job.iter().map(|(_, d)| d.as_secs_f64()).fold(0.0, f64::max);
    let bw_bytes = bytes as f64 / seconds;
    if args.output_format == "json" {
        let report = json!({
            "crypto": "sha256 + hkdf-sha256 + aes-256-gcm seal",
            "bs": args.bs,
            "numjobs": args.numjobs,
            "bytes": bytes,
            "runtime_ms": (seconds * 1000.0) as u64,
            "bw_bytes": bw_bytes as u64,
        });
        return Ok(serde_json::to_string_pretty(&report).expect("JSON serializes"));
    }
    Ok(format!(
        "crypto: sha256+hkdf+aes-256-gcm seal, bs={}, jobs={}: {}/s ({} in {:.2} s)",
        args.bs,
        args.numjobs,
        binary_size(bw_bytes),
        binary_size(bytes as f64),
        seconds
    ))
}

fn seal_loop(
    index: usize,
    master: &MasterKey,
    bs: usize,
    runtime: Duration,
) -> Result<(u64, Duration), String> {
    let _ = kiseki_devices::affinity::pin_current_thread(index);
    let mut plaintext = vec![0u8; bs];
    SplitMix64::new(index as u64).fill(&mut plaintext);
    // Sealed out of place into one reused buffer, as the engine's write path seals into the
    // device's write buffer: the ceiling is the fastest seal the product does.
    let mut sealed = vec![0u8; Envelope::sealed_len(bs, 0)];
    let started = Instant::now();
    let mut bytes = 0u64;
    let mut counter = 0u64;
    while started.elapsed() < runtime {
        counter += 1;
        let stamp = counter.to_le_bytes();
        let n = stamp.len().min(bs);
        plaintext[..n].copy_from_slice(&stamp[..n]);
        let chunk_id = ChunkId::of_plaintext(&plaintext);
        let dek = Dek::derive(master, &chunk_id, None);
        Envelope::seal_to_slice(&plaintext, &SealParams::new(&dek), &mut sealed)
            .map_err(|e| e.to_string())?;
        bytes += bs as u64;
    }
    Ok((bytes, started.elapsed()))
}
