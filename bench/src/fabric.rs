//! `kiseki-bench fabric`: chunk puts and gets over the fabric's TCP transport (TLS 1.3 with
//! mutual authentication), fio's job model on the client side.
//!
//! Two processes (or two runs of this one): `--listen ADDR` serves chunks, from memory with
//! `--memory` (so a run measures the network path alone) or from a real chunk service over
//! an engine on `--filename`/`--size`, as `kiseki-bench engine` lays it out; `--connect ADDR`
//! runs `--numjobs` client jobs of `--iodepth` requests in flight each and prints fio's
//! normal or JSON report. Both sides take their certificates from `--tls-dir` (the listener
//! creates a throwaway CA there when it is empty; `kiseki-server dev` writes client
//! directories of the same layout): there is no plaintext mode. A client whose certificate
//! is a tenant's (`tenant-{org}`) acts for that org, since the chunk service lets a tenant
//! name only its own; with a node's certificate its calls are node-to-node.
//!
//! A client job is one pinned thread with its own single-threaded tokio runtime, its own
//! `TcpTransport` (up to `--connections` pooled TLS connections) and a `ChunkClient` over a
//! `FabricSelector`: the library path the gateway and HPC clients use. Before the measured
//! window it seals its working set (`--size` bytes of `--bs`-byte chunks) and, for gets,
//! puts it; then it puts or gets those envelopes in a cycle. Latency runs from a request's
//! issue to its answer on the job's thread; CPU is the job thread's (TLS, framing and socket
//! calls all run there). Bytes are chunk plaintext bytes; each chunk travels as its
//! envelope, 100 bytes longer.

pub(crate) mod certs;
mod client;
mod listen;
mod memory;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use kiseki_fabric::constants::{IN_FLIGHT_PER_CONNECTION_MAX, MAX_PER_ENDPOINT_MAX};
use kiseki_security::Envelope;
use kiseki_security::constants::CHUNK_PLAINTEXT_MAX_BYTES;

use crate::device::{DeviceArgs, Engine as Backend, Pattern, Plan};

pub use client::run as connect;
pub use listen::run as listen;

/// A memory listener's capacity when --size is not given: the working sets of a few jobs of
/// 64 MiB with room to spare, and little enough for any test machine.
const MEMORY_CAPACITY_DEFAULT_BYTES: u64 = 1 << 30;

/// A client job's working set when --size is not given: 16 chunks of 4 MiB, so each of a
/// deep queue's requests has its own chunk, and 16 Ki chunks of 4 KiB.
const WORKING_SET_DEFAULT_BYTES: u64 = 64 << 20;

/// Most sealed bytes the client jobs of one run hold together: keeps a mistyped --size from
/// swapping the machine.
const CLIENT_MEMORY_MAX_BYTES: u64 = 4 << 30;

/// How long a listener given --runtime serves past it: clients started with the same
/// --runtime first connect, seal and fill, which takes seconds.
const LISTEN_MARGIN: Duration = Duration::from_secs(30);

/// `kiseki-bench fabric` flags: fio's, with `--rw put|get` and `--bs` the chunk size.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Example, on one machine:\n  kiseki-bench fabric --listen 127.0.0.1:7400 \
    --memory --tls-dir /tmp/kiseki-tls &\n  kiseki-bench fabric --connect 127.0.0.1:7400 \
    --tls-dir /tmp/kiseki-tls --rw=put --bs=4M --iodepth=16 --runtime=4 --time_based")]
pub struct FabricArgs {
    #[command(flatten)]
    pub job: DeviceArgs,
    /// Serve chunks on this address until SIGINT or SIGTERM (or --runtime and a margin);
    /// port 0 picks one. Prints "listening on ADDR" when ready
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Run client jobs against the listener at this address
    #[arg(long)]
    pub connect: Option<SocketAddr>,
    /// With --listen: keep envelopes in memory, at most --size bytes (default 1G), so that
    /// the network path is measured alone. Without it, a chunk service over an engine on
    /// --filename (or --ioengine=memory) of --size bytes, one reactor per --numjobs
    #[arg(long)]
    pub memory: bool,
    /// Directory of the CA and certificates (created by the listener when empty; the
    /// client reads the same directory, or a client directory of `kiseki-server dev`)
    #[arg(long = "tls-dir")]
    pub tls_dir: PathBuf,
    /// With --connect: TLS connections each job keeps to the listener
    #[arg(long, default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=MAX_PER_ENDPOINT_MAX as i64))]
    pub connections: u32,
}

