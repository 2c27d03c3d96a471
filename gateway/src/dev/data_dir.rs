//! The dev node's data dir: what it holds, how a first start makes it, and how a later
//! start checks that it is whole and this cluster's before using it.
//!
//! ```text
//! DIR/                              0700
//!   meta/node.json                  the manifest, written last (0600)
//!   meta/lock                       held (flock) while a node uses the dir
//!   tls/ca/ca.crt ca.key crl.pem    the cluster CA (key 0600)
//!   tls/server/server.crt .key      the node's certificate (SANs localhost, *.localhost,
//!                                   127.0.0.1, ::1)
//!   tls/clients/node/               a client with the server role (node-to-node, the bench)
//!   tls/clients/tenant-dev/         a workload of tenant org `dev`
//!   devices/dev0.img                the preallocated device file, one shard per reactor
//! ```
//!
//! Each client directory holds `ca.crt`, `crl.pem`, `client.crt` and `client.key`: the
//! layout `kiseki-bench fabric --tls-dir` reads.
//!
//! Invariants: the manifest is written only after every other piece exists and every shard
//! is formatted, so a directory without it was never a working node (half-made: refused,
//! never repaired by guessing); a first start that fails removes what it made; a later
//! start reuses everything and regenerates nothing, and refuses a CA, node certificate or
//! device that is not the one the manifest names. Nothing secret is printed: private keys
//! exist only in their 0600 files.

use std::fs::{self, DirBuilder, File};
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiseki_engine::DeviceIds;
use kiseki_security::constants::{CA_VALIDITY_DEFAULT_DAYS, LEAF_VALIDITY_DEFAULT_DAYS};
use kiseki_security::{
    CA_CERT_FILE, CA_KEY_FILE, CRL_FILE, CertificateAuthority, IssueRequest, KesIdentity, OrgId,
    Role, SubjectAltName, TlsPaths, Validity, read_certificates, replace_file_atomically,
};
use serde::{Deserialize, Serialize};

use super::DevError;
use crate::constants::DEV_TENANT_ORG;
use crate::node::{
    self, LOCK_FILE, LockError, MANIFEST_FILE, ManifestError, ManifestKind, lock_data_dir,
    parse_id, read_manifest,
};

/// What the manifest says it is: a dev node's, in this version of its format.
const MANIFEST_KIND: &str = "kiseki-dev-node";
const MANIFEST_VERSION: u32 = 1;

/// The names a data dir's top level may hold: anything else makes it someone else's.
const OWN_ENTRIES: [&str; 3] = ["meta", "tls", "devices"];

/// The client directories a first start makes, by name under `tls/clients/`.
pub const NODE_CLIENT: &str = "node";
const SERVER_STEM: &str = "server";
const CLIENT_STEM: &str = "client";
const DEVICE_FILE: &str = "devices/dev0.img";

/// Where everything lies under a data dir.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

/// The manifest, `meta/node.json`: the ids the shards carry, the identities of the CA and
/// the node certificate (SHA-256 of their public keys), and how the device is cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    kind: String,
    version: u32,
    /// 32 hex digits each.
    cluster_id: String,
    node_id: String,
    device_id: String,
    ca_kes_identity: String,
    server_kes_identity: String,
    pub device_size_bytes: u64,
    pub shards: usize,
    /// The DNS names and IPs the node certificate is valid for.
    pub server_names: Vec<String>,
}

/// What a first start is to make.
#[derive(Debug, Clone)]
pub struct Plan {
    pub device_size_bytes: u64,
    pub shards: usize,
    /// The fabric's IP: named in the server certificate when it is a specific, non-loopback
    /// address (loopback ones always are).
    pub fabric_ip: IpAddr,
}

/// What a directory holds, before anything is written to it.
#[derive(Debug)]
enum Found {
    /// Absent, or an empty directory: a first start.
    Nothing { exists: bool },
    /// A manifest: a node made before.
    Node,
}

/// A data dir in use by this process: its layout, its manifest, and the lock that keeps
/// any other node out of it until dropped.
#[derive(Debug)]
pub struct DataDir {
    pub layout: Layout,
    pub manifest: Manifest,
    /// Whether this start made the node (the shards still need formatting).
    pub created: bool,
    _lock: File,
}

/// A first start's undo: what it made, removed unless [`Rollback::keep`] is called.
#[derive(Debug)]
pub struct Rollback {
    layout: Layout,
    remove_root: bool,
    armed: bool,
}

