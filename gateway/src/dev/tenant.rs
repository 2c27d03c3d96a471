//! The dev node's tenant: org `dev` (cross-tenant dedup) and one S3 access key for its
//! workload `dev`. The key's id is kept in `meta/s3-access-key`, its secret only sealed in
//! the metadata, and both are printed at each start (it is a development node). A later
//! start finds the key again by its id.
//!
//! Also the dev node's role files: no policy-file roles, and the dev tenant's workload
//! certificate (`tls/clients/tenant-dev`, CN `dev-workload`) as that tenant's admin, so on a
//! dev node it may manage the tenant's credentials, KEK and audit export over gRPC.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use kiseki_consensus::command::DedupMode;
use kiseki_security::OrgId;
use kiseki_security::authz::RoleFiles;
use kiseki_security::keymanager::tenant_of_org;
use zeroize::Zeroizing;

use super::DevError;
use crate::constants::DEV_TENANT_ORG;
use crate::node::{Node, NodeError};

/// The file that names the dev tenant's access key (not secret: the secret is sealed).
const ACCESS_KEY_FILE: &str = "s3-access-key";

/// The dev node's role files: no policy-file roles, and the dev tenant's workload
/// certificate (`data_dir::DEV_WORKLOAD_CN`) as that tenant's admin.
const DEV_POLICY_FILE: &[u8] = b"{}";
const DEV_SCOPE_FILE: &[u8] = br#"{"tenant-admin": ["dev/dev-workload"]}"#;

/// The dev tenant's S3 key, as the start summary prints it.
pub(super) struct DevKey {
    pub access_key: String,
    pub secret: Zeroizing<String>,
}

/// The role files a dev node's gRPC front and key service use.
pub(super) fn role_files() -> Result<RoleFiles, DevError> {
    RoleFiles::parse(DEV_POLICY_FILE, DEV_SCOPE_FILE).map_err(|e| metadata(e.to_string()))
}

/// Makes the dev tenant and its key on a first start, finds them on a later one.
pub(super) async fn dev_tenant(meta: &Path, node: &Node) -> Result<DevKey, DevError> {
    let org = OrgId::parse(DEV_TENANT_ORG).map_err(|e| metadata(e.to_string()))?;
    let tenant = tenant_of_org(&org);
    node.objects()
        .create_tenant(tenant, DedupMode::CrossTenant)
        .await
        .map_err(|e| metadata(format!("tenant {DEV_TENANT_ORG}: {e}")))?;
    let credentials = node.credentials();
    let key_file = meta.join(ACCESS_KEY_FILE);
    let known = match fs::read_to_string(&key_file) {
        Ok(text) => Some(text.trim().to_owned()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(DevError::Io { path: key_file, source }),
    };
    let found = match &known {
        Some(access_key) => credentials
            .lookup(access_key)
            .await
            .map_err(|e| metadata(format!("S3 access key: {e}")))?
            .map(|(_, secret)| (access_key.clone(), secret)),
        None => None,
    };
    let (access_key, secret) = match found {
        Some(pair) => pair,
        None => {
            let pair = credentials
                .create(tenant, DEV_TENANT_ORG)
                .await
                .map_err(|e| metadata(format!("S3 access key: {e}")))?;
            write_private(&key_file, pair.0.as_bytes())?;
            pair
        }
    };
    Ok(DevKey { access_key, secret })
}

fn metadata(reason: String) -> DevError {
    DevError::Node(NodeError::Metadata { reason })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DevError> {
    let io = |source| DevError::Io { path: path.to_owned(), source };
    let mut file =
        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io)
}
