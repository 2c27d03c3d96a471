//! Every API path of the product, in one place, and the parser that turns a request's path
//! into one of them.
//!
//! A path has the KES form `/v1/<api>/<op>` or `/v1/<api>/<op>/<argument>` (seed 002). The
//! [`Api`] enum names each `(api, op)` pair once; [`Api::spec`] says what it takes as
//! argument, which object type and access it needs (for policy files and grants), which
//! targets it can act on, and whether it reaches a tenant's content (the zero-trust rule).
//!
//! What this module does not do: decide who may call what (`table.rs`, `kes.rs`,
//! `rbac.rs` do), or know what an argument means beyond [`Argument::Org`].
//!
//! Invariants:
//! - [`ApiPath`] exists only for a path that names a known API with an argument of the
//!   right shape: no empty segment, no `/` inside the argument, no control character, at
//!   most [`API_PATH_MAX_BYTES`] bytes; so a glob is only ever matched against such a path;
//! - the text of an [`ApiPath`] is exactly the request path it was parsed from.

use std::fmt;

use crate::constants::{API_ARGUMENT_MAX_BYTES, API_PATH_MAX_BYTES};
use crate::role::OrgId;

/// The version prefix every API path starts with.
pub const API_PATH_PREFIX: &str = "/v1/";

/// One operation of the product's API, named by its `/v1/<api>/<op>` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Api {
    // Storage administration (devices).
    StorageList,
    StorageGet,
    StorageStatus,
    StorageDrain,
    // Tenant lifecycle and configuration (control service).
    TenantCreate,
    TenantDelete,
    TenantList,
    TenantConfigRead,
    TenantConfigure,
    // S3 credentials of a tenant's workloads.
    S3CredentialsCreate,
    S3CredentialsDelete,
    S3CredentialsList,
    // The key service (KES style): system master keys and tenant KEKs.
    KeyCreate,
    KeyImport,
    KeyDelete,
    KeyList,
    KeyGenerate,
    KeyDecrypt,
    KeyRotate,
    KeyStatus,
    /// A storage node takes a system master key epoch into its own locked memory.
    KeyFetch,
    // Authorization management: KES policies and identity bindings.
    PolicyList,
    PolicyRead,
    PolicyWrite,
    PolicyDelete,
    IdentityList,
    IdentityDescribe,
    IdentityAssign,
    IdentityDelete,
    // Audit log.
    AuditExport,
    AuditAppend,
    // Data path.
    ChunkPut,
    ChunkGet,
    ObjectPut,
    ObjectGet,
    ObjectDelete,
    ObjectList,
    // Node to node.
    ReplicaReplicate,
    ReplicaRepair,
    RaftAppend,
    RaftVote,
    RaftSnapshot,
    // Admission (seed 003).
    AdmissionMint,
    AdmissionRequest,
    AdmissionRenew,
    // Cluster-admin access requests to tenant resources.
    AccessRequest,
    AccessApprove,
    AccessDeny,
    AccessList,
}

/// What an API says about itself; see [`Api::spec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiSpec {
    /// The `<api>` segment.
    pub api: &'static str,
    /// The `<op>` segment.
    pub op: &'static str,
    pub argument: Argument,
    /// The object type a policy file or an access grant names to allow this API.
    pub object: ObjectType,
    pub access: Access,
    pub targets: Targets,
    /// True if, on a tenant target, the call reads or changes the tenant's data,
    /// configuration, credentials, keys or audit: what a cluster admin never reaches
    /// without an approved access grant.
    pub tenant_content: bool,
}

/// The shape of the `<argument>` segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Argument {
    /// No argument: the path ends after `<op>`.
    None,
    /// A required name (a device, key, bucket, chunk id...).
    Name,
    /// An optional name or pattern (`/v1/key/list` or `/v1/key/list/my-*`).
    OptionalName,
    /// A required organization id, which must be the request's tenant target.
    Org,
}