impl Layout {
    pub fn new(root: PathBuf) -> Layout {
        Layout { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn manifest(&self) -> PathBuf {
        self.root.join(MANIFEST_FILE)
    }

    fn lock(&self) -> PathBuf {
        self.root.join(LOCK_FILE)
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.root.join("tls/ca")
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.ca_dir().join(CA_CERT_FILE)
    }

    fn server_dir(&self) -> PathBuf {
        self.root.join("tls/server")
    }

    /// A client directory under `tls/clients/`.
    pub fn client_dir(&self, name: &str) -> PathBuf {
        self.root.join("tls/clients").join(name)
    }

    /// The tenant's client directory: `tls/clients/tenant-<org>`.
    pub fn tenant_client_dir(&self) -> PathBuf {
        self.client_dir(&format!("tenant-{DEV_TENANT_ORG}"))
    }

    pub fn device(&self) -> PathBuf {
        self.root.join(DEVICE_FILE)
    }

    /// The node's TLS files: the CA, the server certificate, and the CA's CRL (so a
    /// `kiseki-server cert revoke --ca DIR/tls/ca` reaches the node at its next reload).
    pub fn server_tls(&self) -> TlsPaths {
        let dir = self.server_dir();
        TlsPaths {
            ca: self.ca_cert(),
            cert: dir.join(format!("{SERVER_STEM}.crt")),
            key: dir.join(format!("{SERVER_STEM}.key")),
            crl: Some(self.ca_dir().join(CRL_FILE)),
        }
    }

    /// A client directory's TLS files, as `kiseki-bench fabric --tls-dir` reads them.
    pub fn client_tls(dir: &Path) -> TlsPaths {
        TlsPaths {
            ca: dir.join(CA_CERT_FILE),
            cert: dir.join(format!("{CLIENT_STEM}.crt")),
            key: dir.join(format!("{CLIENT_STEM}.key")),
            crl: Some(dir.join(CRL_FILE)),
        }
    }

    /// Every file a made node needs, in the order a first start writes them.
    fn required_files(&self) -> Vec<PathBuf> {
        let server = self.server_tls();
        let mut files = vec![server.ca, self.ca_dir().join(CA_KEY_FILE)];
        files.extend([server.crl.unwrap_or_default(), server.cert, server.key]);
        for dir in [self.client_dir(NODE_CLIENT), self.tenant_client_dir()] {
            let client = Layout::client_tls(&dir);
            files.extend([client.ca, client.crl.unwrap_or_default(), client.cert, client.key]);
        }
        files.push(self.device());
        files
    }
}

impl DataDir {
    /// Opens the node in `layout`'s directory, or starts making one there after `plan`
    /// when it is absent or empty (then `created` is set, the device file and the manifest
    /// are not yet written, and the returned [`Rollback`] undoes the start unless kept).
    /// Refuses a directory in use by another node, one that is not a data dir, one left
    /// half-made, and one whose CA, node certificate or manifest do not agree.
    pub fn open_or_begin(
        layout: Layout,
        plan: impl FnOnce() -> Result<Plan, DevError>,
    ) -> Result<(DataDir, Option<Rollback>), DevError> {
        match inspect(&layout)? {
            Found::Node => {
                let lock = lock(&layout)?;
                let manifest = load_manifest(&layout)?;
                check_node(&layout, &manifest)?;
                Ok((DataDir { layout, manifest, created: false, _lock: lock }, None))
            }
            Found::Nothing { exists } => {
                // Checked before anything is made: a bad flag leaves no trace.
                let plan = plan()?;
                let rollback =
                    Rollback { layout: layout.clone(), remove_root: !exists, armed: true };
                private_dir(layout.root())?;
                set_private(layout.root())?;
                private_dir(&layout.root.join("meta"))?;
                let lock = lock(&layout)?;
                let manifest = make_node(&layout, &plan)?;
                let dir = DataDir { layout, manifest, created: true, _lock: lock };
                Ok((dir, Some(rollback)))
            }
        }
    }

    /// The ids every shard carries and is checked against.
    pub fn device_ids(&self) -> DeviceIds {
        let id = |hex: &str| parse_id(hex).expect("checked when the manifest was loaded");
        DeviceIds {
            cluster_id: id(&self.manifest.cluster_id),
            node_id: id(&self.manifest.node_id),
            device_id: id(&self.manifest.device_id),
        }
    }

    /// Ends a first start: writes the manifest (atomically, 0600), after which the
    /// directory is a node.
    pub fn commit(&self, rollback: Rollback) -> Result<(), DevError> {
        let json = serde_json::to_vec_pretty(&self.manifest).expect("a manifest serializes");
        replace_file_atomically(&self.layout.manifest(), &json, 0o600)?;
        rollback.keep();
        Ok(())
    }
}

impl Rollback {
    /// Keeps what the first start made.
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Only what a first start makes: the directory was absent or empty before it.
        let root = self.layout.root();
        if self.remove_root {
            let _ = fs::remove_dir_all(root);
        } else {
            for entry in OWN_ENTRIES {
                let _ = fs::remove_dir_all(root.join(entry));
            }
        }
    }
}

/// What the directory holds, without writing to it.
fn inspect(layout: &Layout) -> Result<Found, DevError> {
    let root = layout.root();
    let io_error = |source| DevError::Io { path: root.to_owned(), source };
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Ok(Found::Nothing { exists: false });
        }
        Err(error) if error.kind() == io::ErrorKind::NotADirectory => {
            return Err(DevError::Foreign { path: root.to_owned(), reason: "not a directory" });
        }
        Err(error) => return Err(io_error(error)),
    };
    let mut names = Vec::new();
    for entry in entries {
        names.push(entry.map_err(io_error)?.file_name());
    }
    if names.is_empty() {
        return Ok(Found::Nothing { exists: true });
    }
    if layout.manifest().exists() {
        return Ok(Found::Node);
    }
    if !names.iter().any(|name| OWN_ENTRIES.iter().any(|own| name == own)) {
        return Err(DevError::Foreign {
            path: root.to_owned(),
            reason: "it is not empty and holds no kiseki data dir",
        });
    }
    // Ours but without a manifest: a first start still running (it holds the lock), or
    // one that was killed before it finished.
    if layout.lock().exists() {
        drop(lock(layout)?);
    }
    let missing = layout
        .required_files()
        .into_iter()
        .find(|path| !path.exists())
        .unwrap_or_else(|| layout.manifest());
    Err(DevError::HalfMade { path: root.to_owned(), missing })
}

