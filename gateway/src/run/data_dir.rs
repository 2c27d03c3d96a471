//! A configured node's data dir and the manifest that records its device.
//!
//! ```text
//! DIR/                  0700, made on the first start if absent
//!   meta/               0700: the metadata store (shard-0.redb), the key manager's root key
//!                       (root.key, 0600), the re-seal's state; the admin subcommands open
//!                       it while the node is stopped, and may have made it before
//!   meta/lock           held (flock) while a node uses the dir
//!   meta/node.json      the manifest (0600, replaced atomically)
//! ```
//!
//! The manifest names the device (its canonical path and size), how it is cut (shards), the
//! ids its shards carry (the cluster's, from the CA; the node's and the device's, random),
//! this node's id in its metadata groups, and whether its format finished. It is written
//! with `state = "formatting"` before the first start formats the device and rewritten
//! `"formatted"` once every shard is formatted and open: a start that finds `formatting`
//! formats again (the first start did not finish and stored nothing), and a start that finds
//! `formatted` never formats. A first start (no manifest) never formats a device that already
//! holds a Kiseki superblock, whoever's it is.
//!
//! What it does not do: make the device (the caller does, after every check) or keep
//! anything secret: the manifest holds ids and paths only.

use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiseki_engine::DeviceIds;
use kiseki_security::replace_file_atomically;
use serde::{Deserialize, Serialize};

use super::RunError;
use crate::node::{
    self, LOCK_FILE, LockError, MANIFEST_FILE, ManifestError, ManifestKind, lock_data_dir,
    parse_id, read_manifest,
};

/// What the manifest says it is: a configured node's, in this version of its format.
const MANIFEST_KIND: &str = "kiseki-node";
const MANIFEST_VERSION: u32 = 1;

/// The manifest, `meta/node.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    kind: String,
    version: u32,
    pub state: FormatState,
    /// 32 hex digits each: the ids every shard's superblock carries.
    pub cluster_id: String,
    device_node_id: String,
    device_id: String,
    /// This node's id in its metadata groups.
    pub metadata_node_id: u64,
    /// Canonical.
    pub device_path: PathBuf,
    pub device_size_bytes: u64,
    pub shards: usize,
}

/// How far the device's format got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatState {
    /// A first start is formatting (or was, and did not finish): format again.
    Formatting,
    /// Every shard was formatted and opened: never format again.
    Formatted,
}

/// A data dir in use by this process: its root, its manifest if a start wrote one, and the
/// lock that keeps any other node out until dropped.
#[derive(Debug)]
pub struct NodeDir {
    root: PathBuf,
    pub manifest: Option<Manifest>,
    _lock: File,
}

impl NodeDir {
    /// Opens `root` (made 0700 with `meta/` if absent), takes its lock and reads its
    /// manifest if it has one. Refuses a directory another node uses and a manifest that is
    /// not a configured node's of this version.
    pub fn open(root: &Path) -> Result<NodeDir, RunError> {
        private_dir(&root.join("meta"))?;
        let root = fs::canonicalize(root).map_err(|source| io_error(root, source))?;
        let lock = lock_data_dir(&root.join(LOCK_FILE)).map_err(|error| match error {
            LockError::InUse => RunError::InUse { path: root.clone() },
            LockError::Io(source) => io_error(&root.join(LOCK_FILE), source),
        })?;
        let path = root.join(MANIFEST_FILE);
        let manifest = match File::open(&path) {
            Ok(file) => Some(load_manifest(&path, file)?),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(source) => return Err(io_error(&path, source)),
        };
        Ok(NodeDir { root, manifest, _lock: lock })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn meta(&self) -> PathBuf {
        self.root.join("meta")
    }

    /// Records `manifest` (atomically, 0600) as this node's.
    pub fn write(&mut self, manifest: Manifest) -> Result<(), RunError> {
        let path = self.root.join(MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| RunError::Manifest { path: path.clone(), reason: e.to_string() })?;
        replace_file_atomically(&path, &json, 0o600)
            .map_err(|e| RunError::Manifest { path, reason: e.to_string() })?;
        self.manifest = Some(manifest);
        Ok(())
    }
}

impl Manifest {
    /// A first start's manifest, before the format.
    pub fn formatting(
        ids: (&str, &str, &str),
        metadata_node_id: u64,
        device_path: PathBuf,
        device_size_bytes: u64,
        shards: usize,
    ) -> Manifest {
        let (cluster_id, device_node_id, device_id) = ids;
        Manifest {
            kind: MANIFEST_KIND.to_owned(),
            version: MANIFEST_VERSION,
            state: FormatState::Formatting,
            cluster_id: cluster_id.to_owned(),
            device_node_id: device_node_id.to_owned(),
            device_id: device_id.to_owned(),
            metadata_node_id,
            device_path,
            device_size_bytes,
            shards,
        }
    }

