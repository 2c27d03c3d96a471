//! `kiseki-server dev`: the flags, their help, and sizes as a user writes them; the node
//! itself is [`crate::dev`].

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::constants::{DEV_GRPC_ADDR, DEV_METRICS_ADDR, DEV_S3_ADDR, NODE_CORES_MAX};
use crate::dev::{self, DevConfig, Output};

pub(super) const ABOUT: &str =
    "Run one node on embedded defaults: S3, the engine, Raft metadata, keys, the chunk service";

const LONG_ABOUT: &str = "\
Run one Kiseki node on embedded defaults, to develop against and to try Kiseki out.

What it runs today: the storage engine (one pinned reactor and one shard per core on a
preallocated device file); a one-member Raft metadata group (meta/shard-0.redb) and the
key manager (root key meta/root.key); S3 on --s3-addr (HTTPS, TLS 1.3 with the node's
certificate, SigV4 with the printed access key of tenant org dev); the fabric's chunk
service on --fabric-addr, over TCP with TLS 1.3 and client certificates required;
Prometheus metrics and health probes on --admin-addr (plain HTTP: GET /metrics, /healthz,
/readyz; no tenant in any label); gRPC (127.0.0.1:9100) on --grpc-addr: the data path,
storage admin, the control plane, audit export and the key service, HTTP/2 over TLS 1.3
with client certificates of the data dir's CA, each method allowed by the role the
certificate gives (never a header), with health and reflection for grpcurl.

The first start makes the data dir (mode 0700): a cluster CA (tls/ca), a certificate for
the node valid for localhost, 127.0.0.1 and ::1 (tls/server), two client identities in the
layout `kiseki-bench fabric --tls-dir` reads (tls/clients/node: the server role, for
node-to-node calls and the bench; tls/clients/tenant-dev: a workload of tenant org dev),
and the device file (devices/dev0.img), written out once with zeros and formatted. A first
start that fails removes what it made. Later starts reuse all of it, regenerate nothing,
and recover the engine: chunks stored before are still there. A tenant sees only the
chunks it put since the node started (its references are kept in memory until consensus
keeps them); the node identity sees all.

Refused, with the reason: a --data-dir that is not empty and not Kiseki's, one whose first
start did not finish (half-made), one in use by another node, one whose CA, certificate or
device belong to another cluster; a device too small for its shards; a --fabric-addr or
--admin-addr in use; a --device-size or --cores other than the data dir was made with.

On start it prints the data dir, the CA bundle, the fabric and admin addresses, the client
identity directories and the kiseki-bench commands that put and get chunks, then serves
until SIGINT or SIGTERM: /readyz turns 503, it stops accepting, lets requests in flight
finish, shuts the engine down and exits 0.

Each reactor registers 32 MiB of I/O buffers, which count against RLIMIT_MEMLOCK for
non-root users: raise it with `ulimit -l unlimited` if the start says so.";

/// `kiseki-server dev` flags.
#[derive(Debug, Args)]
#[command(about = ABOUT, long_about = LONG_ABOUT)]
pub(super) struct DevArgs {
    /// The node's state: CA and certificates, client identities, the device file.
    /// Created (mode 0700) on the first start, reused after.
    #[arg(long, value_name = "DIR", default_value = "./kiseki-data")]
    data_dir: PathBuf,
    /// Size of the device file, set on the first start (binary units: 512M, 2G, 1T) and
    /// at least 32M per core [default: 2G].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    device_size: Option<u64>,
    /// Where the fabric's chunk service listens (TCP, TLS 1.3, client certificates of the
    /// data dir's CA only); port 0 picks a free port, printed on start.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9200")]
    fabric_addr: SocketAddr,
    /// Where Prometheus metrics and the health probes are served (plain HTTP: keep it on a
    /// loopback or management address); port 0 picks a free port, printed on start.
    #[arg(long, value_name = "ADDR", default_value = DEV_METRICS_ADDR)]
    admin_addr: SocketAddr,
    /// Where the S3 front end listens (HTTPS with the node's certificate, SigV4); port 0
    /// picks a free port, printed on start.
    #[arg(long, value_name = "ADDR", default_value = DEV_S3_ADDR)]
    s3_addr: SocketAddr,
    /// Where the gRPC front end listens (HTTP/2 over TLS 1.3, client certificates of the
    /// data dir's CA); port 0 picks a free port, printed on start.
    #[arg(long, value_name = "ADDR", default_value = DEV_GRPC_ADDR)]
    grpc_addr: SocketAddr,
    /// Engine reactors, each a thread pinned to a core that owns one shard of the device;
    /// set on the first start [default: one per core less one for the front ends, at
    /// least 1].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=NODE_CORES_MAX as i64))]
    cores: Option<u16>,
}

pub(super) fn dev(args: DevArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let config = DevConfig {
        data_dir: args.data_dir,
        device_size_bytes: args.device_size,
        fabric_addr: args.fabric_addr,
        admin_addr: args.admin_addr,
        s3_addr: args.s3_addr,
        grpc_addr: args.grpc_addr,
        cores: args.cores.map(usize::from),
    };
    let mut stderr = std::io::stderr();
    let progress_is_terminal = stderr.is_terminal();
    let mut output = Output { out, progress: &mut stderr, progress_is_terminal };
    dev::run(&config, &mut output).map_err(CliError::Dev)
}

/// A size in bytes: digits and an optional binary unit (k, M, G, T; "MiB" and "MB" read
/// the same, as fio reads them).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a size like 2G"))?;
    let unit = unit.trim_end_matches(['b', 'B']).trim_end_matches('i');
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("{text:?}: unknown unit (use k, M, G or T)")),
    };
    number
        .checked_mul(1 << shift)
        .filter(|&bytes| bytes > 0)
        .ok_or_else(|| format!("{text:?}: a size from 1 byte to 16 EiB"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_read_as_fio_reads_them() {
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("128MiB"), Ok(128 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1GB"), Ok(1 << 30));
        for bad in ["", "G", "2X", "-1G", "1.5G", "0", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }
}
