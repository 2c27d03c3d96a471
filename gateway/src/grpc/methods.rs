//! The one table of the gRPC front's methods: each method's full path, the API path of the
//! security crate it is authorized as, and where its target comes from. Every handler
//! starts with [`Gate::check`] on its own row; nothing else decides who may call it.
//!
//! Who may call what is then the security crate's [`Authorizer`]: its built-in role table
//! (`kiseki_security::authz`), the scope file's tenant-admin assignments, and approved
//! access grants. The caller is its verified client certificate alone: no request field
//! names a role, and no header or metadata is ever read here.
//!
//! Arguments: data-path methods are authorized with the argument `*` (the tenant's
//! objects), never a bucket or key, so tenant names stay out of the audit log as they do
//! for S3. Control methods carry the organization, workload, access key or request id
//! they act on.

use std::sync::{Arc, RwLock};

use kiseki_security::authz::{Api, Argument, Authorizer, Caller, Target};
use kiseki_security::keymanager::AuditKind;
use kiseki_security::{OrgId, TlsContext};
use tonic::Status;

use crate::audit::AuditSink;

/// Where a method's target comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetOf {
    /// The cluster's own infrastructure.
    Cluster,
    /// The caller's tenant: its certificate's organization. A caller of no tenant is
    /// authorized on the cluster, which a tenant API never admits: denied.
    CallerTenant,
    /// The tenant the request names (an `org` field); the authorizer decides whether the
    /// caller may act on it.
    RequestTenant,
    /// The tenant the request names, or the cluster when it names none.
    RequestTenantOrCluster,
    /// The caller's tenant if it has one, else the cluster.
    CallerTenantOrCluster,
    /// The tenant of the access request the call names by id (the handler looks it up
    /// and calls [`Gate::check_on`]); for an unknown id, as `CallerTenantOrCluster`.
    AccessRequestTenant,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    /// `/package.Service/Method`, as on the wire.
    pub path: &'static str,
    /// What the call is authorized as.
    pub api: Api,
    pub target: TargetOf,
}

const fn row(path: &'static str, api: Api, target: TargetOf) -> Method {
    Method { path, api, target }
}

pub const LIST_BUCKETS: Method =
    row("/kiseki.data.v1.DataService/ListBuckets", Api::ObjectList, TargetOf::CallerTenant);
pub const CREATE_BUCKET: Method =
    row("/kiseki.data.v1.DataService/CreateBucket", Api::ObjectPut, TargetOf::CallerTenant);
pub const DELETE_BUCKET: Method =
    row("/kiseki.data.v1.DataService/DeleteBucket", Api::ObjectDelete, TargetOf::CallerTenant);
pub const PUT_OBJECT: Method =
    row("/kiseki.data.v1.DataService/PutObject", Api::ObjectPut, TargetOf::CallerTenant);
pub const GET_OBJECT: Method =
    row("/kiseki.data.v1.DataService/GetObject", Api::ObjectGet, TargetOf::CallerTenant);
pub const HEAD_OBJECT: Method =
    row("/kiseki.data.v1.DataService/HeadObject", Api::ObjectGet, TargetOf::CallerTenant);
pub const DELETE_OBJECT: Method =
    row("/kiseki.data.v1.DataService/DeleteObject", Api::ObjectDelete, TargetOf::CallerTenant);
pub const LIST_OBJECTS: Method =
    row("/kiseki.data.v1.DataService/ListObjects", Api::ObjectList, TargetOf::CallerTenant);
pub const GET_MANIFEST: Method =
    row("/kiseki.data.v1.DataService/GetManifest", Api::ChunkGet, TargetOf::CallerTenant);

pub const STATUS: Method =
    row("/kiseki.admin.v1.StorageAdminService/Status", Api::StorageStatus, TargetOf::Cluster);
pub const LIST_NODES: Method =
    row("/kiseki.admin.v1.StorageAdminService/ListNodes", Api::StorageList, TargetOf::Cluster);