    /// The ids every shard carries and is checked against.
    pub fn device_ids(&self) -> DeviceIds {
        let id = |hex: &str| parse_id(hex).expect("checked when the manifest was loaded");
        DeviceIds {
            cluster_id: id(&self.cluster_id),
            node_id: id(&self.device_node_id),
            device_id: id(&self.device_id),
        }
    }
}

fn load_manifest(path: &Path, file: File) -> Result<Manifest, RunError> {
    let bad = |reason: String| RunError::Manifest { path: path.to_owned(), reason };
    let expected = ManifestKind {
        kind: MANIFEST_KIND,
        version: MANIFEST_VERSION,
        what: "node",
        other: (
            "kiseki-dev-node",
            "it is a dev node's data dir: start it with `kiseki-server dev --data-dir`, or \
             give run another data_dir",
        ),
    };
    let manifest: Manifest =
        read_manifest(file, &expected, |m: &Manifest| m.version).map_err(|error| match error {
            ManifestError::Io(source) => io_error(path, source),
            ManifestError::Bad(reason) => bad(reason),
        })?;
    node::check_manifest(
        &[
            ("cluster_id", &manifest.cluster_id),
            ("device_node_id", &manifest.device_node_id),
            ("device_id", &manifest.device_id),
        ],
        manifest.device_size_bytes,
        manifest.shards,
    )
    .map_err(bad)?;
    Ok(manifest)
}

fn private_dir(path: &Path) -> Result<(), RunError> {
    let root = path.parent().unwrap_or(path);
    let existed = root.exists();
    DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(|e| io_error(path, e))?;
    if !existed {
        // `recursive` made the root with the process umask's mode, not 0700.
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(|e| io_error(root, e))?;
    }
    Ok(())
}

fn io_error(path: &Path, source: io::Error) -> RunError {
    RunError::Io { path: path.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::NODE_MANIFEST_BYTES_MAX;

    fn manifest() -> Manifest {
        let ids = ("11".repeat(16), "22".repeat(16), "33".repeat(16));
        Manifest::formatting((&ids.0, &ids.1, &ids.2), 1, "/dev/x".into(), 64 << 20, 1)
    }

    #[test]
    fn a_new_dir_is_private_and_a_second_opener_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().join("node");
        let dir = NodeDir::open(&root).unwrap();
        assert!(dir.manifest.is_none());
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("meta")), 0o700);
        assert!(matches!(NodeDir::open(&root), Err(RunError::InUse { .. })));
        drop(dir);
        assert!(NodeDir::open(&root).is_ok());
    }

    #[test]
    fn a_written_manifest_reads_back_and_a_bad_one_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        let mut dir = NodeDir::open(temp.path()).unwrap();
        let mut made = manifest();
        dir.write(made.clone()).unwrap();
        made.state = FormatState::Formatted;
        dir.write(made.clone()).unwrap();
        drop(dir);
        let path = temp.path().join(MANIFEST_FILE);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(NodeDir::open(temp.path()).unwrap().manifest, Some(made.clone()));

        let cases = [
            (serde_json::json!({"kind": "kiseki-dev-node"}), "dev node's data dir"),
            (serde_json::json!({"kind": "other"}), "not a node"),
            (serde_json::to_value(Manifest { version: 2, ..made.clone() }).unwrap(), "version 2"),
            (serde_json::to_value(Manifest { shards: 0, ..made.clone() }).unwrap(), "0 shards"),
            (
                serde_json::to_value(Manifest { device_id: "00".into(), ..made.clone() }).unwrap(),
                "device_id",
            ),
        ];
        for (value, needle) in cases {
            fs::write(&path, serde_json::to_vec(&value).unwrap()).unwrap();
            let error = NodeDir::open(temp.path()).unwrap_err().to_string();
            assert!(error.contains(needle), "{needle}: {error}");
        }
        fs::write(&path, vec![b' '; NODE_MANIFEST_BYTES_MAX as usize + 1]).unwrap();
        let error = NodeDir::open(temp.path()).unwrap_err().to_string();
        assert!(error.contains("larger than"), "{error}");
    }
}
