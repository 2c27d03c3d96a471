//! `kiseki.control.v1.ControlService`: tenants, their workloads' S3 credentials, and
//! cluster-admin access requests, each through the gate's row for it.
//!
//! Access requests and grants are the security crate's ([`Authorizer::request_access`]
//! and the rest), kept in this node's authorizer: an approved grant lets the cluster
//! admin who asked reach what the grant covers on this front (a tenant's configuration
//! through GetTenant, its audit through Export) until it expires. They are not yet
//! replicated or persisted: a restart forgets them. Revoking has no API path of its own
//! in the security crate's table, so it is not served.

use std::sync::Arc;

use kiseki_consensus::command::{DedupMode, TenantId as MetaTenantId};
use kiseki_proto::control::control_service_server::ControlService;
use kiseki_proto::control::{
    AccessRequest as WireRequest, AccessRequestId, CreateS3CredentialRequest, CreateTenantRequest,
    DeleteS3CredentialRequest, Empty, ListAccessRequestsReply, ListAccessRequestsRequest,
    ListS3CredentialsReply, ListS3CredentialsRequest, ListTenantsReply, ListTenantsRequest,
    RequestAccessRequest, S3Credential, Tenant, TenantName,
};
use kiseki_security::authz::{
    AccessRequest, Audited, Authorizer, Caller, GrantError, GrantScope, ObjectType, Permission,
    RequestState, Target,
};
use kiseki_security::keymanager::{AuditKind, KeyStoreBackend, tenant_of_org};
use kiseki_security::{OrgId, TenantId};
use tonic::{Request, Response, Status};

use super::methods::{self, now_unix_s};
use super::{Shared, object_status};
use crate::constants::GRPC_LIST_MAX;

/// Longest workload name: a DNS label's 63 bytes, as organization ids.
const WORKLOAD_MAX_BYTES: usize = 63;

pub(crate) struct ControlApi<S>(pub(crate) Arc<Shared<S>>);

impl<S: KeyStoreBackend + Send + 'static> ControlApi<S> {
    fn authorizer(&self) -> std::sync::RwLockWriteGuard<'_, Authorizer> {
        self.0.gate.authorizer().write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// For reads of the grants: authorization decisions on every service go on meanwhile.
    fn authorizer_read(&self) -> std::sync::RwLockReadGuard<'_, Authorizer> {
        self.0.gate.authorizer().read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a grant step's own audit event and turns its result into a status.
    fn audited<T>(&self, step: Audited<T>) -> Result<T, Status> {
        if let Some(audit) = self.0.gate.audit() {
            audit.decision(AuditKind::AdminOperation, &step.audit);
        }
        step.result.map_err(grant_status)
    }

    /// Approves or denies (`decide`) the access request the call names, authorized on that
    /// request's tenant.
    fn decide_access(
        &self,
        request: &Request<AccessRequestId>,
        method: &methods::Method,
        decide: fn(&mut Authorizer, u64, &Caller, u64) -> Audited<()>,
    ) -> Result<Response<Empty>, Status> {
        let id = request.get_ref().id;
        let caller = self.0.gate.caller(request)?;
        let target = self.request_target(id, caller.org());
        let allowed = self.0.gate.decide(caller, method, Some(&id.to_string()), target)?;
        let step = decide(&mut self.authorizer(), id, &allowed.caller, now_unix_s());
        self.audited(step)?;
        Ok(Response::new(Empty {}))
    }

    /// The tenant of access request `id` (the target its decision is authorized on); for
    /// an unknown id the caller's own tenant (or the cluster, which no decision admits),
    /// so a probe of ids learns nothing.
    fn request_target(&self, id: u64, caller_org: Option<&OrgId>) -> Target {
        let authorizer = self.authorizer_read();
        match authorizer.grants().request_by_id(id) {
            Some(request) => Target::Tenant(request.scope.org.clone()),
            None => caller_org.cloned().map_or(Target::Cluster, Target::Tenant),
        }
    }
}