/// Which targets an API can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Targets {
    /// Only the cluster's own infrastructure: [`Target::Cluster`].
    Cluster,
    /// Only one tenant: [`Target::Tenant`].
    Tenant,
    /// Either (a system master key or a tenant KEK; the system audit or a tenant's).
    ClusterOrTenant,
}

/// What a request acts on: the cluster's infrastructure or one tenant's resources.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Cluster,
    Tenant(OrgId),
}

/// Whether an API reads or changes state. Using key material (generate, decrypt) counts as
/// a write: it hands out secrets, so no read-only permission may reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    Read,
    Write,
}

/// The object types of policy files (seed 004) and access grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectType {
    Device,
    Tenant,
    TenantConfig,
    S3Credential,
    Key,
    Policy,
    Identity,
    Audit,
    Chunk,
    Object,
    Replica,
    Raft,
    Certificate,
    AccessRequest,
}

/// Why a request path is not an [`ApiPath`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidApiPath {
    TooLong {
        len_bytes: usize,
        max_bytes: usize,
    },
    /// The path does not start with `/v1/`.
    NotVersion1,
    /// The `(api, op)` pair is not one of the product's.
    UnknownApi,
    MissingArgument,
    UnexpectedArgument,
    /// An empty segment (`//`, or a trailing `/`).
    EmptySegment,
    /// The argument holds a `/` or a control character, or is over its length limit.
    BadArgument,
}

impl Api {
    /// Every API of the product, in declaration order.
    pub const ALL: [Api; 49] = [
        Api::StorageList,
        Api::StorageGet,
        Api::StorageStatus,
        Api::StorageDrain,
        Api::TenantCreate,
        Api::TenantDelete,
        Api::TenantList,
        Api::TenantConfigRead,
        Api::TenantConfigure,
        Api::S3CredentialsCreate,
        Api::S3CredentialsDelete,
        Api::S3CredentialsList,
        Api::KeyCreate,
        Api::KeyImport,
        Api::KeyDelete,
        Api::KeyList,
        Api::KeyGenerate,
        Api::KeyDecrypt,
        Api::KeyRotate,
        Api::KeyStatus,
        Api::KeyFetch,
        Api::PolicyList,
        Api::PolicyRead,
        Api::PolicyWrite,
        Api::PolicyDelete,
        Api::IdentityList,
        Api::IdentityDescribe,
        Api::IdentityAssign,
        Api::IdentityDelete,
        Api::AuditExport,
        Api::AuditAppend,
        Api::ChunkPut,
        Api::ChunkGet,
        Api::ObjectPut,
        Api::ObjectGet,
        Api::ObjectDelete,
        Api::ObjectList,
        Api::ReplicaReplicate,
        Api::ReplicaRepair,
        Api::RaftAppend,
        Api::RaftVote,
        Api::RaftSnapshot,
        Api::AdmissionMint,
        Api::AdmissionRequest,
        Api::AdmissionRenew,
        Api::AccessRequest,
        Api::AccessApprove,
        Api::AccessDeny,
        Api::AccessList,
    ];