/// Takes the data dir's lock, or says which process-independent fact refuses it.
fn lock(layout: &Layout) -> Result<File, DevError> {
    let path = layout.lock();
    lock_data_dir(&path).map_err(|error| match error {
        LockError::InUse => DevError::InUse { path: layout.root().to_owned() },
        LockError::Io(source) => DevError::Io { path, source },
    })
}

fn load_manifest(layout: &Layout) -> Result<Manifest, DevError> {
    let path = layout.manifest();
    let bad = |reason: String| DevError::Manifest { path: path.clone(), reason };
    let file = File::open(&path).map_err(|source| DevError::Io { path: path.clone(), source })?;
    let expected = ManifestKind {
        kind: MANIFEST_KIND,
        version: MANIFEST_VERSION,
        what: "dev node",
        other: (
            "kiseki-node",
            "it is the data dir of a node run from a configuration: start it with \
             `kiseki-server run --config`, or give dev another --data-dir",
        ),
    };
    let manifest: Manifest =
        read_manifest(file, &expected, |m: &Manifest| m.version).map_err(|error| match error {
            ManifestError::Io(source) => DevError::Io { path: path.clone(), source },
            ManifestError::Bad(reason) => bad(reason),
        })?;
    node::check_manifest(
        &[
            ("cluster_id", &manifest.cluster_id),
            ("node_id", &manifest.node_id),
            ("device_id", &manifest.device_id),
        ],
        manifest.device_size_bytes,
        manifest.shards,
    )
    .map_err(bad)?;
    Ok(manifest)
}

/// A made node's files: all present, the device of the manifest's size, and the CA and
/// node certificate the manifest names.
fn check_node(layout: &Layout, manifest: &Manifest) -> Result<(), DevError> {
    let root = layout.root().to_owned();
    if let Some(missing) = layout.required_files().into_iter().find(|path| !path.exists()) {
        return Err(DevError::Damaged { path: root, missing });
    }
    let device = layout.device();
    let size =
        fs::metadata(&device).map_err(|source| DevError::Io { path: device.clone(), source })?;
    if size.len() != manifest.device_size_bytes {
        return Err(DevError::OtherCluster {
            path: root,
            reason: format!(
                "{} holds {} bytes, not the {} of this node's device",
                device.display(),
                size.len(),
                manifest.device_size_bytes
            ),
        });
    }
    let tls = layout.server_tls();
    for (path, expected, what) in [
        (&tls.ca, &manifest.ca_kes_identity, "cluster CA"),
        (&tls.cert, &manifest.server_kes_identity, "node certificate"),
    ] {
        if &kes_identity(path)? != expected {
            return Err(DevError::OtherCluster {
                path: root,
                reason: format!("{} is not this node's {what}", path.display()),
            });
        }
    }
    Ok(())
}

