//! `kiseki-server run`'s configuration: a TOML file, `KISEKI_*` environment variables over
//! it, and command-line flags over both ([`NodeConfig::load`]).
//!
//! Every field has one name, used three ways: `s3_addr` in the file, `KISEKI_S3_ADDR` in
//! the environment, `--s3-addr` on the command line. The TLS fields keep the names the
//! rest of Kiseki reads (`KISEKI_CA_PATH`, `KISEKI_CERT_PATH`, `KISEKI_KEY_PATH`,
//! `KISEKI_CRL_PATH`), so one environment serves the node and its tools. Only the variables
//! named in [`FIELDS`] are read: other `KISEKI_*` variables (a client's, a test's) are not
//! configuration and do not make a start fail.
//!
//! A loaded configuration is checked before anything starts ([`NodeConfig::check`]): files
//! that must exist do, addresses parse, sizes have units and `chunk_size` fits the engine,
//! peers are `ID=ADDR` with ids other than the node's own; a node without peers is node 1
//! (its one-member group's), and with peers its `fabric_addr` is one they can reach (a
//! specific IP and port). `init` (`--init`) only matters with peers: see [`crate::run`]. A value that does not read (a wrong type, an unknown key)
//! is reported with the file and key or the variable it came from; a value that reads but
//! is not valid, with its field and that field's variable. Either way an operator can fix
//! it without reading code.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::constants::{RUN_CHUNK_SIZE_MAX_BYTES, RUN_CHUNK_SIZE_MIN_BYTES};

/// The prefix of every configuration variable.
pub const ENV_PREFIX: &str = "KISEKI_";

/// Every field, as it is spelled in the file (and, upper-cased after [`ENV_PREFIX`], in the
/// environment).
pub const FIELDS: &[&str] = &[
    "data_dir",
    "node_id",
    "cores",
    "ca_path",
    "cert_path",
    "key_path",
    "crl_path",
    "device_path",
    "device_size",
    "chunk_size",
    "s3_addr",
    "grpc_addr",
    "admin_addr",
    "fabric_addr",
    "peers",
    "init",
    "policy_file",
    "scope_file",
];

/// Where the front ends listen unless told otherwise: loopback, as `dev` does; a
/// deployment names its addresses.
pub const S3_ADDR_DEFAULT: &str = "127.0.0.1:9000";
pub const GRPC_ADDR_DEFAULT: &str = "127.0.0.1:9100";
pub const ADMIN_ADDR_DEFAULT: &str = "127.0.0.1:9090";
pub const FABRIC_ADDR_DEFAULT: &str = "127.0.0.1:9200";

/// A node's configuration as written: strings where the file holds sizes and peers, so an
/// error can quote what was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's state: metadata (`meta/`), the key manager's root key.
    pub data_dir: PathBuf,
    /// This node's id in its metadata groups (1 and up).
    #[serde(default = "default_node_id")]
    pub node_id: u64,
    /// Reactors (and shards on the device); unset: one per core, less one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<usize>,
    /// The cluster CA bundle, PEM.
    pub ca_path: PathBuf,
    /// The node's certificate (server role), PEM, leaf first.
    pub cert_path: PathBuf,
    /// The node's private key, PEM, mode 0600.
    pub key_path: PathBuf,
    /// The CRL in force, re-read while the node runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_path: Option<PathBuf>,
    /// The device: a block device or a file.
    pub device_path: PathBuf,
    /// The size of a device file made on the first start ("64G"); a block device's size is
    /// its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_size: Option<String>,
    /// The size objects are cut into ("1M").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<String>,
    #[serde(default = "default_s3_addr")]
    pub s3_addr: String,
    #[serde(default = "default_grpc_addr")]
    pub grpc_addr: String,
    #[serde(default = "default_admin_addr")]
    pub admin_addr: String,
    #[serde(default = "default_fabric_addr")]
    pub fabric_addr: String,
    /// The other members of the node's metadata groups, `ID=HOST:PORT`: in the file a
    /// list, in `KISEKI_PEERS` a comma-separated string.
    #[serde(default, deserialize_with = "peers_list", skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// With peers: make this node and its peers the metadata groups' first voters, and
    /// make the cluster's root key, when this node's store has neither (a first start).
    /// Give it on one node of a new cluster; a later start ignores it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub init: bool,
    /// The policy file (seed 004) of the gRPC front's and key service's authorizers; with
    /// `scope_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_file: Option<PathBuf>,
    /// The scope file that names tenant admins (`{"tenant-admin": ["org/CN", ...]}`); with
    /// `policy_file`. Without both, roles come from the certificates alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_file: Option<PathBuf>,
}