    /// The one table of the product's API paths.
    pub const fn spec(self) -> ApiSpec {
        use Access::{Read, Write};
        use Argument::{Name, None, OptionalName, Org};
        use ObjectType as O;
        use Targets::{Cluster, ClusterOrTenant, Tenant};
        let (api, op, argument, object, access, targets, tenant_content) = match self {
            Api::StorageList => ("storage", "list", None, O::Device, Read, Cluster, false),
            Api::StorageGet => ("storage", "get", Name, O::Device, Read, Cluster, false),
            Api::StorageStatus => ("storage", "status", None, O::Device, Read, Cluster, false),
            Api::StorageDrain => ("storage", "drain", Name, O::Device, Write, Cluster, false),
            Api::TenantCreate => ("tenant", "create", Org, O::Tenant, Write, Tenant, false),
            Api::TenantDelete => ("tenant", "delete", Org, O::Tenant, Write, Tenant, false),
            Api::TenantList => ("tenant", "list", None, O::Tenant, Read, Cluster, false),
            Api::TenantConfigRead => ("tenant", "config", Org, O::TenantConfig, Read, Tenant, true),
            Api::TenantConfigure => {
                ("tenant", "configure", Org, O::TenantConfig, Write, Tenant, true)
            }
            Api::S3CredentialsCreate => {
                ("s3-credentials", "create", Name, O::S3Credential, Write, Tenant, true)
            }
            Api::S3CredentialsDelete => {
                ("s3-credentials", "delete", Name, O::S3Credential, Write, Tenant, true)
            }
            Api::S3CredentialsList => {
                ("s3-credentials", "list", None, O::S3Credential, Read, Tenant, true)
            }
            Api::KeyCreate => ("key", "create", Name, O::Key, Write, ClusterOrTenant, true),
            Api::KeyImport => ("key", "import", Name, O::Key, Write, ClusterOrTenant, true),
            Api::KeyDelete => ("key", "delete", Name, O::Key, Write, ClusterOrTenant, true),
            Api::KeyList => ("key", "list", OptionalName, O::Key, Read, ClusterOrTenant, true),
            Api::KeyGenerate => ("key", "generate", Name, O::Key, Write, ClusterOrTenant, true),
            Api::KeyDecrypt => ("key", "decrypt", Name, O::Key, Write, ClusterOrTenant, true),
            Api::KeyRotate => ("key", "rotate", Name, O::Key, Write, ClusterOrTenant, true),
            Api::KeyStatus => ("key", "status", None, O::Key, Read, Cluster, false),
            Api::KeyFetch => ("key", "fetch", Name, O::Key, Read, Cluster, false),
            Api::PolicyList => ("policy", "list", OptionalName, O::Policy, Read, Cluster, false),
            Api::PolicyRead => ("policy", "read", Name, O::Policy, Read, Cluster, false),
            Api::PolicyWrite => ("policy", "write", Name, O::Policy, Write, Cluster, false),
            Api::PolicyDelete => ("policy", "delete", Name, O::Policy, Write, Cluster, false),
            Api::IdentityList => {
                ("identity", "list", OptionalName, O::Identity, Read, Cluster, false)
            }
            Api::IdentityDescribe => {
                ("identity", "describe", Name, O::Identity, Read, Cluster, false)
            }
            Api::IdentityAssign => ("identity", "assign", Name, O::Identity, Write, Cluster, false),
            Api::IdentityDelete => ("identity", "delete", Name, O::Identity, Write, Cluster, false),
            Api::AuditExport => ("audit", "export", None, O::Audit, Read, ClusterOrTenant, true),
            Api::AuditAppend => ("audit", "append", None, O::Audit, Write, ClusterOrTenant, true),
            Api::ChunkPut => ("chunk", "put", Name, O::Chunk, Write, Tenant, true),
            Api::ChunkGet => ("chunk", "get", Name, O::Chunk, Read, Tenant, true),
            Api::ObjectPut => ("object", "put", Name, O::Object, Write, Tenant, true),
            Api::ObjectGet => ("object", "get", Name, O::Object, Read, Tenant, true),
            Api::ObjectDelete => ("object", "delete", Name, O::Object, Write, Tenant, true),
            Api::ObjectList => ("object", "list", Name, O::Object, Read, Tenant, true),
            Api::ReplicaReplicate => {
                ("replica", "replicate", Name, O::Replica, Write, Cluster, false)
            }
            Api::ReplicaRepair => ("replica", "repair", Name, O::Replica, Write, Cluster, false),
            Api::RaftAppend => ("raft", "append", Name, O::Raft, Write, Cluster, false),
            Api::RaftVote => ("raft", "vote", Name, O::Raft, Write, Cluster, false),
            Api::RaftSnapshot => ("raft", "snapshot", Name, O::Raft, Write, Cluster, false),
            Api::AdmissionMint => {
                ("admission", "mint", Name, O::Certificate, Write, Cluster, false)
            }
            Api::AdmissionRequest => {
                ("admission", "request", Name, O::Certificate, Write, Cluster, false)
            }
            Api::AdmissionRenew => {
                ("admission", "renew", Name, O::Certificate, Write, Cluster, false)
            }
            Api::AccessRequest => {
                ("access", "request", Org, O::AccessRequest, Write, Tenant, false)
            }
            Api::AccessApprove => {
                ("access", "approve", Name, O::AccessRequest, Write, Tenant, false)
            }
            Api::AccessDeny => ("access", "deny", Name, O::AccessRequest, Write, Tenant, false),
            Api::AccessList => {
                ("access", "list", None, O::AccessRequest, Read, ClusterOrTenant, false)
            }
        };
        ApiSpec { api, op, argument, object, access, targets, tenant_content }
    }

