//! `kiseki-server metadata`: one metadata node (a member of every shard's Raft group) whose
//! Raft RPCs and client requests cross the fabric's TCP+mTLS.
//!
//! A start: bind the listen address (first, so a port in use is refused before anything is
//! opened), build the TLS context (flags over `KISEKI_*_PATH`), open or create
//! `DIR/meta/shard-<n>.redb` for every shard, start the groups, serve `Op::Raft` with the
//! node's handler (server-role peers only), and with `--init` make this node and its
//! `--peer`s the groups' first voters when the groups have no membership yet. Then serve
//! until SIGINT or SIGTERM: stop accepting, let requests in flight finish, stop the groups,
//! exit 0. Leader changes are logged (target `kiseki::metadata`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use kiseki_consensus::fabric::{FabricRpcTransport, RaftHandler};
use kiseki_consensus::rpc::{RpcLimits, RpcNetworkFactory};
use kiseki_consensus::{ConsensusError, MetadataNode, ShardMap};
use kiseki_fabric::{ServerStartError, TcpConfig, TcpServer, TcpServerConfig, TcpTransport};
use kiseki_security::{
    ENV_CA_PATH, ENV_CERT_PATH, ENV_CRL_PATH, ENV_KEY_PATH, PkiError, TlsBuilder, TlsContext,
};
use openraft::BasicNode;
use tokio::signal::unix::{SignalKind, signal};

use super::CliError;
use crate::node::{initialize_groups, log_leader_changes};

pub(super) const ABOUT: &str =
    "Run one metadata node: a member of the metadata Raft groups, over the fabric's mTLS";

const LONG_ABOUT: &str = "\
Run one Kiseki metadata node: a member of every metadata shard's Raft group, keeping its
log and state machine in redb files under DIR/meta (fsync'd before a vote or an append is
acknowledged), talking to its peers over TCP with TLS 1.3 and client certificates of the
cluster CA. Peers and clients must present a server-role certificate (kiseki-server cert
issue --role server); anyone else is denied and audited.

A three-node cluster on one machine (each node in its own shell; certificates from
`kiseki-server cert issue --role server --san 127.0.0.1`):

  kiseki-server metadata --node-id 1 --listen 127.0.0.1:7101 --data-dir ./m1 \\
      --peer 2=127.0.0.1:7102 --peer 3=127.0.0.1:7103 --init \\
      --ca ca/ca.crt --cert tls/n1.crt --key tls/n1.key --crl ca/crl.pem
  kiseki-server metadata --node-id 2 --listen 127.0.0.1:7102 --data-dir ./m2 \\
      --peer 1=127.0.0.1:7101 --peer 3=127.0.0.1:7103 --ca ... (node 3 alike)

--init makes this node and its --peers the groups' first voters; give it on one node of a
new cluster (giving it on all is harmless). A node started again on its --data-dir resumes
where it was (vote, log, state, membership) and --init then does nothing. A node started
without --init and with no state waits until a leader adds it (as a learner, then a
voter) through the client API (kiseki_consensus::MetadataClient).

TLS: --ca, --cert, --key, --crl, or KISEKI_CA_PATH, KISEKI_CERT_PATH, KISEKI_KEY_PATH,
KISEKI_CRL_PATH (flags win); the CRL is re-read every 60 s (KISEKI_CRL_RELOAD_SECS).

Prints `ready: metadata node N serving on ADDR` when it serves; logs leader changes at
info level (RUST_LOG=kiseki::metadata=info, the default); stops on SIGINT or SIGTERM:
no new connections, requests in flight finish, the groups stop, exit code 0.";