pub const LIST_DEVICES: Method =
    row("/kiseki.admin.v1.StorageAdminService/ListDevices", Api::StorageList, TargetOf::Cluster);
pub const GET_DEVICE: Method =
    row("/kiseki.admin.v1.StorageAdminService/GetDevice", Api::StorageGet, TargetOf::Cluster);

pub const CREATE_TENANT: Method = row(
    "/kiseki.control.v1.ControlService/CreateTenant",
    Api::TenantCreate,
    TargetOf::RequestTenant,
);
pub const LIST_TENANTS: Method =
    row("/kiseki.control.v1.ControlService/ListTenants", Api::TenantList, TargetOf::Cluster);
pub const GET_TENANT: Method = row(
    "/kiseki.control.v1.ControlService/GetTenant",
    Api::TenantConfigRead,
    TargetOf::RequestTenant,
);
pub const CREATE_S3_CREDENTIAL: Method = row(
    "/kiseki.control.v1.ControlService/CreateS3Credential",
    Api::S3CredentialsCreate,
    TargetOf::CallerTenant,
);
pub const LIST_S3_CREDENTIALS: Method = row(
    "/kiseki.control.v1.ControlService/ListS3Credentials",
    Api::S3CredentialsList,
    TargetOf::CallerTenant,
);
pub const DELETE_S3_CREDENTIAL: Method = row(
    "/kiseki.control.v1.ControlService/DeleteS3Credential",
    Api::S3CredentialsDelete,
    TargetOf::CallerTenant,
);
pub const REQUEST_ACCESS: Method = row(
    "/kiseki.control.v1.ControlService/RequestAccess",
    Api::AccessRequest,
    TargetOf::RequestTenant,
);
pub const APPROVE_ACCESS: Method = row(
    "/kiseki.control.v1.ControlService/ApproveAccess",
    Api::AccessApprove,
    TargetOf::AccessRequestTenant,
);
pub const DENY_ACCESS: Method = row(
    "/kiseki.control.v1.ControlService/DenyAccess",
    Api::AccessDeny,
    TargetOf::AccessRequestTenant,
);
pub const LIST_ACCESS_REQUESTS: Method = row(
    "/kiseki.control.v1.ControlService/ListAccessRequests",
    Api::AccessList,
    TargetOf::CallerTenantOrCluster,
);

pub const EXPORT_AUDIT: Method =
    row("/kiseki.audit.v1.AuditService/Export", Api::AuditExport, TargetOf::RequestTenantOrCluster);

/// Every method of the front's own services (the key service, mounted beside them,
/// authorizes its calls itself through the same authorizer rules: `keys_grpc`).
pub const METHODS: [Method; 24] = [
    LIST_BUCKETS,
    CREATE_BUCKET,
    DELETE_BUCKET,
    PUT_OBJECT,
    GET_OBJECT,
    HEAD_OBJECT,
    DELETE_OBJECT,
    LIST_OBJECTS,
    GET_MANIFEST,
    STATUS,
    LIST_NODES,
    LIST_DEVICES,
    GET_DEVICE,
    CREATE_TENANT,
    LIST_TENANTS,
    GET_TENANT,
    CREATE_S3_CREDENTIAL,
    LIST_S3_CREDENTIALS,
    DELETE_S3_CREDENTIAL,
    REQUEST_ACCESS,
    APPROVE_ACCESS,
    DENY_ACCESS,
    LIST_ACCESS_REQUESTS,
    EXPORT_AUDIT,
];

/// The argument data-path methods are authorized with: the tenant's objects, unnamed.
pub const DATA_ARGUMENT: &str = "*";

/// A call the gate let through: who, and on what.
#[derive(Debug, Clone)]
pub struct Allowed {
    pub caller: Caller,
    pub target: Target,
}