    /// The API named by an `(api, op)` pair.
    pub fn from_segments(api: &str, op: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|candidate| {
            let spec = candidate.spec();
            spec.api == api && spec.op == op
        })
    }

    /// True if some API has this `<api>` segment.
    pub fn is_api_segment(api: &str) -> bool {
        Api::ALL.iter().any(|candidate| candidate.spec().api == api)
    }

    /// `/v1/<api>/<op>`, the path without an argument.
    pub fn path_prefix(self) -> String {
        let spec = self.spec();
        format!("{API_PATH_PREFIX}{}/{}", spec.api, spec.op)
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path_prefix())
    }
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

impl Target {
    /// The tenant this target belongs to, if any.
    pub fn org(&self) -> Option<&OrgId> {
        match self {
            Target::Cluster => None,
            Target::Tenant(org) => Some(org),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Cluster => f.write_str("cluster"),
            Target::Tenant(org) => write!(f, "tenant {org}"),
        }
    }
}

impl Targets {
    /// True if `target` is one this API can act on.
    pub fn admit(self, target: &Target) -> bool {
        matches!(
            (self, target),
            (Targets::Cluster | Targets::ClusterOrTenant, Target::Cluster)
                | (Targets::Tenant | Targets::ClusterOrTenant, Target::Tenant(_))
        )
    }
}

impl ObjectType {
    /// Every object type, in declaration order.
    pub const ALL: [ObjectType; 14] = [
        ObjectType::Device,
        ObjectType::Tenant,
        ObjectType::TenantConfig,
        ObjectType::S3Credential,
        ObjectType::Key,
        ObjectType::Policy,
        ObjectType::Identity,
        ObjectType::Audit,
        ObjectType::Chunk,
        ObjectType::Object,
        ObjectType::Replica,
        ObjectType::Raft,
        ObjectType::Certificate,
        ObjectType::AccessRequest,
    ];

    /// The name a policy file uses (seed 004 spells object types in PascalCase).
    pub const fn name(self) -> &'static str {
        match self {
            ObjectType::Device => "Device",
            ObjectType::Tenant => "Tenant",
            ObjectType::TenantConfig => "TenantConfig",
            ObjectType::S3Credential => "S3Credential",
            ObjectType::Key => "Key",
            ObjectType::Policy => "Policy",
            ObjectType::Identity => "Identity",
            ObjectType::Audit => "Audit",
            ObjectType::Chunk => "Chunk",
            ObjectType::Object => "Object",
            ObjectType::Replica => "Replica",
            ObjectType::Raft => "Raft",
            ObjectType::Certificate => "Certificate",
            ObjectType::AccessRequest => "AccessRequest",
        }
    }

    /// The object type a policy file's name spells, exactly (case-sensitive).
    pub fn from_name(name: &str) -> Option<ObjectType> {
        ObjectType::ALL.into_iter().find(|object| object.name() == name)
    }

    /// True if an access grant may name this type: some API of this type reaches a
    /// tenant's content. Authorization management, admission and access requests never
    /// are: a grant cannot be used to approve grants.
    pub fn grantable(self) -> bool {
        Api::ALL.iter().any(|api| api.spec().object == self && api.spec().tenant_content)
    }
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A request path that names one of the product's APIs, checked; see the module's
/// invariants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath {
    api: Api,
    text: String,
    argument_start: Option<usize>,
}