/// `kiseki-server metadata` flags.
#[derive(Debug, Args)]
#[command(about = ABOUT, long_about = LONG_ABOUT)]
pub(super) struct MetadataArgs {
    /// This node's id in every group (1 or more; the same on every start).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    node_id: u64,
    /// Where the node listens for Raft RPCs and client requests (TCP, TLS 1.3, client
    /// certificates of the cluster CA only).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// The address peers reach this node at, if not --listen (which must then be a
    /// specific IP, not 0.0.0.0).
    #[arg(long, value_name = "ADDR")]
    advertise: Option<SocketAddr>,
    /// Another voter of the cluster, as ID=IP:PORT; repeat for each.
    #[arg(long = "peer", value_name = "ID=ADDR", value_parser = crate::config::parse_peer)]
    peers: Vec<(u64, SocketAddr)>,
    /// The node's state: redb files under DIR/meta, made on the first start.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Metadata shards (Raft groups); the same on every node and every start.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    shards: u32,
    /// Make this node and its --peers the first voters of groups that have no membership.
    #[arg(long)]
    init: bool,
    /// CA bundle (PEM) [env: KISEKI_CA_PATH].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// This node's certificate chain (PEM, server role) [env: KISEKI_CERT_PATH].
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// This node's private key (PEM, mode 0600) [env: KISEKI_KEY_PATH].
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// The CA's CRL (PEM or DER), re-read periodically [env: KISEKI_CRL_PATH].
    #[arg(long, value_name = "FILE")]
    crl: Option<PathBuf>,
}

/// Why a metadata node did not start or did not stop cleanly.
#[derive(Debug)]
#[non_exhaustive]
pub enum MetadataError {
    Usage(String),
    Listen { addr: SocketAddr, source: io::Error },
    Tls(PkiError),
    Consensus(ConsensusError),
    Fabric(ServerStartError),
    Runtime(io::Error),
}

pub(super) fn metadata(args: MetadataArgs, out: &mut dyn Write) -> Result<(), CliError> {
    run(args, out).map_err(CliError::Metadata)
}