impl Allowed {
    /// The tenant the call acts on (every tenant-target method has one).
    pub fn org(&self) -> Result<&OrgId, Status> {
        self.target.org().ok_or_else(|| Status::internal("no tenant target"))
    }
}

/// Turns a request's peer certificates into a caller and asks the authorizer.
#[derive(Debug, Clone)]
pub struct Gate {
    tls: TlsContext,
    authorizer: Arc<RwLock<Authorizer>>,
    audit: Option<Arc<AuditSink>>,
}

impl Gate {
    pub fn new(
        tls: TlsContext,
        authorizer: Arc<RwLock<Authorizer>>,
        audit: Option<Arc<AuditSink>>,
    ) -> Gate {
        Gate { tls, authorizer, audit }
    }

    pub fn authorizer(&self) -> &Arc<RwLock<Authorizer>> {
        &self.authorizer
    }

    pub fn audit(&self) -> Option<&Arc<AuditSink>> {
        self.audit.as_ref()
    }

    /// The caller of `request`, from its certificate alone.
    pub fn caller<T>(&self, request: &tonic::Request<T>) -> Result<Caller, Status> {
        crate::grpc_tls::caller_of_request(&self.tls, request)
    }

    /// Authorizes one call of `method` with `argument` (the path's last segment) and the
    /// organization the request names (`named_org`, for request-target methods), records
    /// the decision in the audit log, and answers PERMISSION_DENIED ("access denied",
    /// nothing more) unless it was allowed.
    pub fn check<T>(
        &self,
        request: &tonic::Request<T>,
        method: &Method,
        argument: Option<&str>,
        named_org: Option<&str>,
    ) -> Result<Allowed, Status> {
        let caller = self.caller(request)?;
        let target = target(method.target, &caller, named_org)?;
        self.decide(caller, method, argument, target)
    }

    /// As [`Self::check`], on a target the handler found itself (the tenant of an access
    /// request it looked up by id; the caller's, or the cluster, for an unknown id).
    pub fn check_on<T>(
        &self,
        request: &tonic::Request<T>,
        method: &Method,
        argument: Option<&str>,
        target: Target,
    ) -> Result<Allowed, Status> {
        let caller = self.caller(request)?;
        self.decide(caller, method, argument, target)
    }

    /// As [`Gate::check_on`], for a caller already known.
    pub fn decide(
        &self,
        caller: Caller,
        method: &Method,
        argument: Option<&str>,
        target: Target,
    ) -> Result<Allowed, Status> {
        let path = api_path(method.api, argument);
        let authorizer = self.authorizer.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let decision = authorizer.authorize(&caller, &path, &target, now_unix_s());
        drop(authorizer);
        let allowed = decision.is_allowed();
        if let Some(audit) = &self.audit {
            let data = matches!(
                method.api,
                Api::ObjectGet
                    | Api::ObjectPut
                    | Api::ObjectDelete
                    | Api::ObjectList
                    | Api::ChunkGet
            );
            let kind = match (allowed, data) {
                (true, true) => AuditKind::DataAccess,
                (false, _) => AuditKind::AuthFailure,
                (true, false) => AuditKind::AdminOperation,
            };
            audit.decision(kind, decision.audit_event());
        }
        if !allowed {
            return Err(Status::permission_denied("access denied"));
        }
        Ok(Allowed { caller, target })
    }
}

/// The request's target, by the method's rule.
fn target(rule: TargetOf, caller: &Caller, named_org: Option<&str>) -> Result<Target, Status> {
    let named = || -> Result<Option<OrgId>, Status> {
        match named_org {
            None | Some("") => Ok(None),
            Some(text) => OrgId::parse(text)
                .map(Some)
                .map_err(|error| Status::invalid_argument(format!("org: {error}"))),
        }
    };
    let own = || caller.org().cloned().map_or(Target::Cluster, Target::Tenant);
    Ok(match rule {
        TargetOf::Cluster => Target::Cluster,
        TargetOf::CallerTenant
        | TargetOf::CallerTenantOrCluster
        | TargetOf::AccessRequestTenant => own(),
        TargetOf::RequestTenant => match named()? {
            Some(org) => Target::Tenant(org),
            None => return Err(Status::invalid_argument("org: required")),
        },
        TargetOf::RequestTenantOrCluster => named()?.map_or(Target::Cluster, Target::Tenant),
    })
}