/// Values given on the command line: each one set replaces the file's and the
/// environment's.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cores: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fabric_addr: Option<String>,
    /// Replaces the whole list when not empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// `Some(true)` (the `--init` flag) replaces the file's and the environment's value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
}

/// A configuration that was checked: addresses, sizes and peers parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedConfig {
    pub config: NodeConfig,
    pub device_size_bytes: Option<u64>,
    pub chunk_size_bytes: Option<u64>,
    pub s3_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub fabric_addr: SocketAddr,
    pub peers: BTreeMap<u64, SocketAddr>,
}

/// What is wrong with a configuration, in words an operator acts on.
#[derive(Debug)]
pub enum ConfigError {
    /// The file, a variable or a flag does not read as a configuration (figment names the
    /// key and the source).
    Load(Box<figment::Error>),
    /// A value reads but is not valid.
    Invalid { field: &'static str, reason: String },
}

impl NodeConfig {
    /// The configuration from `file` (if any), then the `KISEKI_*` variables of this
    /// process, then `overrides`; each later source replaces the earlier one's values.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<NodeConfig, ConfigError> {
        let mut figment = Figment::new();
        if let Some(file) = file {
            // figment treats a missing file as empty; an operator who names one means it.
            if !file.is_file() {
                return Err(ConfigError::Invalid {
                    field: "--config",
                    reason: format!("{}: no such file", file.display()),
                });
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        let env = Env::prefixed(ENV_PREFIX).only(FIELDS);
        figment = figment.merge(env).merge(Serialized::defaults(overrides));
        figment.extract().map_err(|error| ConfigError::Load(Box::new(error)))
    }

    /// Parses and checks every value; files named must exist.
    pub fn check(self) -> Result<CheckedConfig, ConfigError> {
        if self.node_id == 0 {
            return Err(invalid("node_id", "node ids start at 1".into()));
        }
        if self.cores == Some(0) {
            return Err(invalid("cores", "at least 1".into()));
        }
        for (field, path) in [
            ("ca_path", Some(&self.ca_path)),
            ("cert_path", Some(&self.cert_path)),
            ("key_path", Some(&self.key_path)),
            ("crl_path", self.crl_path.as_ref()),
            ("policy_file", self.policy_file.as_ref()),
            ("scope_file", self.scope_file.as_ref()),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                return Err(invalid(field, format!("{}: no such file", path.display())));
            }
        }
        match (&self.policy_file, &self.scope_file) {
            (Some(_), None) => {
                return Err(invalid(
                    "scope_file",
                    "policy_file is given: give both, or neither".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "policy_file",
                    "scope_file is given: give both, or neither".into(),
                ));
            }
            _ => {}
        }
        let size = |field, text: &Option<String>| {
            text.as_deref()
                .map(|text| crate::cli::parse_size(text).map_err(|reason| invalid(field, reason)))
                .transpose()
        };
        let device_size_bytes = size("device_size", &self.device_size)?;
        let chunk_size_bytes = size("chunk_size", &self.chunk_size)?;
        if let Some(chunk) = chunk_size_bytes
            && !(RUN_CHUNK_SIZE_MIN_BYTES..=RUN_CHUNK_SIZE_MAX_BYTES).contains(&chunk)
        {
            return Err(invalid(
                "chunk_size",
                format!(
                    "{chunk} bytes: from {} KiB to {} KiB (a chunk and its envelope fit one \
                     engine I/O buffer)",
                    RUN_CHUNK_SIZE_MIN_BYTES >> 10,
                    RUN_CHUNK_SIZE_MAX_BYTES >> 10
                ),
            ));
        }
        if device_size_bytes.is_none() && !self.device_path.exists() {
            return Err(invalid(
                "device_path",
                format!(
                    "{}: no such device or file (give device_size to make a file there)",
                    self.device_path.display()
                ),
            ));
        }
        let addr = |field, text: &str| {
            text.parse::<SocketAddr>().map_err(|_| {
                invalid(field, format!("{text:?} is not an address like 10.0.0.1:9000"))
            })
        };
        let s3_addr = addr("s3_addr", &self.s3_addr)?;
        let grpc_addr = addr("grpc_addr", &self.grpc_addr)?;
        let admin_addr = addr("admin_addr", &self.admin_addr)?;
        let fabric_addr = addr("fabric_addr", &self.fabric_addr)?;
        let mut peers = BTreeMap::new();
        for peer in &self.peers {
            let (id, peer_addr) = parse_peer(peer).map_err(|reason| invalid("peers", reason))?;
            if id == self.node_id {
                return Err(invalid("peers", format!("{peer:?} names this node (node_id {id})")));
            }
            if peers.insert(id, peer_addr).is_some() {
                return Err(invalid("peers", format!("node {id} is listed twice")));
            }
        }
        if peers.is_empty() && self.node_id != 1 {
            return Err(invalid(
                "node_id",
                format!(
                    "{}: a node without peers is member 1 of its one-member metadata group \
                     (as the admin subcommands open it); give node_id = 1, or the peers",
                    self.node_id
                ),
            ));
        }
        if !peers.is_empty() && (fabric_addr.ip().is_unspecified() || fabric_addr.port() == 0) {
            return Err(invalid(
                "fabric_addr",
                format!(
                    "{fabric_addr}: peers reach this node's Raft RPCs there, so with peers it \
                     is a specific IP and port (not 0.0.0.0 or port 0)"
                ),
            ));
        }
        Ok(CheckedConfig {
            config: self,
            device_size_bytes,
            chunk_size_bytes,
            s3_addr,
            grpc_addr,
            admin_addr,
            fabric_addr,
            peers,
        })
    }

