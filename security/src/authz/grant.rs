//! Access requests and grants: the only way a cluster admin reaches a tenant's content.
//!
//! A cluster admin asks for access to one tenant, for some object types (data, config,
//! audit, keys, credentials), read or write or both, for a duration. The request waits for
//! the tenant admin of that tenant, who approves or denies it; an approved grant is active
//! from the approval for its duration, and the tenant admin (or the requester) can revoke
//! it early. Every step, refused or not, yields an [`AuditEvent`].
//!
//! Rules:
//! - only a cluster admin requests; a grant serves only the requester's own key identity;
//! - only the tenant admin of the request's tenant approves, denies or revokes; a cluster
//!   operator (cluster admin or SRE) never does, even holding another role, and nobody
//!   approves a request made with their own key identity;
//! - a request not approved within [`ACCESS_REQUEST_PENDING_MAX_S`] can no longer be;
//! - a grant is active only for `approved_at <= now < approved_at + duration`, and its
//!   duration is at most [`ACCESS_GRANT_MAX_DURATION_S`];
//! - only object types some tenant-content API has can be granted, so a grant never
//!   reaches authorization management or access requests themselves.
//!
//! What this module does not do: keep time (every call takes `now_unix_s`), persist
//! anything (the control plane's Raft state will), or decide calls (`authz.rs` asks it
//! whether an active grant covers one).

use std::collections::{BTreeMap, BTreeSet};

use crate::authz::api::{Access, ObjectType, Target};
use crate::authz::audit::{AuditAction, AuditEvent, AuditResult};
use crate::authz::caller::Caller;
use crate::authz::error::GrantError;
use crate::authz::rbac::Permission;
use crate::authz::table::RoleKind;
use crate::constants::{
    ACCESS_GRANT_MAX_DURATION_S, ACCESS_REQUEST_PENDING_MAX_S, ACCESS_REQUESTS_MAX,
};
use crate::role::{OrgId, Role};

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantScope {
    pub org: OrgId,
    pub objects: BTreeSet<ObjectType>,
    pub permission: Permission,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    Pending,
    Approved { approved_at_unix_s: u64, expires_at_unix_s: u64 },
    Denied,
    Revoked,
}

/// One access request and, once approved, its grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest {
    pub id: u64,
    pub requester_common_name: String,
    pub requester_key_identity: String,
    pub scope: GrantScope,
    pub duration_s: u64,
    pub submitted_at_unix_s: u64,
    pub state: RequestState,
    /// Key identity of whoever approved, denied or revoked it.
    pub decided_by: Option<String>,
}

/// The outcome of one access-request step and its audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Audited<T> {
    pub result: Result<T, GrantError>,
    pub audit: AuditEvent,
}

/// Every open and recent access request, bounded by [`ACCESS_REQUESTS_MAX`].
#[derive(Debug, Clone, Default)]
pub struct AccessGrants {
    requests: BTreeMap<u64, AccessRequest>,
    last_id: u64,
}

/// Which decision a tenant admin takes on a pending request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Approve,
    Deny,
}

impl GrantScope {
    pub fn new(
        org: OrgId,
        objects: impl IntoIterator<Item = ObjectType>,
        permission: Permission,
    ) -> GrantScope {
        GrantScope { org, objects: objects.into_iter().collect(), permission }
    }

    pub fn covers(&self, org: &OrgId, object: ObjectType, access: Access) -> bool {
        &self.org == org && self.objects.contains(&object) && self.permission.permits(access)
    }
}

impl AccessRequest {
    /// True while the grant is approved and inside its time window.
    pub fn active_at(&self, now_unix_s: u64) -> bool {
        match self.state {
            RequestState::Approved { approved_at_unix_s, expires_at_unix_s } => {
                approved_at_unix_s <= now_unix_s && now_unix_s < expires_at_unix_s
            }
            _ => false,
        }
    }

    /// True while the request can still be approved or denied.
    pub fn pending_at(&self, now_unix_s: u64) -> bool {
        self.state == RequestState::Pending
            && self.submitted_at_unix_s <= now_unix_s
            && now_unix_s - self.submitted_at_unix_s < ACCESS_REQUEST_PENDING_MAX_S
    }

    fn open_at(&self, now_unix_s: u64) -> bool {
        self.pending_at(now_unix_s) || self.active_at(now_unix_s)
    }
}

impl AccessGrants {
    /// A cluster admin asks for `scope` for `duration_s` seconds from approval.
    pub fn request(
        &mut self,
        requester: &Caller,
        scope: GrantScope,
        duration_s: u64,
        now_unix_s: u64,
    ) -> Audited<u64> {
        let target = Target::Tenant(scope.org.clone());
        let checked = self.check_request(requester, &scope, duration_s, now_unix_s);
        let result = checked.map(|()| {
            let id = self.last_id + 1;
            self.last_id = id;
            let request = AccessRequest {
                id,
                requester_common_name: requester.common_name().to_owned(),
                requester_key_identity: requester.key_identity().to_owned(),
                scope,
                duration_s,
                submitted_at_unix_s: now_unix_s,
                state: RequestState::Pending,
                decided_by: None,
            };
            self.requests.insert(id, request);
            id
        });
        let action = AuditAction::AccessRequest { request: result.as_ref().ok().copied() };
        audited(result, now_unix_s, requester, action, target)
    }

    /// The tenant admin of the request's tenant approves it; the grant is active from now.
    /// `approver_admin_of` is the tenant the approver administers, from its certificate or
    /// the scope file (the caller resolves it).
    pub fn approve(
        &mut self,
        id: u64,
        approver: &Caller,
        approver_admin_of: Option<&OrgId>,
        now_unix_s: u64,
    ) -> Audited<()> {
        let action = AuditAction::AccessApprove { request: id };
        self.decide(id, approver, approver_admin_of, now_unix_s, Decision::Approve, action)
    }