/// What to run, checked.
#[derive(Debug)]
pub enum Mode {
    Listen(ListenPlan),
    Connect(ClientPlan),
}

/// A listener: where, with which certificates, serving from what, for how long.
#[derive(Debug)]
pub struct ListenPlan {
    pub addr: SocketAddr,
    pub tls_dir: PathBuf,
    pub store: Store,
    /// Serve this long at most (--runtime plus a margin); `None`: until a signal.
    pub lifetime: Option<Duration>,
}

/// What a listener serves from.
#[derive(Debug)]
pub enum Store {
    Memory {
        capacity_bytes: u64,
    },
    /// A chunk service over an engine laid out as `kiseki-bench engine` lays it out.
    Engine(Plan),
}

/// Client jobs: the fio plan the reports read, and the fabric's side of it.
#[derive(Debug)]
pub struct ClientPlan {
    pub job: Plan,
    pub addr: SocketAddr,
    pub tls_dir: PathBuf,
    pub connections: u32,
    pub working_set_chunks: u64,
}

/// Checks the flags of either mode.
pub fn plan(args: FabricArgs) -> Result<Mode, String> {
    if args.job.time_based && args.job.runtime.is_none() {
        return Err("--time_based needs --runtime".to_owned());
    }
    match (args.listen, args.connect) {
        (Some(addr), None) => listen_plan(addr, args).map(Mode::Listen),
        (None, Some(addr)) => client_plan(addr, args).map(Mode::Connect),
        (Some(_), Some(_)) => Err("give --listen or --connect, not both".to_owned()),
        (None, None) => {
            Err("give --listen ADDR (serve chunks) or --connect ADDR (run client jobs)".to_owned())
        }
    }
}

fn listen_plan(addr: SocketAddr, args: FabricArgs) -> Result<ListenPlan, String> {
    let lifetime = args.job.runtime.map(|runtime| runtime + LISTEN_MARGIN);
    let store = if args.memory {
        if args.job.filename.is_some() {
            return Err("--memory serves from memory; --filename is for an engine".to_owned());
        }
        Store::Memory { capacity_bytes: args.job.size.unwrap_or(MEMORY_CAPACITY_DEFAULT_BYTES) }
    } else {
        let mut job = args.job;
        job.rw = Pattern::Write;
        Store::Engine(listen::engine_plan(job)?)
    };
    Ok(ListenPlan { addr, tls_dir: args.tls_dir, store, lifetime })
}