    /// The configuration as a TOML file would hold it.
    pub fn to_toml(&self) -> String {
        // Every field is a string, a number, a path or a list of strings: always TOML.
        toml::to_string(self).unwrap_or_else(|error| format!("# not printable: {error}\n"))
    }
}

/// `ID=HOST:PORT`, as `kiseki-server metadata --peer` reads it.
pub fn parse_peer(text: &str) -> Result<(u64, SocketAddr), String> {
    let (id, addr) =
        text.split_once('=').ok_or_else(|| format!("{text:?} is not ID=ADDR (2=10.0.0.2:9200)"))?;
    let id: u64 = id
        .trim()
        .parse()
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| format!("{text:?}: the id is a number from 1"))?;
    let addr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: {addr:?} is not an address like 10.0.0.2:9200"))?;
    Ok((id, addr))
}

fn is_false(value: &bool) -> bool {
    !value
}

fn invalid(field: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { field, reason }
}

fn default_node_id() -> u64 {
    1
}

fn default_s3_addr() -> String {
    S3_ADDR_DEFAULT.to_owned()
}

fn default_grpc_addr() -> String {
    GRPC_ADDR_DEFAULT.to_owned()
}

fn default_admin_addr() -> String {
    ADMIN_ADDR_DEFAULT.to_owned()
}

fn default_fabric_addr() -> String {
    FABRIC_ADDR_DEFAULT.to_owned()
}

/// Peers as a list (the file) or one comma-separated string (`KISEKI_PEERS`).
fn peers_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Peers {
        List(Vec<String>),
        Joined(String),
    }
    Ok(match Peers::deserialize(deserializer)? {
        Peers::List(list) => list,
        Peers::Joined(joined) => joined
            .split(',')
            .map(str::trim)
            .filter(|peer| !peer.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Load(error) => write!(f, "configuration: {error}"),
            ConfigError::Invalid { field, reason } => {
                let variable = field.to_ascii_uppercase();
                if field.starts_with("--") {
                    write!(f, "{field} {reason}")
                } else {
                    write!(f, "configuration: {field} (KISEKI_{variable}): {reason}")
                }
            }
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests;