    /// The tenant admin of the request's tenant denies it.
    pub fn deny(
        &mut self,
        id: u64,
        approver: &Caller,
        approver_admin_of: Option<&OrgId>,
        now_unix_s: u64,
    ) -> Audited<()> {
        let action = AuditAction::AccessDeny { request: id };
        self.decide(id, approver, approver_admin_of, now_unix_s, Decision::Deny, action)
    }

    /// Ends an active grant early: its tenant's admin, or the requester giving it up.
    pub fn revoke(
        &mut self,
        id: u64,
        by: &Caller,
        by_admin_of: Option<&OrgId>,
        now_unix_s: u64,
    ) -> Audited<()> {
        let action = AuditAction::AccessRevoke { request: id };
        let Some(request) = self.requests.get_mut(&id) else {
            let error = GrantError::UnknownRequest { id };
            return audited(Err(error), now_unix_s, by, action, Target::Cluster);
        };
        let target = Target::Tenant(request.scope.org.clone());
        let is_requester = by.key_identity() == request.requester_key_identity;
        let is_tenant_admin = by_admin_of == Some(&request.scope.org) && !is_operator(by);
        let result = if !is_requester && !is_tenant_admin {
            Err(GrantError::NotTenantAdminOfOrg)
        } else if !request.active_at(now_unix_s) {
            Err(GrantError::NotActive { id })
        } else {
            request.state = RequestState::Revoked;
            request.decided_by = Some(by.key_identity().to_owned());
            Ok(())
        };
        audited(result, now_unix_s, by, action, target)
    }

    /// The active grant, if any, that lets the cluster admin with `key_identity` have
    /// `access` to `object` of `org` at `now_unix_s`.
    pub fn covering(
        &self,
        key_identity: &str,
        org: &OrgId,
        object: ObjectType,
        access: Access,
        now_unix_s: u64,
    ) -> Option<u64> {
        self.requests.values().find_map(|request| {
            let covers = request.requester_key_identity == key_identity
                && request.active_at(now_unix_s)
                && request.scope.covers(org, object, access);
            covers.then_some(request.id)
        })
    }

    pub fn request_by_id(&self, id: u64) -> Option<&AccessRequest> {
        self.requests.get(&id)
    }

    pub fn requests(&self) -> impl Iterator<Item = &AccessRequest> {
        self.requests.values()
    }

    /// Forgets every request that is neither pending nor active at `now_unix_s` (the
    /// audit log keeps their history).
    pub fn prune(&mut self, now_unix_s: u64) {
        self.requests.retain(|_, request| request.open_at(now_unix_s));
    }

    fn check_request(
        &mut self,
        requester: &Caller,
        scope: &GrantScope,
        duration_s: u64,
        now_unix_s: u64,
    ) -> Result<(), GrantError> {
        if !requester.has_role(&Role::ClusterAdmin) {
            return Err(GrantError::RequesterNotClusterAdmin);
        }
        if scope.objects.is_empty() {
            return Err(GrantError::EmptyScope);
        }
        if let Some(&object) = scope.objects.iter().find(|object| !object.grantable()) {
            return Err(GrantError::NotGrantable { object });
        }
        if duration_s == 0 {
            return Err(GrantError::ZeroDuration);
        }
        if duration_s > ACCESS_GRANT_MAX_DURATION_S {
            let max_s = ACCESS_GRANT_MAX_DURATION_S;
            return Err(GrantError::DurationTooLong { duration_s, max_s });
        }
        self.prune(now_unix_s);
        if self.requests.len() >= ACCESS_REQUESTS_MAX {
            return Err(GrantError::TooManyRequests { max: ACCESS_REQUESTS_MAX });
        }
        Ok(())
    }

    fn decide(
        &mut self,
        id: u64,
        approver: &Caller,
        approver_admin_of: Option<&OrgId>,
        now_unix_s: u64,
        decision: Decision,
        action: AuditAction,
    ) -> Audited<()> {
        let Some(request) = self.requests.get_mut(&id) else {
            let error = GrantError::UnknownRequest { id };
            return audited(Err(error), now_unix_s, approver, action, Target::Cluster);
        };
        let target = Target::Tenant(request.scope.org.clone());
        let result = if is_operator(approver) {
            Err(GrantError::ApproverIsOperator)
        } else if approver.key_identity() == request.requester_key_identity {
            Err(GrantError::SelfApproval)
        } else if approver_admin_of != Some(&request.scope.org) {
            Err(GrantError::NotTenantAdminOfOrg)
        } else if !request.pending_at(now_unix_s) {
            Err(GrantError::NotPending { id })
        } else {
            request.state = match decision {
                Decision::Approve => RequestState::Approved {
                    approved_at_unix_s: now_unix_s,
                    expires_at_unix_s: now_unix_s.saturating_add(request.duration_s),
                },
                Decision::Deny => RequestState::Denied,
            };
            request.decided_by = Some(approver.key_identity().to_owned());
            Ok(())
        };
        audited(result, now_unix_s, approver, action, target)
    }
}

fn is_operator(caller: &Caller) -> bool {
    caller.roles().iter().any(|role| RoleKind::of(role).is_cluster_operator())
}

fn audited<T>(
    result: Result<T, GrantError>,
    now_unix_s: u64,
    actor: &Caller,
    action: AuditAction,
    target: Target,
) -> Audited<T> {
    let outcome = match &result {
        Ok(_) => AuditResult::Completed,
        Err(error) => AuditResult::Refused { error: error.clone() },
    };
    Audited { result, audit: AuditEvent::new(now_unix_s, actor, action, target, outcome) }
}