fn client_plan(addr: SocketAddr, args: FabricArgs) -> Result<ClientPlan, String> {
    let job = args.job;
    if args.memory {
        return Err("--memory is for --listen; a client always goes over the fabric".to_owned());
    }
    if !matches!(job.rw, Pattern::Put | Pattern::Get) {
        return Err(format!("--rw={}: the fabric bench runs put or get", job.rw.fio_name()));
    }
    let bs = job.bs;
    if bs == 0 || bs > u64::from(CHUNK_PLAINTEXT_MAX_BYTES) {
        return Err(format!("--bs={bs}: a chunk is 1 byte to {CHUNK_PLAINTEXT_MAX_BYTES} bytes"));
    }
    let in_flight_max = u64::from(args.connections) * IN_FLIGHT_PER_CONNECTION_MAX as u64;
    if u64::from(job.iodepth) > in_flight_max {
        return Err(format!(
            "--iodepth={}: {} connections carry at most {in_flight_max} requests; give more \
             --connections",
            job.iodepth, args.connections
        ));
    }
    let size_bytes = job.size.unwrap_or(WORKING_SET_DEFAULT_BYTES);
    let working_set_chunks = size_bytes / bs;
    if working_set_chunks == 0 {
        return Err(format!("--size={size_bytes} holds no chunk of --bs={bs}"));
    }
    let envelope_bytes = Envelope::sealed_len(bs as usize, 0) as u64;
    let sealed_bytes = working_set_chunks * envelope_bytes * u64::from(job.numjobs);
    if sealed_bytes > CLIENT_MEMORY_MAX_BYTES {
        return Err(format!(
            "--size={size_bytes} x --numjobs={}: the sealed working sets would take \
             {sealed_bytes} bytes, over {CLIENT_MEMORY_MAX_BYTES}",
            job.numjobs
        ));
    }
    let extra_options = vec![
        ("transport", "tcp+tls1.3-mtls".to_owned()),
        ("connect", addr.to_string()),
        ("connections", args.connections.to_string()),
    ];
    let plan = Plan {
        size_bytes: working_set_chunks * bs,
        bs_bytes: bs as u32,
        read_percent: job.rw.read_percent(job.rwmixread),
        ramp: job.ramp_time.unwrap_or(Duration::ZERO),
        io_limit_bytes: (!job.time_based).then_some(working_set_chunks * bs),
        extra_options,
        args: DeviceArgs { ioengine: Backend::FabricTcp, filename: None, ..job },
    };
    Ok(ClientPlan {
        job: plan,
        addr,
        tls_dir: args.tls_dir,
        connections: args.connections,
        working_set_chunks,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: FabricArgs,
    }

    fn parsed(flags: &str) -> Result<Mode, String> {
        let argv = std::iter::once("fabric").chain(flags.split_whitespace());
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        plan(cli.args)
    }

    fn refused(flags: &str, expected: &str) {
        match parsed(flags) {
            Ok(mode) => panic!("{flags}: accepted as {mode:?}"),
            Err(message) => assert!(message.contains(expected), "{flags}: {message}"),
        }
    }

    #[test]
    fn a_client_plan_reports_put_or_get_over_the_fabric() {
        let flags = "--connect 127.0.0.1:7400 --tls-dir t --rw put --bs 4M --iodepth 16 \
                     --runtime 2 --time_based";
        let Ok(Mode::Connect(plan)) = parsed(flags) else { panic!("{flags}: not a client") };
        assert_eq!(plan.job.args.rw.fio_name(), "put");
        assert_eq!(plan.job.read_percent, 0);
        assert_eq!(plan.job.args.ioengine, Backend::FabricTcp);
        assert_eq!(plan.working_set_chunks, 16, "64 MiB of 4 MiB chunks by default");
        assert_eq!(plan.job.io_limit_bytes, None, "time-based");
        assert_eq!(plan.connections, 4);
        let flags = "--connect 127.0.0.1:7400 --tls-dir t --rw get --bs 64k --size 1M";
        let Ok(Mode::Connect(plan)) = parsed(flags) else { panic!("{flags}: not a client") };
        assert_eq!((plan.working_set_chunks, plan.job.io_limit_bytes), (16, Some(1 << 20)));
        assert_eq!(plan.job.read_percent, 100);
    }

    #[test]
    fn a_listener_plan_serves_memory_for_runtime_and_a_margin() {
        let Ok(Mode::Listen(plan)) = parsed("--listen 127.0.0.1:0 --memory --tls-dir t") else {
            panic!("not a listener")
        };
        assert!(matches!(
            plan.store,
            Store::Memory { capacity_bytes: MEMORY_CAPACITY_DEFAULT_BYTES }
        ));
        assert_eq!(plan.lifetime, None, "until a signal");
        let flags = "--listen 127.0.0.1:0 --memory --tls-dir t --size 64M --runtime 5";
        let Ok(Mode::Listen(plan)) = parsed(flags) else { panic!("not a listener") };
        assert!(
            matches!(plan.store, Store::Memory { capacity_bytes } if capacity_bytes == 64 << 20)
        );
        assert_eq!(plan.lifetime, Some(Duration::from_secs(5) + LISTEN_MARGIN));
    }

    #[test]
    fn bad_flags_are_refused_with_a_reason() {
        let client = "--connect 127.0.0.1:7400 --tls-dir t";
        refused("--tls-dir t", "give --listen ADDR");
        refused("--listen 127.0.0.1:1 --connect 127.0.0.1:1 --tls-dir t", "not both");
        refused("--connect 127.0.0.1:1", "--tls-dir");
        refused("--connect localhost --tls-dir t --rw put", "invalid socket address");
        refused(&format!("{client} --rw read"), "put or get");
        refused(client, "put or get");
        refused(&format!("{client} --rw put --memory"), "--memory is for --listen");
        refused(&format!("{client} --rw put --bs 0"), "1 byte to");
        refused(&format!("{client} --rw put --bs 65M"), "1 byte to");
        refused(&format!("{client} --rw put --time_based"), "needs --runtime");
        refused(&format!("{client} --rw put --iodepth 300 --connections 2"), "more --connections");
        refused(&format!("{client} --rw put --connections 0"), "connections");
        refused(&format!("{client} --rw get --bs 1M --size 512k"), "holds no chunk");
        refused(&format!("{client} --rw put --bs 64M --size 1G --numjobs 8"), "sealed");
        refused("--listen 127.0.0.1:0 --memory --filename f --tls-dir t", "--memory serves");
        refused("--listen 127.0.0.1:0 --tls-dir t", "--filename");
        refused("--listen 127.0.0.1:0 --tls-dir t --ioengine spdk", "io_uring or memory");
    }
}
