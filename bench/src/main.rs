//! `kiseki-bench`: fio-style benchmarks of Kiseki's layers, each side by side with the tool
//! it must match: `device` (against fio), `engine` (against the device and crypto ceilings,
//! which `device` and `crypto` measure), `fabric` (against iperf3 and openssl's AES-GCM rate,
//! which `scripts/bench-fabric.sh` measures), `raft` (committed metadata operations, against
//! etcd with the same load: `scripts/bench-raft-vs-etcd.sh`), `s3` (PUT and GET against an
//! S3 endpoint, and a peer S3 server with the same load: `scripts/bench-s3-vs-peer.sh`).

mod clock;
mod crypto;
mod device;
mod engine;
mod fabric;
mod layout;
mod progress;
mod raft;
mod report;
mod s3;
mod stats;
mod units;

use std::process::ExitCode;

/// mimalloc, not glibc's malloc: a 4 MiB frame payload is above glibc's mmap threshold, so
/// every request mapped, faulted in and unmapped fresh pages (perf: page faults and
/// mmap/munmap took a fifth of the fabric listener's CPU); mimalloc keeps freed segments
/// for reuse. `scripts/bench-fabric.sh` measured the difference.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "kiseki-bench", version, about = "fio-style benchmarks for Kiseki")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Drive a file or block device through Kiseki's device layer with fio's job flags and
    /// print fio's normal or JSON report
    Device(device::DeviceArgs),
    /// Drive the whole chunk path (chunk id, seal, durable put; get, CRC, open) through
    /// Kiseki's engine with fio's job flags; --bs is the chunk size
    Engine(engine::EngineArgs),
    /// Measure the write path's crypto ceiling: chunk id, DEK derivation and seal per core
    Crypto(crypto::CryptoArgs),
    /// Serve chunks over TCP+mTLS (--listen), or put and get them with fio's job flags
    /// (--connect); --bs is the chunk size
    Fabric(fabric::FabricArgs),
    /// Committed metadata operations per second and their latency against a Kiseki
    /// metadata cluster (1 or 3 nodes started here, or running ones) or etcd, same load
    Raft(raft::RaftArgs),
    /// PUT and GET objects of --bs bytes against an S3 endpoint (SigV4, kept-alive
    /// connections, TLS trusting --ca only): operations and bytes per second, latency
    S3(s3::S3Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Device(args) => run_device(args),
        Command::Engine(args) => run_engine(args),
        Command::Fabric(args) => run_fabric(args),
        Command::Raft(args) => match raft::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("kiseki-bench: {message}");
                ExitCode::FAILURE
            }
        },
        Command::S3(args) => match s3::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("kiseki-bench: {message}");
                ExitCode::FAILURE
            }
        },
        Command::Crypto(args) => match crypto::run(&args) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("kiseki-bench: {message}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run_engine(args: engine::EngineArgs) -> ExitCode {
    let dedup_percentage = args.dedup_percentage;
    let result = engine::plan(&args)
        .and_then(|plan| Ok((engine::run(&plan, dedup_percentage)?, plan)))
        .map(|(jobs, plan)| (plan, jobs));
    report(result)
}

fn run_fabric(args: fabric::FabricArgs) -> ExitCode {
    match fabric::plan(args) {
        Ok(fabric::Mode::Connect(plan)) => {
            report(fabric::connect(&plan).map(|jobs| (plan.job, jobs)))
        }
        Ok(fabric::Mode::Listen(plan)) => match fabric::listen(&plan) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => report(Err(message)),
        },
        Err(message) => report(Err(message)),
    }
}

fn run_device(args: device::DeviceArgs) -> ExitCode {
    let result = device::plan(args).and_then(|plan| Ok((device::run(&plan)?, plan)));
    let result = result.map(|(jobs, plan)| (plan, jobs));
    report(result)
}

/// Prints the report (or the error) and chooses the exit code; an I/O error in any job is a
/// failure.
fn report(result: Result<(device::Plan, Vec<stats::JobStats>), String>) -> ExitCode {
    let (plan, mut jobs) = match result {
        Ok(done) => done,
        Err(message) => {
            eprintln!("kiseki-bench: {message}");
            return ExitCode::FAILURE;
        }
    };
    if plan.args.group_reporting && jobs.len() > 1 {
        let mut group = jobs.remove(0);
        for job in &jobs {
            group.merge(job);
        }
        jobs = vec![group];
    }
    match plan.args.output_format {
        device::OutputFormat::Normal => print!("{}", report::normal(&plan, &jobs)),
        device::OutputFormat::Json => println!("{}", report::json(&plan, &jobs)),
    }
    let failed: Vec<&str> =
        jobs.iter().filter_map(|job| job.error.as_ref().map(|(_, m)| m.as_str())).collect();
    for message in &failed {
        eprintln!("kiseki-bench: I/O error: {message}");
    }
    if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