/// Makes the CA, the node's and the clients' certificates and the `devices/` directory,
/// and returns the manifest to write once the rest is done: the device file (the caller
/// writes it, with progress) and the shards' format.
fn make_node(layout: &Layout, plan: &Plan) -> Result<Manifest, DevError> {
    private_dir(&layout.root.join("tls"))?;
    let ca = CertificateAuthority::init(
        &layout.ca_dir(),
        "Kiseki dev cluster CA",
        Validity::days_from_now(CA_VALIDITY_DEFAULT_DAYS),
    )?;
    let leaf = Validity::days_from_now(LEAF_VALIDITY_DEFAULT_DAYS);
    // `*.localhost`: virtual-host style S3 requests name `<bucket>.localhost`.
    let mut server_names: Vec<String> =
        ["localhost", "*.localhost", "127.0.0.1", "::1"].map(str::to_owned).into();
    if !plan.fabric_ip.is_loopback() && !plan.fabric_ip.is_unspecified() {
        server_names.push(plan.fabric_ip.to_string());
    }
    let server = IssueRequest {
        role: Role::Server,
        common_name: "kiseki-dev-node".to_owned(),
        spiffe_id: None,
        subject_alt_names: server_names
            .iter()
            .map(|name| SubjectAltName::parse(name))
            .collect::<Result<_, _>>()?,
        validity: leaf,
    };
    ca.issue(&server)?.write_files(&layout.server_dir(), SERVER_STEM)?;
    let org = OrgId::parse(DEV_TENANT_ORG).expect("the dev org is a valid org id");
    let clients = [
        (layout.client_dir(NODE_CLIENT), Role::Server, "kiseki-dev-peer"),
        (layout.tenant_client_dir(), Role::Workload { org }, "dev-workload"),
    ];
    for (dir, role, common_name) in clients {
        let request = IssueRequest {
            role,
            common_name: common_name.to_owned(),
            spiffe_id: None,
            subject_alt_names: Vec::new(),
            validity: leaf,
        };
        ca.issue(&request)?.write_files(&dir, CLIENT_STEM)?;
        for file in [CA_CERT_FILE, CRL_FILE] {
            let from = layout.ca_dir().join(file);
            fs::copy(&from, dir.join(file))
                .map_err(|source| DevError::Io { path: from, source })?;
        }
    }
    private_dir(&layout.root.join("devices"))?;
    let tls = layout.server_tls();
    Ok(Manifest {
        kind: MANIFEST_KIND.to_owned(),
        version: MANIFEST_VERSION,
        cluster_id: random_id()?,
        node_id: random_id()?,
        device_id: random_id()?,
        ca_kes_identity: kes_identity(&tls.ca)?,
        server_kes_identity: kes_identity(&tls.cert)?,
        device_size_bytes: plan.device_size_bytes,
        shards: plan.shards,
        server_names,
    })
}

/// The KES identity (SHA-256 of the public key) of the certificate in `path`.
fn kes_identity(path: &Path) -> Result<String, DevError> {
    let certs = read_certificates(path)?;
    KesIdentity::of_certificate(&certs[0]).map(|identity| identity.to_string()).ok_or_else(|| {
        DevError::OtherCluster {
            path: path.to_owned(),
            reason: "not an X.509 certificate".to_owned(),
        }
    })
}

/// 16 random bytes from the kernel, as 32 hex digits.
fn random_id() -> Result<String, DevError> {
    node::random_id().map_err(|source| DevError::Io { path: "/dev/urandom".into(), source })
}

fn private_dir(path: &Path) -> Result<(), DevError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| DevError::Io { path: path.to_owned(), source })
}