#[tonic::async_trait]
impl<S: KeyStoreBackend + Send + 'static> ControlService for ControlApi<S> {
    async fn create_tenant(
        &self,
        request: Request<CreateTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let org = request.get_ref().org.clone();
        let allowed =
            self.0.gate.check(&request, &methods::CREATE_TENANT, Some(&org), Some(&org))?;
        let org = allowed.org()?.clone();
        let dedup =
            if request.get_ref().isolated { DedupMode::Isolated } else { DedupMode::CrossTenant };
        let tenant = tenant_of_org(&org);
        self.0.front.objects.create_tenant(tenant, dedup).await.map_err(object_status)?;
        let isolated = self.tenant_isolated(tenant).await?.unwrap_or(false);
        Ok(Response::new(Tenant { org: org.to_string(), tenant_id: tenant.to_string(), isolated }))
    }

    async fn list_tenants(
        &self,
        request: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsReply>, Status> {
        self.0.gate.check(&request, &methods::LIST_TENANTS, None, None)?;
        let ListTenantsRequest { start_after, limit } = request.into_inner();
        let after = match start_after.as_str() {
            "" => None,
            text => Some(MetaTenantId(
                parse_uuid(text).ok_or_else(|| Status::invalid_argument("start_after: a UUID"))?,
            )),
        };
        let limit = match limit as usize {
            0 => GRPC_LIST_MAX,
            asked => asked.min(GRPC_LIST_MAX),
        };
        let view = self.0.front.meta.read().await.map_err(unavailable)?;
        let mut rows = view.tenants(after.as_ref(), limit + 1).map_err(unavailable)?;
        let truncated = rows.len() > limit;
        rows.truncate(limit);
        let tenants = rows
            .into_iter()
            .filter_map(|(id, record)| {
                Some(Tenant {
                    org: String::new(),
                    tenant_id: TenantId::new(id.0)?.to_string(),
                    isolated: record.dedup == DedupMode::Isolated,
                })
            })
            .collect();
        Ok(Response::new(ListTenantsReply { tenants, truncated }))
    }

    async fn get_tenant(&self, request: Request<TenantName>) -> Result<Response<Tenant>, Status> {
        let org = request.get_ref().org.clone();
        let allowed = self.0.gate.check(&request, &methods::GET_TENANT, Some(&org), Some(&org))?;
        let org = allowed.org()?.clone();
        let tenant = tenant_of_org(&org);
        let isolated = self
            .tenant_isolated(tenant)
            .await?
            .ok_or_else(|| Status::not_found("no such tenant"))?;
        Ok(Response::new(Tenant { org: org.to_string(), tenant_id: tenant.to_string(), isolated }))
    }

    async fn create_s3_credential(
        &self,
        request: Request<CreateS3CredentialRequest>,
    ) -> Result<Response<S3Credential>, Status> {
        let workload = request.get_ref().workload.clone();
        check_workload(&workload)?;
        let method = &methods::CREATE_S3_CREDENTIAL;
        let allowed = self.0.gate.check(&request, method, Some(&workload), None)?;
        let tenant = tenant_of_org(allowed.org()?);
        let (access_key, secret) =
            self.0.front.credentials.create(tenant, &workload).await.map_err(object_status)?;
        Ok(Response::new(S3Credential {
            access_key,
            secret_key: secret.as_str().to_owned(),
            workload,
        }))
    }

    async fn list_s3_credentials(
        &self,
        request: Request<ListS3CredentialsRequest>,
    ) -> Result<Response<ListS3CredentialsReply>, Status> {
        let allowed = self.0.gate.check(&request, &methods::LIST_S3_CREDENTIALS, None, None)?;
        let tenant = tenant_of_org(allowed.org()?);
        let mut keys = self
            .0
            .front
            .credentials
            .list(tenant, GRPC_LIST_MAX + 1)
            .await
            .map_err(object_status)?;
        let truncated = keys.len() > GRPC_LIST_MAX;
        keys.truncate(GRPC_LIST_MAX);
        let credentials = keys
            .into_iter()
            .map(|key| S3Credential {
                access_key: key.access_key,
                secret_key: String::new(),
                workload: key.workload,
            })
            .collect();
        Ok(Response::new(ListS3CredentialsReply { credentials, truncated }))
    }

    async fn delete_s3_credential(
        &self,
        request: Request<DeleteS3CredentialRequest>,
    ) -> Result<Response<Empty>, Status> {
        let access_key = request.get_ref().access_key.clone();
        if access_key.is_empty() || !access_key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(Status::invalid_argument("access_key: letters and digits"));
        }
        let method = &methods::DELETE_S3_CREDENTIAL;
        let allowed = self.0.gate.check(&request, method, Some(&access_key), None)?;
        let tenant = tenant_of_org(allowed.org()?);
        let deleted =
            self.0.front.credentials.delete(tenant, &access_key).await.map_err(object_status)?;
        if !deleted {
            return Err(Status::not_found("no such access key"));
        }
        Ok(Response::new(Empty {}))
    }

    async fn request_access(
        &self,
        request: Request<RequestAccessRequest>,
    ) -> Result<Response<WireRequest>, Status> {
        let org = request.get_ref().org.clone();
        let allowed =
            self.0.gate.check(&request, &methods::REQUEST_ACCESS, Some(&org), Some(&org))?;
        let org = allowed.org()?.clone();
        let RequestAccessRequest { objects, read, write, duration_s, .. } = request.into_inner();
        let objects = objects
            .iter()
            .map(|name| {
                ObjectType::from_name(name)
                    .ok_or_else(|| Status::invalid_argument(format!("unknown object type {name}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let permission = match (read, write) {
            (true, true) => Permission::All,
            (true, false) => Permission::Read,
            (false, true) => Permission::Write,
            (false, false) => return Err(Status::invalid_argument("read, write or both")),
        };
        let scope = GrantScope::new(org, objects, permission);
        let now = now_unix_s();
        let step = self.authorizer().request_access(&allowed.caller, scope, duration_s, now);
        let id = self.audited(step)?;
        let authorizer = self.authorizer_read();
        let stored = authorizer
            .grants()
            .request_by_id(id)
            .ok_or_else(|| Status::internal("the request was not kept"))?;
        Ok(Response::new(wire_request(stored)))
    }

    async fn approve_access(
        &self,
        request: Request<AccessRequestId>,
    ) -> Result<Response<Empty>, Status> {
        self.decide_access(&request, &methods::APPROVE_ACCESS, Authorizer::approve_access)
    }

    async fn deny_access(
        &self,
        request: Request<AccessRequestId>,
    ) -> Result<Response<Empty>, Status> {
        self.decide_access(&request, &methods::DENY_ACCESS, Authorizer::deny_access)
    }

    async fn list_access_requests(
        &self,
        request: Request<ListAccessRequestsRequest>,
    ) -> Result<Response<ListAccessRequestsReply>, Status> {
        let allowed = self.0.gate.check(&request, &methods::LIST_ACCESS_REQUESTS, None, None)?;
        let authorizer = self.authorizer_read();
        let requests = authorizer
            .grants()
            .requests()
            .filter(|request| match &allowed.target {
                Target::Cluster => true,
                Target::Tenant(org) => &request.scope.org == org,
            })
            .take(GRPC_LIST_MAX)
            .map(wire_request)
            .collect();
        Ok(Response::new(ListAccessRequestsReply { requests }))
    }
}

impl<S: KeyStoreBackend + Send + 'static> ControlApi<S> {
    /// Whether the tenant opted out of cross-tenant dedup; `None` for no such tenant.
    async fn tenant_isolated(&self, tenant: TenantId) -> Result<Option<bool>, Status> {
        let view = self.0.front.meta.read().await.map_err(unavailable)?;
        let record = view.tenant(&crate::objects::meta_tenant(tenant)).map_err(unavailable)?;
        Ok(record.map(|record| record.dedup == DedupMode::Isolated))
    }
}

fn wire_request(request: &AccessRequest) -> WireRequest {
    let (state, expires) = match request.state {
        RequestState::Pending => ("pending", 0),
        RequestState::Approved { expires_at_unix_s, .. } => ("approved", expires_at_unix_s),
        RequestState::Denied => ("denied", 0),
        RequestState::Revoked => ("revoked", 0),
    };
    WireRequest {
        id: request.id,
        org: request.scope.org.to_string(),
        requester: request.requester_common_name.clone(),
        objects: request.scope.objects.iter().map(|object| object.name().to_owned()).collect(),
        permission: request.scope.permission.name().to_owned(),
        duration_s: request.duration_s,
        submitted_at_unix_s: request.submitted_at_unix_s,
        state: state.to_owned(),
        expires_at_unix_s: expires,
    }
}

/// A workload name: 1 to 63 bytes of letters, digits, `-`, `_` and `.`.
fn check_workload(workload: &str) -> Result<(), Status> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if workload.is_empty() || workload.len() > WORKLOAD_MAX_BYTES || !workload.bytes().all(allowed)
    {
        return Err(Status::invalid_argument("workload: 1 to 63 letters, digits, '-', '_' or '.'"));
    }
    Ok(())
}

fn grant_status(error: GrantError) -> Status {
    match error {
        GrantError::UnknownRequest { .. } => Status::not_found("no such access request"),
        GrantError::NotTenantAdminOfOrg
        | GrantError::ApproverIsOperator
        | GrantError::SelfApproval
        | GrantError::RequesterNotClusterAdmin => Status::permission_denied("access denied"),
        GrantError::TooManyRequests { .. } => Status::resource_exhausted(error.to_string()),
        other => Status::failed_precondition(other.to_string()),
    }
}

fn unavailable(error: kiseki_consensus::ConsensusError) -> Status {
    tracing::warn!(%error, "grpc: the metadata group is unavailable");
    Status::unavailable("metadata unavailable; retry later")
}

/// 16 bytes from UUID text (hyphens optional).
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (index, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        bytes[index] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_text_round_trips() {
        let tenant = tenant_of_org(&OrgId::parse("acme").unwrap());
        assert_eq!(parse_uuid(&tenant.to_string()), Some(*tenant.as_bytes()));
        assert_eq!(parse_uuid("not-a-uuid"), None);
        assert_eq!(parse_uuid(&"g".repeat(32)), None);
    }

    #[test]
    fn workload_names() {
        assert!(check_workload("training-job_1.a").is_ok());
        for bad in ["", "a/b", "a b", &"w".repeat(64), "x*"] {
            assert!(check_workload(bad).is_err(), "{bad:?}");
        }
    }
}
