//! `kiseki-server run`: a node from a configuration ([`crate::config`]): a TOML file,
//! `KISEKI_*` variables over it, these flags over both. `--check` loads and checks the
//! configuration, prints it as the node would use it and exits; without it the node starts
//! ([`crate::run`]) and serves until SIGINT or SIGTERM.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::config::{NodeConfig, Overrides};
use crate::node::Output;

pub(super) const ABOUT: &str =
    "Run a node from a configuration file (KISEKI_* variables and flags override it)";

pub(super) const LONG_ABOUT: &str = "\
Run a node from a configuration: a TOML file (--config), then KISEKI_* environment
variables, then these flags; each replaces the one before. Every field has one name:
s3_addr in the file, KISEKI_S3_ADDR in the environment, --s3-addr here.

  data_dir = \"/var/lib/kiseki\"        # meta/: metadata, the key manager's root key, the
                                       # manifest naming the device (made on first start)
  node_id = 1                          # this node's id in its metadata groups (1 alone)
  cores = 4                            # reactors and shards; default one per core less one
  ca_path = \"/etc/kiseki/tls/ca.crt\"   # KISEKI_CA_PATH, as every Kiseki tool reads it
  cert_path = \"/etc/kiseki/tls/node1.crt\"   # server role, from `kiseki-server cert issue`
  key_path = \"/etc/kiseki/tls/node1.key\"    # or `kiseki-server join`
  crl_path = \"/etc/kiseki/tls/crl.pem\"      # optional, re-read while running
  device_path = \"/dev/nvme0n1\"         # a block device, or a file
  device_size = \"64G\"                  # only to make a device file on the first start
  chunk_size = \"1M\"                    # objects are cut into these (4K to 4032K)
  s3_addr = \"0.0.0.0:9000\"             # HTTPS; defaults are loopback, as for dev
  grpc_addr = \"0.0.0.0:9100\"
  admin_addr = \"127.0.0.1:9090\"        # plain HTTP: keep it on a management address
  fabric_addr = \"10.0.0.1:9200\"        # chunks, and Raft RPCs between nodes
  peers = [\"2=10.0.0.2:9200\", \"3=10.0.0.3:9200\"]   # KISEKI_PEERS=\"2=...,3=...\"
  init = true                          # --init: on one node of a new cluster only
  policy_file = \"/etc/kiseki/policy.json\"   # optional, both or neither: roles beyond the
  scope_file = \"/etc/kiseki/scope.json\"     # certificates' (tenant admins) for gRPC

`kiseki-server run --config kiseki.toml --check` prints the configuration as the node
would use it, or the first field that is wrong and where its value came from.

The first start takes the device as it is (or makes the file with device_size), refuses
one that already holds a Kiseki store (another cluster's, or one this data dir has no
record of), formats one shard per reactor and records the device in data_dir/meta/node.json.
Later starts never format: they check that the configuration still names that device, its
size, its shards, the cluster's CA and node_id, and recover the shards.

Without peers the node keeps its metadata in a one-member group, as dev does. With peers it
is a member of the cluster's metadata groups, their Raft RPCs over the fabric's mTLS on
fabric_addr (a specific IP and port, named in every node's certificate). Give init on one
node of a new cluster: it makes the groups' first voters and the cluster's root key
(data_dir/meta/root.key, 0600); copy that key to every other node's data_dir/meta/ before
its first start (a member without it is refused). Object chunks are replicated to the
members' engines (3 copies, or one per member if fewer; a write waits for a majority of
them), so an object reads while a member is down. Today the S3 and gRPC front ends answer
on the group's leader only.

No tenant or S3 key is made or printed. On a single node, with it stopped: `kiseki-server
keys init --data-dir DIR` makes the root key and master key (the node also makes them on its
first start), and `kiseki-server s3-credentials create --data-dir DIR --tenant-id T
--workload-id W` (the tenant admin's certificate) makes a key and prints its secret once. On
a cluster, while it runs: a cluster admin creates tenants, and a tenant's admin (named in
scope_file) its S3 keys, through the gRPC control service of the metadata leader.

Prints a short summary (addresses, data dir, device, metadata members) and `ready: ...`,
then serves until SIGINT or SIGTERM: /readyz turns 503, no new connections, requests in
flight finish, the engine shuts down, exit code 0. Exit code 2 for a configuration that
cannot work, 1 for other failures (a port in use, a device of another cluster).";

#[derive(Debug, Args)]
pub(super) struct RunArgs {
    /// The configuration file (TOML). Without it, the KISEKI_* variables and flags must
    /// give every required field.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration, print it as the node would use it, and exit.
    #[arg(long)]
    check: bool,
    /// Replaces data_dir.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Replaces node_id.
    #[arg(long, value_name = "ID")]
    node_id: Option<u64>,
    /// Replaces cores.
    #[arg(long, value_name = "N")]
    cores: Option<usize>,
    /// Replaces device_path.
    #[arg(long = "device", value_name = "PATH")]
    device_path: Option<PathBuf>,
    /// Replaces s3_addr.
    #[arg(long, value_name = "ADDR")]
    s3_addr: Option<String>,
    /// Replaces grpc_addr.
    #[arg(long, value_name = "ADDR")]
    grpc_addr: Option<String>,
    /// Replaces admin_addr.
    #[arg(long, value_name = "ADDR")]
    admin_addr: Option<String>,
    /// Replaces fabric_addr.
    #[arg(long, value_name = "ADDR")]
    fabric_addr: Option<String>,
    /// Replaces peers (repeat it: --peer 2=10.0.0.2:9200 --peer 3=10.0.0.3:9200).
    #[arg(long = "peer", value_name = "ID=ADDR")]
    peers: Vec<String>,
    /// Sets init: with peers, make the metadata groups' first voters and the cluster's root
    /// key on this node's first start.
    #[arg(long)]
    init: bool,
}

pub(super) fn run(args: RunArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let overrides = Overrides {
        data_dir: args.data_dir,
        node_id: args.node_id,
        cores: args.cores,
        device_path: args.device_path,
        s3_addr: args.s3_addr,
        grpc_addr: args.grpc_addr,
        admin_addr: args.admin_addr,
        fabric_addr: args.fabric_addr,
        peers: args.peers,
        init: args.init.then_some(true),
    };
    let usage = |error: crate::config::ConfigError| CliError::Usage(error.to_string());
    let checked = NodeConfig::load(args.config.as_deref(), &overrides)
        .and_then(NodeConfig::check)
        .map_err(usage)?;
    if args.check {
        writeln!(out, "# configuration OK: the node would start with")?;
        out.write_all(checked.config.to_toml().as_bytes())?;
        return Ok(());
    }
    let mut stderr = std::io::stderr();
    let progress_is_terminal = stderr.is_terminal();
    let mut output = Output { out, progress: &mut stderr, progress_is_terminal };
    crate::run::run(&checked, &mut output).map_err(CliError::Run)
}