impl ApiPath {
    /// Parses a request path of the form `/v1/<api>/<op>[/<argument>]`.
    pub fn parse(text: &str) -> Result<ApiPath, InvalidApiPath> {
        if text.len() > API_PATH_MAX_BYTES {
            return Err(InvalidApiPath::TooLong {
                len_bytes: text.len(),
                max_bytes: API_PATH_MAX_BYTES,
            });
        }
        let rest = text.strip_prefix(API_PATH_PREFIX).ok_or(InvalidApiPath::NotVersion1)?;
        let mut segments = rest.splitn(3, '/');
        let api_segment = segments.next().unwrap_or_default();
        let op_segment = segments.next().unwrap_or_default();
        if api_segment.is_empty() || op_segment.is_empty() {
            return Err(InvalidApiPath::EmptySegment);
        }
        let api = Api::from_segments(api_segment, op_segment).ok_or(InvalidApiPath::UnknownApi)?;
        let argument = segments.next();
        check_argument(api, argument)?;
        let argument_start = argument.map(|argument| text.len() - argument.len());
        Ok(ApiPath { api, text: text.to_owned(), argument_start })
    }

    /// The path of `api` with `argument`, checked as [`ApiPath::parse`] checks.
    pub fn new(api: Api, argument: Option<&str>) -> Result<ApiPath, InvalidApiPath> {
        let text = match argument {
            Some(argument) => format!("{}/{argument}", api.path_prefix()),
            None => api.path_prefix(),
        };
        let path = ApiPath::parse(&text)?;
        assert_eq!(path.api, api, "an API's own prefix parses back to it");
        Ok(path)
    }

    pub fn api(&self) -> Api {
        self.api
    }

    pub fn argument(&self) -> Option<&str> {
        self.argument_start.map(|start| &self.text[start..])
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for ApiPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn check_argument(api: Api, argument: Option<&str>) -> Result<(), InvalidApiPath> {
    match (api.spec().argument, argument) {
        (Argument::None, Some(_)) => return Err(InvalidApiPath::UnexpectedArgument),
        (Argument::Name | Argument::Org, None) => return Err(InvalidApiPath::MissingArgument),
        _ => {}
    }
    let Some(argument) = argument else { return Ok(()) };
    if argument.is_empty() {
        return Err(InvalidApiPath::EmptySegment);
    }
    let well_formed = argument.len() <= API_ARGUMENT_MAX_BYTES
        && !argument.chars().any(|c| c == '/' || c.is_control());
    if !well_formed {
        return Err(InvalidApiPath::BadArgument);
    }
    if api.spec().argument == Argument::Org && OrgId::parse(argument).is_err() {
        return Err(InvalidApiPath::BadArgument);
    }
    Ok(())
}

impl fmt::Display for InvalidApiPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use InvalidApiPath::*;
        match self {
            TooLong { len_bytes, max_bytes } => {
                write!(f, "API path of {len_bytes} bytes is over {max_bytes}")
            }
            NotVersion1 => write!(f, "API path does not start with {API_PATH_PREFIX}"),
            UnknownApi => f.write_str("API path names no API of the product"),
            MissingArgument => f.write_str("API path lacks its argument"),
            UnexpectedArgument => f.write_str("API path has an argument its API does not take"),
            EmptySegment => f.write_str("API path has an empty segment"),
            BadArgument => f.write_str("API path argument is malformed"),
        }
    }
}