/// Mode 0700 on a directory that existed before (empty) and is now a data dir.
fn set_private(path: &Path) -> Result<(), DevError> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .map_err(|source| DevError::Io { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::NODE_MANIFEST_BYTES_MAX;

    #[test]
    fn a_stray_directory_is_foreign_and_ours_without_a_manifest_is_half_made() {
        let temp = tempfile::tempdir().unwrap();
        let layout = Layout::new(temp.path().to_owned());
        assert!(matches!(inspect(&layout), Ok(Found::Nothing { exists: true })));
        let absent = Layout::new(temp.path().join("absent"));
        assert!(matches!(inspect(&absent), Ok(Found::Nothing { exists: false })));
        fs::write(temp.path().join("notes.txt"), b"mine").unwrap();
        assert!(matches!(inspect(&layout), Err(DevError::Foreign { .. })));
        fs::remove_file(temp.path().join("notes.txt")).unwrap();
        fs::create_dir_all(temp.path().join("tls/ca")).unwrap();
        match inspect(&layout) {
            Err(DevError::HalfMade { missing, .. }) => {
                assert_eq!(missing, layout.ca_cert());
            }
            other => panic!("{other:?}"),
        }
        let file = Layout::new(temp.path().join("tls/ca/x"));
        fs::write(file.root(), b"").unwrap();
        assert!(matches!(inspect(&file), Err(DevError::Foreign { .. })));
    }

    #[test]
    fn a_first_start_undone_leaves_the_directory_as_it_was() {
        let temp = tempfile::tempdir().unwrap();
        let plan = || {
            Ok(Plan { device_size_bytes: 64 << 20, shards: 1, fabric_ip: [127, 0, 0, 1].into() })
        };
        for (root, existed) in [(temp.path().join("new"), false), (temp.path().to_owned(), true)] {
            let (dir, rollback) = DataDir::open_or_begin(Layout::new(root.clone()), plan).unwrap();
            assert!(dir.created);
            assert!(dir.layout.ca_cert().exists() && dir.layout.tenant_client_dir().exists());
            assert!(!dir.layout.manifest().exists(), "the manifest comes last");
            drop(rollback);
            drop(dir);
            if existed {
                assert_eq!(fs::read_dir(&root).unwrap().count(), 0, "{}", root.display());
            } else {
                assert!(!root.exists());
            }
        }
        // A plan refused makes nothing.
        let refused = || Err(DevError::Usage("no".to_owned()));
        let root = temp.path().join("refused");
        assert!(DataDir::open_or_begin(Layout::new(root.clone()), refused).is_err());
        assert!(!root.exists());
    }

    #[test]
    fn a_manifest_of_another_kind_version_or_shape_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        let layout = Layout::new(temp.path().to_owned());
        fs::create_dir_all(temp.path().join("meta")).unwrap();
        let good = Manifest {
            kind: MANIFEST_KIND.to_owned(),
            version: MANIFEST_VERSION,
            cluster_id: random_id().unwrap(),
            node_id: random_id().unwrap(),
            device_id: random_id().unwrap(),
            ca_kes_identity: "a".into(),
            server_kes_identity: "b".into(),
            device_size_bytes: 64 << 20,
            shards: 1,
            server_names: vec!["localhost".into()],
        };
        let write = |manifest: &Manifest| {
            fs::write(layout.manifest(), serde_json::to_vec(manifest).unwrap()).unwrap();
        };
        write(&good);
        assert_eq!(load_manifest(&layout).unwrap(), good);
        let cases = [
            (Manifest { version: 2, ..good.clone() }, "format version 2"),
            (Manifest { kind: "other".into(), ..good.clone() }, "not a dev node"),
            (Manifest { kind: "kiseki-node".into(), ..good.clone() }, "kiseki-server run"),
            (Manifest { cluster_id: "00".into(), ..good.clone() }, "cluster_id"),
            (Manifest { shards: 0, ..good.clone() }, "0 shards"),
            (Manifest { shards: 1 << 20, ..good.clone() }, "1048576 shards"),
            (Manifest { shards: 3, ..good.clone() }, "under 33554432 bytes"),
        ];
        for (manifest, needle) in cases {
            write(&manifest);
            let error = load_manifest(&layout).unwrap_err().to_string();
            assert!(error.contains(needle), "{needle}: {error}");
        }
        fs::write(layout.manifest(), b"{\"kind\": 1}").unwrap();
        assert!(matches!(load_manifest(&layout), Err(DevError::Manifest { .. })));
        fs::write(layout.manifest(), vec![b' '; NODE_MANIFEST_BYTES_MAX as usize + 1]).unwrap();
        let error = load_manifest(&layout).unwrap_err().to_string();
        assert!(error.contains("larger than"), "{error}");
    }
}