fn run(args: MetadataArgs, out: &mut dyn Write) -> Result<(), MetadataError> {
    let members = members(&args)?;
    let shards = ShardMap::new(args.shards).map_err(MetadataError::Consensus)?;
    let listener = std::net::TcpListener::bind(args.listen)
        .map_err(|source| MetadataError::Listen { addr: args.listen, source })?;
    listener.set_nonblocking(true).map_err(MetadataError::Runtime)?;
    let tls = tls_context(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kiseki-meta")
        .build()
        .map_err(MetadataError::Runtime)?;
    runtime.block_on(serve(&args, listener, tls, shards, members, out))
}

/// This node and its peers, as the groups' membership names them.
fn members(args: &MetadataArgs) -> Result<BTreeMap<u64, BasicNode>, MetadataError> {
    let advertise = args.advertise.unwrap_or(args.listen);
    if advertise.ip().is_unspecified() || advertise.port() == 0 {
        return Err(MetadataError::Usage(format!(
            "peers cannot reach {advertise}: give --listen a specific IP and port, or \
             --advertise the address peers use"
        )));
    }
    let mut members = BTreeMap::from([(args.node_id, BasicNode::new(advertise.to_string()))]);
    for (id, addr) in &args.peers {
        if members.insert(*id, BasicNode::new(addr.to_string())).is_some() {
            return Err(MetadataError::Usage(format!(
                "--peer {id}={addr}: node {id} is named twice (or is this node)"
            )));
        }
    }
    Ok(members)
}

fn tls_context(args: &MetadataArgs) -> Result<TlsContext, MetadataError> {
    let flag = |name: &str| -> Option<OsString> {
        let path = match name {
            ENV_CA_PATH => args.ca.as_ref(),
            ENV_CERT_PATH => args.cert.as_ref(),
            ENV_KEY_PATH => args.key.as_ref(),
            ENV_CRL_PATH => args.crl.as_ref(),
            _ => None,
        };
        path.map(|path| path.clone().into_os_string()).or_else(|| std::env::var_os(name))
    };
    let builder = TlsBuilder::from_lookup(flag).map_err(MetadataError::Tls)?;
    builder.build().map_err(MetadataError::Tls)
}

async fn serve(
    args: &MetadataArgs,
    listener: std::net::TcpListener,
    tls: TlsContext,
    shards: ShardMap,
    members: BTreeMap<u64, BasicNode>,
    out: &mut dyn Write,
) -> Result<(), MetadataError> {
    // Handlers first: a signal from here on stops the node cleanly.
    let mut interrupt = signal(SignalKind::interrupt()).map_err(MetadataError::Runtime)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(MetadataError::Runtime)?;
    let _crl_poller = tls.spawn_crl_poller().map_err(MetadataError::Tls)?;
    let transport = TcpTransport::new(&tls, TcpConfig::default()).map_err(MetadataError::Tls)?;
    let rpc_transport = Arc::new(FabricRpcTransport::new(Arc::new(transport)));
    let meta_dir = args.data_dir.join("meta");
    let node = MetadataNode::start(
        args.node_id,
        &meta_dir,
        shards,
        |shard| RpcNetworkFactory::new(rpc_transport.clone(), shard, RpcLimits::default()),
        |_| {},
    )
    .await
    .map_err(MetadataError::Consensus)?;
    let node = Arc::new(node);
    let listener = tokio::net::TcpListener::from_std(listener).map_err(MetadataError::Runtime)?;
    let server = match TcpServer::start(
        listener,
        &tls,
        TcpServerConfig::default(),
        RaftHandler::for_node(node.clone()),
    ) {
        Ok(server) => server,
        Err(error) => {
            let _ = node.shutdown().await;
            return Err(MetadataError::Fabric(error));
        }
    };
    let watchers: Vec<_> = shards
        .shards()
        .filter_map(|shard| node.group(shard))
        .map(|group| tokio::spawn(log_leader_changes(group.raft().clone(), args.node_id)))
        .collect();
    let started =
        initialize_groups(&node, members, args.init).await.map_err(MetadataError::Consensus);
    let ready = started.and_then(|initialized| {
        let state = if initialized { "initialized the groups" } else { "resumed or joining" };
        writeln!(
            out,
            "ready: metadata node {} serving on {} ({} shard(s), {state}); stop with Ctrl-C \
             or SIGTERM",
            args.node_id,
            server.local_addr(),
            shards.count()
        )
        .and_then(|()| out.flush())
        .map_err(MetadataError::Runtime)
    });
    let reason = match ready {
        Ok(()) => tokio::select! {
            _ = interrupt.recv() => Some("SIGINT"),
            _ = terminate.recv() => Some("SIGTERM"),
        },
        Err(_) => None,
    };
    if let Some(reason) = reason {
        let _ = writeln!(out, "{reason}: stopping: no new connections; requests in flight finish");
        let _ = out.flush();
    }
    server.shutdown().await;
    for watcher in watchers {
        watcher.abort();
    }
    let stopped = node.shutdown().await.map_err(MetadataError::Consensus);
    ready?;
    stopped?;
    let _ = writeln!(out, "stopped: metadata node {} shut down cleanly", args.node_id);
    Ok(())
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataError::Usage(message) => f.write_str(message),
            MetadataError::Listen { addr, source } => {
                write!(f, "--listen {addr}: cannot listen there: {source}")
            }
            MetadataError::Tls(error) => write!(f, "TLS: {error}"),
            MetadataError::Consensus(error) => write!(f, "{error}"),
            MetadataError::Fabric(error) => write!(f, "the fabric server: {error}"),
            MetadataError::Runtime(error) => write!(f, "runtime: {error}"),
        }
    }
}

impl std::error::Error for MetadataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MetadataError::Listen { source, .. } | MetadataError::Runtime(source) => Some(source),
            MetadataError::Tls(error) => Some(error),
            MetadataError::Consensus(error) => Some(error),
            MetadataError::Fabric(error) => Some(error),
            MetadataError::Usage(_) => None,
        }
    }
}

impl MetadataError {
    /// Whether the command line is at fault (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, MetadataError::Usage(_))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_peer;

    #[test]
    fn peers_read_as_id_equals_address() {
        assert_eq!(parse_peer("2=127.0.0.1:7102"), Ok((2, "127.0.0.1:7102".parse().unwrap())));
        for bad in ["", "2", "=127.0.0.1:1", "0=127.0.0.1:1", "x=127.0.0.1:1", "2=localhost:1"] {
            assert!(parse_peer(bad).is_err(), "{bad:?} accepted");
        }
    }
}