/// `/v1/<api>/<op>[/<argument>]`: the argument only where the API takes one.
fn api_path(api: Api, argument: Option<&str>) -> String {
    // Without an argument (or for an API that takes none) the bare path: the authorizer
    // refuses it where an argument is required.
    match argument {
        Some(argument) if api.spec().argument != Argument::None => {
            format!("{}/{argument}", api.path_prefix())
        }
        _ => api.path_prefix(),
    }
}

pub(crate) use crate::audit::now_unix_s;

#[cfg(test)]
mod tests {
    use super::*;
    use kiseki_security::authz::ApiPath;

    #[test]
    fn every_method_once_and_its_api_path_parses() {
        for (index, method) in METHODS.iter().enumerate() {
            let again = METHODS[index + 1..].iter().any(|other| other.path == method.path);
            assert!(!again, "{} listed twice", method.path);
            let argument = match method.api.spec().argument {
                Argument::None => None,
                Argument::Org => Some("acme"),
                _ => Some(DATA_ARGUMENT),
            };
            let path = api_path(method.api, argument);
            assert_eq!(ApiPath::parse(&path).map(|p| p.api()), Ok(method.api), "{path}");
        }
    }

    /// The table is the protos' own list: a method added to a .proto without a row (which
    /// no handler could then check) or a row left behind by a removed method fails here.
    #[test]
    fn the_table_lists_every_method_the_protos_declare_and_no_other() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(kiseki_proto::FILE_DESCRIPTOR_SET)
            .expect("the build's descriptor set decodes");
        let mut declared = Vec::new();
        for file in &set.file {
            // The key service authorizes its calls itself (`keys_grpc`), not by this table.
            if file.package() == "kiseki.keys.v1" {
                continue;
            }
            for service in &file.service {
                for method in &service.method {
                    declared.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        declared.sort();
        let mut listed: Vec<String> = METHODS.iter().map(|m| m.path.to_owned()).collect();
        listed.sort();
        assert_eq!(listed, declared);
    }

    #[test]
    fn paths_name_the_generated_services() {
        use kiseki_proto::{admin, audit, control, data};
        let services = [
            data::data_service_server::SERVICE_NAME,
            admin::storage_admin_service_server::SERVICE_NAME,
            control::control_service_server::SERVICE_NAME,
            audit::audit_service_server::SERVICE_NAME,
        ];
        for method in METHODS {
            let service = method.path[1..].split('/').next().unwrap();
            assert!(services.contains(&service), "{}", method.path);
        }
    }

    #[test]
    fn request_targets_parse_the_org_and_never_trust_it_for_caller_targets() {
        let id = "3ecfcdf38fcbe141ae26a1030f81e96b753365a46760ae6b578698a97c59fd22";
        let acme = OrgId::parse("acme").unwrap();
        let caller =
            Caller::new("w", id, [kiseki_security::Role::Workload { org: acme.clone() }]).unwrap();
        let own = target(TargetOf::CallerTenant, &caller, Some("globex")).unwrap();
        assert_eq!(own, Target::Tenant(acme));
        let named = target(TargetOf::RequestTenant, &caller, Some("globex")).unwrap();
        assert_eq!(named, Target::Tenant(OrgId::parse("globex").unwrap()));
        assert!(target(TargetOf::RequestTenant, &caller, Some("Bad/Org")).is_err());
        assert!(target(TargetOf::RequestTenant, &caller, None).is_err());
        let system = target(TargetOf::RequestTenantOrCluster, &caller, Some("")).unwrap();
        assert_eq!(system, Target::Cluster);
    }
}