impl std::error::Error for InvalidApiPath {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_has_a_distinct_path_that_parses_back() {
        let mut prefixes = std::collections::HashSet::new();
        for api in Api::ALL {
            assert!(prefixes.insert(api.path_prefix()), "{api} listed twice");
            let argument = match api.spec().argument {
                Argument::None => None,
                Argument::Name | Argument::OptionalName => Some("x"),
                Argument::Org => Some("acme"),
            };
            let path = ApiPath::new(api, argument).unwrap();
            assert_eq!(ApiPath::parse(path.as_str()).unwrap().api(), api);
            assert_eq!(path.argument(), argument);
        }
        assert_eq!(prefixes.len(), Api::ALL.len());
    }

    #[test]
    fn all_lists_every_variant_once() {
        // `spec` is a match without a wildcard, so a new variant must get a spec; this
        // checks it also reached `ALL` (each variant's position is its discriminant).
        for (index, api) in Api::ALL.into_iter().enumerate() {
            assert_eq!(api as usize, index, "{api:?}");
        }
        for (index, object) in ObjectType::ALL.into_iter().enumerate() {
            assert_eq!(object as usize, index, "{object:?}");
            assert_eq!(ObjectType::from_name(object.name()), Some(object));
        }
    }

    #[test]
    fn malformed_paths_are_refused() {
        use InvalidApiPath::*;
        let cases: &[(&str, InvalidApiPath)] = &[
            ("", NotVersion1),
            ("/", NotVersion1),
            ("/v2/storage/list", NotVersion1),
            ("v1/storage/list", NotVersion1),
            ("/V1/storage/list", NotVersion1),
            ("/v1/", EmptySegment),
            ("/v1/storage", EmptySegment),
            ("/v1/storage/", EmptySegment),
            ("/v1//list", EmptySegment),
            ("/v1/storage/list/", UnexpectedArgument),
            ("/v1/storage/lists", UnknownApi),
            ("/v1/Storage/list", UnknownApi),
            ("/v1/storage/get", MissingArgument),
            ("/v1/storage/get/", EmptySegment),
            ("/v1/storage/get/a/b", BadArgument),
            ("/v1/storage/get/a\nb", BadArgument),
            ("/v1/storage/get/a\u{0}", BadArgument),
            ("/v1/tenant/config/Acme", BadArgument),
            ("/v1/tenant/config/acme/", BadArgument),
            ("/v1/key/list/", EmptySegment),
        ];
        for (text, expected) in cases {
            assert_eq!(ApiPath::parse(text), Err(*expected), "{text:?}");
        }
    }

    #[test]
    fn optional_arguments_and_unicode() {
        assert_eq!(ApiPath::parse("/v1/key/list").unwrap().argument(), None);
        assert_eq!(ApiPath::parse("/v1/key/list/my-*").unwrap().argument(), Some("my-*"));
        let path = ApiPath::parse("/v1/key/create/ключ-1").unwrap();
        assert_eq!(path.argument(), Some("ключ-1"));
        assert_eq!(path.as_str(), "/v1/key/create/ключ-1");
    }

    #[test]
    fn length_limits() {
        let longest = "k".repeat(API_ARGUMENT_MAX_BYTES);
        assert!(ApiPath::parse(&format!("/v1/key/create/{longest}")).is_ok());
        let over = "k".repeat(API_ARGUMENT_MAX_BYTES + 1);
        assert_eq!(
            ApiPath::parse(&format!("/v1/key/create/{over}")),
            Err(InvalidApiPath::BadArgument)
        );
        let huge = format!("/v1/key/create/{}", "k".repeat(1 << 20));
        assert!(matches!(ApiPath::parse(&huge), Err(InvalidApiPath::TooLong { .. })));
    }

    #[test]
    fn org_argument_must_be_an_org_id() {
        let path = ApiPath::parse("/v1/tenant/config/acme-corp").unwrap();
        assert_eq!(path.api(), Api::TenantConfigRead);
        assert_eq!(path.argument(), Some("acme-corp"));
    }
}
